#!/usr/bin/env bash
# Record a real PPTP VPN session (pptp-linux + pppd -> pptpd + pppd) through a firewall namespace whose kernel
# helper nf_conntrack_pptp lets the call's GRE through, with the expectations the kernel created.
# Needs PPP (/dev/ppp), which the development machines' kernel lacks: run it in the lab VM (Debian's kernel):
#   tools/lab/vm-run -s /tmp/rec-pptp tools/record-pptp.sh     (OUTDIR: $LAB_SCRATCH/pptp-rec)
# Writes OUTDIR/capture.pcap (control connection and GRE, taken on lab-fw's client side c1),
# OUTDIR/kernel-expect.txt (`conntrack -E expect` in lab-fw) and the peers' logs in OUTDIR/logs/.
set -u
OUT=${1:-${LAB_SCRATCH:?an OUTDIR or LAB_SCRATCH}/pptp-rec}
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/lab/netns.sh"
source "$HERE/lab/pptp-peers.sh"
RUN=/run/alg-rec-pptp; mkdir -p "$OUT/logs" "$RUN"
PIDS=()
cleanup() {
    pptp_hangup "$RUN"
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    wait 2>/dev/null
    lab_net_down
    cp "$RUN"/*.log "$OUT/logs/" 2>/dev/null
    true
}
trap cleanup EXIT

lab_net_up tcp/1723 || exit 1
modprobe nf_conntrack_pptp || exit 1
lab_fw iptables -t raw -A PREROUTING -p tcp --dport 1723 -j CT --helper pptp || exit 1
lab_fw conntrack -E expect >"$OUT/kernel-expect.txt" 2>&1 & PIDS+=($!)
lab_fw tcpdump -i c1 -U -s 0 -w "$OUT/capture.pcap" "tcp port 1723 or ip proto 47" >"$RUN/tcpdump.log" 2>&1 & PIDS+=($!)
pptp_peers_conf "$RUN"
pptp_server_start "$RUN" || { echo "pptpd did not listen"; exit 1; }
PIDS+=("$PPTP_SERVER_PID")
sleep 1
pptp_call "$RUN" 60 || { echo "the PPP link did not come up"; exit 1; }
lab_cli ping -c 3 -i 0.5 -W 3 "$PPTP_LOCAL"  # IP over the tunnel: the call's GRE carries data both ways
lab_fw conntrack -L -p gre 2>&1 | tee "$OUT/logs/conntrack-gre.txt"
pptp_hangup "$RUN"
sleep 2  # the Call-Disconnect-Notify and the control connection's close
lab_fw iptables -nvxL FORWARD
echo recorded
