#!/bin/bash
# record-tns.sh — re-record tests/pcaps/tns-rec-redirect (needs root and `pip install oracledb`).
# Namespaces alg-rt-{cli,fw,srv} from tools/lab/netns.sh; the fw forwards everything.
# tools/tns_listener.py on 10.0.2.2:1521 answers CONNECT with REDIRECT (data in a DATA packet)
# to 10.0.2.2:1522, where a second scripted listener refuses; python-oracledb (thin mode) in the
# client namespace connects; tcpdump on the fw's c1. Usage: tools/record-tns.sh [OUTDIR]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-$ROOT/tests/pcaps}
LAB_DIR=${LAB_DIR:-$ROOT/tools/lab}  # netns.sh
export LAB_NS_CLIENT=alg-rt-cli LAB_NS_FW=alg-rt-fw LAB_NS_SERVER=alg-rt-srv
source "$LAB_DIR/netns.sh"
PY=${PYTHON:-$ROOT/.venv/bin/python}
PIDS=()
cleanup() { kill "${PIDS[@]}" 2>/dev/null; wait 2>/dev/null; lab_net_down; }
trap cleanup EXIT
lab_net_up tcp/1521
lab_fw iptables -I FORWARD 1 -j ACCEPT
ip netns exec "$LAB_NS_SERVER" "$PY" "$ROOT/tools/tns_listener.py" --bind 10.0.2.2 --port 1521 \
    --redirect-host 10.0.2.2 --redirect-port 1522 --split & PIDS+=($!)
ip netns exec "$LAB_NS_SERVER" "$PY" "$ROOT/tools/tns_listener.py" --bind 10.0.2.2 --port 1522 --refuse & PIDS+=($!)
dir=$OUT/tns-rec-redirect
mkdir -p "$dir"
ip netns exec "$LAB_NS_FW" tcpdump -Z root --immediate-mode -U -n -s 0 -i c1 -w "$dir/capture.pcap" tcp & PIDS+=($!)
sleep 2
ip netns exec "$LAB_NS_CLIENT" timeout 20 "$PY" -c "
import oracledb
try:
    oracledb.connect(user='u', password='p', dsn='10.0.2.2:1521/XE', tcp_connect_timeout=5)
except Exception as e:
    print('client (expected to fail at the redirect target):', str(e)[:300])
"
sleep 0.5
