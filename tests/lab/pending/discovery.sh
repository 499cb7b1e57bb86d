#!/usr/bin/env bash
# Lab scenario (runs inside the VM): alg's discovery helpers (mdns, slp,
# dhcpv6, ssdp) as userspace conntrack helpers.
#
# Topology: a firewall does not route multicast, so the helpers protect the
# firewall's OWN discovery traffic, the case they exist for (a host or router
# that asks its LAN by multicast and must let the unicast answers in): lab-fw
# is the client on its s1 link, the responders run in lab-srv. lab-fw's INPUT
# chain on s1 accepts ESTABLISHED, RELATED (counted, dc-related) and ICMPv6,
# drops the rest (counted, dc-drop). Raw OUTPUT rules give lab-fw's queries
# the helper: `CT --helper NAME`. A unicast answer is a new flow (other
# source address/port than the multicast query): without an expectation it
# is dropped, with one it is RELATED.
#   mdns    dig -p 5353 @224.0.0.251 (legacy unicast)  <- avahi-daemon answers from 10.0.2.2:5353
#   slp     SrvRqst to 239.255.255.253 and to 10.0.2.255 <- scripted SA (tools/discovery_peers.py)
#   dhcpv6  dhclient -6 on s1 (fe80:: -> ff02::1:2)     <- dnsmasq answers from its fe80:: address
#   ssdp    scripted control point: M-SEARCH, LOCATION fetch, SUBSCRIBE <- scripted device, whose
#           NOTIFY to the callback must also be RELATED (assign_helper: needs the daemon to send
#           CTA_EXPECT_HELP_NAME and to register ssdp for tcp too)
# Phases: P alg running (PASS = answers received, dc-related grew, expectations listed);
#         N alg stopped (PASS = the same answers dropped: dc-drop grew);
#         C conntrackd (Debian's helpers) on the same traffic, its expectations compared with
#           alg's. Deliberate differences (alg stricter): mdns/slp/dhcpv6 src masked to the
#           client's subnet (conntrackd: any source), dhcpv6 sport 547 (conntrackd: any);
#           ssdp LOCATION: alg expects client -> responder only, conntrackd any -> LOCATION.
#
#   export ALG_ROOT=/path/to/alg ALG=$ALG_ROOT/.venv/bin/alg
#   /work/shared/lab/vm-run -e ALG_ROOT -e ALG tests/lab/scenarios/discovery.sh
set -u
: "${ALG_ROOT:?}" "${ALG:?}" "${LAB_DIR:?}" "${LAB_SCRATCH:?}"
# shellcheck source=/dev/null
source "$LAB_DIR/netns.sh"
OUT=$LAB_SCRATCH/discovery RUN=/run/alg-discovery
PY=${LAB_HOST_PYTHON:-python3}
PEERS=$ALG_ROOT/tools/discovery_peers.py
mkdir -p "$OUT" "$RUN"
FAILS=0
pass() { echo "PASS $*"; }
fail() { echo "FAIL $*"; FAILS=$((FAILS + 1)); }
bg() { local name=$1; shift; "$@" >"$OUT/$name.log" 2>&1 & echo $! >"$RUN/$name.pid"; }
stop() { local p; for p in "$@"; do [ -f "$RUN/$p.pid" ] && kill "$(cat "$RUN/$p.pid")" 2>/dev/null; rm -f "$RUN/$p.pid"; done; }

cleanup() {
    stop alg conntrackd avahi dnsmasq device agent
    lab_fw "$ALG" cleanup >/dev/null 2>&1 || true
    lab_net_down
}
trap cleanup EXIT

lab_net_up || { echo "FAIL lab_net_up"; exit 1; }
lab_fw ip route add 224.0.0.0/4 dev s1
lab_srv ip route add 224.0.0.0/4 dev s0
for ipt in "$LAB_IPT" "$LAB_IP6T"; do
    lab_fw "$ipt" -A INPUT -i s1 -m conntrack --ctstate ESTABLISHED -j ACCEPT
    lab_fw "$ipt" -A INPUT -i s1 -m conntrack --ctstate RELATED -m comment --comment dc-related -j ACCEPT
done
lab_fw "$LAB_IP6T" -A INPUT -i s1 -p ipv6-icmp -j ACCEPT
for ipt in "$LAB_IPT" "$LAB_IP6T"; do
    lab_fw "$ipt" -A INPUT -i s1 -m comment --comment dc-drop -j DROP
done
# CT rules need the helper to exist: added once a daemon registered them, removed after it
ct_rules() {  # -A | -D
    local ipt
    for ipt in "$LAB_IPT" "$LAB_IP6T"; do lab_fw "$ipt" -t raw "$1" OUTPUT -o s1 -p udp --dport 1900 -j CT --helper ssdp; done
    lab_fw "$LAB_IPT" -t raw "$1" OUTPUT -o s1 -p udp --dport 5353 -j CT --helper mdns
    lab_fw "$LAB_IPT" -t raw "$1" OUTPUT -o s1 -p udp --dport 427 -j CT --helper slp
    lab_fw "$LAB_IP6T" -t raw "$1" OUTPUT -o s1 -p udp --dport 547 -j CT --helper dhcpv6
}
count() { lab_fw "$LAB_IPT" -nvxL INPUT; lab_fw "$LAB_IP6T" -nvxL INPUT; }
counter() { count | awk -v c="/* $1 */" 'index($0, c) {s += $1} END {print s+0}'; }

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
bg avahi lab_srv avahi-daemon --no-drop-root --no-chroot --no-rlimits -f "$RUN/avahi.conf"
bg dnsmasq lab_srv dnsmasq --no-daemon --port=0 --interface=s0 --bind-interfaces --no-resolv \
    --dhcp-range=fd00:2::100,fd00:2::1ff,64,1h --dhcp-leasefile="$RUN/dnsmasq.leases" --pid-file="$RUN/dm.pid"
bg device lab_srv "$PY" "$PEERS" upnp-device "$LAB_SERVER4"
bg agent lab_srv "$PY" "$PEERS" slp-agent "$LAB_SERVER4"
sleep 4

# ---------------------------------------------------------------- traffic (lab-fw is the client)
# each sets OK_<proto>=1 when the answer arrived
drive() {
    OK_mdns=0 OK_slp=0 OK_dhcpv6=0 OK_ssdp=0
    lab_fw conntrack -F >/dev/null 2>&1; lab_fw conntrack -F expect >/dev/null 2>&1
    # dig ignores an answer from another address than it asked: the answer is seen in the
    # capture-free way, as the dc-related/dc-drop counters; avahi's answer count is the evidence
    lab_fw dig +tries=2 +time=2 -b "$LAB_FW4_S" -p 5353 @224.0.0.251 alg-lab-srv.local A >"$OUT/$1-dig.txt" 2>&1
    lab_fw "$PY" "$PEERS" slp-ua 239.255.255.253 "$LAB_FW4_S" >"$OUT/$1-slp.txt" 2>&1 &&
        lab_fw "$PY" "$PEERS" slp-ua 10.0.2.255 "$LAB_FW4_S" >>"$OUT/$1-slp.txt" 2>&1 && OK_slp=1
    rm -f "$RUN/dh.leases"
    lab_fw timeout 15 dhclient -6 -1 -sf /bin/true -lf "$RUN/dh.leases" -pf "$RUN/dh.pid" s1 >"$OUT/$1-dhclient.txt" 2>&1 &&
        grep -q iaaddr "$RUN/dh.leases" && OK_dhcpv6=1
    lab_fw timeout 15 "$PY" "$PEERS" upnp-control-point "$LAB_FW4_S" >"$OUT/$1-ssdp.txt" 2>&1 && OK_ssdp=1
    lab_fw conntrack -L expect >"$OUT/$1-expect.txt" 2>/dev/null || true
}

# ---------------------------------------------------------------- C: conntrackd reference
for t in "mdns inet udp" "slp inet udp" "dhcpv6 inet6 udp" "ssdp inet udp" "ssdp inet tcp"; do
    lab_fw nfct add helper $t >/dev/null 2>&1 || true
done
{
    echo "General { Syslog off LogFile $RUN/conntrackd.log LockFile $RUN/conntrackd.lock UNIX { Path $RUN/ctd.ctl } }"
    echo "Helper {"
    q=30; for t in "mdns inet udp 8 30" "slp inet udp 8 16" "dhcpv6 inet6 udp 1 300" "ssdp inet udp 8 300" "ssdp inet tcp 8 300"; do
        set -- $t; echo " Type $1 $2 $3 { QueueNum $q QueueLen 1024 Policy $1 { ExpectMax $4 ExpectTimeout $5 } }"; q=$((q + 1))
    done
    echo "}"
} >"$RUN/conntrackd.conf"
cp "$RUN/conntrackd.conf" "$OUT/"
bg conntrackd lab_fw conntrackd -C "$RUN/conntrackd.conf"
sleep 3
ct_rules -A
drive conntrackd
stop conntrackd
ct_rules -D
lab_fw conntrack -F >/dev/null 2>&1; lab_fw conntrack -F expect >/dev/null 2>&1
for t in "mdns inet udp" "slp inet udp" "dhcpv6 inet6 udp" "ssdp inet udp" "ssdp inet tcp"; do
    lab_fw nfct del helper $t >/dev/null 2>&1 || true
done

# ---------------------------------------------------------------- P: alg
mkdir -p "$OUT/policy"
cp "$ALG_ROOT"/policies/{mdns,slp,dhcpv6,ssdp}.toml "$OUT/policy/"
bg alg lab_fw "$ALG" run --policy "$OUT/policy"
for i in $(seq 60); do lab_fw nfct list helper 2>/dev/null | grep -q ssdp && break; sleep 0.5; done
ct_rules -A
lab_fw "$ALG" rules --iptables >"$OUT/rules.txt" 2>&1 || true
r0=$(counter dc-related) d0=$(counter dc-drop)
drive alg
r1=$(counter dc-related) d1=$(counter dc-drop)
"$ALG" status --format json >"$OUT/alg-status.json" 2>/dev/null || true
# a used expectation leaves `conntrack -L expect`: alg's own count says what it created
for h in mdns slp dhcpv6 ssdp; do
    n=$("$PY" -c "import json,sys; h=json.load(open(sys.argv[1]))['helpers'][sys.argv[2]]
print(sum(c['created'] for c in h['classes'].values()))" "$OUT/alg-status.json" "$h" 2>/dev/null || echo 0)
    [ "${n:-0}" -ge 1 ] && pass "alg $h expectations created ($n)" || fail "alg $h expectations created"
done
[ "$OK_slp" = 1 ] && pass "alg slp replies received" || fail "alg slp replies received"
[ "$OK_dhcpv6" = 1 ] && pass "alg dhcpv6 lease" || fail "alg dhcpv6 lease"
grep -q "^subscribe: HTTP/1.1 200" "$OUT/alg-ssdp.txt" && pass "alg ssdp search, LOCATION fetch, SUBSCRIBE" \
    || fail "alg ssdp search, LOCATION fetch, SUBSCRIBE"
[ $((r1 - r0)) -ge 5 ] && pass "alg answers RELATED ($((r1 - r0)))" || fail "alg answers RELATED ($((r1 - r0)))"
# not yet: the device's event connection to the CALLBACK needs the SUBSCRIBE flow (itself
# RELATED) to carry the ssdp helper; shown, not counted (see the issue's closing note)
echo "KNOWN ssdp events received: $(grep -o 'events [0-9]*' "$OUT/alg-ssdp.txt"), answers dropped: $((d1 - d0))"

# ---------------------------------------------------------------- N: alg stopped
stop alg; sleep 1
d0=$(counter dc-drop)
drive noalg
d1=$(counter dc-drop)
[ "$OK_slp$OK_dhcpv6$OK_ssdp" = 000 ] && pass "negative control: no answers" || \
    fail "negative control: slp=$OK_slp dhcpv6=$OK_dhcpv6 ssdp=$OK_ssdp"
[ $((d1 - d0)) -ge 3 ] && pass "negative control: answers dropped ($((d1 - d0)))" || fail "negative control drops $((d1 - d0))"
lab_fw "$ALG" cleanup >/dev/null 2>&1 || true

# compare (proto, dst, dport, sport-mask) per helper: equal except the listed stricter fields
# (the client's ephemeral ports differ between runs: ports above 1023 compare as "eph")
norm() { sed -n 's/.*proto=\([0-9]*\) src=\S* dst=\(\S*\) sport=\S* dport=\([0-9]*\) mask-src=\(\S*\) .* helper=\(\S*\)/\5 \1 \2 \3/p' "$1" |
    awk '{ if ($4 > 1023) $4 = "eph"; print }' | sort -u; }
norm "$OUT/alg-expect.txt" >"$OUT/alg-norm.txt"; norm "$OUT/conntrackd-expect.txt" >"$OUT/conntrackd-norm.txt"
for h in mdns slp dhcpv6; do
    a=$(grep "^$h " "$OUT/alg-norm.txt") c=$(grep "^$h " "$OUT/conntrackd-norm.txt")
    [ -n "$c" ] && [ "$a" = "$c" ] && pass "$h expectation = conntrackd's (dst, dport)" || \
        fail "$h differs from conntrackd: alg [$a] conntrackd [$c]"
done
grep -q "helper=ssdp" "$OUT/conntrackd-expect.txt" && pass "conntrackd ssdp reference recorded" || \
    fail "conntrackd ssdp reference"
echo "discovery: $FAILS failure(s); evidence in $OUT"
[ "$FAILS" = 0 ]
