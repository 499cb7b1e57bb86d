#!/usr/bin/env bash
# Lab scenario (runs inside the VM), the seed failure: about 40 phones behind a
# NAT gateway, SIP through it, and an expectation table too small for their
# media ("nf_ct_sip: all ports in use for SDP media", then dropped INVITEs).
#
# 40 calls from one SIPp UAC process on the private side (`-t un`: one UDP
# socket, so one conntrack master, per phone; each phone's audio port from an
# injection file) to one SIPp UAS on the public side, through the honest NAT
# gateway of tools/lab/nat-netns.sh (masquerade; the public side has no route
# back), which runs alg's SIP helper: it rewrites the SDP to the gateway's
# address. Each call needs 4 expectations (RTP+RTCP each way). One process per
# side keeps it affordable under TCG (40 SIPp processes poll the CPU away).
#   phase 1: net.netfilter.nf_conntrack_expect_max = 40: the table fills.
#     - no signalling packet dropped (all 40 calls complete, NFQUEUE drops 0)
#     - alg counts the refusals by reason; `alg status` and `alg doctor` show
#       the pressure and the fix
#   phase 2 (the fix applied: all 40 calls get media both ways) is nat.sh's alg-sip phase, behind
#     an honest NAT.
set -u
: "${ALG_ROOT:?}" "${ALG:?}" "${LAB_DIR:?}" "${LAB_SCRATCH:?}"
# shellcheck source=/dev/null
source "$LAB_DIR/netns.sh"
source "$LAB_DIR/nat-netns.sh"
# shellcheck source=../../../tools/sipp/lab-lib.sh
source "$ALG_ROOT/tools/sipp/lab-lib.sh"
OUT=$LAB_SCRATCH/sip-pressure
mkdir -p "$OUT"
PHONES=${SIP_PRESSURE_PHONES:-40}
LOW=${SIP_PRESSURE_EXPECT_MAX:-40}
# > time to set up all calls + send the media, on a starved guest too (the wait for the
# INVITEs below gives up after 120 s)
HOLD_MS=${SIP_PRESSURE_HOLD_MS:-60000}
# calls per second: under TCG each packet costs alg about 5 ms (30-50 us natively), a
# call about 5 packets; faster, replies queue past SIP's 500 ms retransmission timer
RATE=${SIP_PRESSURE_RATE:-5}
OLD_MAX=$(sysctl -n net.netfilter.nf_conntrack_expect_max)
PHONE_PORTS=() UAS_PORTS=()
for i in $(seq 0 $((PHONES - 1))); do PHONE_PORTS+=($((16000 + 2 * i))); UAS_PORTS+=($((20000 + 2 * i))); done
{ echo SEQUENTIAL; printf '%s\n' "${PHONE_PORTS[@]}"; } >"$OUT/uac.csv"
{ echo SEQUENTIAL; printf '%s\n' "${UAS_PORTS[@]}"; } >"$OUT/uas.csv"

cleanup() {
    sip_alg_stop
    lab_fw "$ALG" cleanup >/dev/null 2>&1 || true
    sysctl -qw net.netfilter.nf_conntrack_expect_max="$OLD_MAX" || true
    lab_net_down
}
trap cleanup EXIT

lab_nat_up || { echo "FAIL lab_nat_up"; exit 1; }
sip_policy "$OUT/policy"

# calls LABEL: the 40 calls, media both ways while they are up; sets CALLS_OK, TO_PHONES, TO_UAS, DROPS
calls() {
    local label=$1 i p0 u0 d0 uac uas
    p0=$(lab_nat_count related-in) u0=$(lab_nat_count related-out) d0=$(lab_nat_count drop-in drop in-drop)
    lab_srv sipp -sf "$SIPP_DIR/uas-phone.xml" -i "$LAB_PUB4" -p 5060 -t u1 -inf "$OUT/uas.csv" -m "$PHONES" \
        $SIPP_PATIENT -timeout 400s -trace_err -error_file "$OUT/$label-uas.err" >"$OUT/$label-uas.log" 2>&1 &
    uas=$!
    sleep 1
    lab_cli sipp -sf "$SIPP_DIR/uac-phone.xml" "$LAB_PUB4:5060" -i "$LAB_PRIV4" -t un -max_socket 256 -inf "$OUT/uac.csv" \
        -m "$PHONES" -l "$PHONES" -r "$RATE" -d "$HOLD_MS" -s phone $SIPP_PATIENT -timeout 400s -trace_err -error_file "$OUT/$label-uac.err" >"$OUT/$label-uac.log" 2>&1 &
    uac=$!
    # every phone's INVITE through the firewall (or give up after 120 s), then time to answer
    for i in $(seq 1 240); do
        [ "$(lab_fw conntrack -L -p udp --dport 5060 2>/dev/null | grep -c 'dport=5060')" -ge "$PHONES" ] && break
        sleep 0.5
    done
    sleep 3
    fw_expect >"$OUT/$label-expect.txt" || true
    # to where the phones' SDP says, as the UAS sees it: alg rewrote it to the gateway's public
    # address, whose expectations send the media on to each phone
    ip netns exec "$LAB_NS_SERVER" "${LAB_HOST_PYTHON:-python3}" - "$LAB_GW_PUB4" "${PHONE_PORTS[@]}" <<'PY' &
import socket, sys
dst, ports = sys.argv[1], [int(p) for p in sys.argv[2:]]
for p in ports:  # UAS -> each phone's announced audio port
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.sendto(b"\x80" + b"\x00" * 171, (dst, p)); u.close()
PY
    local m1=$!
    ip netns exec "$LAB_NS_CLIENT" "${LAB_HOST_PYTHON:-python3}" - "$LAB_PUB4" "${UAS_PORTS[@]}" <<'PY' &
import socket, sys
dst, ports = sys.argv[1], [int(p) for p in sys.argv[2:]]
for p in ports:  # each phone -> the UAS's announced audio port for its call
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.sendto(b"\x80" + b"\x00" * 171, (dst, p)); u.close()
PY
    local m2=$!
    wait "$m1" "$m2" 2>/dev/null || true
    local rc=0
    wait "$uac" || rc=$?
    wait "$uas" || true
    CALLS_OK=$(grep -a "Successful call" "$OUT/$label-uac.log" | tail -1 | awk -F'|' '{gsub(/ /, "", $3); print $3 + 0}')
    [ "$rc" = 0 ] && [ -z "$CALLS_OK" ] && CALLS_OK=$PHONES
    CALLS_OK=${CALLS_OK:-0}
    TO_PHONES=$(( $(lab_nat_count related-in) - p0 ))
    TO_UAS=$(( $(lab_nat_count related-out) - u0 ))
    DROPS=$(( $(lab_nat_count drop-in drop in-drop) - d0 ))
}

# ---------------------------------------------------------------- phase 1: a table too small
sysctl -qw net.netfilter.nf_conntrack_expect_max="$LOW"
if ! sip_alg_start "$OUT/policy" "$OUT/alg.log"; then fail "sip-pressure alg run started"; exit 1; fi
# alg's raw rules only: the gateway's own counted RELATED rules accept (and count) the media
lab_fw "$ALG" rules --iptables --policy "$OUT/policy" --family 4 >"$OUT/alg-rules.txt" 2>&1
check "sip-pressure rules applied (raw)" \
    bash -c "sed -n '/^\*raw/,/^COMMIT/p' '$OUT/alg-rules.txt' | ip netns exec '$LAB_NS_FW' '$LAB_IPT-restore' --noflush"
QUEUE=$(awk -F= '/^queue *=/ {gsub(/[ \t]|#.*/, "", $2); print $2}' "$OUT/policy/sip.toml")
q0=$(queue_drops "$QUEUE")
[ -n "${SIP_PRESSURE_PCAP:-}" ] && { lab_fw tcpdump -i any -w "$OUT/fw.pcap" -s 300 udp port 5060 >/dev/null 2>&1 & }
calls pressure
echo "phase 1 (expect_max $LOW): calls ok $CALLS_OK/$PHONES, media RELATED to phones $TO_PHONES, to UAS $TO_UAS, dropped $DROPS"
check "sip-pressure no signalling dropped: all $PHONES calls completed ($CALLS_OK)" test "$CALLS_OK" = "$PHONES"
check "sip-pressure no NFQUEUE drops" test "$(( $(queue_drops "$QUEUE") - q0 ))" = 0
check "sip-pressure the table filled: some media dropped ($DROPS)" test "$DROPS" -ge 1
lab_fw "$ALG" status --format json >"$OUT/status.json" 2>&1 || true
lab_fw "$ALG" status >"$OUT/status.txt" 2>&1 || true
lab_fw "$ALG" doctor >"$OUT/doctor.txt" 2>&1 || true
check "sip-pressure refusals counted by reason in alg status" \
    grep -Eq '"(kernel-full|budget)"[[:space:]]*:[[:space:]]*[1-9]' "$OUT/status.json"
check "sip-pressure alg status shows the pressure" grep -Eiq 'kernel-full|refus' "$OUT/status.txt"
check "sip-pressure alg doctor names the fix" grep -Eiq 'expect_max|expect_hashsize' "$OUT/doctor.txt"
grep -Eq 'refused.*kernel-full|kernel-full.*(expect|table)' "$OUT/alg.log" && pass "sip-pressure refusal logged" \
    || fail "sip-pressure refusal logged"

# phase 2, the fix (expect_max 4096) with all 40 phones' calls and media both ways, on the same
# honest NAT: nat.sh's alg-sip phase

echo "sip-pressure: $FAILS failed"
[ "$FAILS" = 0 ]
