#!/bin/bash
# faults: what happens when things go wrong, with figures (issue "Hardening").
#   1. a third-party helper that raises on every packet: every packet gets its verdict and
#      passes, the daemon goes on, each failure counted (internal_errors)
#   2. a queue filled past its length (alg stopped with SIGSTOP): the kernel drops what does
#      not fit (dropped_full in `alg status`), what it queued gets its verdict once alg runs
#   3. SIGKILL under load, then `alg cleanup` and `alg run` as systemd does: how many seconds
#      until alg gives verdicts again, and what the kernel did with the flow's packets meanwhile
#   4. expectation events lost: alg stopped (SIGSTOP) while 6,000 expectations come and go on
#      the load flow's conntrack overflows its event socket (ENOBUFS): counted (events_lost),
#      and alg goes on
# (the kernel's expectation table full: sip-pressure)
set -u
source "$LAB_DIR/netns.sh"
# shellcheck source=../lib.sh
source "$ALG_ROOT/tests/lab/lib.sh"
RUN=/run/alg-lab/faults; OUT=$LAB_SCRATCH/faults; mkdir -p "$RUN/policy" "$OUT"
SYS_PY="/usr/bin/python3 -I"
LOAD="$SYS_PY $ALG_ROOT/tools/lab/udp_load.py"
export PYTHONPATH=$ALG_ROOT/tests/lab/faulty  # the third-party helpers, found as an installed plugin is
SOCK=$RUN/alg.sock
PIDS=(); ALG_PID=
cleanup() {
    [ -n "$ALG_PID" ] && { kill -CONT "$ALG_PID"; kill "$ALG_PID"; } 2>/dev/null
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    wait 2>/dev/null
    lab_fw "$ALG" cleanup --policy "$RUN/policy" >/dev/null 2>&1
    lab_net_down
    for _ in $(seq 50); do
        for h in faulty quiet; do nfct del helper "$h" inet udp 2>/dev/null; done
        nfct list helper 2>/dev/null | grep -Eq "name = (faulty|quiet)," || break
        sleep 0.2
    done
}
trap cleanup EXIT
printf 'helper = "faulty"\n' >"$RUN/policy/faulty.toml"
printf 'helper = "quiet"\nqueue_len = 64\n' >"$RUN/policy/quiet.toml"
printf '[core]\nstatus_socket = "%s"\n' "$SOCK" >"$RUN/policy/alg.toml"
status() { lab_fw "$ALG" status --socket "$SOCK" --format json 2>/dev/null; }
start_alg() {  # alg run in lab-fw; ready once its status socket exists (bound last, after helpers and queues)
    rm -f "$SOCK"
    ip netns exec "$LAB_NS_FW" "$ALG" run --policy "$RUN/policy" >>"$OUT/alg.log" 2>&1 &
    ALG_PID=$!
    local until=$((SECONDS + 180))
    while [ $SECONDS -lt $until ]; do
        [ -S "$SOCK" ] && return 0
        kill -0 "$ALG_PID" 2>/dev/null || break
        sleep 0.2
    done
    echo "alg did not come up:"; tail -20 "$OUT/alg.log"; return 1
}
jqs() { status | jq -r "$1"; }

lab_net_up udp/7777 udp/7778 || { echo "FAIL lab_net_up"; exit 1; }
ip netns exec "$LAB_NS_SERVER" $LOAD echo "$LAB_SERVER4" 7777 7778 >"$OUT/echo.log" 2>&1 & PIDS+=($!)
start_alg && pass alg-starts-with-a-third-party-plugin || { fail alg-starts-with-a-third-party-plugin; exit 1; }
"$ALG" rules --policy "$RUN/policy" --family 4 | lab_fw iptables-restore --noflush || fail rules-applied

# 1. a helper that raises: 40 flows, one raise each (a flow whose helper raised is no longer inspected)
out=$(lab_cli $LOAD send "$LAB_SERVER4" 7777 80 --flows 40 --rate 200)
echo "faulty helper: $out"
st=$(status)
errs=$(jq '.helpers.faulty.internal_errors' <<<"$st")
[ "$out" = "sent 80 echoed 80" ] && pass "faulty-helper: every packet passed ($out)" || fail "faulty-helper: every packet passed ($out)"
[ "$errs" -eq 40 ] && pass "faulty-helper: each raise counted ($errs)" || fail "faulty-helper: each raise counted ($errs)"
[ "$(jq '.queue_errors' <<<"$st")" = 0 ] && kill -0 "$ALG_PID" && pass faulty-helper-daemon-goes-on || fail faulty-helper-daemon-goes-on

# 2. the queue (length 64) filled past its length while alg is stopped
v0=$(jq '.verdicts' <<<"$st")
kill -STOP "$ALG_PID"
lab_cli $LOAD send "$LAB_SERVER4" 7778 300 --rate 2000 >"$OUT/burst.txt" &
sender=$!
sleep 3
kill -CONT "$ALG_PID"
wait "$sender"
echo "queue filled: $(cat "$OUT/burst.txt")"
sleep 1
st=$(status)
full=$(jq '.queue_kernel.quiet.dropped_full' <<<"$st"); waiting=$(jq '.queue_kernel.quiet.waiting' <<<"$st")
got=$(( $(jq '.verdicts' <<<"$st") - v0 ))
echo "queue of 64: the kernel dropped $full as full; alg gave $got verdicts; $waiting still waiting"
[ "$full" -ge 200 ] && pass "queue-full: the kernel dropped what did not fit ($full), counted" || fail "queue-full: dropped counted ($full)"
[ "$waiting" = 0 ] && [ "$got" -ge 64 ] && pass "queue-full: every queued packet got its verdict ($got)" \
    || fail "queue-full: every queued packet got its verdict ($got, $waiting waiting)"

# 3. SIGKILL under load (100 packets a second on one flow), then cleanup and run again
rm -f "$RUN/stop"
lab_cli $LOAD send "$LAB_SERVER4" 7778 0 --rate 100 --until "$RUN/stop" --log "$OUT/echoes.txt" >"$OUT/load.txt" &
sender=$!
sleep 3
t_kill=$(date +%s.%N)
kill -KILL "$ALG_PID"; wait "$ALG_PID" 2>/dev/null; ALG_PID=
sleep 2  # the daemon down, its helpers still registered and enabled, before systemd's restart
t_clean=$(date +%s.%N)
lab_fw "$ALG" cleanup --policy "$RUN/policy" >>"$OUT/alg.log" 2>&1
t_run=$(date +%s.%N)
start_alg || fail alg-back-after-sigkill
t_up=$(date +%s.%N)
v1=$(jq '.verdicts' <<<"$(status)")
sleep 2
v2=$(jq '.verdicts' <<<"$(status)")
touch "$RUN/stop"; wait "$sender"
echo "under load: $(cat "$OUT/load.txt")"
secs() { awk "BEGIN {printf \"%.1f\", $2 - $1}"; }
n() { awk -v a="$1" -v b="$2" '$1 >= a && $1 < b' "$OUT/echoes.txt" | wc -l; }
echo "SIGKILL -> cleanup ($(secs "$t_kill" "$t_clean") s; helpers registered and enabled, nobody on the queue): $(n "$t_kill" "$t_clean") echoes of ~$(( ${t_clean%.*} * 100 - ${t_kill%.*} * 100 )) sent"
echo "cleanup ($(secs "$t_clean" "$t_run") s) and alg run until it answers ($(secs "$t_run" "$t_up") s; helpers disabled meanwhile): $(n "$t_clean" "$t_up") echoes"
echo "service back $(secs "$t_kill" "$t_up") s after SIGKILL, of which 2 s waiting as systemd's RestartSec would (TCG guest)"
[ "$v2" -gt "$v1" ] && pass "sigkill: after cleanup and run, alg gives verdicts again ($v1 -> $v2)" \
    || fail "sigkill: after cleanup and run, alg gives verdicts again ($v1 -> $v2)"

# 4. an event storm while alg does not read: its 4 MiB event socket overflows
# the masters to try: the load flows' conntracks (the first source port of each line; one may be timing out)
sports=$(lab_fw conntrack -L -p udp --dport 7778 2>/dev/null |
    awk '{for (i = 1; i <= NF; i++) if ($i ~ /^sport=/) {sub("sport=", "", $i); print $i; break}}' | tr '\n' ,)
lost0=$(jq '.events_lost' <<<"$(status)")
kill -STOP "$ALG_PID"
# 15,000 creates, each evicting the last: 30,000 events. With 6,000, and the count read 2 s after alg
# went on, a run on a loaded machine counted no overflow (2026-12-07): too few events for the socket
# (the kernel doubles the 4 MiB asked), or not yet read. Now more than twice those events, and a wait.
lab_fw "$(dirname "$ALG")/python" - "$LAB_CLIENT4" "$LAB_SERVER4" "${sports:-0}" 15000 >"$OUT/storm.txt" 2>&1 <<'PY'
import ipaddress, sys
from alg.expect import Expectation
from alg.kernel.ctnetlink import Ctnetlink
from alg.model import FlowTuple
cli, srv, n = ipaddress.ip_address(sys.argv[1]), ipaddress.ip_address(sys.argv[2]), int(sys.argv[4])
made = 0
with Ctnetlink() as ct:  # one expectation at a time (class max 1): each new one evicts the last
    for sport in [int(p) for p in sys.argv[3].split(",") if p]:
        master = FlowTuple(4, 17, cli, srv, sport, 7778)
        for i in range(made, n):
            try:
                ct.create(Expectation("quiet", "data", 0, 4, 17, cli, srv, None, 20000 + i, master, 60), master)
                made += 1
            except Exception as exc:  # that conntrack is gone: the next one
                print("create on", sport, exc)
                break
print("created", made)
PY
kill -CONT "$ALG_PID"
until=$((SECONDS + 90))  # (alg reads the overflow at its next turn; on a loaded machine that may take a while)
while :; do
    st=$(status)
    lost=$(( $(jq '.events_lost' <<<"$st") - lost0 ))
    [ "$lost" -ge 1 ] || [ $SECONDS -ge $until ] && break
    sleep 1
done
echo "event storm: $(tail -1 "$OUT/storm.txt"); alg counted $lost overflows of its event socket"
[ "$lost" -ge 1 ] && pass "events-lost: the overflow counted ($lost)" || fail "events-lost: the overflow counted ($lost)"
kill -0 "$ALG_PID" && [ "$(jq '.queue_errors' <<<"$st")" = 0 ] && pass events-lost-daemon-goes-on || fail events-lost-daemon-goes-on
exit $((FAILS > 0))
