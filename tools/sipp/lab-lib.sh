# Shared by tests/lab/scenarios/sip.sh and sip-pressure.sh (sourced, runs in the lab VM).
# Needs ALG_ROOT, ALG, LAB_DIR, LAB_SCRATCH; the caller has sourced "$LAB_DIR/netns.sh".

# shellcheck source=../../tests/lab/lib.sh
source "$ALG_ROOT/tests/lab/lib.sh"  # pass, fail, check, FAILS
SIPP_DIR=$ALG_ROOT/tools/sipp
# a slow, shared machine starves the lab guest for seconds: SIPp must go on retransmitting
# (T1 doubling up to T2 = 4 s) rather than give a call up, which would check nothing of alg
SIPP_PATIENT="-max_invite_retrans 40 -max_non_invite_retrans 40 -max_retrans 40"
ALG_PID=

# sip_policy DIR [KEY=VALUE...]: the SIP policy under a name that cannot clash
# with the kernel's own nf_conntrack_sip ("sip"), options overridden
sip_policy() {
    local dir=$1; shift
    mkdir -p "$dir"
    sed -e 's/^name = "sip" /name = "alg-sip"/' "$ALG_ROOT/policies/sip.toml" >"$dir/sip.toml"
    local kv
    for kv in "$@"; do sed -i "s/^${kv%%=*} = [^ ]*/${kv%%=*} = ${kv#*=}/" "$dir/sip.toml"; done
    [ -f "$ALG_ROOT/policies/alg.toml" ] && cp "$ALG_ROOT/policies/alg.toml" "$dir/" || true
}

# sip_alg_start POLICY_DIR LOG: alg run in fw, wait until it answers on its status socket
# (alg_wait_ready: read without a Python start of alg's own, which would compete with alg run's)
sip_alg_start() {
    # not through lab_fw: $! must be alg itself (ip netns exec execs it), so SIGTERM reaches it
    ip netns exec "$LAB_NS_FW" "$ALG" run --policy "$1" >>"$2" 2>&1 &
    ALG_PID=$!
    alg_wait_ready "$ALG_PID" "$(policy_socket "$1")" 300 && return 0
    kill -0 "$ALG_PID" 2>/dev/null || { echo "alg run exited; log:" >&2; tail -20 "$2" >&2; ALG_PID=; }
    return 1
}

sip_alg_stop() {
    [ -n "$ALG_PID" ] || return 0
    kill -TERM "$ALG_PID" 2>/dev/null || true
    local i
    for i in $(seq 1 40); do kill -0 "$ALG_PID" 2>/dev/null || break; sleep 0.25; done
    kill -KILL "$ALG_PID" 2>/dev/null || true
    wait "$ALG_PID" 2>/dev/null || true
    ALG_PID=
}

# sip_rules_start POLICY_DIR: `alg rules` for sip_rules computed in the background (meanwhile alg run
# starts: each is a Python start with alg's imports, seconds under TCG)
SIP_RULES_PID=
sip_rules_start() {
    "$ALG" rules --iptables --policy "$1" >"$LAB_SCRATCH/sip-rules.txt" 2>"$LAB_SCRATCH/sip-rules.err" &
    SIP_RULES_PID=$!
}

# sip_rules POLICY_DIR: apply `alg rules --iptables` in fw (command lines or
# iptables-restore input, whichever alg prints); sip_rules_start's if it ran
sip_rules() {
    local rules line
    if [ -n "$SIP_RULES_PID" ] && wait "$SIP_RULES_PID"; then
        rules=$(<"$LAB_SCRATCH/sip-rules.txt")
    else
        rules=$(lab_fw "$ALG" rules --iptables --policy "$1" 2>/dev/null) || rules=$(lab_fw "$ALG" rules --iptables) || return 1
    fi
    SIP_RULES_PID=
    printf '%s\n' "$rules" >"$LAB_SCRATCH/sip-rules.txt"
    if printf '%s\n' "$rules" | grep -q '^\*raw'; then
        # family-agnostic restore input: both families (IPv6 SIP needs the raw rules too)
        printf '%s\n' "$rules" | lab_fw "$LAB_IPT-restore" --noflush || return 1
        printf '%s\n' "$rules" | lab_fw "$LAB_IP6T-restore" --noflush || return 1
        return 0
    fi
    while IFS= read -r line; do
        case $line in iptables*|ip6tables*) eval "lab_fw $line" || return 1 ;; esac
    done <<<"$rules"
}

# count_rule NAME [4|6|46]: packets of FORWARD rules commented NAME
count_rule() {
    local name=$1 fams=${2:-46} total=0 n ipt
    for ipt in $([[ $fams == *4* ]] && echo "$LAB_IPT") $([[ $fams == *6* ]] && echo "$LAB_IP6T"); do
        n=$(lab_fw "$ipt" -nvxL FORWARD | awk -v c="/* $name */" 'index($0, c) {s += $1} END {print s+0}')
        total=$((total + n))
    done
    echo "$total"
}

# media NS DST PORT [SRC_ADDR...]: one UDP datagram from each SRC_ADDR (or
# the namespace's own address) to DST:PORT, from one Python process
media() {
    local ns=$1 dst=$2 port=$3; shift 3
    ip netns exec "$ns" "${LAB_HOST_PYTHON:-python3}" -I -S - "$dst" "$port" "$@" <<'EOF'
import socket, sys
dst, port, srcs = sys.argv[1], int(sys.argv[2]), sys.argv[3:] or [None]
fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
for src in srcs:
    s = socket.socket(fam, socket.SOCK_DGRAM)
    if src:
        s.bind((src, 0))
    s.sendto(b"\x80\x00\x00\x01" + b"\x00" * 168, (dst, port))
    s.close()
EOF
}

# sends to many destinations: media_to NS PORT DST...
media_to() {
    local ns=$1 port=$2; shift 2
    ip netns exec "$ns" "${LAB_HOST_PYTHON:-python3}" -I -S - "$port" "$@" <<'EOF'
import socket, sys
port, dsts = int(sys.argv[1]), sys.argv[2:]
for d in dsts:
    s = socket.socket(socket.AF_INET6 if ":" in d else socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(b"\x80\x00\x00\x01" + b"\x00" * 168, (d, port))
    s.close()
EOF
}

# sip_call udp|tcp 4|6 LABEL: one SIPp call (UAC in lab-cli, UAS in lab-srv, logs in
# $OUT/LABEL-*), media both ways while it is up: the server sends to SIP_MEDIA_TO4/6
# (default: the client's address), the client to the server; packets counted by the
# FORWARD rules commented SIP_RULE_CALLER / SIP_RULE_CALLEE. SIP_TRACE=1: the UAS logs
# the messages it gets in $OUT/LABEL-uas-messages.log. Sets LAST_SIGNALLING (sipp exit
# codes), LAST_EXPECT (alg's expectations listed), LAST_CALLER, LAST_CALLEE, LAST_DROP.
sip_call() {
    local tr=$1 fam=$2 label=$3 t cli srv to uri uas uac rc=0 n=0 trace=()
    [ "$tr" = udp ] && t=u1 || t=t1
    if [ "$fam" = 6 ]; then cli=$LAB_CLIENT6 srv=$LAB_SERVER6 uri="[$LAB_SERVER6]" to=${SIP_MEDIA_TO6:-$LAB_CLIENT6}
    else cli=$LAB_CLIENT4 srv=$LAB_SERVER4 uri=$LAB_SERVER4 to=${SIP_MEDIA_TO4:-$LAB_CLIENT4}; fi
    [ "${SIP_TRACE:-0}" = 1 ] && trace=(-trace_msg -message_file "$OUT/$label-uas-messages.log")
    local caller=${SIP_RULE_CALLER:-sip-rel-caller} callee=${SIP_RULE_CALLEE:-sip-rel-callee} c0 c1 d0
    c0=$(count_rule "$caller") c1=$(count_rule "$callee") d0=$(count_rule lab-drop)
    lab_srv sipp -sf "$SIPP_DIR/uas-lab.xml" -i "$srv" -p 5060 -t $t -mp 20000 -m 1 $SIPP_PATIENT -timeout 240s \
        "${trace[@]}" >"$OUT/$label-uas.log" 2>&1 &
    uas=$!
    listening "$LAB_NS_SERVER" "$tr" 5060
    lab_cli sipp -sf "$SIPP_DIR/uac-lab.xml" "$uri:5060" -i "$cli" -p 5061 -t $t -mp 16000 -m 1 -s alice \
        -d "$HOLD_MS" $SIPP_PATIENT -timeout 240s >"$OUT/$label-uac.log" 2>&1 &
    uac=$!
    local until=$((SECONDS + 60))
    while [ $SECONDS -lt $until ]; do  # until both SDPs have been seen (or 60 s: a starved guest is slow)
        n=$(fw_expect | grep -c "helper=alg-sip") || true
        [ "$n" -ge 4 ] && break
        kill -0 "$uac" 2>/dev/null || break  # the call is over: no SDP is still to come
        sleep 0.25
    done
    fw_expect >"$OUT/$label-expect.txt" || true
    media "$LAB_NS_SERVER" "$to" 16000 &   # callee -> caller (expected from the INVITE's SDP)
    local m1=$!
    media "$LAB_NS_CLIENT" "$srv" 20000     # caller -> callee (expected from the 200's SDP)
    wait "$m1" || true
    wait "$uac" || rc=$?
    wait "$uas" || rc=$((rc | $?))
    LAST_SIGNALLING=$rc LAST_EXPECT=$n
    LAST_CALLER=$(( $(count_rule "$caller") - c0 ))
    LAST_CALLEE=$(( $(count_rule "$callee") - c1 ))
    LAST_DROP=$(( $(count_rule lab-drop) - d0 ))
}

# fw_expect: `conntrack -L expect` of both families in fw
fw_expect() {
    lab_fw conntrack -L expect -f ipv4 2>/dev/null
    lab_fw conntrack -L expect -f ipv6 2>/dev/null
}

# queue_drops QUEUE: dropped + user-dropped packets of an NFQUEUE in fw
queue_drops() {
    lab_fw cat /proc/net/netfilter/nfnetlink_queue 2>/dev/null | awk -v q="$1" '$1 == q {print $6 + $7; f = 1} END {if (!f) print 0}'
}
