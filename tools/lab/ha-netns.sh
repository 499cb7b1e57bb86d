# tools/lab/ha-netns.sh (source it after netns.sh, as root): a firewall pair between a client and a server.
#
#                 br0 10.0.1.2/24                                        br0 10.0.2.2/24
#   $HA_NS_CLIENT (ha-cli)  p1 ---- c1 $HA_NS_FW1 (ha-fw1) s1 ---- p1  $HA_NS_SERVER (ha-srv)
#                           p2 ---- c1 $HA_NS_FW2 (ha-fw2) s1 ---- p2
#   fw1: c1 10.0.1.11 s1 10.0.2.11 sync0 10.0.3.1 ----- sync0 10.0.3.2 :fw2 (c1 10.0.1.12 s1 10.0.2.12)
#
# Each end host bridges its two links (a LAN with both firewalls on it) and routes through the shared
# addresses 10.0.1.1 / 10.0.2.1, which the active firewall holds. The dedicated link sync0 carries
# conntrackd's sync messages. Each firewall's FORWARD chain is netns.sh's (lab-established, lab-related,
# lab-ctl-P-N, lab-drop; IPv4).
#
#   ha_net_up tcp/21 udp/5060    build (again) with these control ports; fw1 holds the shared addresses
#   ha_fw 1|2 CMD                run CMD in that firewall
#   ha_count 1|2 RULE            packets that hit lab-RULE in that firewall's FORWARD
#   ha_take N                    firewall N takes the shared addresses (the other's are removed); the end
#                                hosts forget the old neighbour (what keepalived's gratuitous ARP does)
#   ha_links N up|down           firewall N's client and server links (down: that node has failed)
#   ha_net_down                  remove the namespaces (idempotent)

: "${HA_NS_CLIENT:=ha-cli}" "${HA_NS_FW1:=ha-fw1}" "${HA_NS_FW2:=ha-fw2}" "${HA_NS_SERVER:=ha-srv}"
export HA_VIP_C=10.0.1.1 HA_VIP_S=10.0.2.1 HA_SYNC1=10.0.3.1 HA_SYNC2=10.0.3.2

ha_ns() { if [ "$1" = 1 ]; then echo "$HA_NS_FW1"; else echo "$HA_NS_FW2"; fi; }
ha_fw() { local ns; ns=$(ha_ns "$1"); shift; ip netns exec "$ns" "$@"; }

ha_net_down() {
    local ns
    for ns in "$HA_NS_CLIENT" "$HA_NS_FW1" "$HA_NS_FW2" "$HA_NS_SERVER"; do
        [ -e "/run/netns/$ns" ] && ip netns del "$ns"
    done
    return 0
}

ha_net_up() {
    ha_net_down
    local rules ns n
    # netns.sh's FORWARD chain, for these addresses (its client and server are ours)
    rules=$(LAB_CLIENT4=10.0.1.2 LAB_SERVER4=10.0.2.2 _lab_forward 4 "$@") || return 2
    for ns in "$HA_NS_CLIENT" "$HA_NS_FW1" "$HA_NS_FW2" "$HA_NS_SERVER"; do
        ip netns add "$ns" || { ha_net_down; return 1; }
    done
    printf '%s\n' "link add br0 type bridge" "link set br0 up" "link set lo up" \
        "link add p1 type veth peer name c1 netns $HA_NS_FW1" "link add p2 type veth peer name c1 netns $HA_NS_FW2" \
        "link set p1 master br0" "link set p2 master br0" "link set p1 up" "link set p2 up" \
        "addr add 10.0.1.2/24 dev br0" "route add default via $HA_VIP_C" | ip -n "$HA_NS_CLIENT" -batch - &&
    printf '%s\n' "link add br0 type bridge" "link set br0 up" "link set lo up" \
        "link add p1 type veth peer name s1 netns $HA_NS_FW1" "link add p2 type veth peer name s1 netns $HA_NS_FW2" \
        "link set p1 master br0" "link set p2 master br0" "link set p1 up" "link set p2 up" \
        "addr add 10.0.2.2/24 dev br0" "route add default via $HA_VIP_S" | ip -n "$HA_NS_SERVER" -batch - &&
    ip -n "$HA_NS_FW1" link add sync0 type veth peer name sync0 netns "$HA_NS_FW2" || { ha_net_down; return 1; }
    for n in 1 2; do
        ha_fw "$n" sysctl -qw net.ipv4.ip_forward=1 &&
        printf '%s\n' "link set lo up" "addr add 10.0.1.1$n/24 dev c1" "addr add 10.0.2.1$n/24 dev s1" \
            "addr add 10.0.3.$n/24 dev sync0" "link set c1 up" "link set s1 up" "link set sync0 up" \
            | ip -n "$(ha_ns "$n")" -batch - &&
        echo "$rules" | ha_fw "$n" iptables-restore || { echo "ha_net_up: firewall $n did not come up" >&2; ha_net_down; return 1; }
    done
    ha_take 1
}

ha_links() {  # N up|down
    ip -n "$(ha_ns "$1")" link set c1 "$2" && ip -n "$(ha_ns "$1")" link set s1 "$2"
}

ha_take() {  # N: firewall N holds the shared addresses
    local other=$((3 - $1)) i
    ip -n "$(ha_ns "$other")" addr del "$HA_VIP_C/24" dev c1 2>/dev/null
    ip -n "$(ha_ns "$other")" addr del "$HA_VIP_S/24" dev s1 2>/dev/null
    ip -n "$(ha_ns "$1")" addr add "$HA_VIP_C/24" dev c1 && ip -n "$(ha_ns "$1")" addr add "$HA_VIP_S/24" dev s1 || return 1
    ip -n "$HA_NS_CLIENT" neigh flush all; ip -n "$HA_NS_SERVER" neigh flush all
    for i in $(seq 100); do  # the new holder's links carry
        [ "$(ha_fw "$1" cat /sys/class/net/c1/operstate /sys/class/net/s1/operstate 2>/dev/null | tr '\n' ' ')" = "up up " ] \
            && return 0
        sleep 0.05
    done
    echo "ha_take: firewall $1's links are not up" >&2
    return 1
}

ha_count() {  # N RULE
    ha_fw "$1" iptables -nvxL FORWARD | awk -v c="/* lab-$2 */" 'index($0, c) {s += $1} END {print s + 0}'
}
