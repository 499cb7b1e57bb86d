#!/bin/bash
# record-ftp.sh — re-record the tests/pcaps/ftp-rec-* captures (needs root).
#
# Three namespaces alg-ftp-rec-{cli,fw,srv} built with tools/lab/netns.sh
# (client 10.0.1.2 / fd00:1::2, server 10.0.2.2 / fd00:2::2, stateful fw in
# the middle that accepts NEW only to tcp/21 and RELATED via the in-kernel ftp
# helper: `iptables -t raw -A PREROUTING -p tcp --dport 21 -j CT --helper ftp`).
# vsftpd serves anonymous downloads in the server ns; each case is one client
# run (curl or lftp, a real file transfer), captured by tcpdump on the fw's
# client-side interface c1. Usage: tools/record-ftp.sh [OUTDIR] (default tests/pcaps)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-$ROOT/tests/pcaps}
LAB_DIR=${LAB_DIR:-$ROOT/tools/lab}  # netns.sh
export LAB_NS_CLIENT=alg-ftp-rec-cli LAB_NS_FW=alg-ftp-rec-fw LAB_NS_SERVER=alg-ftp-rec-srv
source "$LAB_DIR/netns.sh"
SCRATCH=$(mktemp -d /tmp/alg-ftp-rec.XXXXXX)
VSFTPD_PID=
cleanup() { [ -n "$VSFTPD_PID" ] && kill "$VSFTPD_PID" 2>/dev/null; lab_net_down; rm -rf "$SCRATCH"; }
trap cleanup EXIT

lab_net_up tcp/21
lab_fw iptables -t raw -A PREROUTING -p tcp --dport 21 -j CT --helper ftp
lab_fw ip6tables -t raw -A PREROUTING -p tcp --dport 21 -j CT --helper ftp

mkdir -p "$SCRATCH/pub" "$SCRATCH/empty"   # empty: vsftpd's secure_chroot_dir
head -c 200000 /dev/urandom > "$SCRATCH/pub/file.bin"   # 200 kB download
echo "hello from vsftpd" > "$SCRATCH/pub/small.txt"
chmod -R a+rX "$SCRATCH"
cat > "$SCRATCH/vsftpd.conf" <<CONF
listen=NO
listen_ipv6=YES
background=NO
anonymous_enable=YES
local_enable=NO
write_enable=NO
anon_root=$SCRATCH/pub
no_anon_password=YES
pasv_enable=YES
port_enable=YES
connect_from_port_20=NO
pasv_min_port=40000
pasv_max_port=40100
seccomp_sandbox=NO
secure_chroot_dir=$SCRATCH/empty
xferlog_enable=NO
CONF
ip netns exec "$LAB_NS_SERVER" vsftpd "$SCRATCH/vsftpd.conf" &
VSFTPD_PID=$!
for i in $(seq 50); do lab_cli bash -c "exec 3<>/dev/tcp/$LAB_SERVER4/21" 2>/dev/null && break; sleep 0.1; done

# record NAME CLIENT-COMMAND... : one capture per case
record() {
    local name=$1; shift
    local dir=$OUT/ftp-rec-$name
    mkdir -p "$dir"
    ip netns exec "$LAB_NS_FW" tcpdump -Z root --immediate-mode -U -n -s 0 -i c1 -w "$dir/capture.pcap" tcp 2>"$SCRATCH/tcpdump.err" &
    local tp=$!
    for i in $(seq 50); do grep -q listening "$SCRATCH/tcpdump.err" && break; sleep 0.1; done
    timeout 20 ip netns exec "$LAB_NS_CLIENT" "$@" >/dev/null
    sleep 0.3
    kill -INT $tp; wait $tp || true
    echo "recorded $dir/capture.pcap: $*"
}
S4=$LAB_SERVER4 S6="[$LAB_SERVER6]"
record curl-pasv-v4  curl -sS --disable-epsv      -o /dev/null "ftp://$S4/file.bin"
record curl-epsv-v4  curl -sS                     -o /dev/null "ftp://$S4/file.bin"
record curl-port-v4  curl -sS -P - --disable-eprt -o /dev/null "ftp://$S4/file.bin"
record curl-eprt-v4  curl -sS -P -                -o /dev/null "ftp://$S4/file.bin"
record curl-epsv-v6  curl -sS -g                  -o /dev/null "ftp://$S6/file.bin"
record curl-eprt-v6  curl -sS -g -P -             -o /dev/null "ftp://$S6/file.bin"
# lftp: directory listing plus two downloads on one control connection
record lftp-pasv-v4  lftp -e "set ftp:passive-mode on; set ftp:prefer-epsv no; ls; get -O $SCRATCH small.txt -o l1; get -O $SCRATCH file.bin -o l2; quit" "ftp://$S4"
record lftp-port-v6  lftp -e "set ftp:passive-mode off; ls; get -O $SCRATCH small.txt -o l3; quit" "ftp://$S6"
lab_fw conntrack -S >/dev/null 2>&1 || true
echo "RELATED packets through the fw: $(lab_fw_count related)"
