#!/usr/bin/env bash
# Record real discovery traffic in two network namespaces joined by one link
# (client alg-dc-cli, responders alg-dc-srv), one capture per protocol:
#   mdns    dig -p 5353 @224.0.0.251 / @ff02::fb (legacy unicast) answered by avahi-daemon
#   dhcpv6  dhclient -6 against dnsmasq (stateful DHCPv6)
#   ssdp    async-upnp-client's `upnp-client search` and `subscribe` against tools/discovery_peers.py's
#           UPnP device (scripted: no installable UPnP device here), or the scripted control point
#   slp     pyslp's client if importable, else the scripted SLP agent/UA of tools/discovery_peers.py
# Usage: sudo tools/record-discovery.sh OUTDIR [PYTHON_WITH_ASYNC_UPNP_CLIENT]
set -euo pipefail
OUT=${1:?outdir}; UPY=${2:-python3}
HERE=$(cd "$(dirname "$0")" && pwd)
C=alg-dc-cli S=alg-dc-srv RUN=/run/alg-dc
mkdir -p "$OUT" "$RUN"
cleanup() {
  for p in "$RUN"/*.pid; do [ -f "$p" ] && kill "$(cat "$p")" 2>/dev/null || true; done
  ip netns del $C 2>/dev/null || true; ip netns del $S 2>/dev/null || true
}
trap cleanup EXIT
cleanup
ip netns add $C; ip netns add $S
ip link add dc0 netns $C type veth peer name dc1 netns $S
for ns in $C $S; do
  ip netns exec $ns sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0
  ip netns exec $ns ip link set lo up
done
ip netns exec $C ip link set dc0 address 02:00:00:00:dc:20
ip netns exec $S ip link set dc1 address 02:00:00:00:dc:30
ip netns exec $C ip addr add 192.168.77.20/24 dev dc0
ip netns exec $S ip addr add 192.168.77.30/24 dev dc1
ip netns exec $S ip addr add fd00:77::30/64 dev dc1
ip netns exec $C ip link set dc0 up; ip netns exec $S ip link set dc1 up
for ns in $C $S; do ip netns exec $ns ip route add 224.0.0.0/4 dev $( [ $ns = $C ] && echo dc0 || echo dc1 ); done
sleep 2  # link-local addresses

cap() {  # cap NAME FILTER: start tcpdump in the client namespace
  ip netns exec $C tcpdump -i dc0 -U -s 0 -w "$OUT/$1.pcap" "$2" >/dev/null 2>&1 & echo $! >"$RUN/tcpdump.pid"; sleep 1
}
endcap() { sleep 1; kill "$(cat "$RUN/tcpdump.pid")"; wait "$(cat "$RUN/tcpdump.pid")" 2>/dev/null || true; rm -f "$RUN/tcpdump.pid"; }

# ---------------------------------------------------------------- mDNS
cat >"$RUN/avahi.conf" <<CONF
[server]
host-name=alg-dc-srv
domain-name=local
use-ipv4=yes
use-ipv6=yes
allow-interfaces=dc1
enable-dbus=no
[publish]
publish-addresses=yes
publish-workstation=no
[reflector]
[rlimits]
CONF
ip netns exec $S avahi-daemon --no-drop-root --no-chroot --no-rlimits -f "$RUN/avahi.conf" \
  >"$OUT/avahi.log" 2>&1 & echo $! >"$RUN/avahi.pid"
sleep 4
cap mdns "udp port 5353"
ip netns exec $C dig +tries=1 +time=2 -p 5353 @224.0.0.251 alg-dc-srv.local A | tee "$OUT/mdns-dig4.txt" | grep -A1 "ANSWER SECTION" || true
endcap
kill "$(cat "$RUN/avahi.pid")"; rm -f "$RUN/avahi.pid"

# ---------------------------------------------------------------- DHCPv6
ip netns exec $S dnsmasq --no-daemon --port=0 --interface=dc1 --bind-interfaces --no-resolv \
  --dhcp-range=fd00:77::100,fd00:77::1ff,64,1h --dhcp-leasefile="$RUN/dnsmasq.leases" \
  --pid-file="$RUN/dnsmasq.pid2" --log-dhcp >"$OUT/dnsmasq.log" 2>&1 & echo $! >"$RUN/dnsmasq.pid"
sleep 1
cap dhcpv6 "udp port 546 or udp port 547"
ip netns exec $C timeout 20 dhclient -6 -1 -v -sf /bin/true -lf "$RUN/dhclient6.leases" -pf "$RUN/dhclient6.pid2" dc0 \
  >"$OUT/dhclient.log" 2>&1 || true
ip netns exec $C timeout 10 dhclient -6 -r -v -sf /bin/true -lf "$RUN/dhclient6.leases" -pf "$RUN/dhclient6.pid2" dc0 \
  >>"$OUT/dhclient.log" 2>&1 || true
endcap
kill "$(cat "$RUN/dnsmasq.pid")" 2>/dev/null || true; rm -f "$RUN/dnsmasq.pid"

# ---------------------------------------------------------------- SSDP
ip netns exec $S python3 "$HERE/discovery_peers.py" upnp-device 192.168.77.30 >"$OUT/upnp-device.log" 2>&1 &
echo $! >"$RUN/device.pid"; sleep 1.5
cap ssdp "udp port 1900 or tcp"
if "$UPY" -c "import async_upnp_client" 2>/dev/null; then
  ip netns exec $C timeout 8 "$UPY" -m async_upnp_client.cli search --bind 192.168.77.20 \
    >"$OUT/upnp-client-search.txt" 2>&1 || true
  ip netns exec $C timeout -s INT 8 "$UPY" -m async_upnp_client.cli subscribe \
    http://192.168.77.30:49152/desc.xml '*' >"$OUT/upnp-client-subscribe.txt" 2>&1 || true
else
  ip netns exec $C python3 "$HERE/discovery_peers.py" upnp-control-point 192.168.77.20 >"$OUT/upnp-cp.log" 2>&1 || true
fi
endcap
kill "$(cat "$RUN/device.pid")" 2>/dev/null || true; rm -f "$RUN/device.pid"

# ---------------------------------------------------------------- SLP
ip netns exec $S python3 "$HERE/discovery_peers.py" slp-agent 192.168.77.30 >"$OUT/slp-agent.log" 2>&1 &
echo $! >"$RUN/slpa.pid"; sleep 1
cap slp "udp port 427"
ip netns exec $C python3 "$HERE/discovery_peers.py" slp-ua 239.255.255.253 >"$OUT/slp-ua.log" 2>&1 || true
ip netns exec $C python3 "$HERE/discovery_peers.py" slp-ua 192.168.77.255 >>"$OUT/slp-ua.log" 2>&1 || true
endcap
echo "recorded: $(ls "$OUT"/*.pcap | xargs -n1 basename | tr '\n' ' ')"
