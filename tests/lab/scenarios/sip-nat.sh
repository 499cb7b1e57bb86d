#!/usr/bin/env bash
# Lab scenario (runs inside the VM): SIP through a NAT gateway, honest NAT.
# lab-fw translates the phone (10.0.1.2 / fd00:1::2) to an outside address
# (SNAT to 10.0.2.100 / masquerade to fd00:2::1); the server has no route to the phone's
# network (unreachable routes), so only what alg rewrites can work: the
# server must see the gateway's address in Via, Contact, o= and c=, send its
# media there, and the kernel must translate that media to the phone
# (CTA_EXPECT_NAT on alg's expectations). SIPp calls: UDP/IPv4, TCP/IPv4 (the
# rewritten messages are longer: the kernel adjusts the sequence numbers from
# the verdict's conntrack, the call goes on), UDP/IPv6 (NAT66 masquerade).
# Negative control: alg stopped => the server's media to the gateway is not
# forwarded to the phone.
#
#   export ALG_ROOT=/path/to/alg ALG=$ALG_ROOT/.venv/bin/alg
#   tools/lab/vm-run -e ALG_ROOT -e ALG tests/lab/scenarios/sip-nat.sh
set -u
: "${ALG_ROOT:?}" "${ALG:?}" "${LAB_DIR:?}" "${LAB_SCRATCH:?}"
# shellcheck source=/dev/null
source "$LAB_DIR/netns.sh"
# shellcheck source=../../../tools/sipp/lab-lib.sh
source "$ALG_ROOT/tools/sipp/lab-lib.sh"
OUT=$LAB_SCRATCH/sip-nat
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
# IPv4: source NAT to an outside address longer than the phone's, so that every rewrite
# makes the message longer (TCP: the kernel must move the sequence numbers)
PUBLIC4=10.0.2.100
lab_fw ip addr add "$PUBLIC4/24" dev s1
lab_fw "$LAB_IPT" -t nat -A POSTROUTING -o s1 -s 10.0.1.0/24 -j SNAT --to-source "$PUBLIC4"
lab_fw "$LAB_IP6T" -t nat -A POSTROUTING -o s1 -s fd00:1::/64 -j MASQUERADE
# honest NAT: the server cannot reach the phone's network at all
lab_srv ip route add unreachable 10.0.1.0/24
lab_srv ip -6 route add unreachable fd00:1::/64
sip_policy "$OUT/policy"

# the server sends its media where the phone's SDP says: the gateway; the UAS logs what it got
SIP_MEDIA_TO4=$PUBLIC4 SIP_MEDIA_TO6=$LAB_FW6_S SIP_TRACE=1 SIP_RULE_CALLER=nat-rel-phone SIP_RULE_CALLEE=nat-rel-server

# nat_call udp|tcp 4|6 LABEL: sip_call, and what the server was sent: the gateway's address
# wherever the phone named itself (SIPp's Call-ID carries the phone's address: not an
# endpoint, left as the kernel does)
nat_call() {
    local fam=$2 cli=$LAB_CLIENT4 pub=$PUBLIC4
    [ "$fam" = 6 ] && cli=$LAB_CLIENT6 pub=$LAB_FW6_S
    sip_call "$@"
    LAST_SEEN=$(grep -aE '^(Via|From|Contact|o=|c=)' "$OUT/$3-uas-messages.log" 2>/dev/null | grep -c "$pub")
    LAST_LEAK=$(grep -aE '^(Via|From|Contact|o=|c=)' "$OUT/$3-uas-messages.log" 2>/dev/null | grep -c "$cli")
}

# ---------------------------------------------------------------- alg running
sip_rules_start "$OUT/policy"
if ! sip_alg_start "$OUT/policy" "$OUT/alg.log"; then
    fail "sip-nat alg run started"; exit 1
fi
pass "sip-nat alg run started"
check "sip-nat rules applied" sip_rules "$OUT/policy"
for ipt in "$LAB_IPT" "$LAB_IP6T"; do
    lab_fw "$ipt" -I FORWARD 1 -i s1 -o c1 -p udp --dport 16000 -m conntrack --ctstate RELATED -m comment --comment nat-rel-phone
    lab_fw "$ipt" -I FORWARD 1 -i c1 -o s1 -p udp --dport 20000 -m conntrack --ctstate RELATED -m comment --comment nat-rel-server
done
for combo in "udp 4" "tcp 4" "udp 6"; do
    set -- $combo
    label=sip-nat-$1$2
    lab_fw conntrack -F >/dev/null 2>&1 || true; lab_fw conntrack -F -f ipv6 >/dev/null 2>&1 || true
    nat_call "$1" "$2" "$label"
    check "$label signalling completed through NAT (sipp exit 0)" test "$LAST_SIGNALLING" = 0
    check "$label the server saw the gateway's address ($LAST_SEEN lines) and not the phone's ($LAST_LEAK)" \
        test "$LAST_SEEN" -ge 4 -a "$LAST_LEAK" = 0
    check "$label media to the gateway reached the phone, RELATED ($LAST_CALLER)" test "$LAST_CALLER" -ge 1
    check "$label media from the phone RELATED ($LAST_CALLEE)" test "$LAST_CALLEE" -ge 1
done
alg_status_json "$(policy_socket "$OUT/policy")" >"$OUT/status.json" || true
check "sip-nat: messages rewritten, none refused" /usr/bin/python3 -I -S -c '
import json, sys
h = json.load(open(sys.argv[1]))["helpers"]["alg-sip"]
print(h["rewritten"], h["nat_failed"]); sys.exit(not (h["rewritten"] >= 6 and h["nat_failed"] == 0))' "$OUT/status.json"

# ---------------------------------------------------------------- negative control
sip_alg_stop
lab_fw conntrack -F >/dev/null 2>&1 || true
lab_fw conntrack -F expect >/dev/null 2>&1 || true
nat_call udp 4 sip-nat-negative
check "sip-nat negative: media to the gateway does not reach the phone without alg" test "$LAST_CALLER" = 0

echo "sip-nat: $FAILS failed"
[ "$FAILS" = 0 ]
