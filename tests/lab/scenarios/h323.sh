#!/bin/bash
# h323: alg as the firewall's H.323 helper, end to end, inside the lab VM, and the kernel's
# nf_conntrack_h323 on the same traffic.
#   1. `alg run` registers its h323 helper (tcp/1720, udp/1719); `alg rules` is applied in lab-fw
#   2. a scripted call (tests/h323_build.py's messages, stdlib sockets): the caller in lab-cli sends a
#      Q.931 Setup to lab-srv:1720; the callee's Connect names its h245Address (port 4000) and a
#      fastStart channel (RTP 5000, RTCP 5001). The caller then opens the H.245 connection and sends RTP:
#      both are NEW flows lab-fw drops, and pass through alg's RELATED rule ("alg h323 related")
#      The callee opens a channel of its own on that separate H.245 connection (OpenLogicalChannel for
#      udp/5010): alg reads it there (the connection got alg's helper from the expectation that rode on
#      the Connect's verdict) and that RTP passes too
#   3. a port nobody named (4002) is dropped while alg runs
#   4. negative control: alg stopped -> the H.245 connection is dropped
#   5. reference: the kernel's Q.931 helper (CT --helper Q.931) on the same call; the expectations it
#      creates (conntrack -E expect, NEW) are the ones alg created: H.245 tcp, RTP and RTCP udp
set -u
source "$LAB_DIR/netns.sh"
# shellcheck source=../lib.sh
source "$ALG_ROOT/tests/lab/lib.sh"
RUN=/run/alg-lab/h323; OUT=$LAB_SCRATCH/h323; mkdir -p "$RUN" "$OUT"
SOCK=$RUN/alg.sock
PIDS=(); ALG_PID=; EW_PID=
cleanup() {
    [ -n "$ALG_PID" ] && kill "$ALG_PID" 2>/dev/null
    [ -n "$EW_PID" ] && kill "$EW_PID" 2>/dev/null
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    wait 2>/dev/null
    lab_net_down
    for f in inet inet6; do for p in tcp udp; do nfct del helper h323 "$f" "$p" 2>/dev/null; done; done
    true
}
trap cleanup EXIT
cat >"$RUN/alg.toml" <<TOML
[core]
status_socket = "$SOCK"
TOML
# both peers in one script: `callee` (threads: Q.931 on 1720, H.245 on 4000 (it sends an
# OpenLogicalChannel for udp/5010), a TCP listener on 4002, RTP on udp/5000 and 5010) and `call SECONDS`
# (Setup, Connect, then the H.245 connection and 3 RTP packets to each channel: exit 0 when the H.245
# connection was accepted)
cat >"$RUN/peers.py" <<PYEOF
import socket, sys, threading, time
sys.path.insert(0, "$ALG_ROOT/tests")
import h323_build as b
SERVER = "$LAB_SERVER4"
def read_tpkt(c):
    head = b""
    while len(head) < 4:
        chunk = c.recv(4 - len(head))
        if not chunk:
            raise ConnectionError("closed")
        head += chunk
    body, n = b"", int.from_bytes(head[2:4], "big") - 4
    while len(body) < n:
        body += c.recv(n - len(body))
    return head + body
def listen(port, answer):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((SERVER, port)); s.listen(8)
    while True:
        c, _ = s.accept()
        threading.Thread(target=answer, args=(c,), daemon=True).start()
def q931(c):
    read_tpkt(c)
    c.sendall(b.q931(b.connect(h245=(SERVER, 4000), fast=[b.olc(media=(SERVER, 5000), control=(SERVER, 5001))]), 0x07))
    time.sleep(30)
def hello(c):
    c.sendall(b"ok"); time.sleep(5)
def h245(c):  # the callee opens a channel of its own on the separate H.245 connection
    c.sendall(b.tpkt(b.request_olc(media=(SERVER, 5010), control=(SERVER, 5011)))); time.sleep(5)
def rtp(port, label):
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind((SERVER, port))
    while True:
        print(label, len(u.recv(2048)), flush=True)
if sys.argv[1] == "callee":
    for port, answer in ((1720, q931), (4000, h245), (4002, hello)):
        threading.Thread(target=listen, args=(port, answer), daemon=True).start()
    threading.Thread(target=rtp, args=(5010, "rtp-h245"), daemon=True).start()
    print("listening", flush=True)
    rtp(5000, "rtp")
timeout = float(sys.argv[2])
def reach(port):
    try:
        return socket.create_connection((SERVER, port), timeout=timeout).recv(2) in (b"ok", b"\x03\x00")
    except OSError:
        return False
if sys.argv[1] == "other":
    sys.exit(0 if reach(4002) else 1)
q = socket.create_connection((SERVER, 1720), timeout=5)
q.sendall(b.q931(b.setup()))
read_tpkt(q)
ok = reach(4000)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(3):
    u.sendto(b"\x80" + bytes(171), (SERVER, 5000))
    u.sendto(b"\x80" + bytes(171), (SERVER, 5010))
print("h245", "open" if ok else "dropped", flush=True)
sys.exit(0 if ok else 1)
PYEOF
PEERS="/usr/bin/python3 -I $RUN/peers.py"

lab_net_up tcp/1720 udp/1719 || { echo "FAIL lab_net_up"; exit 1; }
ip netns exec "$LAB_NS_SERVER" $PEERS callee >"$OUT/callee.log" 2>&1 & PIDS+=($!)

helper_ready() { lab_fw nfct list helper 2>/dev/null | tr -s '\t\n' ' ' | grep -q "name = h323, [^}]*status = enabled"; }
start_alg() {
    ip netns exec "$LAB_NS_FW" "$ALG" run --policy "$ALG_ROOT/policies/h323.toml" --policy "$RUN/alg.toml" \
        >>"$OUT/alg.log" 2>&1 &
    ALG_PID=$!
    [ -s "$RUN/rules4.txt" ] || "$ALG" rules --policy "$ALG_ROOT/policies/h323.toml" --family 4 \
        >"$RUN/rules4.txt" 2>"$OUT/rules.err" & RULES_PID=$!
    for _ in $(seq 1500); do  # Python starts take 5-90 s under TCG on a loaded host
        helper_ready && return 0
        kill -0 "$ALG_PID" 2>/dev/null || break
        sleep 0.2
    done
    echo "alg did not come up:"; tail -20 "$OUT/alg.log"; return 1
}
normalise() {  # NEW expectation events -> "proto src dst dport" (the expected tuple), sorted
    grep NEW "$1" | grep -o 'proto=[0-9]* src=[^ ]* dst=[^ ]* sport=[0-9]* dport=[0-9]*' | head -20 \
        | awk '{print $1, $2, $3, $5}' | sort -u
}
call() { lab_cli $PEERS call "$1" >>"$OUT/caller.log" 2>&1; }

t0=$(date +%s)
start_alg && pass alg-starts-helper-registered-enabled || { fail alg-starts-helper-registered-enabled; exit 1; }
echo "  alg ready after $(( $(date +%s) - t0 )) s"
wait "$RULES_PID"
lab_fw iptables-restore --noflush <"$RUN/rules4.txt" && pass rules-applied || { fail rules-applied; cat "$OUT/rules.err"; }

echo "alg:"
watch_start "$OUT/alg-events.txt"
r0=$(alg_related_count h323 4)
call 20 && pass h323-h245-connection-passes || { fail h323-h245-connection-passes; tail -5 "$OUT/caller.log"; }
sleep 0.5
r1=$(alg_related_count h323 4)
# the H.245 SYN and the RTP packets (an unreplied related UDP flow stays RELATED)
[ $((r1 - r0)) -ge 2 ] && pass h323-follow-up-related || fail "h323-follow-up-related (+$((r1 - r0)))"
grep -q "^rtp " "$OUT/callee.log" && pass h323-rtp-reaches-the-callee || fail h323-rtp-reaches-the-callee
# the H.245 connection got the helper from the Connect's expectation (on its verdict) and alg read the
# OpenLogicalChannel the callee sent on it: that channel's RTP passes too
lab_fw conntrack -L -p tcp --dport 4000 2>/dev/null | grep -q "helper=h323" && pass h323-separate-h245-connection-has-the-helper \
    || fail h323-separate-h245-connection-has-the-helper
grep -q "^rtp-h245 " "$OUT/callee.log" && pass h323-rtp-of-a-channel-opened-on-h245-reaches-the-callee \
    || fail h323-rtp-of-a-channel-opened-on-h245-reaches-the-callee
watch_stop
normalise "$OUT/alg-events.txt" >"$OUT/alg-expect.txt"
sed 's/^/    alg: /' "$OUT/alg-expect.txt"
d0=$(lab_fw_count drop 4)
! lab_cli $PEERS other 3 >>"$OUT/caller.log" 2>&1 && [ "$(lab_fw_count drop 4)" -gt "$d0" ] \
    && pass h323-unnamed-port-dropped || fail h323-unnamed-port-dropped
lab_fw "$ALG" status --socket "$SOCK" >"$OUT/status.txt" 2>&1
awk '$1 == "helper" {on = ($2 == "h323")} on && /class (h245|media): created [1-9]/ {f++} END {exit f < 2}' \
    "$OUT/status.txt" && pass h323-status-counts-created || { fail h323-status-counts-created; cat "$OUT/status.txt"; }
stop_alg && pass alg-stops-cleanly || fail alg-stops-cleanly

echo "negative control (alg stopped):"
fw_reset
d0=$(lab_fw_count drop 4)
! call 3 && [ "$(lab_fw_count drop 4)" -gt "$d0" ] && pass h323-negative-control-dropped \
    || fail h323-negative-control-dropped

echo "reference: the kernel's Q.931 helper on the same call:"
fw_reset
lab_fw "$LAB_IPT" -t raw -F
if modprobe nf_conntrack_h323 && lab_fw "$LAB_IPT" -t raw -A PREROUTING -p tcp --dport 1720 -j CT --helper Q.931; then
    watch_start "$OUT/kernel-events.txt"
    call 20 && pass kernel-h245-connection-passes || fail kernel-h245-connection-passes
    watch_stop
    normalise "$OUT/kernel-events.txt" >"$OUT/kernel-expect.txt"
    sed 's/^/    kernel: /' "$OUT/kernel-expect.txt"
    [ -s "$OUT/alg-expect.txt" ] && diff -u "$OUT/kernel-expect.txt" "$OUT/alg-expect.txt" \
        && pass h323-same-expectations-as-the-kernel || fail h323-same-expectations-as-the-kernel
else
    fail "kernel-reference (no nf_conntrack_h323)"
fi
echo "  scenario time $(( $(date +%s) - t0 )) s"
exit $((FAILS > 0))
