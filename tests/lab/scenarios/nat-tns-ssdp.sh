#!/usr/bin/env bash
# Lab scenario (runs inside the VM): TNS and SSDP through the honest NAT gateway (tools/lab/nat-netns.sh:
# private 192.168.10.20 masqueraded onto 203.0.113.1, the public side has no route back), rewritten by alg,
# by conntrackd (the userspace reference, which rewrites both itself) on the same traffic, and by nobody.
#
#   tns        a listener behind a port forward (203.0.113.1:1521 -> 192.168.10.20:1521) answers an outside
#              client's CONNECT with a REDIRECT, its data inline (the form both helpers read), naming
#              HOST=192.168.10.20 PORT=1522; the client must be told the gateway's address and reach the
#              redirect target through it (lab-related-in)
#   callback   a UPnP control point behind masquerade searches a device outside (unicast M-SEARCH to
#              203.0.113.20:1900), fetches its LOCATION and SUBSCRIBEs with CALLBACK
#              <http://192.168.10.20:49200/cb>; the device's NOTIFY must reach it through the gateway
#   location   a device behind a port forward (udp/1900) answers an outside control point with LOCATION
#              http://192.168.10.20:49152/desc.xml; the control point must fetch it through the gateway
#
# Phases: alg (helpers alg-tns and alg-ssdp), conntrackd 1.4.7 (tns, ssdp), none (alg stopped).
# Parity with conntrackd: the text it writes into the REDIRECT and the CALLBACK must equal alg's. Its
# follow-up connections then fail: on Debian 12 its expectations carry no CTA_EXPECT_NAT
# (libnetfilter_conntrack 1.0.9, tools/probe_libnfct_expect.py), so they arrive at the gateway itself,
# untranslated. Deliberate difference: conntrackd does not rewrite LOCATION (alg does: a device behind a
# port forward), so its outside control point is sent to the private address.
set -u
: "${ALG_ROOT:?}" "${ALG:?}" "${LAB_DIR:?}" "${LAB_SCRATCH:?}"
# shellcheck source=/dev/null
source "$LAB_DIR/netns.sh"
# shellcheck source=/dev/null
source "$LAB_DIR/nat-netns.sh"
# shellcheck source=../lib.sh
source "$ALG_ROOT/tests/lab/lib.sh"  # pass, fail, check
OUT=$LAB_SCRATCH/nat-tns-ssdp; RUN=${LAB_RUNDIR:-/run}/alg-lab-nat-tns-ssdp
rm -rf "$OUT" "$RUN"; mkdir -p "$OUT" "$RUN/policy"
PY=${LAB_HOST_PYTHON:-python3}
PEERS=$ALG_ROOT/tools/discovery_peers.py
PIDS=() ALG_PID= CTD_PID=

cleanup() {
    local p
    for p in $ALG_PID $CTD_PID "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    wait 2>/dev/null
    for p in tns alg-tns; do lab_fw nfct del helper "$p" inet tcp 2>/dev/null; done
    for p in ssdp alg-ssdp; do lab_fw nfct del helper "$p" inet udp 2>/dev/null; lab_fw nfct del helper "$p" inet tcp 2>/dev/null; done
    lab_nat_down
}
trap cleanup EXIT

lab_nat_up --forward tcp/1521 --forward udp/1900 || { echo "FAIL nat topology up"; exit 1; }
lab_fw sysctl -qw net.netfilter.nf_conntrack_helper=0 2>/dev/null
modprobe nf_nat 2>/dev/null  # the expectfn nat-follow-master
check "nat topology: the public side has no route to $LAB_PRIV4" eval "! lab_pub ip route get $LAB_PRIV4 >/dev/null 2>&1"

# ------------------------------------------------------------------------------- peers (one Python each side)
cat >"$RUN/private.py" <<PYEOF
import sys, threading
from argparse import Namespace
sys.path.insert(0, "$ALG_ROOT/tools")
from tns_listener import serve
from discovery_peers import upnp_device
for port, refuse in ((1521, False), (1522, True)):
    threading.Thread(target=serve, daemon=True, args=(Namespace(bind="$LAB_PRIV4", port=port, redirect_host="$LAB_PRIV4",
                     redirect_port=1522, split=False, refuse=refuse),)).start()
upnp_device("$LAB_PRIV4")
PYEOF
ip netns exec "$LAB_NS_CLIENT" "$PY" "$RUN/private.py" >"$OUT/private.log" 2>&1 & PIDS+=($!)
ip netns exec "$LAB_NS_SERVER" "$PY" "$PEERS" upnp-device "$LAB_PUB4" >"$OUT/public-device.log" 2>&1 & PIDS+=($!)
for _ in $(seq 300); do
    grep -q "device ready" "$OUT/private.log" && grep -q "device ready" "$OUT/public-device.log" && break
    sleep 0.2
done
check "peers up (TNS listener and UPnP device inside, UPnP device outside)" \
    eval 'grep -q "device ready" "$OUT/private.log" && grep -q "device ready" "$OUT/public-device.log"'

# ------------------------------------------------------------------------------- helpers on the gateway
for h in tns ssdp; do sed 's/^name = "\(.*\)"/name = "alg-\1"/' "$ALG_ROOT/policies/$h.toml" >"$RUN/policy/$h.toml"; done
"$ALG" rules --iptables --policy "$RUN/policy" --family 4 >"$OUT/alg-rules.txt" 2>&1 || fail "alg rules"
sed -n '/^\*raw/,/^COMMIT/p' "$OUT/alg-rules.txt" >"$RUN/raw-alg.txt"
sed 's/alg-tns/tns/g; s/alg-ssdp/ssdp/g; s/alg-helpers/ctd-helpers/g' "$RUN/raw-alg.txt" >"$RUN/raw-conntrackd.txt"
helpers_none() {
    lab_fw "$LAB_IPT" -t raw -F PREROUTING; lab_fw "$LAB_IPT" -t raw -F OUTPUT
    local c; for c in alg-helpers ctd-helpers; do lab_fw "$LAB_IPT" -t raw -F $c 2>/dev/null && lab_fw "$LAB_IPT" -t raw -X $c; done
    lab_fw conntrack -F >/dev/null 2>&1; lab_fw conntrack -F expect >/dev/null 2>&1
    return 0
}
helpers_use() { helpers_none; lab_fw "$LAB_IPT-restore" --noflush <"$RUN/raw-$1.txt"; }  # alg|conntrackd
enabled() {  # NAME...: each registered and enabled
    local n list
    list=$(lab_fw nfct list helper 2>/dev/null | tr -d '\t\n')
    for n in "$@"; do grep -q "name = $n,[^}]*status = enabled" <<<"$list" || return 1; done
}

# ------------------------------------------------------------------------------- one round, three cases
# round WHO: sets TOLD_TNS, TNS_RESULT, CALLBACK (what the outside device was asked to call), EVENTS,
# LOCATION (what the outside control point was told), FETCHED, and REL_* (lab-related-in deltas)
round() {
    local who=$1 r0 line
    lab_fw conntrack -F >/dev/null 2>&1; lab_fw conntrack -F expect >/dev/null 2>&1
    ip netns exec "$LAB_NS_FW" stdbuf -oL conntrack -E expect >"$OUT/$who-expect-events.txt" 2>&1 & local ev=$!
    wait_listening "$ev"

    r0=$(lab_nat_count related-in)
    # the public side's view of the TNS exchange: what the REDIRECT said when it arrived at all
    lab_cap_start "$LAB_NS_SERVER" s0 "$OUT/$who-tns.pcap" 'tcp port 1521'
    line=$(lab_pub "$PY" "$ALG_ROOT/tools/tns_listener.py" --follow "$LAB_GW_PUB4:1521" --timeout 4 2>&1 | tail -1)
    lab_cap_stop
    echo "   $who tns: $line" | tee -a "$OUT/results.txt"
    TOLD_TNS=$(sed -n 's/.*redirect\(ed\)\? to \(host \)\?\([^ ]*\) port \([0-9]*\).*/\3:\4/p' <<<"$line")
    TNS_RESULT=$line REL_TNS=$(( $(lab_nat_count related-in) - r0 ))
    # from the listener's side of the capture (through the gateway): the REDIRECT's address, how many
    # times it was sent (retransmitted while the client does not take it), how many tcpdump finds with a
    # wrong TCP checksum
    local from='src port 1521 and tcp[13] & 8 != 0'
    REWRITE_TNS=$(tcpdump -r "$OUT/$who-tns.pcap" -n -A "$from" 2>/dev/null | grep -o 'HOST=[^)]*)(PORT=[0-9]*' | sort -u | tr '\n' ' ')
    SENT_TNS=$(tcpdump -r "$OUT/$who-tns.pcap" -n "$from" 2>/dev/null | grep -c .)
    BADSUM_TNS=$(tcpdump -r "$OUT/$who-tns.pcap" -n -vv "$from" 2>/dev/null | grep -c 'cksum .* (incorrect')
    echo "   $who tns: the REDIRECT as it reached the client's side: ${REWRITE_TNS:-none}, sent $SENT_TNS times, $BADSUM_TNS read with a wrong TCP checksum"

    r0=$(lab_nat_count related-in)
    local n0; n0=$(wc -l <"$OUT/public-device.log")
    lab_priv timeout 40 "$PY" "$PEERS" upnp-control-point "$LAB_PRIV4" "$LAB_PUB4" >"$OUT/$who-cp-private.log" 2>&1
    sleep 1  # the device logs its NOTIFY's outcome after the control point has its event (or gave up)
    tail -n +"$((n0 + 1))" "$OUT/public-device.log" >"$OUT/$who-public-device.log"
    lab_fw conntrack -L -p tcp --dport 49152 >"$OUT/$who-location-conntracks.txt" 2>/dev/null
    LOC_HELPERS=$(grep -o 'helper=[a-z-]*' "$OUT/$who-location-conntracks.txt" | sort | uniq -c | tr -s ' \n' ' ')
    echo "   $who callback: the control point's connections to the device: $(grep -c . "$OUT/$who-location-conntracks.txt")," \
        "with a helper: ${LOC_HELPERS:-none}"
    CALLBACK=$(sed -n 's/^subscribe CALLBACK: //p' "$OUT/$who-public-device.log" | head -1)
    EVENTS=$(sed -n 's/^events //p' "$OUT/$who-cp-private.log")
    REL_CB=$(( $(lab_nat_count related-in) - r0 ))
    echo "   $who callback: the device was asked to call $CALLBACK; events at the control point: ${EVENTS:-none}" \
        "($(grep -m1 notif "$OUT/$who-public-device.log"))" | tee -a "$OUT/results.txt"

    r0=$(lab_nat_count related-in)
    lab_pub timeout 40 "$PY" "$PEERS" upnp-control-point "$LAB_PUB4" "$LAB_GW_PUB4" >"$OUT/$who-cp-public.log" 2>&1
    LOCATION=$(sed -n 's/^answer from .* //p' "$OUT/$who-cp-public.log")
    FETCHED=$(sed -n 's/^description \([0-9]*\) bytes/\1/p' "$OUT/$who-cp-public.log")
    REL_LOC=$(( $(lab_nat_count related-in) - r0 ))
    echo "   $who location: told $LOCATION; description fetched: ${FETCHED:-no} ($(tail -1 "$OUT/$who-cp-public.log"))" \
        | tee -a "$OUT/results.txt"

    sleep 0.3; kill "$ev" 2>/dev/null; wait "$ev" 2>/dev/null
    sed 's/^/     /' "$OUT/$who-expect-events.txt" | grep NEW
}

echo "== alg (alg-tns, alg-ssdp)"
t=$SECONDS
ip netns exec "$LAB_NS_FW" "$ALG" run --policy "$RUN/policy" >"$OUT/alg.log" 2>&1 & ALG_PID=$!
for _ in $(seq 900); do enabled alg-tns alg-ssdp && break; kill -0 "$ALG_PID" 2>/dev/null || break; sleep 0.2; done
check "alg run: alg-tns and alg-ssdp registered and enabled ($((SECONDS - t)) s)" enabled alg-tns alg-ssdp
helpers_use alg
round alg
A_REWRITE=$REWRITE_TNS A_CALLBACK=$CALLBACK
check "alg tns: the outside client is told the gateway's address ($TOLD_TNS)" test "$TOLD_TNS" = "$LAB_GW_PUB4:1522"
check "alg tns: it reaches the listener's 1522 through the gateway (REFUSE from it; related-in +$REL_TNS)" \
    eval '[[ $TNS_RESULT == *"(REFUSE)"* ]] && [ "$REL_TNS" -ge 1 ]'
check "alg tns: the rewritten REDIRECT was sent once: the client took it ($SENT_TNS)" test "$SENT_TNS" = 1
check "alg callback: the description connections got alg-ssdp from the LOCATION expectation ($LOC_HELPERS)" \
    eval '[[ $LOC_HELPERS == *helper=alg-ssdp* ]]'
check "alg callback: rewritten to the gateway's address ($CALLBACK)" eval '[[ $CALLBACK == "<http://$LAB_GW_PUB4:"[0-9]*"/cb>" ]]'
check "alg callback: the device's NOTIFY reaches the control point inside (events $EVENTS, related-in +$REL_CB)" \
    eval '[ "${EVENTS:-0}" -ge 1 ] && [ "$REL_CB" -ge 1 ]'
check "alg location: the outside control point is told the gateway's address ($LOCATION)" \
    test "$LOCATION" = "http://$LAB_GW_PUB4:49152/desc.xml"
check "alg location: it fetches the description through the gateway (${FETCHED:-0} bytes, related-in +$REL_LOC)" \
    eval '[ "${FETCHED:-0}" -gt 0 ] && [ "$REL_LOC" -ge 1 ]'
lab_fw "$ALG" status >"$OUT/alg-status.txt" 2>&1
kill -TERM "$ALG_PID" 2>/dev/null; wait "$ALG_PID" 2>/dev/null; ALG_PID=
echo "   (alg: $((SECONDS - t)) s)"

echo "== conntrackd 1.4.7 (tns, ssdp), its own NAT rewriting"
t=$SECONDS
helpers_none
for p in "tns tcp" "ssdp udp" "ssdp tcp"; do lab_fw nfct add helper ${p% *} inet ${p#* } 2>/dev/null; done
{
    echo "General { Syslog off LogFile $RUN/conntrackd.log LockFile $RUN/conntrackd.lock UNIX { Path $RUN/ctd.ctl } }"
    echo "Helper {"
    echo " Type tns inet tcp { QueueNum 40 QueueLen 1024 Policy tns { ExpectMax 1 ExpectTimeout 300 } }"
    echo " Type ssdp inet udp { QueueNum 41 QueueLen 1024 Policy ssdp { ExpectMax 8 ExpectTimeout 300 } }"
    echo " Type ssdp inet tcp { QueueNum 42 QueueLen 1024 Policy ssdp { ExpectMax 8 ExpectTimeout 300 } }"
    echo "}"
} >"$RUN/conntrackd.conf"
ip netns exec "$LAB_NS_FW" conntrackd -C "$RUN/conntrackd.conf" >"$OUT/conntrackd.out" 2>&1 & CTD_PID=$!
for _ in $(seq 100); do enabled tns ssdp && break; sleep 0.2; done
check "conntrackd: tns and ssdp enabled" enabled tns ssdp
helpers_use conntrackd
round conntrackd
check "parity tns: conntrackd rewrites the REDIRECT as alg does (${REWRITE_TNS:-nothing}; alg ${A_REWRITE:-nothing})" \
    eval '[ -n "$REWRITE_TNS" ] && [ "$REWRITE_TNS" = "$A_REWRITE" ]'
# conntrackd 1.4.7's rewritten segment is retransmitted until the client gives up: the client never
# takes it. tcpdump reads a wrong TCP checksum in each copy (off by the same small amount; a mangled
# packet leaves the queue with CHECKSUM_NONE, so that is what went on the wire), but it reads one in
# the unmangled forwarded segment of the `none` round too (checksum offload on veth): a hint, not proof
check "DIFFERENCE tns: conntrackd's rewritten REDIRECT is never taken by the client (sent $SENT_TNS times, $BADSUM_TNS read with a wrong TCP checksum; $TNS_RESULT)" \
    eval '[ "$SENT_TNS" -ge 2 ] && [[ $TNS_RESULT != *"(REFUSE)"* ]] && [ "$REL_TNS" = 0 ]'
# the answer to a unicast M-SEARCH comes on its own, confirmed flow: conntrackd expects the
# description connection (its event above) but that connection, on which the SUBSCRIBE goes, gets
# no helper, so it never reads the CALLBACK. alg's LOCATION expectation rides on the answer's verdict,
# the one place this kernel honours CTA_EXPECT_HELP_NAME (helpers/ssdp.py, "Kernel limit")
check "DIFFERENCE callback: conntrackd never reads the SUBSCRIBE (connections to the device with a helper: ${LOC_HELPERS:-none}); CALLBACK left naming the inside, no event" \
    eval '[ -z "$LOC_HELPERS" ] && [ "$CALLBACK" = "<http://$LAB_PRIV4:49200/cb>" ] && [ "${EVENTS:-0}" = 0 ] && [ "$REL_CB" = 0 ]'
check "DIFFERENCE location: conntrackd leaves LOCATION naming the inside ($LOCATION); nothing fetched" \
    eval '[ "$LOCATION" = "http://$LAB_PRIV4:49152/desc.xml" ] && [ -z "$FETCHED" ]'
kill "$CTD_PID" 2>/dev/null; wait "$CTD_PID" 2>/dev/null; CTD_PID=
cp "$RUN/conntrackd.log" "$OUT/" 2>/dev/null
echo "   (conntrackd: $((SECONDS - t)) s)"

echo "== none: no helper on the gateway"
t=$SECONDS
helpers_none
round none
check "none tns: the outside client is told the private address ($TOLD_TNS) and fails" \
    eval '[ "$TOLD_TNS" = "$LAB_PRIV4:1522" ] && [[ $TNS_RESULT != *"(REFUSE)"* ]]'
check "none callback: the device is asked to call the private address ($CALLBACK); no event" \
    eval '[ "$CALLBACK" = "<http://$LAB_PRIV4:49200/cb>" ] && [ "${EVENTS:-0}" = 0 ]'
check "none location: the outside control point is told the private address; nothing fetched" \
    eval '[ "$LOCATION" = "http://$LAB_PRIV4:49152/desc.xml" ] && [ -z "$FETCHED" ]'
echo "   (none: $((SECONDS - t)) s)"
echo "nat-tns-ssdp: $FAILS failed"
[ "$FAILS" = 0 ]
