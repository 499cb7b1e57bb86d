#!/bin/bash
# pptp: a real PPTP VPN (pptp-linux and pppd in lab-cli dial pptpd and its pppd in lab-srv) across lab-fw,
# whose FORWARD lets the control connection (tcp/1723) open and drops any NEW GRE; the call's GRE must pass
# as RELATED, its PPP link (LCP and IPCP, both ways over GRE) come up.
#   a. reference: the kernel's nf_conntrack_pptp (CT --helper pptp); its expectations from `conntrack -E expect`
#   b. alg's pptp helper, named alg-pptp (nf_conntrack_pptp, loaded in a, owns the name pptp): the same call;
#      its expectations compared with the kernel's field by field (tools/lab/pptp_compare.py: tuples with the
#      GRE keys as call IDs, masks, timeout, flags, class, master), every difference printed; those kept on
#      purpose, with why, are listed in the comparator's DELIBERATE:
#        srckey     kernel: the sender's call ID (mask 0xffff); alg: * (mask 0). The GRE tracker reads a
#                   packet's source key from a keymap only nf_conntrack_pptp fills: for alg's call it is 0.
#        helper     pptp / alg-pptp (the name clash above)
#      and, for information, what each run leaves during the call: the kernel's keymap joins both directions in
#      one GRE conntrack (ASSURED, nf_conntrack_gre_timeout_stream: 180 s) and its expectfn withdraws the other
#      direction's expectation (no DESTROY event for it: NEW 2, DESTROY 1); alg's call gets one GRE conntrack
#      per direction, each UNREPLIED (a reply would need the keymap) with nf_conntrack_gre_timeout (30 s,
#      refreshed by each packet), both expectations used (NEW 2, DESTROY 2).
#   c. negative control: alg stopped, no kernel helper: the call's GRE is dropped (lab-drop), no link.
set -u
source "$LAB_DIR/netns.sh"
# shellcheck source=../lib.sh
source "$ALG_ROOT/tests/lab/lib.sh"
source "$LAB_DIR/pptp-peers.sh"
RUN=/run/alg-lab/pptp; OUT=$LAB_SCRATCH/pptp; mkdir -p "$RUN" "$OUT"
HELPER=alg-pptp
ALG_PID= PIDS=()
cleanup() {
    pptp_hangup "$RUN"
    [ -n "$ALG_PID" ] && kill "$ALG_PID" 2>/dev/null
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    wait 2>/dev/null
    cp "$RUN"/*.log "$OUT/" 2>/dev/null
    lab_net_down
    for f in inet inet6; do nfct del helper "$HELPER" "$f" tcp 2>/dev/null; done
    modprobe -r nf_conntrack_pptp 2>/dev/null
    true
}
trap cleanup EXIT

sed -e "s/^name = \"pptp\" /name = \"$HELPER\" /" "$ALG_ROOT/policies/pptp.toml" >"$RUN/pptp.toml"
lab_net_up tcp/1723 || { echo "FAIL lab_net_up"; exit 1; }
t0=$(date +%s)
# alg starts now (Python under TCG is slow) and registers alg-pptp; no rule names it before phase b
ip netns exec "$LAB_NS_FW" "$ALG" run --policy "$RUN/pptp.toml" >"$OUT/alg.log" 2>&1 &
ALG_PID=$!
"$ALG" rules --policy "$RUN/pptp.toml" --family 4 >"$RUN/rules4.txt" 2>"$OUT/rules.err" & RULES_PID=$!
pptp_peers_conf "$RUN"
pptp_server_start "$RUN" && PIDS+=("$PPTP_SERVER_PID") || { fail pptpd-listens; exit 1; }

# PHASE: record the run's expectation events and control connection (for the call IDs) until phase_end
phase_start() {
    # `ip netns exec` directly, not lab_fw: $! is then the recorder itself (a function would run in a subshell)
    ip netns exec "$LAB_NS_FW" conntrack -E expect >"$OUT/$1-expect.txt" 2>&1 & EV_PID=$!
    lab_cap_start "$LAB_NS_FW" c1 "$OUT/$1.pcap" "tcp port 1723"
}
phase_end() {  # PHASE: hang up, keep the GRE conntracks, stop the recorders
    lab_fw conntrack -L -p gre >"$OUT/$1-gre.txt" 2>/dev/null
    lab_fw conntrack -L expect >"$OUT/$1-expect-left.txt" 2>&1
    pptp_hangup "$RUN"
    sleep 1  # the Call-Disconnect-Notify and the expectations' DESTROY events
    lab_cap_stop
    kill "$EV_PID" 2>/dev/null; wait "$EV_PID" 2>/dev/null
    # "PNS_ID PAC_ID" from the Outgoing-Call-Reply (tcpdump's PPTP decoder)
    tcpdump -nr "$OUT/$1.pcap" 2>/dev/null \
        | sed -n 's/.*OCRP CALL_ID(\([0-9]*\)) PEER_CALL_ID(\([0-9]*\)).*/\2 \1/p' | head -1 >"$OUT/$1-call.txt"
    echo "  [$(( $(date +%s) - t0 )) s] $1: call IDs (PNS PAC) $(cat "$OUT/$1-call.txt"); expectation events NEW" \
        "$(grep -c '\[NEW\] .*proto=47' "$OUT/$1-expect.txt"), DESTROY $(grep -c '\[DESTROY\] .*proto=47' "$OUT/$1-expect.txt")" \
        "; left during the call:" \
        "$(grep -c 'proto=47' "$OUT/$1-expect-left.txt"); GRE conntracks:"
    sed 's/^/    /' "$OUT/$1-gre.txt"
}

echo "a. the kernel's nf_conntrack_pptp: [$(( $(date +%s) - t0 )) s]"
modprobe nf_conntrack_pptp && lab_fw iptables -t raw -A PREROUTING -p tcp --dport 1723 -j CT --helper pptp \
    || { fail kernel-helper-rule; exit 1; }
phase_start kernel
r0=$(lab_fw_count related)
pptp_call "$RUN" 40 && [ "$(lab_fw_count related)" -gt "$r0" ] && pass kernel-pptp-gre-related-link-up \
    || { fail kernel-pptp-gre-related-link-up; tail -5 "$RUN/pppd-cli.log"; }
phase_end kernel
grep -c '^ *\[NEW\].*proto=47' "$OUT/kernel-expect.txt" | grep -qx 2 && pass kernel-pptp-two-gre-expectations \
    || { fail kernel-pptp-two-gre-expectations; cat "$OUT/kernel-expect.txt"; }
lab_fw iptables -t raw -F PREROUTING
fw_reset

echo "b. alg's pptp helper ($HELPER): [$(( $(date +%s) - t0 )) s]"
helper_ready() { lab_fw nfct list helper 2>/dev/null | tr -s '\t\n' ' ' | grep -q "name = $HELPER, [^}]*status = enabled"; }
for _ in $(seq 600); do helper_ready && break; kill -0 "$ALG_PID" 2>/dev/null || break; sleep 0.2; done
helper_ready && pass alg-pptp-registered || { fail alg-pptp-registered; tail -20 "$OUT/alg.log"; exit 1; }
echo "  alg ready after $(( $(date +%s) - t0 )) s"
wait "$RULES_PID" && lab_fw iptables-restore --noflush <"$RUN/rules4.txt" && pass rules-applied \
    || { fail rules-applied; cat "$OUT/rules.err"; }
phase_start alg
r0=$(alg_related_count "$HELPER" 4); d0=$(lab_fw_count drop 4)
pptp_call "$RUN" 40 && [ "$(alg_related_count "$HELPER" 4)" -gt "$r0" ] && pass alg-pptp-gre-related-link-up \
    || { fail alg-pptp-gre-related-link-up; tail -5 "$RUN/pppd-cli.log"; }
# GRE sent before alg's expectation existed (pppd starts LCP as soon as the call is up) is dropped and resent
echo "  GRE dropped before alg's expectations were in place: $(( $(lab_fw_count drop 4) - d0 )) packets"
phase_end alg
/usr/bin/python3 -I "$LAB_DIR/pptp_compare.py" "$OUT/kernel-expect.txt" "$(cat "$OUT/kernel-call.txt")" \
    "$OUT/alg-expect.txt" "$(cat "$OUT/alg-call.txt")" --pns "$LAB_CLIENT4" --pac "$LAB_SERVER4" \
    --gre "$OUT/kernel-gre.txt" "$OUT/alg-gre.txt" >"$OUT/compare.txt" 2>&1 \
    && pass alg-expectations-equal-kernel-but-deliberate || fail alg-expectations-equal-kernel-but-deliberate
sed 's/^/    /' "$OUT/compare.txt"

echo "c. negative control (alg stopped, no kernel helper): [$(( $(date +%s) - t0 )) s]"
kill -TERM "$ALG_PID"; wait "$ALG_PID" && pass alg-stops-cleanly || fail alg-stops-cleanly; ALG_PID=
fw_reset
d0=$(lab_fw_count drop 4); r0=$(lab_fw_count related 4)
lab_gre_dropped() { [ "$(lab_fw_count drop 4)" -gt "$d0" ]; }
# the call is set up (tcp/1723 may open), its GRE is NEW and dropped: wait for the first drop, then one LCP
# restart period (3 s) more, in which the link must not come up
! pptp_call "$RUN" 15 lab_gre_dropped && sleep 3 && ! pptp_link_up && [ "$(lab_fw_count related 4)" -eq "$r0" ] \
    && pass negative-control-gre-dropped || fail negative-control-gre-dropped
echo "  GRE dropped: $(( $(lab_fw_count drop 4) - d0 )) packets"
pptp_hangup "$RUN"
echo "  scenario time $(( $(date +%s) - t0 )) s"
exit $((FAILS > 0))
