#!/bin/bash
# more-helpers: alg as the firewall's TFTP, IRC DCC, SANE, Amanda, NetBIOS-NS and SNMP helper at once, end to end,
# in the lab VM.
#   1. one `alg run` registers tftp, irc, sane, amanda, netbios-ns and snmp (nfnetlink_cthelper, the in-kernel
#      helpers' names: their modules are unloaded first); `alg rules` is applied in lab-fw
#   2. real servers in lab-srv and clients in lab-cli; each follow-up flow is NEW in a direction (or on
#      a port) that lab-fw drops, and must pass through alg's own RELATED rule ("alg NAME related"):
#        tftp    tftp-hpa gets a file from tftpd-hpa (IPv4, IPv6): the server answers from a new port
#        irc     alice (lab-cli) offers bob a DCC SEND through ngircd; lab-srv connects back to her
#        sane    scanimage scans from saned's `test` backend: the data connection to saned's port
#        amanda  a scripted backup server asks a scripted amandad (udp/10080) for sendbackup; the REP's
#                CONNECT DATA/MESG/INDEX ports are connected to
#        netbios-ns  lab-fw's own nmblookup broadcasts a name query to 10.0.2.255; a scripted responder in
#                lab-srv answers by unicast from port 137 (lab-fw's INPUT drops it unless RELATED)
#        snmp    lab-fw's own snmpget broadcasts a GetRequest to 255.255.255.255 from 10.0.2.1; snmpd in
#                lab-srv answers by unicast from 10.0.2.2:161 (lab-fw's INPUT drops it unless RELATED).
#                Not to 10.0.2.255: snmpd 5.9.3 cannot answer a directed broadcast (it sends from the
#                address the request came to and gets ENETUNREACH; tests/pcaps/snmp-rec-snmpget/SOURCE.md)
#   3. alg's status counts what each helper created
#   4. negative control: alg stopped -> the same exchanges, each follow-up flow dropped (lab-drop)
# The kernel's own helpers on the same traffic: tests/test_kernel_more_helpers.py (host kernel).
set -u
source "$LAB_DIR/netns.sh"
# shellcheck source=../lib.sh
source "$ALG_ROOT/tests/lab/lib.sh"
RUN=/run/alg-lab/more-helpers; OUT=$LAB_SCRATCH/more-helpers; mkdir -p "$RUN/tftp" "$RUN/sane-srv" "$RUN/sane-cli" "$OUT"
PEERS="/usr/bin/python3 -I $ALG_ROOT/tools/more_helpers_peers.py"
SOCK=$RUN/alg.sock
HELPERS=(tftp irc sane amanda netbios-ns snmp)
DCC_PORT=5000
PIDS=(); ALG_PID=
cleanup() {
    [ -n "$ALG_PID" ] && kill "$ALG_PID" 2>/dev/null
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    wait 2>/dev/null
    lab_net_down
    for h in "${HELPERS[@]}"; do for f in inet inet6; do
        for p in tcp udp; do nfct del helper "$h" "$f" "$p" 2>/dev/null; done
    done; done
    true
}
trap cleanup EXIT

# a userspace helper cannot take the name of a loaded in-kernel one (`alg doctor` says so)
modprobe -r nf_nat_snmp_basic 2>/dev/null  # it holds nf_conntrack_snmp
for h in "${HELPERS[@]}"; do modprobe -r "nf_conntrack_${h//-/_}" 2>/dev/null; done
POLICIES=(); for h in "${HELPERS[@]}"; do POLICIES+=(--policy "$ALG_ROOT/policies/$h.toml"); done  # the shipped defaults
cat >"$RUN/alg.toml" <<TOML
[core]
status_socket = "$SOCK"
TOML
head -c 3000 /dev/urandom >"$RUN/tftp/boot.bin"; chmod 755 "$RUN/tftp"; chmod 644 "$RUN/tftp/boot.bin"
echo test >"$RUN/sane-srv/dll.conf"; printf '10.0.1.0/24\n' >"$RUN/sane-srv/saned.conf"
echo net >"$RUN/sane-cli/dll.conf"; printf 'connect_timeout = 5\n%s\n' "$LAB_SERVER4" >"$RUN/sane-cli/net.conf"
printf 'agentaddress udp:161\nrocommunity public\n' >"$RUN/snmpd.conf"
# net-snmp's tools never set SO_BROADCAST: without it the kernel refuses snmpget's broadcast (EACCES)
cc -shared -fPIC -o "$RUN/so_broadcast.so" "$ALG_ROOT/tools/so_broadcast.c" -ldl >"$OUT/cc.log" 2>&1 & CC_PID=$!
cat >"$RUN/ngircd.conf" <<CONF
[Global]
Name = irc.alg.lab
Info = alg lab
Listen = $LAB_SERVER4
Ports = 6667
PidFile = $RUN/ngircd.pid
MotdPhrase = alg
[Limits]
MaxConnectionsIP = 0
[Options]
DNS = no
Ident = no
PAM = no
CONF

lab_net_up udp/69 tcp/6667 tcp/6566 udp/10080 || { echo "FAIL lab_net_up"; exit 1; }
lab_srv in.tftpd -L -4 -u root -a "$LAB_SERVER4:69" -s "$RUN/tftp" & PIDS+=($!)
lab_srv in.tftpd -L -6 -u root -a "[$LAB_SERVER6]:69" -s "$RUN/tftp" & PIDS+=($!)
lab_srv ngircd -n -f "$RUN/ngircd.conf" >"$OUT/ngircd.log" 2>&1 & PIDS+=($!)
SANE_CONFIG_DIR=$RUN/sane-srv ip netns exec "$LAB_NS_SERVER" saned -l -b "$LAB_SERVER4" >"$OUT/saned.log" 2>&1 & PIDS+=($!)
ip netns exec "$LAB_NS_SERVER" $PEERS amanda-client "$LAB_SERVER4" >"$OUT/amandad.log" 2>&1 & PIDS+=($!)
ip netns exec "$LAB_NS_SERVER" $PEERS nbns-responder "$LAB_SERVER4" ALGTEST 600 >"$OUT/nbns.log" 2>&1 & PIDS+=($!)
lab_srv snmpd -f -Lo -C -c "$RUN/snmpd.conf" >"$OUT/snmpd.log" 2>&1 & PIDS+=($!)
# the broadcast helper's case: lab-fw's own query leaves s1 for its broadcast address (which the kernel
# routes as a broadcast only when the address has one); the unicast answer comes to lab-fw's INPUT
lab_fw ip addr del "$LAB_FW4_S/24" dev s1 && lab_fw ip addr add "$LAB_FW4_S/24" brd + dev s1
lab_fw "$LAB_IPT" -A INPUT -m conntrack --ctstate ESTABLISHED -m comment --comment lab-in-established -j ACCEPT
lab_fw "$LAB_IPT" -A INPUT -i s1 -p udp --sport 137 -m comment --comment lab-in-drop -j DROP
lab_fw "$LAB_IPT" -A INPUT -i s1 -p udp --sport 161 -m comment --comment lab-in-drop -j DROP
in_drops() { lab_fw "$LAB_IPT" -nvxL INPUT | awk 'index($0, "/* lab-in-drop */") {s += $1} END {print s + 0}'; }

helpers_ready() {  # all of them enabled, each on its queue (no Python start per poll: cheap)
    local list
    list=$(lab_fw nfct list helper 2>/dev/null | tr -s '\t\n' ' ')
    for h in "${HELPERS[@]}"; do echo "$list" | grep -q "name = $h, [^}]*status = enabled" || return 1; done
}
start_alg() {
    ip netns exec "$LAB_NS_FW" "$ALG" run "${POLICIES[@]}" --policy "$RUN/alg.toml" >>"$OUT/alg.log" 2>&1 &
    ALG_PID=$!
    # in parallel (slow starts); one text per family: netbios-ns is IPv4 only (ip6tables refuses its CT rule)
    [ -s "$RUN/rules6.txt" ] || { "$ALG" rules "${POLICIES[@]}" --family 4 >"$RUN/rules4.txt" &&
        "$ALG" rules "${POLICIES[@]}" --family 6 >"$RUN/rules6.txt"; } 2>"$OUT/rules.err" & RULES_PID=$!
    for _ in $(seq 1500); do  # Python starts take 5-90 s under TCG on a loaded host
        helpers_ready && return 0
        kill -0 "$ALG_PID" 2>/dev/null || break
        sleep 0.2
    done
    echo "alg did not come up:"; tail -20 "$OUT/alg.log"; return 1
}

# the four exchanges; each returns the client's status, the follow-up flow decides it
tftp_get() {  # HOST SECONDS
    rm -f "$RUN/got.bin"
    lab_cli timeout -k 2 "$2" tftp "$1" -m octet -c get boot.bin "$RUN/got.bin" >>"$OUT/tftp.log" 2>&1 &&
        cmp -s "$RUN/got.bin" "$RUN/tftp/boot.bin"
}
irc_dcc() {  # SECONDS: alice offers bob a DCC SEND, bob (a connection from lab-srv) takes it
    # (whether ngircd finds bob does not matter to the firewall: alice's PRIVMSG opens the pinhole)
    ip netns exec "$LAB_NS_CLIENT" $PEERS dcc-listen "$LAB_CLIENT4" $DCC_PORT 30 >>"$OUT/irc.log" 2>&1 & local dl=$!
    lab_cli $PEERS irc-dcc "$LAB_SERVER4" alice bob 0 \
        "PRIVMSG {to} :\\1DCC SEND boot.bin {ip} $DCC_PORT 3000\\1" >>"$OUT/irc.log" 2>&1
    lab_srv $PEERS connect "$LAB_CLIENT4" $DCC_PORT "$1" >>"$OUT/irc.log" 2>&1; local rc=$?
    kill $dl 2>/dev/null; wait $dl 2>/dev/null
    return $rc
}
sane_scan() {  # SECONDS
    SANE_CONFIG_DIR=$RUN/sane-cli ip netns exec "$LAB_NS_CLIENT" timeout -k 2 "$1" scanimage -d "net:$LAB_SERVER4:test:0" \
        --format=pnm -o "$RUN/scan.pnm" >>"$OUT/sane.log" 2>&1 && [ -s "$RUN/scan.pnm" ]
}
nbns_query() {  # the firewall's own broadcast name query; the answer names lab-srv
    lab_fw timeout -k 2 10 nmblookup -s /dev/null -B 10.0.2.255 ALGTEST >"$OUT/nbns.out" 2>&1
    cat "$OUT/nbns.out" >>"$OUT/netbios-ns.log"
    grep -q "^$LAB_SERVER4 ALGTEST" "$OUT/nbns.out"
}
snmp_get() {  # SECONDS: the firewall's own broadcast GetRequest for sysDescr.0; snmpd's answer names its kernel
    lab_fw env LD_PRELOAD="$RUN/so_broadcast.so" snmpget -v2c -c public -m '' -t "$1" -r 0 \
        --clientaddr="$LAB_FW4_S" 255.255.255.255 1.3.6.1.2.1.1.1.0 >"$OUT/snmp.out" 2>&1
    cat "$OUT/snmp.out" >>"$OUT/snmp.log"
    grep -q "STRING:" "$OUT/snmp.out"
}
snmpd_ready() {  # SECONDS: snmpd loads its MIBs first (slow under TCG)
    for _ in $(seq $(($1 * 5))); do lab_srv ss -H -uln | grep -q ':161 ' && return 0; sleep 0.2; done; return 1
}
amanda_backup() {  # the server connects to the three ports (3 s each at most)
    lab_cli $PEERS amanda-server "$LAB_CLIENT4" 0 "$LAB_SERVER4" >"$OUT/amanda.out" 2>&1
    cat "$OUT/amanda.out" >>"$OUT/amanda.log"
    grep -q ", 3 connected" "$OUT/amanda.out"
}
# NAME CMD...: the exchange with alg; PASS when it works and alg's RELATED rule for NAME counted it
with_alg() {
    local name=$1 r0; shift
    r0=$(alg_related_count "$name")
    "$@" && [ "$(alg_related_count "$name")" -gt "$r0" ] && pass "$name-follow-up-related" \
        || { fail "$name-follow-up-related"; tail -5 "$OUT/$name.log"; }
}
# NAME CMD...: the exchange without alg; PASS when it fails and lab-drop counted the follow-up flow
without_alg() {
    local name=$1 d0; shift
    d0=$(lab_fw_count drop)
    ! "$@" && [ "$(lab_fw_count drop)" -gt "$d0" ] && pass "$name-negative-control-dropped" \
        || fail "$name-negative-control-dropped"
}

t0=$(date +%s)
start_alg && pass alg-starts-helpers-registered-enabled || { fail alg-starts-helpers-registered-enabled; exit 1; }
echo "  alg ready after $(( $(date +%s) - t0 )) s"
wait "$RULES_PID"
lab_fw iptables-restore --noflush <"$RUN/rules4.txt" && lab_fw ip6tables-restore --noflush <"$RUN/rules6.txt" \
    && pass rules-applied || { fail rules-applied; cat "$OUT/rules.err"; }

echo "alg:"
with_alg tftp tftp_get "$LAB_SERVER4" 20
r0=$(alg_related_count tftp 6)
tftp_get "$LAB_SERVER6" 20 && [ "$(alg_related_count tftp 6)" -gt "$r0" ] && pass tftp-ipv6-follow-up-related \
    || fail tftp-ipv6-follow-up-related
with_alg irc irc_dcc 10
with_alg sane sane_scan 60
with_alg amanda amanda_backup
with_alg netbios-ns nbns_query
wait "$CC_PID" && snmpd_ready 90 || { echo "  no shim or no snmpd:"; cat "$OUT/cc.log"; tail -3 "$OUT/snmpd.log"; }
with_alg snmp snmp_get 5
lab_fw "$ALG" status --socket "$SOCK" >"$OUT/status.txt" 2>&1
sed 's/^/    /' "$OUT/status.txt"
for h in "${HELPERS[@]}"; do  # the helper's section of the status names a class with something created
    awk -v h="$h" '$1 == "helper" {on = ($2 == h)} on && /class .*: created [1-9]/ {f = 1} END {exit !f}' \
        "$OUT/status.txt" && pass "$h-status-counts-created" || fail "$h-status-counts-created"
done

stop_alg && pass alg-stops-cleanly || fail alg-stops-cleanly
lab_fw nfct list helper 2>/dev/null | tr -s '\t\n' ' ' | grep -Eq "name = (tftp|irc|sane|amanda|netbios-ns|snmp), [^}]*status = enabled" \
    && fail helpers-disabled-on-stop || pass helpers-disabled-on-stop

echo "negative control (alg stopped):"
fw_reset
without_alg tftp tftp_get "$LAB_SERVER4" 4
without_alg irc irc_dcc 3
without_alg sane sane_scan 12
without_alg amanda amanda_backup
d0=$(in_drops)
! nbns_query && [ "$(in_drops)" -gt "$d0" ] && pass netbios-ns-negative-control-dropped \
    || fail netbios-ns-negative-control-dropped
d0=$(in_drops)
! snmp_get 2 && [ "$(in_drops)" -gt "$d0" ] && pass snmp-negative-control-dropped || fail snmp-negative-control-dropped
echo "  scenario time $(( $(date +%s) - t0 )) s"
exit $((FAILS > 0))
