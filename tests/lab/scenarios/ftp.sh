#!/bin/bash
# ftp: alg as the firewall's FTP helper, end to end, inside the lab VM.
#   1. `alg run` registers its ftp helper (nfnetlink_cthelper); `alg rules` is applied in lab-fw
#   2. a real FTP server (pyftpdlib) and clients (ftplib passive v4 + v6, lftp and ftplib active v4):
#      each data connection passes the firewall through alg's own RELATED rule (`alg rules`
#      inserts it at the top of FORWARD, comment "alg ftp related"), the firewall drops any
#      other NEW flow (lab-drop)
#   3. negative control: alg stopped (its helper removed) -> the data connection is dropped
#   4. reference: conntrackd's own ftp helper on the same transfers (passive PASV and active
#      PORT); the expectations it creates equal alg's (timeout, data port and client port normalised)
set -u
source "$LAB_DIR/netns.sh"
# shellcheck source=../lib.sh
source "$ALG_ROOT/tests/lab/lib.sh"
RUN=/run/alg-lab/ftp; OUT=$LAB_SCRATCH/ftp; mkdir -p "$RUN/root" "$OUT"
SYS_PY="/usr/bin/python3 -I"            # has pyftpdlib (Debian package)
PEERS="$SYS_PY $LAB_DIR/ftp_peers.py"
POLICY=$RUN/ftp.toml
SOCK=$RUN/alg.sock
PIDS=(); ALG_PID=; EW_PID=
cleanup() {
    [ -n "$ALG_PID" ] && kill "$ALG_PID" 2>/dev/null
    [ -n "$EW_PID" ] && kill "$EW_PID" 2>/dev/null
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    wait 2>/dev/null
    nfct del helper ftp inet tcp 2>/dev/null
    lab_net_down
}
trap cleanup EXIT

echo "alg lab payload" >"$RUN/root/hello.txt"
cat >"$POLICY" <<TOML
helper = "ftp"
queue = 5
TOML
cat >"$RUN/alg.toml" <<TOML
[core]
status_socket = "$SOCK"
TOML

lab_net_up tcp/21 || { echo "FAIL lab_net_up"; exit 1; }
lab_fw sysctl -qw net.netfilter.nf_conntrack_events=1
ip netns exec "$LAB_NS_SERVER" $PEERS ftp-server --bind "$LAB_SERVER4" --root "$RUN/root" --pasv-ports 50000-50009 >"$OUT/ftpd4.log" 2>&1 & PIDS+=($!)
ip netns exec "$LAB_NS_SERVER" $PEERS ftp-server --bind "$LAB_SERVER6" --root "$RUN/root" --pasv-ports 50010-50019 >"$OUT/ftpd6.log" 2>&1 & PIDS+=($!)

start_alg() {
    ip netns exec "$LAB_NS_FW" "$ALG" run --policy "$POLICY" --policy "$RUN/alg.toml" >>"$OUT/alg.log" 2>&1 &
    ALG_PID=$!
    for _ in $(seq 100); do
        lab_fw "$ALG" status --socket "$SOCK" >/dev/null 2>&1 && return 0
        kill -0 "$ALG_PID" 2>/dev/null || break
        sleep 0.1
    done
    echo "alg did not come up:"; tail -20 "$OUT/alg.log"; return 1
}
related() { alg_related_count ftp; }
# active (PORT) with ftplib and a fixed data port (nothing to normalise); pyftpdlib connects
# as soon as PORT is accepted (before the 200 reaches the client), so the expectation is
# recorded from conntrack's events (watch_start/watch_stop), not listed between two commands
cat >"$RUN/ftp-active.py" <<'PYEOF'
import ftplib, socket, sys
host, port = sys.argv[1], int(sys.argv[2])
ftp = ftplib.FTP(host, timeout=5)
ftp.login()
ftp.voidcmd("TYPE I")
me = ftp.sock.getsockname()[0]
ls = socket.socket()
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind((me, port)); ls.listen(1); ls.settimeout(5)
ftp.sendport(me, port)
ftp.putcmd("RETR hello.txt")
print(ftp.getresp())
conn, peer = ls.accept()
data = b"".join(iter(lambda: conn.recv(4096), b""))
conn.close()
print(ftp.voidresp(), peer, data)
ftp.quit()
sys.exit(0 if data == b"alg lab payload\n" else 1)
PYEOF
active_port() {  # EVENTS-FILE LOG: ftplib active download; the NEW expectation events, as `conntrack -L expect` prints them
    watch_start "$1.events"
    lab_cli $SYS_PY "$RUN/ftp-active.py" "$LAB_SERVER4" 40021 >"$2" 2>&1; local rc=$?
    watch_stop
    grep '\[NEW\]' "$1.events" | sed -E 's/^ *\[NEW\] //' >"$1"
    return $rc
}
normalise() {  # conntrack -L expect lines -> comparable (no timeout, data port or client port)
    sed -E 's/^[0-9]+ //; s/(mask-dst=[^ ]+ sport=[0-9]+ dport=[0-9]+ master-src=[^ ]+ master-dst=[^ ]+ sport=)[0-9]+/\1C/; s/dport=5[0-9]{4}/dport=P/' "$1" | grep dport= | sort
}

sleep 1
start_alg && pass alg-starts || { fail alg-starts; exit 1; }
lab_fw nfct list helper 2>/dev/null | tr -s '\t\n' ' ' | grep -q "name = ftp, .queuenum = 5,.*status = enabled" \
    && pass helper-registered-enabled || { fail helper-registered-enabled; lab_fw nfct list helper; }
"$ALG" rules --policy "$POLICY" --family 4 | lab_fw iptables-restore --noflush && \
"$ALG" rules --policy "$POLICY" --family 6 | lab_fw ip6tables-restore --noflush && pass rules-applied || fail rules-applied
lab_fw "$LAB_IPT" -nL FORWARD --line-numbers | grep -q '^1 *alg-related ' && pass alg-related-rule-first \
    || { fail alg-related-rule-first; lab_fw "$LAB_IPT" -nL FORWARD --line-numbers; }

# passive, IPv4 (PASV), expectation recorded between 227 and the data connect
r0=$(related)
lab_cli $PEERS ftp-get --host "$LAB_SERVER4" --file hello.txt --timeout 5 \
    --after-pasv "ip netns exec $LAB_NS_FW conntrack -L expect >$OUT/alg-exp.txt 2>/dev/null" >"$OUT/pasv4.log" 2>&1 \
    && [ "$(related)" -gt "$r0" ] && pass passive-ipv4-related || { fail passive-ipv4-related; cat "$OUT/pasv4.log"; }
grep -q "helper=ftp" "$OUT/alg-exp.txt" && pass alg-expectation-listed || fail alg-expectation-listed
# passive, IPv6 (EPSV)
r0=$(related)
lab_cli $PEERS ftp-get --host "$LAB_SERVER6" --file hello.txt --timeout 5 >"$OUT/pasv6.log" 2>&1 \
    && [ "$(related)" -gt "$r0" ] && pass passive-ipv6-related || { fail passive-ipv6-related; cat "$OUT/pasv6.log"; }
# active, IPv4 (PORT), lftp
r0=$(related)
lab_cli timeout 20 lftp -e "set ftp:passive-mode off; set net:timeout 5; set net:max-retries 1; get hello.txt -o $RUN/active.txt; quit" \
    "ftp://anonymous:lab@$LAB_SERVER4" >"$OUT/active4.log" 2>&1
cmp -s "$RUN/active.txt" "$RUN/root/hello.txt" && [ "$(related)" -gt "$r0" ] && pass active-ipv4-related \
    || { fail active-ipv4-related; cat "$OUT/active4.log"; }
r0=$(related)
active_port "$OUT/alg-exp-active.txt" "$OUT/port4.log" && [ "$(related)" -gt "$r0" ] && pass active-port-ipv4-related || { fail active-port-ipv4-related; cat "$OUT/port4.log"; }
grep -q "helper=ftp" "$OUT/alg-exp-active.txt" && pass alg-active-expectation-listed || fail alg-active-expectation-listed
lab_fw "$ALG" status --socket "$SOCK" >"$OUT/status.txt" 2>&1
grep -q "created [1-9]" "$OUT/status.txt" && pass status-counts-created || { fail status-counts-created; cat "$OUT/status.txt"; }
# the four transfers' expectations (confirmed control connections) rode on their packets' verdicts
# (NFQA_EXP, as conntrackd's), and the kernel's events confirmed each one
alg_status_json "$SOCK" >"$OUT/status.json"
/usr/bin/python3 -I -S -c 'import json, sys
d = json.load(open(sys.argv[1]))
sys.exit(0 if d["attached"] >= 4 and d["attach_failed"] == 0 else 1)' "$OUT/status.json" \
    && pass expectations-on-verdicts-confirmed || { fail expectations-on-verdicts-confirmed; head -c 800 "$OUT/status.json"; }

# clean stop: helper removed, queue unbound
stop_alg && pass alg-stops-cleanly || fail alg-stops-cleanly
# removed, or (while conntracks still refer to it: EBUSY) at least disabled, so flows are not queued to nobody
lab_fw nfct list helper 2>/dev/null | tr -s '\t\n' ' ' | grep -q "name = ftp, .*status = enabled" \
    && fail helper-disabled-on-stop || pass helper-disabled-on-stop

# negative control: no alg -> data connection dropped
fw_reset; d0=$(lab_fw_count drop)
lab_cli $PEERS ftp-get --host "$LAB_SERVER4" --file hello.txt --timeout 3 >"$OUT/neg.log" 2>&1
rc=$?
[ $rc -ne 0 ] && [ "$(lab_fw_count drop)" -gt "$d0" ] && pass negative-control-dropped || fail "negative-control-dropped (rc=$rc)"

# reference: conntrackd's ftp helper on the same transfer
fw_reset
conntrackd_conf "$RUN/conntrackd.conf" "$RUN" ftp tcp 5 1 300
lab_fw nfct del helper ftp inet tcp 2>/dev/null  # alg left it disabled while conntracks used it
lab_fw nfct add helper ftp inet tcp
ip netns exec "$LAB_NS_FW" conntrackd -C "$RUN/conntrackd.conf" >"$OUT/conntrackd.out" 2>&1 & PIDS+=($!)
for _ in $(seq 100); do
    lab_fw nfct list helper 2>/dev/null | tr -s '\t\n' ' ' | grep -q "name = ftp, .queuenum = 5,.*status = enabled" && break
    sleep 0.1
done
lab_cli $PEERS ftp-get --host "$LAB_SERVER4" --file hello.txt --timeout 5 \
    --after-pasv "ip netns exec $LAB_NS_FW conntrack -L expect >$OUT/conntrackd-exp.txt 2>/dev/null" >"$OUT/ref.log" 2>&1 \
    && pass conntrackd-reference-passes || fail conntrackd-reference-passes
active_port "$OUT/conntrackd-exp-active.txt" "$OUT/ref-port.log" && pass conntrackd-reference-active-passes || { fail conntrackd-reference-active-passes; cat "$OUT/ref-port.log"; }
for mode in "" -active; do
    normalise "$OUT/alg-exp$mode.txt" >"$OUT/alg-exp$mode.norm"
    normalise "$OUT/conntrackd-exp$mode.txt" >"$OUT/conntrackd-exp$mode.norm"
    echo "alg$mode:        $(cat "$OUT/alg-exp$mode.norm")"
    echo "conntrackd$mode: $(cat "$OUT/conntrackd-exp$mode.norm")"
    [ -s "$OUT/alg-exp$mode.norm" ] && cmp -s "$OUT/alg-exp$mode.norm" "$OUT/conntrackd-exp$mode.norm" \
        && pass "expectations-equal-conntrackd${mode:-"-passive"}" || fail "expectations-equal-conntrackd${mode:-"-passive"}"
done
exit $((FAILS > 0))
