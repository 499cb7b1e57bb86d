# tools/lab/nat-netns.sh (source it after tools/lab/netns.sh, as root): the same three namespaces as
# netns.sh, wired as an honest NAT gateway. The public side has no route to the private network: it
# sees the gateway's public address only, as on the Internet. IPv4 only (NAT66 is not the user's case).
#
#   private: $LAB_NS_CLIENT       gateway: $LAB_NS_FW                    public: $LAB_NS_SERVER
#   c0 192.168.10.20/24 -------- c1 192.168.10.1 | s1 203.0.113.1 -------- s0 203.0.113.20/24
#   default via 192.168.10.1                                               no default route
#
# Addresses of different lengths on purpose: a rewritten PORT, 227, Via or c= changes the payload's
# length, so the kernel (or alg) must adjust TCP sequence numbers and Content-Length.
#
# Gateway nat table: POSTROUTING -o s1 MASQUERADE (or SNAT --to-source 203.0.113.1: lab_nat_source),
# and one DNAT port forward per --forward PROTO/PORT: public 203.0.113.1:PORT -> 192.168.10.20:PORT
# (a server behind the gateway, a client outside).
# Gateway FORWARD (policy DROP), each rule commented to read its counter (lab_nat_count NAME):
#   lab-established    ctstate ESTABLISHED                              ACCEPT
#   lab-related-in     ctstate RELATED, not ICMP, towards the private   ACCEPT  (expected flows: FTP data,
#   lab-related-out    ctstate RELATED, not ICMP, towards the public    ACCEPT   RTP/RTCP; counted per side)
#   lab-related-icmp   ctstate RELATED, ICMP errors                     ACCEPT
#   lab-out            NEW private -> public                            ACCEPT
#   lab-fwd-P-N        NEW public -> private, DNATed, P/N forwarded     ACCEPT
#   lab-drop-in        anything else towards the private network        DROP
#   lab-drop           the rest                                         DROP
# Gateway INPUT: ESTABLISHED,RELATED and ICMP accepted; any other packet from the public side is dropped
# and counted (lab-in-drop): what reaches the gateway's public address unmapped.
#
#   lab_nat_up [--snat] [--forward PROTO/PORT]...   build (again); MASQUERADE unless --snat
#   lab_nat_source MASQUERADE|SNAT                  swap the source NAT rule
#   lab_priv|lab_pub CMD                            run CMD in the private / public namespace
#   lab_nat_count NAME...                           packets that hit the gateway rules lab-NAME (summed)
#   lab_nat_show                                    the gateway's raw, nat and filter tables with counters
#   lab_nat_down                                    remove the namespaces (idempotent)
# Uses netns.sh's namespace names, lab_cli / lab_fw / lab_srv, lab_net_down and _lab_links.

export LAB_PRIV4=192.168.10.20 LAB_GW_PRIV4=192.168.10.1 LAB_GW_PUB4=203.0.113.1 LAB_PUB4=203.0.113.20
LAB_PRIV_NET4=192.168.10.0/24

lab_priv() { lab_cli "$@"; }
lab_pub() { lab_srv "$@"; }
lab_nat_down() { lab_net_down; }

_lab_nat_snat_rule() {  # MASQUERADE|SNAT: the POSTROUTING rule's matches and target
    case $1 in
        MASQUERADE) echo "-o s1 -s $LAB_PRIV_NET4 -m comment --comment lab-snat -j MASQUERADE" ;;
        SNAT) echo "-o s1 -s $LAB_PRIV_NET4 -m comment --comment lab-snat -j SNAT --to-source $LAB_GW_PUB4" ;;
        *) echo "lab_nat: source NAT is MASQUERADE or SNAT, not $1" >&2; return 2 ;;
    esac
}

_lab_nat_tables() {  # MASQUERADE|SNAT PROTO/PORT...: the gateway's nat and filter tables (iptables-restore)
    local snat spec
    snat=$(_lab_nat_snat_rule "$1") || return 2; shift
    for spec in "$@"; do
        case ${spec%/*} in tcp|udp) ;; *) echo "lab_nat_up: $spec is not PROTO/PORT (tcp/21)" >&2; return 2 ;; esac
    done
    printf '%s\n' '*nat' ':PREROUTING ACCEPT [0:0]' ':INPUT ACCEPT [0:0]' ':OUTPUT ACCEPT [0:0]' \
        ':POSTROUTING ACCEPT [0:0]' "-A POSTROUTING $snat"
    for spec in "$@"; do
        echo "-A PREROUTING -i s1 -d $LAB_GW_PUB4 -p ${spec%/*} --dport ${spec#*/}" \
             "-m comment --comment lab-dnat-${spec%/*}-${spec#*/} -j DNAT --to-destination $LAB_PRIV4"
    done
    printf '%s\n' COMMIT '*filter' ':INPUT ACCEPT [0:0]' ':FORWARD DROP [0:0]' ':OUTPUT ACCEPT [0:0]' \
        '-A INPUT -i lo -j ACCEPT' \
        '-A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT' \
        '-A INPUT -p icmp -j ACCEPT' \
        '-A INPUT -i s1 -m comment --comment lab-in-drop -j DROP' \
        '-A FORWARD -m conntrack --ctstate ESTABLISHED -m comment --comment lab-established -j ACCEPT' \
        '-A FORWARD -o c1 ! -p icmp -m conntrack --ctstate RELATED -m comment --comment lab-related-in -j ACCEPT' \
        '-A FORWARD -o s1 ! -p icmp -m conntrack --ctstate RELATED -m comment --comment lab-related-out -j ACCEPT' \
        '-A FORWARD -p icmp -m conntrack --ctstate RELATED -m comment --comment lab-related-icmp -j ACCEPT' \
        '-A FORWARD -i c1 -o s1 -m conntrack --ctstate NEW -m comment --comment lab-out -j ACCEPT'
    for spec in "$@"; do
        echo "-A FORWARD -i s1 -o c1 -d $LAB_PRIV4 -p ${spec%/*} --dport ${spec#*/} -m conntrack --ctstate NEW" \
             "-m conntrack --ctstate DNAT -m comment --comment lab-fwd-${spec%/*}-${spec#*/} -j ACCEPT"
    done
    printf '%s\n' '-A FORWARD -o c1 -m comment --comment lab-drop-in -j DROP' \
        '-A FORWARD -m comment --comment lab-drop -j DROP' COMMIT
}

lab_nat_up() {
    local snat=MASQUERADE fwd=() tables ns i
    while [ $# -gt 0 ]; do
        case $1 in
            --snat) snat=SNAT ;;
            --forward) fwd+=("$2"); shift ;;
            *) echo "lab_nat_up: unknown argument $1" >&2; return 2 ;;
        esac
        shift
    done
    tables=$(_lab_nat_tables "$snat" "${fwd[@]}") || return 2
    lab_net_down
    for ns in "$LAB_NS_CLIENT" "$LAB_NS_FW" "$LAB_NS_SERVER"; do
        ip netns add "$ns" || { lab_net_down; return 1; }
    done
    lab_fw sysctl -qw net.ipv4.ip_forward=1 || { lab_net_down; return 1; }
    # the private host routes everything to the gateway; the public host knows its own /24 only
    printf '%s\n' "link add c0 type veth peer name c1 netns $LAB_NS_FW" "link set lo up" \
        "addr add $LAB_PRIV4/24 dev c0" "link set c0 up" "route add default via $LAB_GW_PRIV4 dev c0" \
        | _lab_links "$LAB_NS_CLIENT" &&
    printf '%s\n' "link add s0 type veth peer name s1 netns $LAB_NS_FW" "link set lo up" \
        "addr add $LAB_PUB4/24 dev s0" "link set s0 up" \
        | _lab_links "$LAB_NS_SERVER" &&
    printf '%s\n' "link set lo up" "addr add $LAB_GW_PRIV4/24 dev c1" "addr add $LAB_GW_PUB4/24 dev s1" \
        "link set c1 up" "link set s1 up" \
        | _lab_links "$LAB_NS_FW" &&
    echo "$tables" | lab_fw "$LAB_IPT-restore" \
        || { echo "lab_nat_up: the network did not come up" >&2; lab_net_down; return 1; }
    for i in $(seq 100); do
        [ "$(lab_fw cat /sys/class/net/c1/operstate /sys/class/net/s1/operstate 2>/dev/null | tr '\n' ' ')" = "up up " ] \
            && return 0
        sleep 0.05
    done
    echo "lab_nat_up: the links did not come up" >&2
    return 1
}

lab_nat_source() {  # MASQUERADE|SNAT
    local rule
    rule=$(_lab_nat_snat_rule "$1") || return 2
    # shellcheck disable=SC2086  # the rule is words
    lab_fw "$LAB_IPT" -t nat -R POSTROUTING 1 $rule
}

lab_nat_count() {  # NAME...: packets of the gateway's rules commented lab-NAME, summed (FORWARD and INPUT)
    local chain total=0 n name
    for name in "$@"; do
        for chain in FORWARD INPUT; do
            n=$(lab_fw "$LAB_IPT" -nvxL "$chain" | awk -v c="/* lab-$name */" 'index($0, c) {s += $1} END {print s + 0}')
            total=$((total + n))
        done
    done
    echo "$total"
}

lab_nat_show() {
    local t
    for t in raw nat filter; do echo "== $LAB_IPT -t $t ($LAB_NS_FW)"; lab_fw "$LAB_IPT" -t "$t" -nvxL; done
}
