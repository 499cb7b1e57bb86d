# tools/lab/pptp-peers.sh (source it after netns.sh, as root): a real PPTP VPN across lab-fw, pptpd (PAC) in
# lab-srv and pptp-linux (PNS) in lab-cli, each with its own pppd (Debian 12: pptpd 1.4.0, pptp-linux 1.10.0,
# ppp 2.4.9). Used by tests/lab/scenarios/pptp.sh and tools/record-pptp.sh. Everything lives in one directory;
# nothing in /etc changes (pppd still reads /etc/ppp/options first: our options come after it and win).
#
#   pptp_peers_conf DIR       write DIR/pptpd.conf and DIR/pptpd-options
#   pptp_server_start DIR     pptpd in lab-srv on $LAB_SERVER4:1723 (its pid in PPTP_SERVER_PID)
#   pptp_call DIR SECONDS [UNTIL]  pptp in lab-cli dials the server; 0 when the client's ppp link came up (LCP
#                             and IPCP over the call's GRE, both ways) within SECONDS (it polls: ends early;
#                             1 at once when the command UNTIL succeeds)
#   pptp_hangup DIR           stop the client's pppd (LCP Terminate, then pptp clears the call and the control
#                             connection) and wait for the client's processes to end
# Needs /dev/ppp (ppp_generic; the host kernel of the development machines has no PPP: run it in the lab VM).

PPTP_LOCAL=192.168.99.1 PPTP_REMOTE=192.168.99.2  # the tunnel's own addresses (server, client)
PPTP_PPP_OPTS=(noauth nodefaultroute noccp nobsdcomp nodeflate novj novjccomp nolock lcp-echo-interval 0 debug)

pptp_peers_conf() {
    local dir=$1
    mkdir -p "$dir" /var/run/pptp  # pptp's call manager puts its Unix socket there
    printf '%s\n' "option $dir/pptpd-options" "localip $PPTP_LOCAL" "remoteip $PPTP_REMOTE-9" >"$dir/pptpd.conf"
    { printf '%s\n' "${PPTP_PPP_OPTS[@]}"; echo "logfile $dir/pppd-srv.log"; } >"$dir/pptpd-options"
}

pptp_ppp_ready() {  # modprobe ppp_async (ppp_generic with it) and make /dev/ppp if devtmpfs did not
    modprobe ppp_async 2>/dev/null
    [ -c /dev/ppp ] || mknod /dev/ppp c 108 0
}

pptp_server_start() {
    local dir=$1
    pptp_ppp_ready
    lab_srv pptpd -f -c "$dir/pptpd.conf" -o "$dir/pptpd-options" -p "$dir/pptpd.pid" -l "$LAB_SERVER4" \
        >>"$dir/pptpd.log" 2>&1 &
    PPTP_SERVER_PID=$!
    local _
    for _ in $(seq 150); do lab_srv ss -Hltn 2>/dev/null | grep -q ":1723 " && return 0; sleep 0.2; done
    return 1
}

pptp_link_up() { lab_cli ip -4 addr show 2>/dev/null | grep -q "inet $PPTP_REMOTE peer $PPTP_LOCAL"; }

pptp_call() {  # DIR SECONDS [UNTIL]: UNTIL, a command, ends the wait early too (and the call returns 1)
    local dir=$1 seconds=$2 until=${3:-false} _
    pptp_ppp_ready
    lab_cli pptp "$LAB_SERVER4" --nobuffer --loglevel 1 -- "${PPTP_PPP_OPTS[@]}" logfile "$dir/pppd-cli.log" \
        linkname alglab >>"$dir/pptp-cli.log" 2>&1 &
    for _ in $(seq $((seconds * 5))); do pptp_link_up && return 0; "$until" && return 1; sleep 0.2; done
    return 1
}

pptp_hangup() {
    local dir=$1 p _
    for p in $(ip netns pids "$LAB_NS_CLIENT" 2>/dev/null); do
        [ "$(cat "/proc/$p/comm" 2>/dev/null)" = pppd ] && kill -TERM "$p"
    done
    for _ in $(seq 50); do [ -z "$(ip netns pids "$LAB_NS_CLIENT" 2>/dev/null)" ] && return 0; sleep 0.2; done
    for p in $(ip netns pids "$LAB_NS_CLIENT" 2>/dev/null); do kill -KILL "$p"; done  # pptp or its call manager
    return 0
}
