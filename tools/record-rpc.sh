#!/bin/bash
# record-rpc.sh — re-record the tests/pcaps/rpc-rec-* captures (needs root).
#
# Namespaces alg-rt-{cli,fw,srv} from tools/lab/netns.sh (client 10.0.1.2 /
# fd00:1::2, server 10.0.2.2 / fd00:2::2; the fw forwards everything here: the
# host kernel has no rpc helper, the recordings only need the traffic).
# In the server namespace, in a private mount namespace (its own /run, so the
# rpcbind socket and lock never meet the host's): Debian's rpcbind and
# rpc.statd (nfs-common), a real RPC service (program 100024 "status" v1) that
# registers itself with rpcbind on fixed ports (udp and tcp 32765).
# Clients in the client namespace, tcpdump on the fw's client-side interface c1:
#   getport-udp   tools/rpc_peer.py GETPORT v2 over UDP for 100024/tcp, then
#                 `rpcinfo -n PORT -t` (a NULL call to the port it named)
#   getport-tcp   GETPORT v2 over TCP, the call in 3 record fragments and the
#                 record split over two TCP segments, then a second GETPORT over
#                 TCP with two calls batched in one segment (the second for an
#                 unregistered program), then `rpcinfo -n PORT -u` (UDP NULL call)
#   rpcinfo       rpcinfo -T tcp / -T udp / -T tcp6 / -T udp6 (rpcbind v4/v3
#                 GETADDR, then a NULL call to the universal address it got) and
#                 rpcinfo -p (v2 DUMP over TCP, answered with a long reply)
# Usage: tools/record-rpc.sh [OUTDIR] (default tests/pcaps)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-$ROOT/tests/pcaps}
LAB_DIR=${LAB_DIR:-$ROOT/tools/lab}  # netns.sh
export LAB_NS_CLIENT=alg-rt-cli LAB_NS_FW=alg-rt-fw LAB_NS_SERVER=alg-rt-srv
source "$LAB_DIR/netns.sh"
PY=${PYTHON:-python3}
SCRATCH=$(mktemp -d /tmp/alg-rt-rpc.XXXXXX)
SRV_PID=
cleanup() { [ -n "$SRV_PID" ] && kill "$SRV_PID" 2>/dev/null; wait 2>/dev/null; lab_net_down; rm -rf "$SCRATCH"; }
trap cleanup EXIT

lab_net_up udp/111 tcp/111
lab_fw iptables -I FORWARD 1 -j ACCEPT
lab_fw ip6tables -I FORWARD 1 -j ACCEPT

mkdir -p "$SCRATCH/statd/sm" "$SCRATCH/statd/sm.bak"
ip netns exec "$LAB_NS_SERVER" unshare -m bash -c "
    mount -t tmpfs alg-rt-run /run && mkdir -p /run/rpcbind
    rpcbind -f -w & 
    for i in \$(seq 50); do [ -S /run/rpcbind.sock ] && break; sleep 0.1; done
    rpc.statd -F --no-notify -p 32765 -o 32766 -P $SCRATCH/statd &
    wait" >"$SCRATCH/servers.log" 2>&1 &
SRV_PID=$!
for i in $(seq 100); do
    lab_srv rpcinfo -T udp 127.0.0.1 100024 1 >/dev/null 2>&1 && break; sleep 0.1
done
lab_srv rpcinfo -p 127.0.0.1 | sed 's/^/  /'

record() {  # NAME: capture what the commands on stdin do
    local name=$1 dir=$OUT/rpc-rec-$1
    mkdir -p "$dir"
    ip netns exec "$LAB_NS_FW" tcpdump -Z root --immediate-mode -U -n -s 0 -i c1 -w "$dir/capture.pcap" \
        'port 111 or portrange 32765-32766' 2>"$SCRATCH/tcpdump.err" &
    local tp=$!
    for i in $(seq 50); do grep -q listening "$SCRATCH/tcpdump.err" && break; sleep 0.1; done
    bash -eu
    sleep 0.5
    kill "$tp"; wait "$tp" 2>/dev/null || true
    echo "recorded $dir/capture.pcap: $(tcpdump -r "$dir/capture.pcap" 2>/dev/null | wc -l) packets"
}

C="ip netns exec $LAB_NS_CLIENT"
PEER="$PY $ROOT/tools/rpc_peer.py"
record getport-udp <<EOF
$C $PEER getport --server 10.0.2.2 --prog 100024 --vers 1 --proto tcp --via udp --out $SCRATCH/port
$C rpcinfo -n \$(cat $SCRATCH/port) -t 10.0.2.2 100024 1
EOF
record getport-tcp <<EOF
$C $PEER getport --server 10.0.2.2 --prog 100024 --vers 1 --proto udp --via tcp --out $SCRATCH/port
$C $PEER getport --server 10.0.2.2 --prog 100024 --vers 1 --proto udp --via tcp --batch
$C rpcinfo -n \$(cat $SCRATCH/port) -u 10.0.2.2 100024 1
EOF
record rpcinfo <<EOF
$C rpcinfo -T tcp 10.0.2.2 100024 1
$C rpcinfo -T udp 10.0.2.2 100024 1
$C rpcinfo -T tcp6 fd00:2::2 100024 1
$C rpcinfo -T udp6 fd00:2::2 100024 1
$C rpcinfo -p 10.0.2.2 >/dev/null
EOF
echo "versions: $(dpkg-query -W -f='${Package} ${Version}\n' rpcbind nfs-common libtirpc3 | tr '\n' ';') python $($PY -V 2>&1)"
