#!/bin/bash
# record-encap.sh — re-record the tests/pcaps/encap-* captures (needs root).
#
# Two network namespaces, alg-enc-a (client) and alg-enc-b (server), joined by
# a veth pair ua/ub (the underlay, fixed MACs, IPv6 off so that it carries
# only tunnel traffic). Over it an overlay 10.7.0.1-2/24, fd07::1-2/64:
# - VXLAN: the kernel's own vxlan device (id 42, UDP 4789) over 192.0.2.1-2;
# - every other encapsulation: tools/encap_tunnel.py, a userspace tunnel on a
#   TUN device (this host's kernel has no 8021q, ipip, sit, ip_gre, MPLS
#   routing or PPP modules), which wraps each routed packet in the headers of
#   the mode and sends it on the underlay.
# vsftpd serves anonymous downloads on the server side; each case is one real
# curl transfer, captured by tcpdump on the client's underlay interface ua.
# Usage: [ONLY="vlan mpls ..."] tools/record-encap.sh [OUTDIR] (default tests/pcaps)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-$ROOT/tests/pcaps}
A=alg-enc-a B=alg-enc-b
MAC_A=02:00:00:00:0a:01 MAC_B=02:00:00:00:0b:01
SCRATCH=$(mktemp -d /tmp/alg-enc-rec.XXXXXX)
PIDS=()
down() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    PIDS=()
    ip netns del $A 2>/dev/null || true
    ip netns del $B 2>/dev/null || true
}
trap 'down; [ -n "${KEEP:-}" ] || rm -rf "$SCRATCH"' EXIT
A_() { ip netns exec $A "$@"; }
B_() { ip netns exec $B "$@"; }

mkdir -p "$SCRATCH/pub" "$SCRATCH/empty"
head -c 4000 /dev/urandom > "$SCRATCH/pub/file.bin"
chmod -R a+rX "$SCRATCH"
cat > "$SCRATCH/vsftpd.conf" <<CONF
listen=NO
listen_ipv6=YES
background=NO
anonymous_enable=YES
local_enable=NO
write_enable=NO
anon_root=$SCRATCH/pub
no_anon_password=YES
pasv_enable=YES
port_enable=YES
connect_from_port_20=NO
pasv_min_port=40000
pasv_max_port=40100
seccomp_sandbox=NO
secure_chroot_dir=$SCRATCH/empty
xferlog_enable=NO
CONF

# up MODE [tap]: the namespaces, the underlay and the overlay device (t0 or vx0)
up() {
    local mode=$1 tap=${2:-} dev=t0
    ip netns add $A; ip netns add $B
    ip link add ua netns $A address $MAC_A type veth peer name ub netns $B address $MAC_B
    for ns in $A $B; do
        ip netns exec $ns sysctl -qw net.ipv6.conf.all.disable_ipv6=0
        ip -n $ns link set lo up
    done
    A_ sysctl -qw net.ipv6.conf.ua.disable_ipv6=1
    B_ sysctl -qw net.ipv6.conf.ub.disable_ipv6=1
    ip -n $A link set ua up; ip -n $B link set ub up
    if [ "$mode" = vxlan ]; then
        dev=vx0
        ip -n $A addr add 192.0.2.1/24 dev ua; ip -n $B addr add 192.0.2.2/24 dev ub
        ip -n $A link add vx0 type vxlan id 42 dstport 4789 local 192.0.2.1 remote 192.0.2.2 dev ua
        ip -n $B link add vx0 type vxlan id 42 dstport 4789 local 192.0.2.2 remote 192.0.2.1 dev ub
    else
        ip netns exec $A python3 "$ROOT/tools/encap_tunnel.py" "$mode" ua t0 $MAC_A $MAC_B 192.0.2.1 192.0.2.2 \
            2001:db8::1 2001:db8::2 $tap > "$SCRATCH/ta.out" 2>&1 & PIDS+=($!)
        ip netns exec $B python3 "$ROOT/tools/encap_tunnel.py" "$mode" ub t0 $MAC_B $MAC_A 192.0.2.2 192.0.2.1 \
            2001:db8::2 2001:db8::1 $tap > "$SCRATCH/tb.out" 2>&1 & PIDS+=($!)
        for i in $(seq 50); do grep -q ready "$SCRATCH/ta.out" && grep -q ready "$SCRATCH/tb.out" && break; sleep 0.1; done
    fi
    if [ -n "$tap" ]; then  # DHCPv6: link-local addresses from fixed MACs, the server's prefix on its side
        ip -n $A link set t0 address 02:00:00:00:dc:0a up; ip -n $B link set t0 address 02:00:00:00:dc:0b up
        ip -n $B addr add fd07::2/64 dev t0 nodad
        sleep 2  # link-local addresses leave their tentative state
        return
    fi
    ip -n $A link set $dev mtu 1400 up; ip -n $B link set $dev mtu 1400 up
    ip -n $A addr add 10.7.0.1/24 dev $dev; ip -n $B addr add 10.7.0.2/24 dev $dev
    ip -n $A addr add fd07::1/64 dev $dev nodad; ip -n $B addr add fd07::2/64 dev $dev nodad
    ip netns exec $B vsftpd "$SCRATCH/vsftpd.conf" & PIDS+=($!)
    for i in $(seq 50); do timeout 1 ip netns exec $A bash -c "exec 3<>/dev/tcp/10.7.0.2/21" 2>/dev/null && break; sleep 0.1; done
}

# record NAME MODE [-i any] -- CLIENT-COMMAND... : one capture per case
record() {
    local name=$1 mode=$2; shift 2
    case " ${ONLY:-$name} " in *" $name "*) ;; *) return 0;; esac
    local iface=ua filter=""
    if [ "$1" = "-i" ]; then iface=$2; filter="udp port 4789"; shift 2; fi
    shift  # --
    local dir=$OUT/encap-$name
    mkdir -p "$dir"
    up "$mode"
    ip netns exec $A tcpdump -Z root --immediate-mode -U -n -s 0 -i "$iface" -w "$dir/capture.pcap" $filter 2>"$SCRATCH/tcpdump.err" &
    local tp=$!
    for i in $(seq 50); do grep -q listening "$SCRATCH/tcpdump.err" && break; sleep 0.1; done
    timeout 20 ip netns exec $A "$@" >/dev/null
    sleep 0.3
    kill -INT $tp; wait $tp || true
    down
    echo "recorded $dir/capture.pcap: $mode: $*"
}
# record_dhcpv6 NAME MODE: ISC dhclient -6 against dnsmasq over a TAP overlay (dhclient refuses a TUN device)
record_dhcpv6() {
    local name=$1 mode=$2
    case " ${ONLY:-$name} " in *" $name "*) ;; *) return 0;; esac
    local dir=$OUT/encap-$name
    mkdir -p "$dir"
    up "$mode" tap
    ip netns exec $A tcpdump -Z root --immediate-mode -U -n -s 0 -i ua -w "$dir/capture.pcap" 2>"$SCRATCH/tcpdump.err" &
    local tp=$!
    for i in $(seq 50); do grep -q listening "$SCRATCH/tcpdump.err" && break; sleep 0.1; done
    ip netns exec $B dnsmasq --no-daemon --port=0 --interface=t0 --bind-interfaces --no-resolv \
        --dhcp-range=fd07::100,fd07::1ff,64,1h --dhcp-leasefile="$SCRATCH/leases" --pid-file="$SCRATCH/dnsmasq.pid" \
        > "$SCRATCH/dnsmasq.log" 2>&1 & PIDS+=($!)
    sleep 1
    local dh=(dhclient -6 -v -sf /bin/true -lf "$SCRATCH/dhclient6.leases" -pf "$SCRATCH/dhclient6.pid")
    ip netns exec $A timeout 10 "${dh[@]}" -1 t0 >/dev/null 2>&1 || true
    ip netns exec $A timeout 10 "${dh[@]}" -r t0 >/dev/null 2>&1 || true
    sleep 0.5
    kill -INT $tp; wait $tp || true
    down
    echo "recorded $dir/capture.pcap: $mode: dhclient -6 / dnsmasq"
}
F4=ftp://10.7.0.2/file.bin F6="ftp://[fd07::2]/file.bin"
record vlan       vlan    -- curl -sS --disable-epsv -o /dev/null $F4
record qinq       qinq    -- curl -sS -g -P - -o /dev/null "$F6"
record mpls       mpls    -- curl -sS -P - --disable-eprt -o /dev/null $F4
record_dhcpv6 pppoe-dhcpv6 pppoe
record pppoe      pppoe   -- sh -c "curl -sS -g -o /dev/null '$F6'; curl -sS --disable-epsv -o /dev/null $F4"
record gre        gre     -- curl -sS -o /dev/null $F4
record ipip       ipip    -- curl -sS -P - --disable-eprt -o /dev/null $F4
record 6in4       ipip    -- curl -sS -g -o /dev/null "$F6"
record 4in6       ip6     -- curl -sS --disable-epsv -o /dev/null $F4
record erspan2    erspan2 -- curl -sS --disable-epsv -o /dev/null $F4
record erspan3    erspan3 -- curl -sS -g -o /dev/null "$F6"
record vxlan      vxlan   -- curl -sS --disable-epsv -o /dev/null $F4
record vxlan-sll2 vxlan -i any -- curl -sS -g -P - -o /dev/null "$F6"
