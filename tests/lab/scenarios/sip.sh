#!/usr/bin/env bash
# Lab scenario (runs inside the VM): alg's SIP helper as a userspace conntrack
# helper. SIPp calls (UDP/IPv4, TCP/IPv4, UDP/IPv6) go through lab-fw, whose
# FORWARD chain accepts NEW only for SIP (udp+tcp 5060); the RTP datagrams each
# side sends to the port the other side's SDP announced must pass as RELATED.
# The UDP INVITE is the first packet of its flow (its conntrack is unconfirmed
# while queued): its media expectation must still be made.
# Negative control: alg stopped => the same media is dropped.
#
#   export ALG_ROOT=/path/to/alg ALG=$ALG_ROOT/.venv/bin/alg
#   tools/lab/vm-run -e ALG_ROOT -e ALG tests/lab/scenarios/sip.sh
set -u
: "${ALG_ROOT:?}" "${ALG:?}" "${LAB_DIR:?}" "${LAB_SCRATCH:?}"
# shellcheck source=/dev/null
source "$LAB_DIR/netns.sh"
# shellcheck source=../../../tools/sipp/lab-lib.sh
source "$ALG_ROOT/tools/sipp/lab-lib.sh"
OUT=$LAB_SCRATCH/sip
mkdir -p "$OUT"
HOLD_MS=${SIP_LAB_HOLD_MS:-15000}  # long enough for two Python starts under TCG

cleanup() {
    sip_alg_stop
    # alg removes its helpers as it stops: `alg cleanup` (a Python start) only after one that could not
    helpers_left alg-sip && { lab_fw "$ALG" cleanup >/dev/null 2>&1 || true; }
    lab_net_down
}
trap cleanup EXIT

lab_net_up udp/5060 tcp/5060 || { echo "FAIL lab_net_up"; exit 1; }
sip_policy "$OUT/policy"

# ---------------------------------------------------------------- phase P: alg running
sip_rules_start "$OUT/policy"
if ! sip_alg_start "$OUT/policy" "$OUT/alg.log"; then
    fail "sip alg run started"; exit 1
fi
pass "sip alg run started"
check "sip rules applied" sip_rules "$OUT/policy"
# the media counters go above alg's RELATED accept (which `alg rules` inserts at the top)
for ipt in "$LAB_IPT" "$LAB_IP6T"; do
    lab_fw "$ipt" -I FORWARD 1 -i s1 -o c1 -p udp --dport 16000 -m conntrack --ctstate RELATED -m comment --comment sip-rel-caller
    lab_fw "$ipt" -I FORWARD 1 -i c1 -o s1 -p udp --dport 20000 -m conntrack --ctstate RELATED -m comment --comment sip-rel-callee
done
for combo in "udp 4" "tcp 4" "udp 6"; do
    set -- $combo
    label=sip-$1$2
    lab_fw conntrack -F >/dev/null 2>&1 || true; lab_fw conntrack -F -f ipv6 >/dev/null 2>&1 || true
    sip_call "$1" "$2" "$label"
    check "$label signalling completed (sipp exit 0)" test "$LAST_SIGNALLING" = 0
    check "$label expectations listed by the kernel (helper=alg-sip: $LAST_EXPECT)" test "$LAST_EXPECT" -ge 4
    check "$label media to the caller RELATED (INVITE's SDP)" test "$LAST_CALLER" -ge 1
    check "$label media to the callee RELATED (200's SDP)" test "$LAST_CALLEE" -ge 1
done
alg_status_json "$(policy_socket "$OUT/policy")" >"$OUT/status.json" || true

# ---------------------------------------------------------------- negative control
sip_alg_stop
lab_fw conntrack -F >/dev/null 2>&1 || true
lab_fw conntrack -F expect >/dev/null 2>&1 || true
lab_fw conntrack -F -f ipv6 >/dev/null 2>&1 || true
sip_call udp 4 sip-negative
check "sip negative: no expectation without alg" test "$LAST_EXPECT" = 0
check "sip negative: media dropped without alg (dropped $LAST_DROP)" test "$LAST_DROP" -ge 2 -a "$LAST_CALLER" = 0 -a "$LAST_CALLEE" = 0

echo "sip: $FAILS failed"
[ "$FAILS" = 0 ]
