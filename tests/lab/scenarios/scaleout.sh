#!/bin/bash
# scaleout: `alg run` with [core] workers = 2 (alg.daemon.pool), FTP, inside the lab VM.
#   1. two kernel helpers ftp0 and ftp1 registered, each on its own queue (5 and 4101), each read by
#      its own worker process under the one supervisor
#   2. the rules applied with nft (`alg rules --nft --apply`): a jhash of the addresses picks ftp0 or
#      ftp1 per new control connection
#   3. passive downloads from 8 client addresses: control connections spread over both instances,
#      expectations created by both, every data connection accepted (RELATED) by the firewall
#   4. a worker killed (SIGKILL): the supervisor restarts it, `alg status` counts the restart, and
#      downloads through both instances work again
#   5. a clean stop: both helpers removed or disabled
set -u
source "$LAB_DIR/netns.sh"
# shellcheck source=../lib.sh
source "$ALG_ROOT/tests/lab/lib.sh"
RUN=/run/alg-lab/scaleout; OUT=$LAB_SCRATCH/scaleout; mkdir -p "$RUN/root" "$OUT"
SYS_PY="/usr/bin/python3 -I"            # has pyftpdlib (Debian package)
SOCK=$RUN/alg.sock
SOURCES=$(seq -f "10.0.1.%g" 11 18)     # the client's addresses: the hash spreads their connections
PIDS=(); ALG_PID=
cleanup() {
    [ -n "$ALG_PID" ] && kill "$ALG_PID" 2>/dev/null
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    wait 2>/dev/null
    lab_net_down
}
trap cleanup EXIT

echo "alg lab payload" >"$RUN/root/hello.txt"
mkdir -p "$RUN/policy"
printf 'helper = "ftp"\nqueue = 5\nfamilies = ["ipv4"]\n' >"$RUN/policy/ftp.toml"
printf '[core]\nstatus_socket = "%s"\nworkers = 2\n' "$SOCK" >"$RUN/policy/alg.toml"
# one process for all the downloads (a Python start costs seconds under TCG): SOURCE... -> "SOURCE ok|fail"
cat >"$RUN/get.py" <<'PYEOF'
import ftplib, io, sys
server = sys.argv[1]
bad = 0
for src in sys.argv[2:]:
    try:
        ftp = ftplib.FTP(server, timeout=8, source_address=(src, 0))
        ftp.login()
        buf = io.BytesIO()
        ftp.retrbinary("RETR hello.txt", buf.write)
        ftp.quit()
        ok = buf.getvalue() == b"alg lab payload\n"
    except Exception as exc:
        print(src, "error", exc)
        ok = False
    print(src, "ok" if ok else "fail", flush=True)
    bad += not ok
sys.exit(1 if bad else 0)
PYEOF

lab_net_up tcp/21 || { echo "FAIL lab_net_up"; exit 1; }
for a in $SOURCES; do lab_cli ip addr add "$a/24" dev c0; done
lab_fw iptables -I FORWARD 1 -s 10.0.1.0/24 -p tcp --dport 21 -m conntrack --ctstate NEW -j ACCEPT  # every source
lab_fw sysctl -qw net.netfilter.nf_conntrack_events=1
ip netns exec "$LAB_NS_SERVER" $SYS_PY "$LAB_DIR/ftp_peers.py" ftp-server --bind "$LAB_SERVER4" --root "$RUN/root" \
    --pasv-ports 50000-50039 >"$OUT/ftpd.log" 2>&1 & PIDS+=($!)

ip netns exec "$LAB_NS_FW" "$ALG" run --policy "$RUN/policy" >"$OUT/alg.log" 2>&1 & ALG_PID=$!
up=
for _ in $(seq 300); do
    lab_fw "$ALG" status --socket "$SOCK" >/dev/null 2>&1 && { up=1; break; }
    kill -0 "$ALG_PID" 2>/dev/null || break
    sleep 0.1
done
[ -n "$up" ] && pass alg-starts-with-two-workers || { fail alg-starts-with-two-workers; tail -20 "$OUT/alg.log"; exit 1; }
workers() { pgrep -P "$ALG_PID" | sort; }
diagnose() {  # where alg's processes are: kernel wait channel and stack, Python stacks (SIGUSR1) in alg.log
    local p
    ps -eo pid,ppid,stat,wchan:32,etime,args | grep -E "alg (run|status)|PID" | grep -v grep
    for p in "$ALG_PID" $(workers); do
        echo "== $p: $(cat /proc/$p/wchan 2>/dev/null)"; cat "/proc/$p/stack" 2>/dev/null | head -12
        kill -USR1 "$p" 2>/dev/null
    done
    sleep 1; tail -60 "$OUT/alg.log"
}
[ "$(workers | wc -l)" = 2 ] && pass two-worker-processes || { fail two-worker-processes; ps -ef | grep alg; }
# nfct's helper list, one helper to a line (a `.*` must not reach into the next helper's fields:
# a helper another scenario left registered, enabled, would make a disabled ftp0 look enabled)
helper_lines() { lab_fw nfct list helper 2>/dev/null | tr -s '\t\n' ' ' | tr '}' '\n'; }
helpers=$(helper_lines)
echo "$helpers" | grep -q "name = ftp0, .queuenum = 5,.*status = enabled" \
    && echo "$helpers" | grep -q "name = ftp1, .queuenum = 4101,.*status = enabled" \
    && pass two-helpers-registered-on-their-queues || { fail two-helpers-registered-on-their-queues; echo "$helpers"; }

lab_fw "$ALG" rules --nft --apply --nft-chain none --policy "$RUN/policy" >"$OUT/rules.log" 2>&1 \
    && lab_fw nft list table inet alg | grep -q 'jhash ip saddr . ip daddr mod 2' && pass nft-rules-applied \
    || { fail nft-rules-applied; cat "$OUT/rules.log"; }
lab_fw nft list table inet alg >"$OUT/nft.txt" 2>&1

lab_fw conntrack -E expect >"$OUT/expect-events.txt" 2>&1 & EW=$!
wait_listening "$EW"
d0=$(lab_fw_count related)
lab_cli $SYS_PY "$RUN/get.py" "$LAB_SERVER4" $SOURCES >"$OUT/get1.log" 2>&1 \
    && pass downloads-from-8-sources || { fail downloads-from-8-sources; cat "$OUT/get1.log"; }
[ "$(lab_fw_count related)" -gt "$d0" ] && pass data-connections-related || fail data-connections-related
lab_fw conntrack -L -p tcp --dport 21 >"$OUT/control.txt" 2>/dev/null
sleep 0.3; kill "$EW" 2>/dev/null; wait "$EW" 2>/dev/null
grep -q "helper=ftp0" "$OUT/control.txt" && grep -q "helper=ftp1" "$OUT/control.txt" \
    && pass control-flows-spread-over-both || { fail control-flows-spread-over-both; cat "$OUT/control.txt"; }
grep -q "helper=ftp0" "$OUT/expect-events.txt" && grep -q "helper=ftp1" "$OUT/expect-events.txt" \
    && pass expectations-by-both || { fail expectations-by-both; cat "$OUT/expect-events.txt"; }
lab_fw "$ALG" status --socket "$SOCK" --format json >"$OUT/status1.json" 2>&1
grep -q '"ftp0"' "$OUT/status1.json" && grep -q '"ftp1"' "$OUT/status1.json" \
    && pass status-merges-both-workers || { fail status-merges-both-workers; cat "$OUT/status1.json"; }

# kill one worker: the supervisor restarts it
before=$(workers); victim=$(echo "$before" | tail -1)
kill -KILL "$victim"
for _ in $(seq 200); do
    now=$(workers)
    [ "$(echo "$now" | wc -l)" = 2 ] && ! echo "$now" | grep -qx "$victim" && break
    sleep 0.05
done
! workers | grep -qx "$victim" && [ "$(workers | wc -l)" = 2 ] && pass killed-worker-restarted \
    || { fail killed-worker-restarted; diagnose; }
restarted=
for _ in $(seq 4); do  # the new worker answers once it has bound its queue (`alg status` alone takes ~25 s under TCG)
    lab_fw timeout 120 "$ALG" status --socket "$SOCK" --format json >"$OUT/status2.json" 2>&1
    grep -q '"restarts": 1' "$OUT/status2.json" && grep -q '"ftp1"' "$OUT/status2.json" \
        && grep -q '"ftp0"' "$OUT/status2.json" && { restarted=1; break; }
    sleep 0.1
done
[ -n "$restarted" ] && pass status-counts-the-restart || { fail status-counts-the-restart; cat "$OUT/status2.json"; diagnose; }
lab_fw conntrack -F >/dev/null 2>&1
lab_cli timeout 120 $SYS_PY "$RUN/get.py" "$LAB_SERVER4" $SOURCES >"$OUT/get2.log" 2>&1 \
    && pass downloads-after-restart || { fail downloads-after-restart; cat "$OUT/get2.log"; }

kill -TERM "$ALG_PID"
for _ in $(seq 600); do kill -0 "$ALG_PID" 2>/dev/null || break; sleep 0.1; done
kill -0 "$ALG_PID" 2>/dev/null && { echo "alg did not stop in 60 s"; diagnose; kill -KILL "$ALG_PID" $(workers); }
wait "$ALG_PID"; rc=$?; ALG_PID=
[ $rc = 0 ] && pass alg-stops-cleanly || fail "alg-stops-cleanly (rc=$rc)"
helper_lines | grep -q "name = ftp[01], .*status = enabled" \
    && fail helpers-disabled-on-stop || pass helpers-disabled-on-stop
exit $((FAILS > 0))
