# tools/lab/netns.sh (source it, as root): three network namespaces, a client and a server with a
# stateful firewall between them. Runs on any kernel with namespaces and veth: the lab VM's, or the host's.
#
#   $LAB_NS_CLIENT (lab-cli)      $LAB_NS_FW (lab-fw)                $LAB_NS_SERVER (lab-srv)
#   c0 10.0.1.2/24 fd00:1::2 ---- c1 10.0.1.1 fd00:1::1 | s1 10.0.2.1 fd00:2::1 ---- s0 10.0.2.2/24 fd00:2::2
#
# The end hosts route only to the firewall, which has no default route: nothing leaves the three.
# Firewall FORWARD (iptables and ip6tables), policy DROP, each rule with a comment to read its counter:
#   lab-established   ctstate ESTABLISHED                    ACCEPT
#   lab-related       ctstate RELATED                        ACCEPT
#   lab-ctl-P-N       NEW client -> server on P/N            ACCEPT  (one per PROTO/PORT given to lab_net_up)
#   lab-drop          the rest                               DROP
#
#   lab_net_up tcp/21 udp/111     build (again) with these control ports
#   lab_cli|lab_fw|lab_srv CMD    run CMD in that namespace
#   lab_fw_count NAME [4|6]       packets that hit the rule lab-NAME (both families by default)
#   lab_fw_show                   raw PREROUTING and FORWARD with counters
#   lab_net_down                  remove the namespaces (idempotent)
#   lab_cap_start NS IF PCAP FILTER   tcpdump there into PCAP (its messages in PCAP's .tcpdump.err)
#   lab_cap_stop                  stop it once it has written every packet it received
# Before lab_net_up: LAB_NS_CLIENT / LAB_NS_FW / LAB_NS_SERVER (names), LAB_IPT / LAB_IP6T (commands).

: "${LAB_NS_CLIENT:=lab-cli}" "${LAB_NS_FW:=lab-fw}" "${LAB_NS_SERVER:=lab-srv}"
: "${LAB_IPT:=iptables}" "${LAB_IP6T:=ip6tables}"
export LAB_CLIENT4=10.0.1.2 LAB_FW4_C=10.0.1.1 LAB_FW4_S=10.0.2.1 LAB_SERVER4=10.0.2.2
export LAB_CLIENT6=fd00:1::2 LAB_FW6_C=fd00:1::1 LAB_FW6_S=fd00:2::1 LAB_SERVER6=fd00:2::2

lab_cli() { ip netns exec "$LAB_NS_CLIENT" "$@"; }
lab_fw() { ip netns exec "$LAB_NS_FW" "$@"; }
lab_srv() { ip netns exec "$LAB_NS_SERVER" "$@"; }

lab_net_down() {
    local ns
    for ns in "$LAB_NS_CLIENT" "$LAB_NS_FW" "$LAB_NS_SERVER"; do
        [ -e "/run/netns/$ns" ] && ip netns del "$ns"  # its veth ends go with it
    done
    return 0
}

_lab_forward() {  # 4|6 PROTO/PORT...: the firewall's filter table as iptables-restore input
    local fam=$1 src dst spec; shift
    if [ "$fam" = 4 ]; then src=$LAB_CLIENT4 dst=$LAB_SERVER4; else src=$LAB_CLIENT6 dst=$LAB_SERVER6; fi
    printf '%s\n' '*filter' ':INPUT ACCEPT [0:0]' ':FORWARD DROP [0:0]' ':OUTPUT ACCEPT [0:0]' \
        '-A FORWARD -m conntrack --ctstate ESTABLISHED -m comment --comment lab-established -j ACCEPT' \
        '-A FORWARD -m conntrack --ctstate RELATED -m comment --comment lab-related -j ACCEPT'
    for spec in "$@"; do
        case ${spec%/*} in tcp|udp|sctp) ;; *) echo "lab_net_up: $spec is not PROTO/PORT (tcp/21)" >&2; return 2 ;; esac
        echo "-A FORWARD -i c1 -o s1 -s $src -d $dst -p ${spec%/*} --dport ${spec#*/} -m conntrack --ctstate NEW" \
             "-m comment --comment lab-ctl-${spec%/*}-${spec#*/} -j ACCEPT"
    done
    printf '%s\n' '-A FORWARD -m comment --comment lab-drop -j DROP' 'COMMIT'
}

_lab_links() {  # NS: `ip -batch` input from stdin, in that namespace (one process: they are slow under TCG)
    ip -n "$1" -batch -
}

lab_net_up() {
    lab_net_down
    local v4 v6 ns i
    v4=$(_lab_forward 4 "$@") && v6=$(_lab_forward 6 "$@") || return 2
    for ns in "$LAB_NS_CLIENT" "$LAB_NS_FW" "$LAB_NS_SERVER"; do
        ip netns add "$ns" || { lab_net_down; return 1; }
        # no duplicate address detection: IPv6 addresses work at once, not after a second or two
        ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0
    done
    lab_fw sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1 || { lab_net_down; return 1; }
    # each end host's veth is made inside it, its peer straight in the firewall: none in the caller's namespace
    printf '%s\n' "link add c0 type veth peer name c1 netns $LAB_NS_FW" "link set lo up" \
        "addr add $LAB_CLIENT4/24 dev c0" "addr add $LAB_CLIENT6/64 dev c0 nodad" "link set c0 up" \
        "route add default via $LAB_FW4_C dev c0" "route add default via $LAB_FW6_C dev c0" \
        | _lab_links "$LAB_NS_CLIENT" &&
    printf '%s\n' "link add s0 type veth peer name s1 netns $LAB_NS_FW" "link set lo up" \
        "addr add $LAB_SERVER4/24 dev s0" "addr add $LAB_SERVER6/64 dev s0 nodad" "link set s0 up" \
        "route add default via $LAB_FW4_S dev s0" "route add default via $LAB_FW6_S dev s0" \
        | _lab_links "$LAB_NS_SERVER" &&
    printf '%s\n' "link set lo up" "addr add $LAB_FW4_C/24 dev c1" "addr add $LAB_FW6_C/64 dev c1 nodad" \
        "addr add $LAB_FW4_S/24 dev s1" "addr add $LAB_FW6_S/64 dev s1 nodad" "link set c1 up" "link set s1 up" \
        | _lab_links "$LAB_NS_FW" &&
    echo "$v4" | lab_fw "$LAB_IPT-restore" && echo "$v6" | lab_fw "$LAB_IP6T-restore" \
        || { echo "lab_net_up: the network did not come up" >&2; lab_net_down; return 1; }
    for i in $(seq 100); do  # both fw ends carry (so do their peers): traffic can flow
        [ "$(lab_fw cat /sys/class/net/c1/operstate /sys/class/net/s1/operstate 2>/dev/null | tr '\n' ' ')" = "up up " ] \
            && return 0
        sleep 0.05
    done
    echo "lab_net_up: the links did not come up" >&2
    return 1
}

lab_fw_count() {  # NAME [4|6]
    local fams=${2:-46} ipt total=0 n
    for ipt in $([[ $fams == *4* ]] && echo "$LAB_IPT") $([[ $fams == *6* ]] && echo "$LAB_IP6T"); do
        n=$(lab_fw "$ipt" -nvxL FORWARD | awk -v c="/* lab-$1 */" 'index($0, c) {s += $1} END {print s + 0}')
        total=$((total + n))
    done
    echo "$total"
}

lab_fw_show() {
    local ipt
    for ipt in "$LAB_IPT" "$LAB_IP6T"; do
        echo "== $ipt ($LAB_NS_FW) raw PREROUTING"; lab_fw "$ipt" -t raw -nvxL PREROUTING | tail -n +3
        echo "== $ipt ($LAB_NS_FW) filter FORWARD"; lab_fw "$ipt" -nvxL FORWARD | tail -n +2
    done
}

# A capture's end must not lose the last packets of what it recorded. Without --immediate-mode libpcap
# hands packets over in blocks (a block waits up to a second to fill), and a SIGINT ends tcpdump with
# what its current block held counted as received but never written: under a loaded VM, the last
# exchange of a run. With it each packet is written as tcpdump reads it, so the file stops growing once
# tcpdump has read everything that reached it: wait for that (a second without growth, at most 15 s).
lab_cap_start() {  # NS IF PCAP FILTER; sets LAB_CAP_PID and LAB_CAP_FILE (one capture at a time)
    LAB_CAP_FILE=$3
    # `ip netns exec` directly, not a lab_* function: $! is then tcpdump itself
    ip netns exec "$1" tcpdump -Z root --immediate-mode -U -n -s 0 -i "$2" -w "$3" "$4" \
        2>"${3%.pcap}.tcpdump.err" & LAB_CAP_PID=$!
    local _; for _ in $(seq 100); do grep -q listening "${3%.pcap}.tcpdump.err" 2>/dev/null && break; sleep 0.1; done
}
lab_cap_stop() {
    [ -n "${LAB_CAP_PID:-}" ] || return 0
    local size=-1 now still=0 _
    for _ in $(seq 60); do
        now=$(stat -c %s "$LAB_CAP_FILE" 2>/dev/null || echo 0)
        if [ "$now" = "$size" ]; then still=$((still + 1)); [ "$still" -ge 4 ] && break
        else still=0 size=$now; fi
        sleep 0.25
    done
    kill -INT "$LAB_CAP_PID" 2>/dev/null; wait "$LAB_CAP_PID" 2>/dev/null; LAB_CAP_PID=
    # tcpdump's own account: "N packets captured" (written) and "M packets received by filter"
    local err=${LAB_CAP_FILE%.pcap}.tcpdump.err written seen
    written=$(awk '/packets captured/ {print $1}' "$err" 2>/dev/null)
    seen=$(awk '/packets received by filter/ {print $1}' "$err" 2>/dev/null)
    if [ -n "$written" ] && [ -n "$seen" ] && [ "$written" != "$seen" ]; then
        echo "   note: the capture $(basename "$LAB_CAP_FILE") wrote $written of the $seen packets tcpdump received"
    fi
    return 0
}
