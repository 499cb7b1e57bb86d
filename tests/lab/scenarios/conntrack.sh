#!/bin/bash
# conntrack: alg reads each queued packet's conntrack and keeps what must outlive
# it in the conntrack's helper private data (issue "See what the kernel sees").
#   1. the kernel's bound on a userspace helper's private data: 32 bytes register, 33 do not
#   2. queues are bound with NFQA_CFG_F_CONNTRACK: `alg status` says the conntrack comes with each packet
#   3. an FTP control connection logged in, alg killed (SIGKILL) and started again as systemd
#      does (`alg cleanup`, `alg run`): the same connection's PASV still opens its data
#      connection (alg resumes it at the message boundary its record names)
#   4. slipstreaming across that restart: an HTTP POST to port 21, then (after the restart)
#      a PORT line towards the client's ssh port on the same connection opens nothing
set -u
source "$LAB_DIR/netns.sh"
# shellcheck source=../lib.sh
source "$ALG_ROOT/tests/lab/lib.sh"
RUN=/run/alg-lab/conntrack; OUT=$LAB_SCRATCH/conntrack; mkdir -p "$RUN/root" "$OUT"
SYS_PY="/usr/bin/python3 -I"
ALG_PY=$(dirname "$ALG")/python
POLICY=$RUN/ftp.toml SOCK=$RUN/alg.sock FIFO=$RUN/control.fifo CTL_OUT=$OUT/control.out
PIDS=(); ALG_PID=
cleanup() {
    exec 7>&- 2>/dev/null
    [ -n "$ALG_PID" ] && kill "$ALG_PID" 2>/dev/null
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    wait 2>/dev/null
    lab_fw "$ALG" cleanup >/dev/null 2>&1
    lab_net_down
    # cleanup leaves a helper disabled while CT rules hold it; with the rules gone, delete it
    # (as the kernel lets go of them when it gets round to it) for the next scenario
    for _ in $(seq 50); do
        for f in inet inet6; do nfct del helper alg-ct-ftp "$f" tcp 2>/dev/null; done
        nfct list helper 2>/dev/null | grep -q "name = alg-ct-ftp," || break
        sleep 0.2
    done
}
trap cleanup EXIT
echo "alg lab payload" >"$RUN/root/hello.txt"
printf 'helper = "ftp"\nname = "alg-ct-ftp"\nqueue = 5\n' >"$POLICY"  # not "ftp": cthelper.sh pre-registers that
printf '[core]\nstatus_socket = "%s"\n' "$SOCK" >"$RUN/alg.toml"

# 1. the private data bound (nfnetlink_cthelper: at most sizeof(struct nf_conn_help.data))
"$ALG_PY" - >"$OUT/priv.txt" 2>&1 <<'PY'
from dataclasses import replace
from alg.errors import KernelError
from alg.kernel.cthelper import Cthelper
from alg.plugins import load_plugins
from alg.policy import default_helper_policy
hp = replace(default_helper_policy(load_plugins().helpers["ftp"].spec), name="alg-probe", families=(4,))
with Cthelper() as c:
    for n in (32, 33):
        try:
            c.register(hp, n); print(n, "ok"); c.set_status("alg-probe", 6, False); c.unregister("alg-probe", 6)
        except KernelError as exc:
            print(n, "refused", exc)
PY
grep -q "^32 ok" "$OUT/priv.txt" && grep -q "^33 refused" "$OUT/priv.txt" && pass private-data-at-most-32-bytes \
    || { fail private-data-at-most-32-bytes; cat "$OUT/priv.txt"; }

lab_net_up tcp/21 || { echo "FAIL lab_net_up"; exit 1; }
ip netns exec "$LAB_NS_SERVER" $SYS_PY "$LAB_DIR/ftp_peers.py" ftp-server --bind "$LAB_SERVER4" --root "$RUN/root" \
    --pasv-ports 50000-50009 >"$OUT/ftpd.log" 2>&1 & PIDS+=($!)
start_alg() {  # alg run in lab-fw; ready once its status socket exists (bound last, after helpers and queues)
    rm -f "$SOCK"
    ip netns exec "$LAB_NS_FW" "$ALG" run --policy "$POLICY" --policy "$RUN/alg.toml" >>"$OUT/alg.log" 2>&1 &
    ALG_PID=$!
    local until=$((SECONDS + 180))
    while [ $SECONDS -lt $until ]; do
        [ -S "$SOCK" ] && return 0
        kill -0 "$ALG_PID" 2>/dev/null || break
        sleep 0.2
    done
    echo "alg did not come up:"; tail -20 "$OUT/alg.log"; return 1
}
# as systemd does after a crash: cleanup, then run again
crash_and_restart() {
    local t0 t1
    kill -KILL "$ALG_PID"; wait "$ALG_PID" 2>/dev/null; ALG_PID=
    t0=$(date +%s.%N)
    lab_fw "$ALG" cleanup >>"$OUT/alg.log" 2>&1
    t1=$(date +%s.%N)
    start_alg || return 1
    echo "after SIGKILL: alg cleanup $(awk "BEGIN {printf \"%.1f\", $t1 - $t0}") s, alg run answering" \
        "$(awk "BEGIN {printf \"%.1f\", $(date +%s.%N) - $t1}") s later (TCG guest)"
}
sleep 1
start_alg && pass alg-starts || { fail alg-starts; exit 1; }
"$ALG" rules --policy "$POLICY" --family 4 | lab_fw iptables-restore --noflush || fail rules-applied
lab_fw "$ALG" status --socket "$SOCK" --format json >"$OUT/status0.json"
grep -q '"conntrack_from_queue": true' "$OUT/status0.json" && pass queue-hands-over-the-conntrack \
    || { fail queue-hands-over-the-conntrack; cat "$OUT/status0.json"; }

# the control connections, held open by one client process across the restart
mkfifo "$FIFO"; : >"$CTL_OUT"
ip netns exec "$LAB_NS_CLIENT" $SYS_PY "$ALG_ROOT/tools/lab/ftp_control.py" "$LAB_SERVER4" "$FIFO" "$CTL_OUT" & PIDS+=($!)
exec 7>"$FIFO"
N=0 LAST=
step() {  # COMMAND...: send one command to the client, wait for its answer (30 s at most) in LAST
    N=$((N + 1)); echo "$*" >&7
    for _ in $(seq 300); do
        LAST=$(grep -E "^(ok|err) $N " "$CTL_OUT") && return 0
        sleep 0.1
    done
    LAST="err $N timeout"
}
answered() { [[ $LAST =~ ^ok\ [0-9]+\ $1 ]]; }  # PATTERN: the last answer, after "ok N "
step open ftp; answered 220 || fail "control-open ($LAST)"
step send ftp 'USER anonymous\r\n'
step send ftp 'PASS lab\r\n'; answered 230 && pass control-logged-in || fail "control-logged-in ($LAST)"
step send ftp 'TYPE I\r\n'
# an expectation the kernel holds across the restart, from a session that then ends (a
# passive port left waiting on the connection under test would time out and its late 421
# would sit between the recorded boundary and the next reply)
step open adopt
step send adopt 'USER anonymous\r\n'
step send adopt 'PASS lab\r\n'
step send adopt 'PASV\r\n'; answered 227 || fail "control-pasv ($LAST)"
step send adopt 'QUIT\r\n'
step open web
step send web 'POST /upload HTTP/1.1\r\nHost: victim\r\nContent-Length: 20\r\n\r\n'

crash_and_restart && pass alg-restarts-after-sigkill || { fail alg-restarts-after-sigkill; exit 1; }

r0=$(alg_related_count alg-ct-ftp 4)
step get ftp hello.txt
answered 16 && [ "$(alg_related_count alg-ct-ftp 4)" -gt "$r0" ] \
    && pass same-connection-resumes-after-restart || fail "same-connection-resumes-after-restart ($LAST)"
step send web 'PORT 10,0,1,2,0,22\r\n'
sleep 0.5
lab_fw conntrack -L expect >"$OUT/expect.txt" 2>/dev/null
grep -q "dport=22 " "$OUT/expect.txt" && { fail slipstream-after-restart-opens-nothing; cat "$OUT/expect.txt"; } \
    || pass slipstream-after-restart-opens-nothing
lab_fw "$ALG" status --socket "$SOCK" --format json >"$OUT/status1.json"
grep -Eq '"adopted": [1-9]' "$OUT/status1.json" && pass kernel-expectations-adopted-at-start \
    || { fail kernel-expectations-adopted-at-start; cat "$OUT/status1.json"; }
grep -Eq '"attach_failed": 0' "$OUT/status1.json" && pass no-failed-attachments || fail no-failed-attachments
exit $((FAILS > 0))
