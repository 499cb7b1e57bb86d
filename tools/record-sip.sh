#!/usr/bin/env bash
# Record real SIP calls made by SIPp through a firewall namespace that runs the
# kernel's own SIP helper (nf_conntrack_sip), for replay cases and for the
# differential test against it.
#
#   tools/record-sip.sh OUTDIR udp|tcp 4|6 [SCENARIO...]     (root)
#
# SCENARIO: av (audio+video call, re-INVITE, BYE), cancel (INVITE, 180,
# CANCEL, 487), register (REGISTER Expires 3600, then Expires 0); default all.
# The scenario files are tools/sipp/uac-*.xml and uas-*.xml.
#
# Network: tools/lab/netns.sh with namespaces alg-sip-cli / alg-sip-fw /
# alg-sip-srv (override with ALG_SIP_NS=prefix). In fw: raw-table
# `CT --helper sip` on udp and tcp 5060 (IPv4 and IPv6), a stateful FORWARD
# chain that lets only SIP and RELATED/ESTABLISHED through, `conntrack -E
# expect` logging every expectation the kernel creates and destroys. During
# each call a few UDP datagrams are sent on the negotiated media ports from
# both ends (the RTP flows, to see them pass as RELATED).
#
# ALG_SIP_NAT=1: fw also masquerades the client behind its server-side
# address (IPv4 and IPv6), the server has no route to the client's network,
# media goes to the address the SDP names (fw's, once nf_nat_sip rewrote it),
# and server.pcap is the same traffic on fw's server-side interface s1: what
# the kernel's nf_nat_sip wrote, for the NAT differential.
#
# OUTDIR gets: capture.pcap (tcpdump on fw's client-side interface c1),
# kernel-expect.txt (conntrack -E expect), kernel-counters.txt (FORWARD
# counters), sipp-*.log, versions.txt.
set -euo pipefail
OUT=${1:?usage: record-sip.sh OUTDIR udp|tcp 4|6 [SCENARIO...]}
TRANSPORT=${2:?transport}
FAM=${3:?family}
shift 3
SCENARIOS=("$@")
[ ${#SCENARIOS[@]} -gt 0 ] || SCENARIOS=(av cancel register)
HERE=$(cd "$(dirname "$0")" && pwd)
LAB_DIR=${LAB_DIR:-$HERE/lab}  # netns.sh
PFX=${ALG_SIP_NS:-alg-sip}
export LAB_NS_CLIENT=$PFX-cli LAB_NS_FW=$PFX-fw LAB_NS_SERVER=$PFX-srv
# shellcheck source=/dev/null
source "$LAB_DIR/netns.sh"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

case $TRANSPORT in udp) T=u1 ;; tcp) T=t1 ;; *) echo "transport udp|tcp" >&2; exit 2 ;; esac
if [ "$FAM" = 6 ]; then CLI=$LAB_CLIENT6 SRV=$LAB_SERVER6 SRVURI="[$LAB_SERVER6]"; else CLI=$LAB_CLIENT4 SRV=$LAB_SERVER4 SRVURI=$LAB_SERVER4; fi
UAC_MP=16000 UAS_MP=20000

PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    lab_net_down
}
trap cleanup EXIT
lab_net_down 2>/dev/null || true
lab_net_up udp/5060 tcp/5060 >/dev/null
for ipt in "$LAB_IPT" "$LAB_IP6T"; do
    for p in udp tcp; do
        lab_fw "$ipt" -t raw -A PREROUTING -i c1 -p $p --dport 5060 -j CT --helper sip
        lab_fw "$ipt" -t raw -A PREROUTING -i s1 -p $p --dport 5060 -j CT --helper sip
    done
done
MEDIA_TO=$CLI
if [ "${ALG_SIP_NAT:-0}" = 1 ]; then
    lab_fw "$LAB_IPT" -t nat -A POSTROUTING -o s1 -j MASQUERADE
    lab_fw "$LAB_IP6T" -t nat -A POSTROUTING -o s1 -j MASQUERADE
    lab_srv ip route add unreachable "${LAB_CLIENT4%.*}.0/24"
    lab_srv ip -6 route add unreachable "${LAB_CLIENT6%::*}::/64"
    [ "$FAM" = 6 ] && MEDIA_TO=$LAB_FW6_S || MEDIA_TO=$LAB_FW4_S
fi
lab_fw conntrack -F >/dev/null 2>&1 || true
lab_fw conntrack -F expect >/dev/null 2>&1 || true
{ sipp -v 2>&1 | grep -m1 SIPp; uname -r; tcpdump --version 2>&1 | head -1; conntrack --version; } >"$OUT/versions.txt" 2>&1 || true

lab_fw tcpdump -i c1 -U -n -s 0 -w "$OUT/capture.pcap" 2>"$OUT/tcpdump.log" &
PIDS+=($!)
if [ "${ALG_SIP_NAT:-0}" = 1 ]; then
    lab_fw tcpdump -i s1 -U -n -s 0 -w "$OUT/server.pcap" 2>"$OUT/tcpdump-s1.log" &
    PIDS+=($!)
fi
lab_fw conntrack -E expect >"$OUT/kernel-expect.txt" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 50); do  # a loaded machine starts tcpdump late: never call before it listens
    grep -q "listening on" "$OUT/tcpdump.log" 2>/dev/null && break
    sleep 0.1
done
sleep 0.3

# send N datagrams from NS to ADDR:PORT (one flow per port)
media() {  # NS DST PORT...
    local ns=$1 dst=$2; shift 2
    ip netns exec "$ns" python3 - "$dst" "$@" <<'EOF'
import socket, sys, time
dst, ports = sys.argv[1], [int(p) for p in sys.argv[2:]]
fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
for p in ports:
    s = socket.socket(fam, socket.SOCK_DGRAM)
    for i in range(3):
        s.sendto(b"\x80\x00" + bytes([0, i]) + b"\x00" * 168, (dst, p))
        time.sleep(0.01)
    s.close()
EOF
}

for sc in "${SCENARIOS[@]}"; do
    lab_srv sipp -sf "$HERE/sipp/uas-$sc.xml" -i "$SRV" -p 5060 -t $T -mp $UAS_MP -m 1 -timeout 20s \
        -trace_err -error_file "$OUT/sipp-uas-$sc.err" >"$OUT/sipp-uas-$sc.log" 2>&1 &
    uas=$!
    sleep 0.5
    lab_cli sipp -sf "$HERE/sipp/uac-$sc.xml" "$SRVURI:5060" -i "$CLI" -p 5061 -t $T -mp $UAC_MP -m 1 -s alice \
        -timeout 20s -trace_err -error_file "$OUT/sipp-uac-$sc.err" >"$OUT/sipp-uac-$sc.log" 2>&1 &
    uac=$!
    if [ "$sc" = av ]; then
        sleep 0.7
        media "$LAB_NS_SERVER" "$MEDIA_TO" $UAC_MP $((UAC_MP + 2))     # RTP to the caller's audio and video
        media "$LAB_NS_CLIENT" "$SRV" $UAS_MP $((UAS_MP + 2))     # and to the callee's
        sleep 1.6
        media "$LAB_NS_SERVER" "$MEDIA_TO" $((UAC_MP + 4))             # after the re-INVITE moved the audio
        media "$LAB_NS_CLIENT" "$SRV" $((UAS_MP + 4))
    fi
    rc=0
    wait $uac || rc=$?
    wait $uas || rc=$((rc | $?))
    echo "$sc: sipp exit $rc" >>"$OUT/sipp-status.txt"
    sleep 0.3
done
sleep 0.5
lab_fw_count related >"$OUT/kernel-related.txt" 2>/dev/null || true
{ lab_fw "$LAB_IPT" -L FORWARD -v -n -x; lab_fw "$LAB_IP6T" -L FORWARD -v -n -x; } >"$OUT/kernel-counters.txt" 2>&1 || true
cat "$OUT/sipp-status.txt"
