#!/usr/bin/env bash
# Lab scenario (runs inside the VM): alg's discovery helpers (mdns, slp, dhcpv6, ssdp) as
# userspace conntrack helpers, against conntrackd's helpers of the same names on the same traffic.
#
# Topology: a firewall does not route multicast, so the helpers protect the firewall's OWN
# discovery traffic, the case they exist for (a host or router that asks its LAN by multicast
# and must let the unicast answers in): lab-fw is the client on its s1 link, the responders run
# in lab-srv. lab-fw's INPUT chain: `alg rules` (RELATED with `-m helper --helper NAME`, one
# counter per helper), then ESTABLISHED, RELATED of no helper (dc-related), ICMPv6, and DROP
# (dc-drop). The raw rules of `alg rules` (CT --helper NAME on OUTPUT) are added only while a
# daemon has registered the helpers. A unicast answer is a new flow (another source than the
# multicast group asked): without an expectation it is dropped, with one it is RELATED.
#   mdns    legacy-unicast A query to 224.0.0.251:5353  <- avahi-daemon answers from 10.0.2.2:5353
#   slp     SrvRqst to 239.255.255.253 and to 10.0.2.255 <- scripted SA      (tools/discovery_peers.py)
#   dhcpv6  dhclient -6 on s1 (fe80:: -> ff02::1:2)       <- dnsmasq answers from its fe80:: address
#   ssdp    M-SEARCH, LOCATION fetch, SUBSCRIBE           <- scripted device, then its NOTIFY to the
#           CALLBACK (a connection from the device to lab-fw)
# The client (`discovery_peers.py discover`) asks each question again after 1 s without answer
# from the same socket, as real clients retransmit.
# Phases: C conntrackd (the reference), P alg, N alg stopped (its helpers disabled: all answers
# dropped). Expectations are recorded from `conntrack -E expect` (a used one leaves the table).
# Run time: a Python start costs 10-50 s in the VM, so alg (under its own helper names, alg-mdns
# ..., policy `name`), `alg rules` and the client (one process for all phases, driven through a
# FIFO) start at once, while the conntrackd phase runs; the raw rules pick whose helpers see the
# traffic.
#
# Deliberate differences (alg stricter), checked as such:
#   mdns, slp, dhcpv6  answers only from the client's subnet (mask-src /24, fe80::/64); conntrackd: any
#   dhcpv6             answers only from port 547; conntrackd: any port
#   ssdp LOCATION      alg: client -> responder only; conntrackd: any -> whatever LOCATION names
# The question's expectation rides on its verdict (NFQA_EXP, as conntrackd): the first answer
# passes however fast it comes (avahi, the SA: ~1 ms). For ssdp the answer's conntrack gets
# the ssdp helper (CTA_EXPECT_HELP_NAME on the attached expectation), so alg sees LOCATION; the
# answer is a flow alg expected, so its LOCATION expectation rides on the answer's verdict in
# turn and the SUBSCRIBE connection carries the helper: alg sees CALLBACK, the NOTIFY passes.
#
#   ALG_ROOT=$PWD tools/lab/vm-run -e ALG_ROOT tests/lab/run-all.sh discovery
set -u
: "${ALG_ROOT:?}" "${ALG:?}" "${LAB_DIR:?}" "${LAB_SCRATCH:?}"
# shellcheck source=/dev/null
source "$LAB_DIR/netns.sh"
# shellcheck source=../lib.sh
source "$ALG_ROOT/tests/lab/lib.sh"
OUT=$LAB_SCRATCH/discovery RUN=/run/alg-discovery
PY="${LAB_HOST_PYTHON:-/usr/bin/python3} -I"   # the peers are stdlib only
PEERS=$ALG_ROOT/tools/discovery_peers.py
rm -rf "$OUT" "$RUN"; mkdir -p "$OUT/policy" "$RUN"
declare -A PID=()
start() { local name=$1 ns=$2; shift 2; ip netns exec "$ns" "$@" >"$OUT/$name.log" 2>&1 & PID[$name]=$!; }
stop() {  # SIGTERM, wait up to 10 s, then SIGKILL
    local n p i
    for n in "$@"; do
        p=${PID[$n]:-}; [ -n "$p" ] || continue
        kill -TERM "$p" 2>/dev/null
        for i in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$p" 2>/dev/null; wait "$p" 2>/dev/null; unset "PID[$n]"
    done
}
HELPERS="mdns slp dhcpv6 ssdp"
nfct_each() {  # add|del [PREFIX]: every (name, family, proto) the raw rules need
    local h f
    for h in $HELPERS; do for f in inet inet6; do
        lab_fw nfct "$1" helper "${2:-}$h" "$f" udp 2>/dev/null
        [ "$h" = ssdp ] && lab_fw nfct "$1" helper "${2:-}$h" "$f" tcp 2>/dev/null
    done; done; true
}
cleanup() {
    stop dhclient events alg conntrackd client responders avahi dnsmasq
    [ -s "$RUN/dh.pid" ] && kill "$(cat "$RUN/dh.pid")" 2>/dev/null
    ct_rules ctd -D 2>/dev/null; ct_rules alg -D 2>/dev/null
    lab_fw conntrack -F >/dev/null 2>&1
    nfct_each del; nfct_each del alg-
    lab_net_down
}
trap cleanup EXIT

T0=$(date +%s)
for h in $HELPERS; do sed 's/^name = "\(.*\)"/name = "alg-\1"/' "$ALG_ROOT/policies/$h.toml" >"$OUT/policy/$h.toml"; done
"$ALG" rules --policy "$OUT/policy" --iptables >"$OUT/rules.txt" 2>&1 & RULES_PID=$!
lab_net_up || { echo "FAIL lab_net_up"; exit 1; }
start alg "$LAB_NS_FW" "$ALG" run --policy "$OUT/policy"
mkfifo "$RUN/client.fifo"
start client "$LAB_NS_FW" $PY "$PEERS" client "$LAB_FW4_S" 10.0.2.255 "$RUN/client.fifo"
lab_fw ip route add 224.0.0.0/4 dev s1
lab_srv ip route add 224.0.0.0/4 dev s0
# ---------------------------------------------------------------- responders (lab-srv)
cat >"$RUN/avahi.conf" <<CONF
[server]
host-name=alg-lab-srv
use-ipv4=yes
use-ipv6=no
allow-interfaces=s0
enable-dbus=no
[publish]
publish-workstation=no
CONF
start avahi "$LAB_NS_SERVER" avahi-daemon --no-drop-root --no-chroot --no-rlimits -f "$RUN/avahi.conf"
start dnsmasq "$LAB_NS_SERVER" dnsmasq --no-daemon --port=0 --interface=s0 --bind-interfaces --no-resolv \
    --dhcp-range=fd00:2::100,fd00:2::1ff,64,1h --dhcp-leasefile="$RUN/dnsmasq.leases"
start responders "$LAB_NS_SERVER" $PY "$PEERS" responders "$LAB_SERVER4"
wait "$RULES_PID" || { fail "alg rules"; cat "$OUT/rules.txt"; exit 1; }
# alg's rules, and the same for conntrackd's helpers (plain names, counters tagged "ctd NAME related")
for who in alg ctd; do
    if [ $who = alg ]; then cat "$OUT/rules.txt"; else sed 's/alg-//g; s/"alg \([a-z0-9]*\) related"/"ctd \1 related"/' "$OUT/rules.txt"; fi |
        tee "$OUT/rules-$who.txt" | awk '/^\*raw/,/^COMMIT/' >"$OUT/rules-raw-$who.txt"
    awk '/^\*filter/,/^COMMIT/' "$OUT/rules-$who.txt" >"$OUT/rules-filter-$who.txt"
done
for ipt in "$LAB_IPT" "$LAB_IP6T"; do
    for who in alg ctd; do
        lab_fw "$ipt-restore" --noflush <"$OUT/rules-filter-$who.txt" || fail "apply $who filter rules ($ipt)"
    done
    lab_fw "$ipt" -A INPUT -i s1 -m conntrack --ctstate ESTABLISHED -j ACCEPT
    lab_fw "$ipt" -A INPUT -i s1 -m conntrack --ctstate RELATED -m comment --comment dc-related -j ACCEPT
done
lab_fw "$LAB_IP6T" -A INPUT -i s1 -p ipv6-icmp -j ACCEPT
for ipt in "$LAB_IPT" "$LAB_IP6T"; do lab_fw "$ipt" -A INPUT -i s1 -m comment --comment dc-drop -j DROP; done
ct_rules() {  # alg|ctd -A|-D: the raw part of `alg rules` (CT --helper, in a chain of its own) for alg's or conntrackd's helpers
    local ipt chain
    chain=$(awk -F'[: ]' '/^:/ {print $2; exit}' "$OUT/rules-raw-$1.txt")
    for ipt in "$LAB_IPT" "$LAB_IP6T"; do
        if [ "$2" = -A ]; then
            lab_fw "$ipt-restore" --noflush <"$OUT/rules-raw-$1.txt"
        else  # the jumps to the chain, then the chain: its CT templates let go of their helpers
            lab_fw "$ipt" -t raw -D PREROUTING -j "$chain"; lab_fw "$ipt" -t raw -D OUTPUT -j "$chain"
            lab_fw "$ipt" -t raw -F "$chain"; lab_fw "$ipt" -t raw -X "$chain"
        fi
    done
}
client_do() {  # OUT CMD...: one command to the client, wait for its answer
    local out=$1; shift
    rm -f "$out" "$out.done"
    timeout 5 bash -c 'echo "$1" >"$2"' _ "$* $out" "$RUN/client.fifo" || { echo "client gone"; return 1; }
    for _ in $(seq 150); do [ -e "$out.done" ] && return 0; sleep 0.2; done
    echo "client did not answer: $*"; return 1
}
# every chain of the filter table: the RELATED accepts sit in alg's chains (alg-related, and `related` for
# conntrackd's copy), jumped to from INPUT
counters() { { lab_fw "$LAB_IPT" -nvxL; lab_fw "$LAB_IP6T" -nvxL; } >"$OUT/$1-counters.txt"; }
counter() {  # PHASE COMMENT: packets that hit the rules tagged COMMENT (v4 + v6)
    awk -v c="/* $2 */" 'index($0, c) {s += $1} END {print s+0}' "$OUT/$1-counters.txt"
}
zero() { lab_fw "$LAB_IPT" -Z; lab_fw "$LAB_IP6T" -Z; }  # every chain: the RELATED accepts are in alg-related / related
enabled() {  # alg|ctd: helper entries enabled (alg's are named alg-*)
    lab_fw nfct list helper 2>/dev/null | tr -d '\t\n' | grep -o "name = [a-z0-9-]*,[^}]*status = enabled" |
        if [ "$1" = alg ]; then grep -c "name = alg-"; else grep -vc "name = alg-"; fi
}


# ---------------------------------------------------------------- one round of discovery from lab-fw
drive() {  # PHASE DHCP_TIMEOUT
    lab_fw conntrack -F >/dev/null 2>&1; lab_fw conntrack -F expect >/dev/null 2>&1
    zero
    # expectation events: nf_conntrack_events=2 reports only masters created while a listener exists
    start events "$LAB_NS_FW" stdbuf -oL conntrack -E expect
    wait_listening "${PID[events]}"
    rm -f "$RUN/dh.leases"
    # -1: one try; with a lease it forks to the background (killed below by its pid file)
    start dhclient "$LAB_NS_FW" timeout "$2" dhclient -6 -1 -sf /bin/true -lf "$RUN/dh.leases" -pf "$RUN/dh.pid" s1
    client_do "$OUT/$1-discover.txt" discover
    wait "${PID[dhclient]}" 2>/dev/null; unset "PID[dhclient]"; cp "$OUT/dhclient.log" "$OUT/$1-dhclient.txt"
    [ -s "$RUN/dh.pid" ] && kill "$(cat "$RUN/dh.pid")" 2>/dev/null; rm -f "$RUN/dh.pid"
    if grep -q iaaddr "$RUN/dh.leases" 2>/dev/null; then echo "RESULT dhcpv6 ok" >>"$OUT/$1-discover.txt"
    else echo "RESULT dhcpv6 none" >>"$OUT/$1-discover.txt"; fi
    sleep 0.3
    stop events; cp "$OUT/events.log" "$OUT/$1-events.txt"
    counters "$1"
    lab_fw conntrack -L expect >"$OUT/$1-expect.txt" 2>/dev/null
    lab_fw conntrack -L >"$OUT/$1-conntrack.txt" 2>/dev/null
    sed 's/^/  /' "$OUT/$1-discover.txt"
}
result() { awk -v n="$2" '$1 == "RESULT" && $2 == n {print $3; exit}' "$OUT/$1-discover.txt"; }
tries() { awk -v n="$2" '$1 == "RESULT" && $2 == n {sub("tries=", "", $4); print $4; exit}' "$OUT/$1-discover.txt"; }
ok() { [ "$(result "$1" "$2")" = ok ]; }

# ---------------------------------------------------------------- C: conntrackd reference
nfct_each add
{
    echo "General { Syslog off LogFile $RUN/conntrackd.log LockFile $RUN/conntrackd.lock UNIX { Path $RUN/ctd.ctl } }"
    echo "Helper {"
    q=30
    for t in "mdns inet udp 8 30" "slp inet udp 8 16" "dhcpv6 inet6 udp 1 300" "ssdp inet udp 8 300" "ssdp inet tcp 8 300"; do
        # shellcheck disable=SC2086
        set -- $t
        echo " Type $1 $2 $3 { QueueNum $q QueueLen 1024 Policy $1 { ExpectMax $4 ExpectTimeout $5 } }"; q=$((q + 1))
    done
    echo "}"
} >"$OUT/conntrackd.conf"
start conntrackd "$LAB_NS_FW" conntrackd -C "$OUT/conntrackd.conf"
for _ in $(seq 50); do [ "$(enabled ctd)" -ge 5 ] && break; sleep 0.2; done
check "conntrackd helpers enabled ($(enabled ctd))" [ "$(enabled ctd)" -ge 5 ]
for _ in $(seq 100); do grep -q ready "$OUT/client.log" && grep -q "slp agent ready" "$OUT/responders.log" && break; sleep 0.3; done
ct_rules ctd -A
echo "== C: conntrackd (at $(( $(date +%s) - T0 )) s)"
drive conntrackd 8
for r in mdns slp-multicast slp-broadcast dhcpv6 ssdp-search ssdp-location ssdp-event; do
    check "conntrackd reference: $r answered" ok conntrackd "$r"
done
stop conntrackd
ct_rules ctd -D
nfct_each del

# ---------------------------------------------------------------- P: alg
echo "== P: alg (at $(( $(date +%s) - T0 )) s)"
for _ in $(seq 300); do [ "$(enabled alg)" -ge 10 ] && break; kill -0 "${PID[alg]}" 2>/dev/null || break; sleep 0.3; done
lab_fw nfct list helper >"$OUT/alg-helpers.txt" 2>&1
for h in $HELPERS; do  # name, its queue and enabled, for both families (ssdp: udp and tcp)
    want=2; [ "$h" = ssdp ] && want=4
    n=$(tr -d '\t\n' <"$OUT/alg-helpers.txt" | grep -o "name = alg-$h,[^}]*status = enabled" | wc -l)
    check "alg $h registered and enabled ($n of $want)" [ "$n" -eq "$want" ]
done
ct_rules alg -A
echo "INFO alg up at $(( $(date +%s) - T0 )) s"
drive alg 8
client_do "$OUT/alg-status.json" status /run/alg/alg.sock  # `alg status --format json`, without a Python start
declare -A HELPER_OF=([mdns]=mdns [slp-multicast]=slp [slp-broadcast]=slp [dhcpv6]=dhcpv6 [ssdp-search]=ssdp)
for r in mdns slp-multicast slp-broadcast dhcpv6 ssdp-search; do
    h=${HELPER_OF[$r]}
    n=$(counter alg "alg alg-$h related")
    check "alg $r: answer RELATED through lab-fw (alg-$h related: $n)" eval 'ok alg "$r" && [ "$n" -ge 1 ]'
done
for h in $HELPERS; do
    n=$(jq "[.helpers[\"alg-$h\"].classes[].created] | add" "$OUT/alg-status.json" 2>/dev/null)
    check "alg $h expectations created (${n:-?})" [ "${n:-0}" -ge 1 ]
done
echo "INFO alg phase: $(counter alg dc-drop) packet(s) dropped at lab-fw, $(counter alg dc-related) RELATED of no helper"
for r in mdns slp-multicast slp-broadcast ssdp-search; do
    # the question's expectation rides on its verdict: the first answer passes, however fast
    check "alg $r: the first answer passed (try $(tries alg "$r"); conntrackd: try $(tries conntrackd "$r"))" \
        [ "$(tries alg "$r")" = 1 ]
done
check "alg ssdp LOCATION fetched (the answer's conntrack got the ssdp helper from the attached expectation)" \
    ok alg ssdp-location
check "alg ssdp event (NOTIFY to the CALLBACK) RELATED" ok alg ssdp-event

# ---------------------------------------------------------------- N: alg stopped
echo "== N: alg stopped (at $(( $(date +%s) - T0 )) s)"
stop alg
lab_fw nfct list helper >"$OUT/noalg-helpers.txt" 2>&1
check "alg stopped: its helpers disabled ($(enabled alg) enabled)" [ "$(enabled alg)" -eq 0 ]
drive noalg 5
for r in mdns slp-multicast slp-broadcast dhcpv6 ssdp-search; do
    check "negative control: $r not answered" eval '! ok noalg "$r"'
done
d=$(counter noalg dc-drop)
# each question asked twice: mdns 2, slp 2 + 2, ssdp 2, dhcpv6 >= 2 (Advertise to Solicit and its retransmission)
check "negative control: the answers dropped at lab-fw ($d)" [ "$d" -ge 10 ]
ct_rules alg -D
# alg left its helpers disabled (the CT rules held them); try to leave nothing of it behind
lab_fw conntrack -F >/dev/null 2>&1; lab_fw conntrack -F expect >/dev/null 2>&1
for _ in $(seq 10); do
    nfct_each del alg-
    lab_fw nfct list helper 2>/dev/null | grep -q "name = alg-" || break
    sleep 1
done
left=$(lab_fw nfct list helper 2>/dev/null | tr -d '\t\n' | grep -o "name = alg-[^}]*" || true)
# what matters for the next scenario: none is enabled (nothing is queued to nobody); the
# kernel may still refuse to delete a userspace helper (EBUSY) it holds a reference to
check "alg's helpers disabled after the rules ($(grep -c "status = enabled" <<<"$left") enabled)" \
    eval '! grep -q "status = enabled" <<<"$left"'
echo "INFO alg's helper entries the kernel still holds (EBUSY on delete): $(grep -o "name = alg-[a-z0-9]*" <<<"$left" | wc -l)"

echo "== expectations (at $(( $(date +%s) - T0 )) s)"
# ---------------------------------------------------------------- expectations: alg = conntrackd, but stricter
# normalised: helper proto dst sport(* = any) dport(eph = the client's ephemeral port) mask-src
norm() {
    awk '$1 != "[NEW]" {next} { h = p = d = ms = ""; ns = nd = 0
        for (i = 1; i <= NF; i++) { k = $i; sub("=.*", "", k); v = substr($i, length(k) + 2)
            if (k == "proto") p = v; else if (k == "dst" && d == "") d = v; else if (k == "helper") h = v
            else if (k == "mask-src") ms = v
            else if (k == "sport") { ns++; if (ns == 1) sp = v; else if (ns == 2) msp = v }
            else if (k == "dport") { nd++; if (nd == 1) dp = v } }
        if (h == "") next
        sub("^alg-", "", h)
        if (msp == "0") sp = "*"; if (dp + 0 > 1023) dp = "eph"
        print h, p, d, sp, dp, ms }' "$1" | sort -u
}
norm "$OUT/conntrackd-events.txt" >"$OUT/conntrackd-norm.txt"; norm "$OUT/alg-events.txt" >"$OUT/alg-norm.txt"
sed 's/^/  conntrackd: /' "$OUT/conntrackd-norm.txt"; sed 's/^/  alg:        /' "$OUT/alg-norm.txt"
same() {  # HELPER PROTO KEYFIELDS: alg's and conntrackd's expectations agree on those fields
    local a c
    a=$(awk -v h="$1" -v p="$2" -v f="$3" '$1 == h && $2 == p {n = split(f, F, ","); s = ""; for (i = 1; i <= n; i++) s = s " " $F[i]; print s}' "$OUT/alg-norm.txt" | sort -u)
    c=$(awk -v h="$1" -v p="$2" -v f="$3" '$1 == h && $2 == p {n = split(f, F, ","); s = ""; for (i = 1; i <= n; i++) s = s " " $F[i]; print s}' "$OUT/conntrackd-norm.txt" | sort -u)
    [ -n "$c" ] && [ "$a" = "$c" ]
}
field() { awk -v h="$2" -v p="$3" -v i="$4" '$1 == h && $2 == p {print $i; exit}' "$OUT/$1-norm.txt"; }
check "mdns expectation = conntrackd's (udp, dst, sport 5353, dport)" same mdns 17 3,4,5
check "slp expectations = conntrackd's (udp, dst, sport 427, dport)" same slp 17 3,4,5
check "dhcpv6 expectation = conntrackd's (udp, dst, dport 546)" same dhcpv6 17 3,5
check "ssdp search expectation = conntrackd's (udp, dst, any sport, dport)" same ssdp 17 3,4,5,6
for h in mdns slp dhcpv6; do
    a=$(field alg "$h" 17 6) c=$(field conntrackd "$h" 17 6)
    check "STRICTER $h: answers from the client's subnet only (alg mask-src $a, conntrackd $c)" \
        eval '{ [ "$c" = 0.0.0.0 ] || [ "$c" = :: ]; } && [ -n "$a" ] && [ "$a" != "$c" ]'
done
a=$(field alg dhcpv6 17 4) c=$(field conntrackd dhcpv6 17 4)
check "STRICTER dhcpv6: answers from port 547 only (alg sport $a, conntrackd $c)" eval '[ "$a" = 547 ] && [ "$c" = "*" ]'
n_cd=$(grep -c '^ssdp 6 ' "$OUT/conntrackd-norm.txt") n_alg=$(grep -c '^ssdp 6 ' "$OUT/alg-norm.txt")
check "ssdp tcp expectations (LOCATION, CALLBACK): as many as conntrackd's ($n_alg, $n_cd)" [ "$n_alg" = "$n_cd" ]
check "STRICTER ssdp LOCATION: from the searching client only (alg mask-src 255.255.255.255)" \
    grep -q '^ssdp 6 10.0.2.2 \* eph 255.255.255.255' "$OUT/alg-norm.txt"

echo "discovery: $FAILS failure(s) in $(( $(date +%s) - T0 )) s; evidence in $OUT"
[ "$FAILS" = 0 ]
