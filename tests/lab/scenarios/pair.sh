#!/bin/bash
# (the kernel's own ftp and sip helpers are loaded first, as nat.sh leaves them and as Debian loads them
# on demand: a userspace helper cannot register under a name and protocol a kernel helper holds, so the
# pair's policies use alg-ftp and alg-sip, as `alg doctor` advises)
# ha: a firewall pair whose expectations survive fail-over, inside the lab VM (README, High availability).
#   topology tools/lab/ha-netns.sh: client and server LANs with two firewalls (ha-fw1 primary, ha-fw2
#   backup) on each, shared gateway addresses held by the active one, a dedicated sync link.
#   Each firewall runs conntrackd in FTFW sync mode (its Sync section printed by `alg conntrackd-sync`,
#   ExpectationSync listing alg's helpers) and its own `alg run`: one kernel, so one cthelper
#   registration serves both, each alg reading its own namespace's queue.
#   1. facts: nf_conntrack_events defaults to 2; both algs register and answer; `alg doctor --pair`
#   2. FTP: PASV through the primary (its alg creates the expectation), conntrackd replicates it, the
#      primary fails (its links go down) and the backup takes over (primary-backup.sh: -c -f -R -B, then
#      the shared addresses): the data connection passes as RELATED on the backup, whose alg adopted the
#      committed expectation; the transfer completes on the replicated control connection
#   3. limit: a second PASV on that replicated control connection opens nothing on the backup (the
#      helper's private data is not replicated: alg meets the flow mid-stream and leaves it)
#   4. a new FTP session through the backup works (its own alg creates the expectation)
#   5. SIP/UDP: a phone registers through the active firewall, then a call set up through it keeps its
#      media through the other after a fail-over (`pair = true`: the INVITE's expectation is replicated,
#      class 0 holds what conntrackd commits there), and a call to the registered phone reaches it
#   6. negative control: ExpectationSync off on both, PASV through fw2, fail-over to fw1: the data
#      connection is NEW on fw1 and dropped
set -u
source "$LAB_DIR/netns.sh"
source "$LAB_DIR/ha-netns.sh"
# shellcheck source=../lib.sh
source "$ALG_ROOT/tests/lab/lib.sh"
RUN=/run/alg-lab/ha; OUT=$LAB_SCRATCH/ha
rm -rf "$RUN"; mkdir -p "$RUN/root" "$RUN/policy" "$RUN/fw1" "$RUN/fw2" "$OUT"
SYS_PY="/usr/bin/python3 -I"            # has pyftpdlib (Debian package)
PEERS="$SYS_PY $LAB_DIR/ftp_peers.py"
POL=$RUN/policy
ALG_PID=(); CTD_PID=(); PIDS=()
cleanup() {
    local n
    for n in 1 2; do [ -n "${ALG_PID[$n]:-}" ] && kill -TERM "${ALG_PID[$n]}" 2>/dev/null; done
    for n in 1 2; do [ -n "${CTD_PID[$n]:-}" ] && kill "${CTD_PID[$n]}" 2>/dev/null; done
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    wait 2>/dev/null
    ha_net_down  # first: a helper is not removed while conntracks use it (EBUSY)
    local f
    for f in inet inet6; do  # both families: alg registers each helper for both
        nfct del helper alg-ftp "$f" tcp 2>/dev/null; nfct del helper alg-sip "$f" udp 2>/dev/null
        nfct del helper alg-sip "$f" tcp 2>/dev/null
    done
}
trap cleanup EXIT
modprobe -q nf_conntrack_ftp; modprobe -q nf_conntrack_sip

echo "alg ha payload" >"$RUN/root/hello.txt"
printf 'helper = "ftp"\nname = "alg-ftp"\nqueue = 5\n' >"$POL/ftp.toml"
sed -e 's/^name = "sip" /name = "alg-sip"/' "$ALG_ROOT/policies/sip.toml" >"$POL/sip.toml"
for n in 1 2; do printf '[core]\nstatus_socket = "%s"\npair = true\n' "$RUN/fw$n/alg.sock" >"$RUN/fw$n/alg.toml"; done

ha_net_up tcp/21 udp/5060 || { echo "FAIL ha_net_up"; exit 1; }

# ---------------------------------------------------------------- conntrackd and alg on both nodes
ctd() { local n=$1; shift; ha_fw "$n" conntrackd -C "$RUN/fw$n/conntrackd.conf" "$@"; }
sync_text() {  # N: `alg conntrackd-sync` for node N (each alg start costs seconds under TCG: both at once)
    "$ALG" conntrackd-sync --policy "$POL" --interface sync0 --address "10.0.3.$1" --peer "10.0.3.$((3 - $1))" \
        >"$RUN/fw$1/sync.txt"
}
ctd_conf() {  # N on|off: General (the conntrack-tools ftfw example's, trimmed) + alg's Sync section
    local n=$1 peer=$((3 - $1)) d=$RUN/fw$1
    cat >"$d/conntrackd.conf" <<CONF
General {
	HashSize 8192
	HashLimit 65535
	Syslog off
	LogFile $d/conntrackd.log
	LockFile $d/conntrackd.lock
	UNIX { Path $d/conntrackd.ctl }
	NetlinkBufferSize 2097152
	NetlinkBufferSizeMaxGrowth 8388608
	Filter From Userspace {
		Protocol Accept { TCP UDP }
		Address Ignore {
			IPv4_address 127.0.0.1
			IPv4_address 10.0.3.$n
			IPv4_address 10.0.3.$peer
		}
	}
}
CONF
    # alg's Sync section, printed once per node (sync_text); "off": the same without its Options block
    # (ExpectationSync)
    [ -s "$d/sync.txt" ] || sync_text "$1"
    if [ "$2" = on ]; then cat "$d/sync.txt"; else sed -e '/^\tOptions {/,/^\t}/d' "$d/sync.txt"; fi >>"$d/conntrackd.conf"
}
ctd_start() {  # N
    ip netns exec "$(ha_ns "$1")" conntrackd -C "$RUN/fw$1/conntrackd.conf" >>"$OUT/conntrackd$1.out" 2>&1 &
    CTD_PID[$1]=$!
    for _ in $(seq 100); do ctd "$1" -s >/dev/null 2>&1 && return 0; sleep 0.1; done
    echo "conntrackd $1 did not come up"; cat "$RUN/fw$1/conntrackd.log"; return 1
}
ctd_stop() {  # N
    kill "${CTD_PID[$1]}" 2>/dev/null
    for _ in $(seq 50); do kill -0 "${CTD_PID[$1]}" 2>/dev/null || break; sleep 0.1; done
    kill -9 "${CTD_PID[$1]}" 2>/dev/null; wait "${CTD_PID[$1]}" 2>/dev/null; CTD_PID[$1]=
    rm -f "$RUN/fw$1/conntrackd.lock" "$RUN/fw$1/conntrackd.ctl"
}
phase() { echo "-- ${SECONDS}s: $*"; }
alg_start() {  # N: in the background (a Python start takes many seconds under TCG: start both, then wait)
    ip netns exec "$(ha_ns "$1")" "$ALG" run --policy "$POL" --policy "$RUN/fw$1/alg.toml" >>"$OUT/alg$1.log" 2>&1 &
    ALG_PID[$1]=$!
}
alg_wait() {  # N: until its status socket exists
    for _ in $(seq 600); do
        [ -S "$RUN/fw$1/alg.sock" ] && return 0
        kill -0 "${ALG_PID[$1]}" 2>/dev/null || break
        sleep 0.2
    done
    echo "alg $1 did not come up:"; tail -20 "$OUT/alg$1.log"; return 1
}
alg_field() {  # N EXPR: a figure of alg N's status (`st`, the status document), read from its socket
    # with the system Python (an `alg status` costs a Python start with alg's imports: seconds under TCG)
    $SYS_PY - "$RUN/fw$1/alg.sock" "$2" <<'PYEOF' 2>/dev/null || echo 0
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
st = json.loads(b"".join(iter(lambda: s.recv(65536), b"")))
print(eval(sys.argv[2], {"st": st}))
PYEOF
}
alg_class() { alg_field "$1" "st['helpers']['$2']['classes']['$3']['$4']"; }  # N HELPER CLASS FIELD
related() { LAB_NS_FW=$(ha_ns "$1") alg_related_count "$2" 4; }
wait_for() {  # SECONDS CMD...: until CMD succeeds (generous: a starved guest is slow)
    local until=$((SECONDS + $1)); shift
    while [ $SECONDS -lt $until ]; do "$@" && return 0; sleep 0.2; done
    "$@"
}
has_line() { local n=$1 what=$2 pattern=$3; ctd "$n" -e "$what" 2>/dev/null | grep -q -- "$pattern"; }
failover() {  # FROM TO: FROM fails; TO becomes primary as conntrack-tools' primary-backup.sh does it, except
    # that conntrackd 1.4.7's `-c` commits the conntracks and not the expectations (measured here, each time:
    # $OUT/failover.log): `-c expect` commits them, masters first
    local from=$1 to=$2 op
    ha_links "$from" down
    ctd "$to" -c >>"$OUT/failover.log" 2>&1
    echo "after conntrackd -c on fw$to: $(ha_fw "$to" conntrack -L expect 2>/dev/null | grep -c helper=) expectations" \
        | tee -a "$OUT/failover.log"
    for op in "-c expect" -f -R -B; do ctd "$to" $op >>"$OUT/failover.log" 2>&1 || echo "conntrackd $to $op failed" >>"$OUT/failover.log"; done
    echo "after conntrackd -c expect on fw$to: $(ha_fw "$to" conntrack -L expect 2>/dev/null | grep -c helper=) expectations" \
        "(masters: $(ha_fw "$to" conntrack -L 2>/dev/null | grep -c helper=))" | tee -a "$OUT/failover.log"
    ha_fw "$to" conntrack -L expect 2>/dev/null | tee "$OUT/committed-fw$to.txt" >>"$OUT/failover.log"
    ha_take "$to"
    ha_links "$from" up  # back as the backup: shorten its timers, ask the new primary for its states
    ctd "$from" -t >>"$OUT/failover.log" 2>&1; ctd "$from" -n >>"$OUT/failover.log" 2>&1
}

default_events=$(ha_fw 1 sysctl -n net.netfilter.nf_conntrack_events)
check "ha fact: nf_conntrack_events defaults to 2 (got $default_events)" test "$default_events" = 2
for n in 1 2; do ha_fw "$n" sysctl -qw net.netfilter.nf_conntrack_events=1; done
ip netns exec "$HA_NS_SERVER" $PEERS ftp-server --bind 10.0.2.2 --root "$RUN/root" --pasv-ports 50000-50019 >"$OUT/ftpd.log" 2>&1 & PIDS+=($!)
# what alg prints for the pair (Python starts with alg's imports) all at once: both Sync sections, the rules
"$ALG" rules --policy "$POL" --family 4 >"$RUN/rules.txt" & rules=$!
sync_text 1 & sync1=$!; sync_text 2; wait "$sync1"
for n in 1 2; do ctd_conf "$n" on; done
grep -qx $'\t\t\talg-ftp' "$RUN/fw1/conntrackd.conf" && grep -qx $'\t\t\talg-sip' "$RUN/fw1/conntrackd.conf" \
    && ! grep -qx $'\t\t\tsip' "$RUN/fw1/conntrackd.conf" && ! grep -qx $'\t\t\tftp' "$RUN/fw1/conntrackd.conf" && pass "ha conntrackd-sync lists the policy's helper names" \
    || { fail "ha conntrackd-sync lists the policy's helper names"; cat "$RUN/fw1/conntrackd.conf"; }
check "ha conntrackd 1 (sync) runs" ctd_start 1
check "ha conntrackd 2 (sync) runs" ctd_start 2
alg_start 1; alg_start 2
alg_wait 1 && pass "ha alg runs on the primary" || { fail "ha alg runs on the primary"; exit 1; }
alg_wait 2 && pass "ha alg runs on the backup (passive, helpers registered)" || { fail "ha alg runs on the backup"; exit 1; }
wait "$rules"
for n in 1 2; do ha_fw "$n" iptables-restore --noflush <"$RUN/rules.txt" || fail "ha rules applied on fw$n"; done
nfct list helper 2>/dev/null | tr -s '\t\n' ' ' | grep -q "name = alg-ftp, .queuenum = 5,.*status = enabled" \
    && pass "ha one global registration (alg-ftp enabled)" || { fail "ha one global registration"; nfct list helper; }
ha_fw 2 "$ALG" doctor --policy "$POL" --policy "$RUN/fw2/alg.toml" --conntrackd-conf "$RUN/fw2/conntrackd.conf" >"$OUT/doctor2.txt" 2>&1
for c in "pair: conntrack events" "pair: helper alg-ftp" "pair: helper alg-sip" "conntrackd socket" "conntrackd sync" \
         "ExpectationSync alg-ftp" "ExpectationSync alg-sip"; do
    grep -q "^ok    $c:" "$OUT/doctor2.txt" && pass "ha doctor on the backup: $c ok" || { fail "ha doctor on the backup: $c"; cat "$OUT/doctor2.txt"; }
done

phase "FTP"
# ---------------------------------------------------------------- FTP across a fail-over
cat >"$RUN/ha-ftp.py" <<'PYEOF'
"""Two passive transfers on one control connection; the scenario fails the pair over between the first
PASV and its data connection (flag files in DIR: `pasv` when the answer came, `go` when it may go on)."""
import ftplib, os, socket, sys, time
host, name, flags = sys.argv[1], sys.argv[2], sys.argv[3]
ftp = ftplib.FTP(host, timeout=10)
print(ftp.login(), flush=True)
ftp.voidcmd("TYPE I")
def fetch(label, hold):
    h, p = ftp.makepasv()
    print(f"{label}: PASV {h} {p}", flush=True)
    if hold:
        open(os.path.join(flags, "pasv"), "w").close()
        for _ in range(1200):
            if os.path.exists(os.path.join(flags, "go")):
                break
            time.sleep(0.1)
    try:
        conn = socket.create_connection((h, p), timeout=6)
    except OSError as exc:
        print(f"{label}: data connection FAILED: {exc}", flush=True)
        return False
    print(ftp.sendcmd(f"RETR {name}"), flush=True)
    data = b"".join(iter(lambda: conn.recv(4096), b""))
    conn.close()
    print(ftp.voidresp(), flush=True)
    good = data == b"alg ha payload\n"
    print(f"{label}: {'ok' if good else 'WRONG'} {data!r}", flush=True)
    return good
ok = [fetch("first", True)]
if len(sys.argv) > 4:
    ok.append(fetch("second", False))
print("result", " ".join("ok" if x else "failed" for x in ok), flush=True)
PYEOF
# ftp_across FROM TO MODE LOG [second]: the client holds after its first PASV; meanwhile wait until
# TO's conntrackd holds what MODE says (expect: the expectation; ct: the control connection), fail over
ftp_across() {
    local from=$1 to=$2 mode=$3 log=$4 pid
    rm -f "$RUN/pasv" "$RUN/go"
    ip netns exec "$HA_NS_CLIENT" $SYS_PY "$RUN/ha-ftp.py" 10.0.2.2 hello.txt "$RUN" ${5:+second} >"$log" 2>&1 &
    pid=$!
    wait_for 60 test -e "$RUN/pasv" || echo "no PASV answer" >>"$log"
    ha_fw "$from" conntrack -L expect >"$log.expect-$from" 2>/dev/null
    if [ "$mode" = expect ]; then
        wait_for 20 has_line "$to" expect "dport=500"
    else  # the master replicated, then a moment more: an expectation would be there by now
        wait_for 20 has_line "$to" ct "dport=21 .*ESTABLISHED\|ESTABLISHED.*dport=21" && sleep 2
    fi
    ctd "$to" -e expect >"$log.synced-$to" 2>&1
    failover "$from" "$to"
    touch "$RUN/go"
    wait "$pid"
}

r0=$(related 2 alg-ftp); d0=$(ha_count 2 drop)
ftp_across 1 2 expect "$OUT/ftp-failover.log" second
cat "$OUT/ftp-failover.log"
grep -q "helper=alg-ftp" "$OUT/ftp-failover.log.expect-1" && pass "ha FTP expectation created on the primary" \
    || fail "ha FTP expectation created on the primary"
grep -q "dport=500" "$OUT/ftp-failover.log.synced-2" && pass "ha FTP expectation replicated to the backup (external cache)" \
    || { fail "ha FTP expectation replicated to the backup"; cat "$OUT/ftp-failover.log.synced-2"; }
grep -q "^first: ok" "$OUT/ftp-failover.log" && pass "ha FTP transfer across the fail-over completes" \
    || fail "ha FTP transfer across the fail-over completes"
[ "$(related 2 alg-ftp)" -gt "$r0" ] && pass "ha FTP data connection RELATED on the backup (expectation from the primary)" \
    || { fail "ha FTP data connection RELATED on the backup"; ha_fw 2 iptables -nvxL alg-related; }
adopted=$(alg_class 2 alg-ftp ftp adopted); used=$(alg_class 2 alg-ftp ftp used)
check "ha backup's alg adopted the committed expectation (adopted $adopted)" test "$adopted" -ge 1
check "ha backup's alg saw it used (used $used)" test "$used" -ge 1
# the limit: private data (alg's flow record) is not replicated, so alg on the backup meets the control
# connection mid-stream and leaves it: a later PASV on it opens nothing
midstream=$(alg_field 2 "st['helpers']['alg-ftp']['midstream']")
grep -q "^second: data connection FAILED" "$OUT/ftp-failover.log" && [ "$midstream" -ge 1 ] \
    && pass "ha limit seen: a later PASV on the replicated control connection opens nothing on the backup (met mid-stream $midstream)" \
    || fail "ha limit: a later PASV on the replicated control connection (midstream $midstream)"

r0=$(related 2 alg-ftp); c0=$(alg_class 2 alg-ftp ftp created)
ip netns exec "$HA_NS_CLIENT" $PEERS ftp-get --host 10.0.2.2 --file hello.txt --timeout 6 >"$OUT/ftp-new.log" 2>&1 \
    && [ "$(related 2 alg-ftp)" -gt "$r0" ] && [ "$(alg_class 2 alg-ftp ftp created)" -gt "$c0" ] \
    && pass "ha new FTP session after the fail-over: its data connection RELATED on the backup" \
    || { fail "ha new FTP session after the fail-over"; cat "$OUT/ftp-new.log"; }

phase "SIP"
# ---------------------------------------------------------------- SIP/UDP call across a fail-over (fw2 -> fw1)
SIPP_DIR=$ALG_ROOT/tools/sipp
sip_media() {  # NS DST PORT: one RTP-sized datagram
    ip netns exec "$1" $SYS_PY -c "import socket,sys; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.sendto(b'\x80\0\0\1'+b'\0'*168, (sys.argv[1], int(sys.argv[2])))" "$2" "$3"
}
for n in 1 2; do
    ha_fw "$n" iptables -I FORWARD 1 -i s1 -o c1 -p udp --dport 16000 -m conntrack --ctstate RELATED -m comment --comment lab-sip-rel-caller
    ha_fw "$n" iptables -I FORWARD 1 -i c1 -o s1 -p udp --dport 20000 -m conntrack --ctstate RELATED -m comment --comment lab-sip-rel-callee
    ha_fw "$n" iptables -I FORWARD 1 -p udp -m conntrack --ctstate RELATED -m comment --comment lab-sip-rel-any
done
# a phone registers through fw2 (its registrar answers once and goes): the 2xx makes the signalling
# expectation for calls to its Contact, which must survive the fail-over; the phone waits for its call
# through the whole SIP phase (it ends when called: its timeout only bounds a failure; 240 s ran out
# once on a machine at load 4-5, where the phase took 250 s)
SIPREG="$SYS_PY $LAB_DIR/sip_register.py"
ip netns exec "$HA_NS_SERVER" $SIPREG registrar --bind 10.0.2.2 --timeout 60 >"$OUT/registrar.log" 2>&1 & reg=$!
ip netns exec "$HA_NS_CLIENT" $SIPREG phone --bind 10.0.1.2 --port 5070 --control-port 5071 --registrar 10.0.2.2 \
    --timeout 900 >"$OUT/phone.log" 2>&1 & phone=$!; PIDS+=("$phone")
wait "$reg"
wait_for 30 grep -q "^registered" "$OUT/phone.log"
reg_seen() { ha_fw 2 conntrack -L expect 2>/dev/null | grep 'helper=alg-sip' | grep -q 'dport=5070 '; }
wait_for 30 reg_seen && pass "ha SIP REGISTER through fw2: the signalling expectation for the phone's Contact" \
    || { fail "ha SIP REGISTER through fw2: signalling expectation"; cat "$OUT/registrar.log" "$OUT/phone.log"; ha_fw 2 conntrack -L expect; }
ip netns exec "$HA_NS_SERVER" sipp -sf "$SIPP_DIR/uas-lab.xml" -i 10.0.2.2 -p 5060 -t u1 -mp 20000 -m 1 \
    -max_invite_retrans 40 -max_non_invite_retrans 40 -max_retrans 40 -timeout 120s >"$OUT/sip-uas.log" 2>&1 & uas=$!
listening "$HA_NS_SERVER" udp 5060
ip netns exec "$HA_NS_CLIENT" sipp -sf "$SIPP_DIR/uac-lab.xml" 10.0.2.2:5060 -i 10.0.1.2 -p 5061 -t u1 -mp 16000 -m 1 \
    -s alice -d 25000 -max_invite_retrans 40 -max_non_invite_retrans 40 -max_retrans 40 -timeout 120s >"$OUT/sip-uac.log" 2>&1 & uac=$!
sip_seen() { [ "$(ha_fw 2 conntrack -L expect 2>/dev/null | grep -c 'helper=alg-sip')" -ge 4 ]; }  # RTP and RTCP, both ways
sip_synced() { [ "$(ctd 1 -e expect 2>/dev/null | grep -c 'helper=alg-sip')" -ge 3 ]; }
wait_for 60 sip_seen && pass "ha SIP media expectations created on the active firewall (fw2)" \
    || { fail "ha SIP media expectations created on fw2"; ha_fw 2 conntrack -L expect; }
ha_fw 2 conntrack -L expect >"$OUT/sip-fw2.expect" 2>/dev/null
wait_for 15 sip_synced
ctd 1 -e expect >"$OUT/sip-fw1.synced" 2>&1
cat "$OUT/sip-fw2.expect" "$OUT/sip-fw1.synced"
synced=$(grep -c 'helper=alg-sip' "$OUT/sip-fw1.synced")
check "ha SIP media expectations replicated to fw1 ($synced of $(grep -c 'helper=alg-sip' "$OUT/sip-fw2.expect"))" test "$synced" -ge 1
# what the sync drops, measured: the INVITE opens its UDP dialog, so its SDP's expectation goes out on the
# verdict while the master is unconfirmed (its EXP_NEW precedes the master's NEW)
check "ha SIP the INVITE's RTP expectation replicated (pair = true: made once its master is confirmed)" \
    grep -q "dport=16000 " "$OUT/sip-fw1.synced"
a0=$(alg_field 1 "st['adopted']")
failover 2 1
ha_fw 1 conntrack -L expect >"$OUT/sip-fw1.committed" 2>/dev/null
held=$(grep -c helper=alg-sip "$OUT/committed-fw1.txt")
classes=$(grep helper=alg-sip "$OUT/committed-fw1.txt" | grep -o 'class=[0-9]*' | sort -u | tr '\n' ' ')
echo "note: committed on fw1: $held of $synced expectations (${classes:-none}; fw2 had" \
    "$(grep -o 'class=[0-9]*' "$OUT/sip-fw2.expect" | sort | uniq -c | tr -s ' \n' ' ')); a moment later" \
    "$(grep -c helper=alg-sip "$OUT/sip-fw1.committed")"
name="ha fact: conntrackd commits the SIP media expectations in class 0 (fw1 holds $held of $synced: ${classes:-none})"
check "$name" test "$classes" = "class=0 "
check "ha SIP fw1 holds every committed expectation (class 0 registered with the room of all classes)" \
    test "$held" -ge "$synced"
c0=$(ha_count 1 sip-rel-caller); e0=$(ha_count 1 sip-rel-callee); r_any0=$(ha_count 1 sip-rel-any)
sip_media "$HA_NS_SERVER" 10.0.1.2 16000
sip_media "$HA_NS_CLIENT" 10.0.2.2 20000
while read -r dst dport; do  # one datagram to each expectation fw1 still holds, from the other side
    if [ "$dst" = 10.0.1.2 ]; then sip_media "$HA_NS_SERVER" "$dst" "$dport"; else sip_media "$HA_NS_CLIENT" "$dst" "$dport"; fi
done < <(grep helper=alg-sip "$OUT/sip-fw1.committed" | sed -E 's/.* dst=([^ ]+) sport=0 dport=([0-9]+) .*/\1 \2/')
to_caller=$(( $(ha_count 1 sip-rel-caller) - c0 )); to_callee=$(( $(ha_count 1 sip-rel-callee) - e0 ))
check "ha SIP call across the fail-over keeps its media: RTP RELATED on fw1 to the caller ($to_caller) and to the callee ($to_callee)" \
    test "$to_caller" -ge 1 -a "$to_callee" -ge 1
echo "note: media to every expectation fw1 holds: $(( $(ha_count 1 sip-rel-any) - r_any0 )) RELATED"
# the phone registered through fw2 is called through fw1, from a port of the registrar's address the
# phone never spoke to; the same to a port it did not register is dropped
ip netns exec "$HA_NS_SERVER" $SIPREG invite --bind 10.0.2.2 --sport 5091 --to 10.0.1.2 --dport 5071
ip netns exec "$HA_NS_SERVER" $SIPREG invite --bind 10.0.2.2 --sport 5090 --to 10.0.1.2 --dport 5070
wait "$phone"; rc_phone=$?
cat "$OUT/phone.log"
check "ha SIP a call to the phone registered through fw2 reaches it through fw1" grep -q "^invite on 5070" "$OUT/phone.log"
check "ha SIP the same to a port the phone did not register is dropped (phone rc $rc_phone)" \
    test -z "$(grep '^stray' "$OUT/phone.log")"
check "ha fw1's alg adopted the committed SIP expectations" test "$(alg_field 1 "st['adopted']")" -gt "$a0"
wait "$uac"; rc_uac=$?; wait "$uas"; rc_uas=$?
check "ha SIP call across the fail-over completes (BYE through fw1; sipp $rc_uac/$rc_uas)" test "$rc_uac" = 0 -a "$rc_uas" = 0
echo "note: after the BYE through fw1: $(ha_fw 1 conntrack -L expect 2>/dev/null | grep -c helper=alg-sip) alg-sip" \
    "expectations left there, fw1's alg removed $(alg_field 1 "sum(c['removed'] for c in st['helpers']['alg-sip']['classes'].values())")"

phase "negative control"
# ---------------------------------------------------------------- negative control: no ExpectationSync
for n in 1 2; do ctd_stop "$n"; ctd_conf "$n" off; done
! grep -q "^[[:space:]]*ExpectationSync" "$RUN/fw1/conntrackd.conf" && ctd_start 1 && ctd_start 2 \
    && pass "ha negative: conntrackd restarted without ExpectationSync" || fail "ha negative: conntrackd without ExpectationSync"
d0=$(ha_count 2 drop); r0=$(related 2 alg-ftp)
ftp_across 1 2 ct "$OUT/ftp-negative.log"
cat "$OUT/ftp-negative.log"
! grep -q "dport=500" "$OUT/ftp-negative.log.synced-2" && pass "ha negative: no expectation replicated" \
    || fail "ha negative: no expectation replicated"
grep -q "^first: data connection FAILED" "$OUT/ftp-negative.log" && [ "$(ha_count 2 drop)" -gt "$d0" ] \
    && [ "$(related 2 alg-ftp)" = "$r0" ] && pass "ha negative: without ExpectationSync the data connection is dropped on the backup" \
    || fail "ha negative: without ExpectationSync the data connection is dropped on the backup"

phase "end"
st_pids=()
for n in 1 2; do  # both at once (Python starts with alg's imports)
    ha_fw "$n" "$ALG" status --socket "$RUN/fw$n/alg.sock" >"$OUT/status$n.txt" 2>&1 & st_pids+=($!)
    cp "$RUN/fw$n/conntrackd.log" "$OUT/conntrackd$n.log" 2>/dev/null
done
wait "${st_pids[@]}"
grep -q "class ftp: .*adopted [1-9]" "$OUT/status2.txt" && pass "ha alg status on fw2 shows the adopted expectation" \
    || { fail "ha alg status on fw2 shows the adopted expectation"; cat "$OUT/status2.txt"; }
echo "ha: $FAILS failed"
exit $((FAILS > 0))
