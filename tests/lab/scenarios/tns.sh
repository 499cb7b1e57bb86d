#!/bin/bash
# tns: alg as the firewall's Oracle TNS helper, end to end, inside the lab VM.
#   1. `alg run` registers its tns helper (nfnetlink_cthelper); `alg rules` is applied in lab-fw
#   2. a real client, python-oracledb in thin mode (from $ALG_ROOT/.venv), connects from lab-cli
#      to tools/tns_listener.py in lab-srv, which answers CONNECT with a REDIRECT to port 1522,
#      where another listener accepts (and refuses the session: there is no database). The
#      redirected connection passes lab-fw as RELATED (rule lab-tns-redirect), IPv4 and IPv6.
#   3. a scripted client (raw TNS) gets a REDIRECT with its data inline from 10.0.2.2:1526 to
#      port 1522 (the form conntrackd reads; python-oracledb does not act on it): RELATED too.
#      Its expectation has the tuple the IPv4 connection of step 2 used, from another master:
#      alg must have let the used one go (the kernel's destroy event), not refuse a clash.
#   4. a listener on 10.0.2.2:1525 redirects to a third host, 10.0.2.3 (a second address of
#      lab-srv, where the same 1522 listener answers): alg creates no expectation
#      (address-mismatch) and the connection is dropped.
#   5. NAT: the listener behind a DNAT port forward (10.0.1.100 -> 10.0.2.2): alg rewrites the
#      REDIRECT's HOST to the public address (lengths grow), the expectation waits there and the
#      redirected connection reaches the listener's 1522 through it (RELATED)
#   6. negative control: alg stopped -> the redirected connection is dropped
#   7. reference: conntrackd's tns helper on the same traffic; its expectation for the inline
#      redirect equals alg's; it creates none for the REDIRECT + DATA form python-oracledb uses. conntrackd does not check the redirect address: for the
#      third-host redirect it DOES create an expectation, and that connection passes.
# Expectations are read from `conntrack -E expect` (NEW events): the client uses a TNS
# expectation at once, and a used one leaves the kernel's list.
set -u
source "$LAB_DIR/netns.sh"
# shellcheck source=../lib.sh
source "$ALG_ROOT/tests/lab/lib.sh"
RUN=/run/alg-lab/tns; OUT=$LAB_SCRATCH/tns; mkdir -p "$RUN" "$OUT"
PY=$ALG_ROOT/.venv/bin/python
POLICY=$RUN/tns.toml
SOCK=$RUN/alg.sock
THIRD=10.0.2.3
PIDS=(); ALG_PID=; EW_PID=
cleanup() {
    [ -n "$ALG_PID" ] && kill "$ALG_PID" 2>/dev/null
    [ -n "$EW_PID" ] && kill "$EW_PID" 2>/dev/null
    [ -n "${CLI[1]:-}" ] && eval "exec ${CLI[1]}>&-"  # EOF ends the client coprocess
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    wait 2>/dev/null
    lab_net_down
    nfct del helper tns inet tcp 2>/dev/null; nfct del helper tns inet6 tcp 2>/dev/null
    true
}
trap cleanup EXIT

cat >"$POLICY" <<TOML
helper = "tns"
queue = 23
ports = [1521, 1525, 1526]
TOML
cat >"$RUN/alg.toml" <<TOML
[core]
status_socket = "$SOCK"
TOML
# all listeners in one Python process (each process start costs ~1 s under TCG)
cat >"$RUN/listeners.py" <<PYEOF
import sys, threading
from argparse import Namespace
sys.path.insert(0, "$ALG_ROOT/tools")
from tns_listener import serve
# (bind, port, redirect host, REDIRECT data in a DATA packet, refuse)
specs = [("$LAB_SERVER4", 1521, "$LAB_SERVER4", True, False), ("$LAB_SERVER6", 1521, "$LAB_SERVER6", True, False),
         ("$LAB_SERVER4", 1525, "$THIRD", False, False), ("$LAB_SERVER4", 1526, "$LAB_SERVER4", False, False),
         ("::", 1522, None, False, True)]
for bind, port, host, split, refuse in specs:
    threading.Thread(target=serve, daemon=True, args=(Namespace(bind=bind, port=port, redirect_host=host,
                     redirect_port=1522, split=split, refuse=refuse),)).start()
print("listening", flush=True)
threading.Event().wait()
PYEOF
# the client: one python-oracledb process for all attempts (importing it costs 10-15 s under
# TCG), started once as a coprocess in lab-cli: reads `DSN TIMEOUT` lines, answers one line
# per attempt, `ok ...` when the redirect target answered (it refuses the session: DPY-6001
# naming port 1522). python-oracledb acts on a REDIRECT whose data follows in a DATA packet
# (what the listener sends here), not on one carrying it inline.
cat >"$RUN/client.py" <<PYEOF
import re, sys
sys.path.insert(0, "$ALG_ROOT/tools")
import oracledb
from tns_listener import follow_redirect

print("ready", flush=True)
for line in sys.stdin:
    dsn, timeout = line.split()
    try:
        if dsn.startswith("raw:"):
            host, port = dsn[4:].rsplit(":", 1)
            msg = follow_redirect(host, int(port), float(timeout))
        else:
            oracledb.connect(user="u", password="p", dsn=dsn, tcp_connect_timeout=float(timeout))
            msg = "connected?!"
    except Exception as e:  # noqa: BLE001
        msg = " ".join(str(e).split())
    ok = re.search(r"port 152[23]\b", msg) is not None and "timed out" not in msg and "Errno" not in msg
    print(("ok " if ok else "no ") + msg, flush=True)
PYEOF

lab_net_up tcp/1521 tcp/1525 tcp/1526 || { echo "FAIL lab_net_up"; exit 1; }
lab_srv ip addr add $THIRD/24 dev s0
lab_fw sysctl -qw net.netfilter.nf_conntrack_events=1
ip netns exec "$LAB_NS_SERVER" "$PY" "$RUN/listeners.py" >"$OUT/listeners.log" 2>&1 & PIDS+=($!)

helper_ready() {  # tns enabled on queue 23 and the queue bound in lab-fw (no Python start: cheap)
    lab_fw nfct list helper 2>/dev/null | tr -s '\t\n' ' ' | grep -q "name = tns, .queuenum = 23,[^}]*status = enabled" &&
        lab_fw awk '$1 == 23 {f = 1} END {exit !f}' /proc/net/netfilter/nfnetlink_queue 2>/dev/null
}
start_alg() {
    ip netns exec "$LAB_NS_FW" "$ALG" run --policy "$POLICY" --policy "$RUN/alg.toml" >>"$OUT/alg.log" 2>&1 &
    ALG_PID=$!
    [ -s "$RUN/rules.txt" ] || "$ALG" rules --policy "$POLICY" >"$RUN/rules.txt" 2>"$OUT/rules.err" & RULES_PID=$!  # in parallel: slow start
    for _ in $(seq 1500); do  # Python starts take 5-90 s under TCG on a loaded host
        helper_ready && return 0
        kill -0 "$ALG_PID" 2>/dev/null || break
        sleep 0.2
    done
    echo "alg did not come up:"; tail -20 "$OUT/alg.log"; return 1
}
# DSN TIMEOUT TAG: one attempt; prints its outcome; sets RC (0: reached the redirect target)
# and DR (lab-tns-redirect delta)
client() {
    local r0 ans=
    r0=$(lab_fw_count tns-redirect)
    echo "$1 $2" >&"${CLI[1]}"
    read -r -t 120 ans <&"${CLI[0]}"
    echo "$3: $ans" >>"$OUT/client.log"
    [ "${ans%% *}" = ok ]; RC=$?
    DR=$(( $(lab_fw_count tns-redirect) - r0 ))
    echo "  $3: $1 -> ${ans%% *}, lab-tns-redirect +$DR: ${ans#* }"
}
normalise() {  # NEW expectation events -> comparable lines (no timeout, no client port)
    grep '\[NEW\]' "$1" | sed -E 's/^ *\[NEW\] [0-9]+ //; s/(master-dst=[^ ]+ sport=)[0-9]+/\1C/' | sort
}

coproc CLI { ip netns exec "$LAB_NS_CLIENT" "$PY" "$RUN/client.py" 2>>"$OUT/client.err"; }
PIDS+=($CLI_PID)
t0=$(date +%s)
start_alg && pass alg-starts-helper-registered-enabled || { fail alg-starts-helper-registered-enabled; exit 1; }
echo "  alg ready after $(( $(date +%s) - t0 )) s"
for _ in $(seq 600); do grep -q listening "$OUT/listeners.log" && break; sleep 0.2; done
grep -q listening "$OUT/listeners.log" || { fail listeners-start; cat "$OUT/listeners.log"; exit 1; }
read -r -t 120 ans <&"${CLI[0]}"; [ "$ans" = ready ] || { fail client-start; cat "$OUT/client.err"; exit 1; }
wait "$RULES_PID"; lab_fw iptables-restore --noflush <"$RUN/rules.txt" && \
lab_fw ip6tables-restore --noflush <"$RUN/rules.txt" && pass rules-applied || fail rules-applied
# above alg's RELATED accept (which `alg rules` inserts at the top of FORWARD)
for f in 4 6; do  # count the redirected connections (RELATED to tcp/1522) on their own
    [ $f = 4 ] && ipt=$LAB_IPT || ipt=$LAB_IP6T
    lab_fw "$ipt" -I FORWARD 1 -p tcp --dport 1522 -m conntrack --ctstate RELATED \
        -m comment --comment lab-tns-redirect -j ACCEPT
done

echo "alg:"
watch_start "$OUT/alg-events.txt"
client "$LAB_SERVER4:1521/XE" 5 alg-v4
[ $RC = 0 ] && [ $DR -ge 1 ] && pass redirect-ipv4-related || fail redirect-ipv4-related
client "[$LAB_SERVER6]:1521/XE" 5 alg-v6
[ $RC = 0 ] && [ $DR -ge 1 ] && pass redirect-ipv6-related || fail redirect-ipv6-related
client "raw:$LAB_SERVER4:1526" 5 alg-inline
[ $RC = 0 ] && [ $DR -ge 1 ] && pass redirect-inline-related || fail redirect-inline-related
d0=$(lab_fw_count drop 4)
client "raw:$LAB_SERVER4:1525" 2 alg-third
[ $RC != 0 ] && [ $DR = 0 ] && [ "$(lab_fw_count drop 4)" -gt "$d0" ] && pass third-host-redirect-dropped \
    || fail third-host-redirect-dropped
watch_stop
sed 's/^/    /' "$OUT/alg-events.txt"
grep '\[NEW\]' "$OUT/alg-events.txt" | grep -q "dst=$THIRD " && fail third-host-no-expectation \
    || pass third-host-no-expectation
lab_fw "$ALG" status --socket "$SOCK" >"$OUT/status.txt" 2>&1
sed 's/^/    /' "$OUT/status.txt"
grep -q "address-mismatch 1" "$OUT/status.txt" && pass third-host-counted || fail third-host-counted
grep -Eq "class tns: created 3, used 3, refused 0" "$OUT/status.txt" && pass used-expectations-let-go \
    || fail used-expectations-let-go

echo "NAT: the listener behind a port forward (10.0.1.100:1521 -> 10.0.2.2:1521, DNAT in lab-fw):"
# its REDIRECT names 10.0.2.2, which the client must not use: alg rewrites HOST to the public
# 10.0.1.100 (two bytes longer: the TNS lengths grow, the kernel moves the sequence numbers on)
# and expects 10.0.1.100:1522 translated to the listener (CTA_EXPECT_NAT, nat-follow-master)
PUB=10.0.1.100
lab_fw ip addr add $PUB/24 dev c1
lab_fw "$LAB_IPT" -t nat -A PREROUTING -d $PUB -p tcp --dport 1521 -j DNAT --to-destination "$LAB_SERVER4"
watch_start "$OUT/nat-events.txt"
client "$PUB:1521/XE" 5 alg-nat
[ $RC = 0 ] && [ $DR -ge 1 ] && pass nat-redirect-to-public-address-related || fail nat-redirect-to-public-address-related
# python-oracledb names where the REDIRECT sent it: the public address, not 10.0.2.2
grep -q "^alg-nat: ok .*host \"$PUB\" port 1522" "$OUT/client.log" && pass nat-client-told-public-address \
    || fail nat-client-told-public-address
watch_stop
sed 's/^/    /' "$OUT/nat-events.txt"
grep '\[NEW\]' "$OUT/nat-events.txt" | grep -q "dst=$PUB sport=0 dport=1522 " && pass nat-expectation-on-public-address \
    || fail nat-expectation-on-public-address
lab_fw "$ALG" status --socket "$SOCK" --format json >"$OUT/status-nat.json" 2>&1
"$PY" -c 'import json, sys; h = json.load(open(sys.argv[1]))["helpers"]["tns"]; print("    tns:", h)
sys.exit(not (h["natted"] >= 1 and h["rewritten"] >= 1 and h["nat_failed"] == 0))' "$OUT/status-nat.json" \
    && pass nat-redirect-rewritten || fail nat-redirect-rewritten
lab_fw "$LAB_IPT" -t nat -F PREROUTING

stop_alg && pass alg-stops-cleanly || fail alg-stops-cleanly
lab_fw nfct list helper 2>/dev/null | tr -s '\t\n' ' ' | grep -q "name = tns, [^}]*status = enabled" \
    && fail helper-disabled-on-stop || pass helper-disabled-on-stop

echo "negative control (alg stopped):"
fw_reset; d0=$(lab_fw_count drop 4)
client "$LAB_SERVER4:1521/XE" 2 neg
[ $RC != 0 ] && [ $DR = 0 ] && [ "$(lab_fw_count drop 4)" -gt "$d0" ] && pass negative-control-dropped \
    || fail negative-control-dropped

echo "reference: conntrackd's tns helper"
fw_reset
conntrackd_conf "$RUN/conntrackd.conf" "$RUN" tns tcp 23 1 300
lab_fw nfct del helper tns inet tcp 2>/dev/null  # alg left it disabled while the CT rules use it
lab_fw nfct add helper tns inet tcp 2>/dev/null
ip netns exec "$LAB_NS_FW" conntrackd -C "$RUN/conntrackd.conf" >"$OUT/conntrackd.out" 2>&1 & PIDS+=($!)
for _ in $(seq 300); do helper_ready && break; sleep 0.1; done
watch_start "$OUT/conntrackd-events.txt"
client "raw:$LAB_SERVER4:1526" 5 conntrackd-inline
[ $RC = 0 ] && [ $DR -ge 1 ] && pass conntrackd-reference-passes || fail conntrackd-reference-passes
# conntrackd opens a pinhole to whatever HOST the listener names (alg does not: see above)
client "raw:$LAB_SERVER4:1525" 5 conntrackd-third
[ $RC = 0 ] && [ $DR -ge 1 ] && pass conntrackd-third-host-passes || fail conntrackd-third-host-passes
# conntrackd reads only the first TNS packet of a segment, and from 8 bytes past a REDIRECT's
# header (inside its data): a REDIRECT whose data follows in a DATA packet, which is what
# python-oracledb acts on, gives it no expectation (alg: redirect-ipv4-related above)
d0=$(lab_fw_count drop 4)
client "$LAB_SERVER4:1521/XE" 2 conntrackd-split
[ $RC != 0 ] && [ $DR = 0 ] && [ "$(lab_fw_count drop 4)" -gt "$d0" ] && pass conntrackd-split-redirect-not-understood \
    || fail conntrackd-split-redirect-not-understood
watch_stop
sed 's/^/    /' "$OUT/conntrackd-events.txt"
# parity on the same traffic: the inline REDIRECT from 1526
normalise "$OUT/alg-events.txt" | grep "dport=1526 " >"$OUT/alg-exp.norm"
normalise "$OUT/conntrackd-events.txt" | grep "dport=1526 " >"$OUT/conntrackd-exp.norm"
echo "alg:        $(cat "$OUT/alg-exp.norm")"
echo "conntrackd: $(cat "$OUT/conntrackd-exp.norm")"
[ -s "$OUT/alg-exp.norm" ] && cmp -s "$OUT/alg-exp.norm" "$OUT/conntrackd-exp.norm" \
    && pass expectations-equal-conntrackd || fail expectations-equal-conntrackd
exit $((FAILS > 0))
