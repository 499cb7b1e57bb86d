#!/bin/bash
# The same FTP control-channel load through conntrackd's ftp helper and through alg's, in the lab VM,
# one boot (issue 14, goal 4). Prints figures; asserts nothing (not a test: tests/test_lab.py does not
# run it). From the repository, as root:
#   ALG_ROOT=$PWD LAB_DIR=$PWD/tools/lab tools/lab/vm-run -t 1200 -s /tmp/ftpload -e ALG_ROOT -e LAB_DIR \
#       tests/lab/run-all.sh ../../../benchmarks/lab_ftp_load
# then read /tmp/ftpload/lab_ftp_load.out.
#
# tools/lab/netns.sh's routed topology; pyftpdlib on the server; tools/lab/ftp_load.py on the client:
# FTP_LOAD_CONNECTIONS control connections (8) each asking PASV in a loop for FTP_LOAD_SECONDS (20).
# Each 227 answer passes the firewall, where the helper reads it and creates an expectation (replacing
# the connection's previous one: ExpectMax 1). Four runs, in this order:
#   none        no helper on the control connections: the round trip without one
#   conntrackd  conntrackd 1.4.7's ftp helper (cthelper, C, queue 5)
#   alg         `alg run` with the ftp helper (as alg-ftp, queue 5)
#   alg-2w      `alg run` with [core] workers = 2 (alg.daemon.pool): instances alg-ftp0 (queue 5) and
#               alg-ftp1 (queue 4101), one worker process each, and the nft map `alg rules --nft` prints
#               giving each new control connection one of them by a hash of its addresses; the
#               connections leave from 8 client addresses (one each), picked 4 per instance (below)
# For each: PASV round trips completed, their p50/p99, the rate, and the latency the helper adds (its
# p50/p99 minus none's). Each connection asks again as soon as answered, so the helpers run saturated
# and the rate says what each carries. none, conntrackd and alg run once more paced (none-paced ...):
# FTP_LOAD_RATE (100) PASVs per second in all, below what either carries, where the round trip shows
# what a helper adds to each packet (FTP_LOAD_RATE=0: not run). Under TCG every figure is the emulator's; the ratio between the two helpers,
# measured in the same boot, is the result.
# How much of the work each helper did (a `work` line): 227 answers read against expectations created,
# counted by the kernel (expect_create of `conntrack -S expect` in lab-fw, before and after), and the
# data connections that failed. After its PASV phase each connection does FTP_LOAD_DATA_ROUNDS (3) rounds
# of PASV and a data connection to the port its 227 names; lab-fw lets that connection in only as RELATED
# (netns.sh: NEW is accepted to port 21 alone), so one that does not open within 2 s found no expectation
# (none's all fail: the control). Beside them: TCP segments the client and server retransmitted, and the
# expectation events (`conntrack -E expect`), with the 227s (ftp_load.py --log) whose connection and port never
# got an EXP_NEW (a lower bound: a port a connection was given twice counts once). The
# listener writes to tmpfs and its stderr is kept: conntrack 1.4.7's `-E expect` exits at its first
# ENOBUFS (nfexp_catch returns -1: "Operation failed: No buffer space available"; it has no
# --buffer-size there), and writing each line to the 9p scratch folder made it fall behind conntrackd's
# rate (one boot: it saw 1,082 of the 1,598 expectations the kernel created, then exited). That, not
# conntrackd, is why earlier runs counted 150 to 1,109 of conntrackd's expectations for 2,013 to 4,072 227s.
set -u
source "$LAB_DIR/netns.sh"
# shellcheck source=../tests/lab/lib.sh
source "$ALG_ROOT/tests/lab/lib.sh"
RUN=/run/alg-lab/ftpload; OUT=$LAB_SCRATCH/ftpload
rm -rf "$RUN"; mkdir -p "$RUN/root" "$RUN/policy" "$OUT"
SYS_PY="/usr/bin/python3 -I"            # has pyftpdlib (Debian package)
CONNS=${FTP_LOAD_CONNECTIONS:-8}; SECS=${FTP_LOAD_SECONDS:-20}; ROUNDS=${FTP_LOAD_DATA_ROUNDS:-3}
RATE=${FTP_LOAD_RATE:-100}  # PASV exchanges per second of the paced runs (0: none)
SOCK=$RUN/alg.sock; POLICY=$RUN/policy
PIDS=(); CTD_PID=; ALG_PID=
QUEUES=5; LOAD_ARGS=()  # what load() counts as queued (queues summed), what ftp_load.py gets besides
cleanup() {
    [ -n "$ALG_PID" ] && kill -TERM "$ALG_PID" 2>/dev/null
    [ -n "$CTD_PID" ] && kill "$CTD_PID" 2>/dev/null
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    wait 2>/dev/null
    lab_net_down
    nfct del helper ftp inet tcp 2>/dev/null; nfct del helper alg-ftp inet tcp 2>/dev/null
    nfct del helper alg-ftp inet6 tcp 2>/dev/null
    local i
    for i in 0 1; do nfct del helper alg-ftp$i inet tcp 2>/dev/null; nfct del helper alg-ftp$i inet6 tcp 2>/dev/null; done
}
trap cleanup EXIT
rmmod nf_nat_ftp nf_conntrack_ftp 2>/dev/null  # conntrackd's helper is named ftp

lab_net_up tcp/21 || { echo "FAIL lab_net_up"; exit 1; }
lab_fw sysctl -qw net.netfilter.nf_conntrack_events=1
ip netns exec "$LAB_NS_SERVER" $SYS_PY "$LAB_DIR/ftp_peers.py" ftp-server --bind "$LAB_SERVER4" --root "$RUN/root" \
    --pasv-ports 50000-50999 >"$OUT/ftpd.log" 2>&1 & PIDS+=($!)
for _ in $(seq 600); do  # listening (Python starts slowly under emulation)
    lab_srv ss -Hltn "sport = :21" | grep -q . && break; sleep 0.2
done
printf 'helper = "ftp"\nname = "alg-ftp"\nqueue = 5\n' >"$RUN/policy/ftp.toml"
printf '[core]\nstatus_socket = "%s"\n' "$SOCK" >"$RUN/policy/alg.toml"

HZ=$(getconf CLK_TCK)
ticks() {  # PID: the process's CPU time so far (all its threads), user and system, in clock ticks
    [ -n "$1" ] && [ -r "/proc/$1/stat" ] || { echo 0 0; return; }
    sed 's/.*) //' "/proc/$1/stat" | awk '{print $12, $13}'  # utime, stime: fields 14, 15
}
ticks_of() {  # PID...: their CPU time so far, summed
    local p
    for p in "${@:-}"; do ticks "$p"; done | awk '{u += $1; s += $2} END {print u + 0, s + 0}'
}
vm_cpu() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9}' /proc/stat; }
counted() {  # COMMENT: packets the raw table's counting rule COMMENT saw
    lab_fw iptables -t raw -nvxL PREROUTING | awk -v c="/* $1 */" 'index($0, c) {s += $1} END {print s + 0}'
}
queued() {  # QUEUE...: packets the queues received since each was bound (their id_sequence), summed, in lab-fw
    lab_fw cat /proc/net/netfilter/nfnetlink_queue |
        awk -v qs="$*" 'BEGIN {split(qs, l, " "); for (i in l) want[l[i]] = 1} $1 in want {s += $8} END {print s + 0}'
}

expect_created() {  # expectations the kernel created in lab-fw so far (all CPUs)
    lab_fw conntrack -S expect | awk '{for (i = 1; i <= NF; i++) if ($i ~ /^expect_create=/) {sub(/.*=/, "", $i); s += $i}}
        END {print s + 0}'
}
retrans() {  # TCP segments retransmitted so far by the client and the server (their /proc/net/snmp)
    { lab_cli cat /proc/net/snmp; lab_srv cat /proc/net/snmp; } |
        awk '$1 == "Tcp:" {if (!h) {for (i = 2; i <= NF; i++) if ($i == "RetransSegs") c = i; h = 1} else {s += $c; h = 0}}
            END {print s + 0}'
}
unmatched() {  # LOG EVENTS: the 227s of ftp_load.py's --log LOG (client port, data port) with no EXP_NEW in EVENTS
    awk 'FNR == NR {if ($0 ~ /\[NEW\]/) {d = ""; m = ""; for (i = 1; i <= NF; i++) {
            if ($i ~ /^dport=/ && d == "") d = substr($i, 7)
            if ($i ~ /^master-src=/) ms = 1
            if (ms && $i ~ /^sport=/) {m = substr($i, 7); ms = 0}}
            seen[m " " d] = 1}; next}
        !(($1 " " $2) in seen) {n++} END {print n + 0}' "$2" "$1"
}
field() {  # NAME LINE: the value after NAME in ftp_load.py's line of names and values
    awk -v k="$1" '{for (i = 1; i < NF; i++) if ($i == k) {print $(i + 1); exit}}' <<<"$2"
}
declare -A P50 P99 MEAN WORK PER_S US_PER_Q
load() {  # LABEL [PID...]: the load, the expectations it made, the helper PIDs' cost; sets its P50, P99, MEAN, PER_S, US_PER_Q, WORK
    local label=$1 pids=("${@:2}") ev line n t0 t1 s0 s1 c0 c1 q pkts acks pasv replies cpu_gen u s e0 e1 r0 r1 w0 w1 \
        data failed listener x0 x1
    lab_fw conntrack -F >/dev/null 2>&1
    # line-buffered, on tmpfs (a 9p write per line slows the listener): it is killed at the end, and what
    # its stdio held would be lost
    ip netns exec "$LAB_NS_FW" stdbuf -oL conntrack -E expect >"$RUN/$label-exp.txt" 2>"$OUT/$label-exp.err" & ev=$!
    sleep 0.5
    lab_fw iptables -t raw -Z PREROUTING
    q0=$(queued $QUEUES); t0=$(ticks_of "${pids[@]}"); s0=$(ticks "${PIDS[0]}"); c0=$(vm_cpu)
    e0=$(expect_created); r0=$(lab_fw_count related 4); x0=$(retrans); w0=$(date +%s%N)
    line=$(lab_cli $SYS_PY "$LAB_DIR/ftp_load.py" --host "$LAB_SERVER4" --connections "$CONNS" --seconds "$SECS" \
        --data "$ROUNDS" --log "$RUN/$label-227.txt" "${LOAD_ARGS[@]}")
    w1=$(date +%s%N); t1=$(ticks_of "${pids[@]}"); s1=$(ticks "${PIDS[0]}"); c1=$(vm_cpu); q=$(( $(queued $QUEUES) - q0 ))
    e1=$(expect_created); r1=$(lab_fw_count related 4); x1=$(retrans)
    read -r u s <<<"$(echo "$t0 $t1" | awk '{print $3 - $1, $4 - $2}')"  # the helper's user, system ticks
    read -r s0 s1 <<<"$(echo "$s0 $s1" | awk '{print $1 + $2, $3 + $4}')"
    pkts=$(counted ftpload-all); acks=$(counted ftpload-pure-ack)
    sleep 0.5
    if kill -0 "$ev" 2>/dev/null; then listener="alive to the end"; else listener="EXITED before the end"; fi
    kill "$ev" 2>/dev/null; wait "$ev" 2>/dev/null
    mv "$RUN/$label-exp.txt" "$RUN/$label-227.txt" "$OUT/"
    n=$(grep -c "\[NEW\]" "$OUT/$label-exp.txt")
    pasv=$(field pasv "$line"); replies=$(field replies227 "$line"); cpu_gen=$(field cpu_ms "$line")
    data=$(field data "$line"); failed=$(field data_failed "$line")
    P50[$label]=$(field p50_us "$line"); P99[$label]=$(field p99_us "$line"); MEAN[$label]=$(field mean_us "$line")
    PER_S[$label]=$(field per_s "$line")
    US_PER_Q[$label]=$(awk -v t=$((u + s)) -v q="$q" -v hz="$HZ" 'BEGIN {if (q > 0) printf "%.0f", 1e6 * t / hz / q}')
    : "${P50[$label]:=0}" "${P99[$label]:=0}" "${MEAN[$label]:=0}" "${replies:=0}"
    printf 'ftp-load %-10s %s; %.1f s\n' "$label" "$line" "$(( (w1 - w0) / 1000000 ))e-3"
    WORK[$label]=$(awk -v a="$replies" -v x=$((e1 - e0)) -v d="${data:-0}" -v f="${failed:-0}" -v w=$((w1 - w0)) 'BEGIN {
        printf "%d 227 answers, %d expectations created (%.1f%%, %.1f/s), %d of %d data connections failed", \
            a, x, (a > 0 ? 100 * x / a : 0), x / (w / 1e9), f, d}')
    printf 'ftp-load %-10s work: %s; %d data SYNs let in as RELATED; %d TCP segments retransmitted; events: %d EXP_NEW seen (%d 227s whose connection and port never had one), listener %s%s\n' \
        "$label" "${WORK[$label]}" $((r1 - r0)) $((x1 - x0)) "$n" "$(unmatched "$OUT/$label-227.txt" "$OUT/$label-exp.txt")" \
        "$listener" \
        "$( [ -s "$OUT/$label-exp.err" ] && printf ' (stderr: %s)' "$(tr '\n' ' ' <"$OUT/$label-exp.err" | cut -c1-160)")"
    awk -v l="$label" -v pasv="$replies" -v pk="$pkts" -v ack="$acks" -v q="$q" -v hz="$HZ" -v u="$u" -v s="$s" \
        -v srv="$((s1 - s0))" -v gen="${cpu_gen:-0}" -v c0="$c0" -v c1="$c1" -v wall=$((w1 - w0)) 'BEGIN {
        split(c0, a, " "); split(c1, b, " "); busy = b[1] - a[1]; all = b[2] - a[2]; p = pasv > 0 ? pasv : 1
        printf "ftp-load %-10s cost: %.2f packets per PASV (%.2f pure ACKs), %.2f queued per PASV (%d); ", l, pk / p, ack / p, q / p, q
        t = u + s
        printf "helper CPU %.0f ms (user %.0f, system %.0f)", 1000 * t / hz, 1000 * u / hz, 1000 * s / hz
        if (q > 0) printf " = %.0f us per queued packet", 1e6 * t / hz / q
        printf " (%.0f%% of one CPU); load generator CPU %s ms, FTP server %.0f ms; VM CPUs %.0f%% busy\n", \
            100 * t / hz / (wall / 1e9), gen, 1000 * srv / hz, (all > 0 ? 100 * busy / all : 0)
    }'
}
# Under TCG code runs slower the first times it runs in a boot (QEMU translates it then and keeps the
# translation): one boot measured the same alg 4,308 us per queued packet in its first load and
# 1,784 in its third. Each run is therefore preceded by the same load for FTP_LOAD_WARMUP seconds
# (15), not measured.
warm_up() {
    lab_cli $SYS_PY "$LAB_DIR/ftp_load.py" --host "$LAB_SERVER4" --connections "$CONNS" \
        --seconds "${FTP_LOAD_WARMUP:-15}" --data 0 "${LOAD_ARGS[@]}" >/dev/null 2>&1
}
raw_helper() {  # NAME: the control connections get helper NAME; their packets are counted first
    lab_fw iptables -t raw -F PREROUTING
    lab_fw iptables -t raw -A PREROUTING -p tcp -m multiport --ports 21 -m comment --comment ftpload-all
    lab_fw iptables -t raw -A PREROUTING -p tcp -m multiport --ports 21 --tcp-flags ALL ACK -m length --length 0:52 \
        -m comment --comment ftpload-pure-ack
    [ -n "$1" ] && lab_fw iptables -t raw -A PREROUTING -p tcp --dport 21 -j CT --helper "$1"
}

paced() {  # LABEL [PID...]: load() again with the PASVs paced at RATE per second in all, as LABEL-paced
    [ "$RATE" = 0 ] && return
    local saved=("${LOAD_ARGS[@]}")
    LOAD_ARGS+=(--rate "$RATE")
    load "$1-paced" "${@:2}"
    LOAD_ARGS=("${saved[@]}")
}

raw_helper ""
warm_up
load none
paced none

nfct add helper ftp inet tcp || { echo "FAIL nfct add helper ftp"; exit 1; }
conntrackd_conf "$RUN/conntrackd.conf" "$RUN" ftp tcp 5 1 300
ip netns exec "$LAB_NS_FW" conntrackd -C "$RUN/conntrackd.conf" >"$OUT/conntrackd.out" 2>&1 & CTD_PID=$!
for _ in $(seq 300); do
    nfct list helper 2>/dev/null | tr -s '\t\n' ' ' | grep -q "name = ftp, .queuenum = 5,.*status = enabled" && break
    sleep 0.1
done
raw_helper ftp
warm_up
load conntrackd "$CTD_PID"
paced conntrackd "$CTD_PID"
kill "$CTD_PID"; wait "$CTD_PID" 2>/dev/null; CTD_PID=
raw_helper ""; lab_fw conntrack -F >/dev/null 2>&1  # a helper in use cannot be removed (EBUSY)
nfct del helper ftp inet tcp

start_alg() {  # [PREFIX...]: `alg run` in lab-fw (PREFIX: what runs it instead of $ALG), until it answers
    local cmd=("$ALG")
    [ $# -gt 0 ] && cmd=("$@")
    ip netns exec "$LAB_NS_FW" "${cmd[@]}" run --policy "$POLICY" >>"$OUT/alg.log" 2>&1 & ALG_PID=$!
    for _ in $(seq 600); do
        lab_fw "$ALG" status --socket "$SOCK" >/dev/null 2>&1 && return 0
        kill -0 "$ALG_PID" 2>/dev/null || { echo "FAIL alg run"; tail "$OUT/alg.log"; exit 1; }
        sleep 0.2
    done
}
stop_alg() {  # the control connections without a helper (one in use cannot be removed: EBUSY), alg stopped
    raw_helper ""; lab_fw conntrack -F >/dev/null 2>&1
    if [ -n "$ALG_PID" ]; then kill -TERM "$ALG_PID"; wait "$ALG_PID" 2>/dev/null; fi
    ALG_PID=
}
start_alg
raw_helper alg-ftp
warm_up
load alg "$ALG_PID"
lab_fw "$ALG" status --socket "$SOCK" | head -3
lab_fw "$ALG" status --socket "$SOCK" --format json >"$OUT/alg-status.json"
# ExpectMax 1: one expectation per connection in the kernel and in alg's table (the kernel evicts the
# last one as it creates the next: alg sends no EXP_DELETE for it, `evicted_by_kernel`)
printf 'ftp-load alg: the kernel holds %s expectations of alg-ftp at the end; ' \
    "$(lab_fw conntrack -L expect 2>/dev/null | grep -c 'helper=alg-ftp')"
$SYS_PY -c 'import json, sys
d = json.load(open(sys.argv[1]))
print("alg status: %s held, %s left to the kernel to evict" % (d.get("expectations"), d.get("evicted_by_kernel")))' \
    "$OUT/alg-status.json"
paced alg "$ALG_PID"
# FTP_LOAD_ALG_B=DIR (passed in with -e): then the same load with another version of alg (alg-b: DIR holds
# its alg and alg_helpers, as `git archive REV alg helpers` gives them with helpers renamed; python -P keeps
# the current folder's alg off the path) and with this one again (alg-again): a before and after in one
# boot, where the emulator's speed differs from boot to boot
if [ -n "${FTP_LOAD_ALG_B:-}" ]; then
    for run in alg-b alg-again; do
        stop_alg
        if [ "$run" = alg-b ]; then
            start_alg env PYTHONPATH="$FTP_LOAD_ALG_B" "$ALG_ROOT/.venv/bin/python" -P -m alg
        else
            start_alg
        fi
        raw_helper alg-ftp
        warm_up
        load "$run" "$ALG_PID"
    done
fi
# FTP_LOAD_PROFILE=1 (passed in with -e): then the same load once more with alg under a sampling
# profiler (benchmarks/sample_profile.py: cProfile's clock reads are system calls here), and where its
# CPU time went (the profiler costs alg a little: that run's figures are not compared, the shares are)
if [ -n "${FTP_LOAD_PROFILE:-}" ]; then
    stop_alg
    start_alg "$ALG_ROOT/.venv/bin/python" "$ALG_ROOT/benchmarks/sample_profile.py" "$OUT/alg-profile.txt" alg
    raw_helper alg-ftp
    warm_up
    load alg-profiled "$ALG_PID"
    stop_alg  # (the profile is written as alg exits)
    cat "$OUT/alg-profile.txt"
fi

# alg-2w: two workers. The map `alg rules --nft` prints hashes the control connection's addresses
# (jhash ip saddr . ip daddr mod 2, seeded at random when nft loads the rule): from one client
# address all 8 connections would meet the same instance, so here each leaves from its own, and the
# 8 are picked 4 per instance (a probe connection from each of 32 candidates shows where the loaded
# map sends it), so that the run measures two workers with even shares; where the first 8
# candidates fell is printed too (what 8 clients would have got by chance).
stop_alg
POLICY=$RUN/policy2; mkdir -p "$POLICY"
cp "$RUN/policy/ftp.toml" "$POLICY/"
printf '[core]\nstatus_socket = "%s"\nworkers = 2\n' "$SOCK" >"$POLICY/alg.toml"
bound() {  # QUEUE...: true when lab-fw has a reader on each
    lab_fw cat /proc/net/netfilter/nfnetlink_queue |
        awk -v qs="$*" 'BEGIN {n = split(qs, l, " "); for (i in l) want[l[i]] = 1} $1 in want {f++} END {exit f != n}'
}
log0=$(wc -l <"$OUT/alg.log")
start_alg
for _ in $(seq 600); do bound 5 4101 && break; sleep 0.2; done  # each worker binds its queue as it starts
WPIDS=($(pgrep -P "$ALG_PID" | sort -n))
bound 5 4101 && echo "ftp-load alg-2w: supervisor $ALG_PID, workers ${WPIDS[*]}, queues 5 and 4101 bound" \
    || { echo "ftp-load alg-2w: FAIL the workers did not bind queues 5 and 4101"; tail -20 "$OUT/alg.log"; }
raw_helper ""  # the counting rules only: nft's map assigns the helpers
lab_fw "$ALG" rules --nft --nft-chain none --policy "$POLICY" >"$OUT/alg-2w-rules.nft" 2>&1 \
    && lab_fw nft -f "$OUT/alg-2w-rules.nft" \
    || { echo "ftp-load alg-2w: FAIL alg rules / nft -f"; cat "$OUT/alg-2w-rules.nft"; }
sed 's/^/ftp-load alg-2w rules: /' "$OUT/alg-2w-rules.nft"
IDLE=5; i0=$(ticks_of "$ALG_PID" "${WPIDS[@]}"); sleep $IDLE  # what the three cost with nothing to do
printf 'ftp-load alg-2w idle: supervisor and workers %s ms of CPU in %d s without traffic\n' \
    "$(echo "$i0 $(ticks_of "$ALG_PID" "${WPIDS[@]}")" | awk -v hz="$HZ" '{printf "%.0f", 1000 * ($3 + $4 - $1 - $2) / hz}')" "$IDLE"
CANDIDATES=$(seq -f "10.0.1.%g" 11 42)
printf 'address add %s/24 dev c0\n' $CANDIDATES | lab_cli ip -batch -
# NEW to port 21 from every client address (netns.sh's rule names the client's first address only)
lab_fw iptables -I FORWARD 1 -i c1 -o s1 -s 10.0.1.0/24 -d "$LAB_SERVER4" -p tcp --dport 21 \
    -m conntrack --ctstate NEW -j ACCEPT
lab_fw conntrack -F >/dev/null 2>&1
lab_cli $SYS_PY -c 'import socket, sys
for src in sys.argv[2:]:
    try:
        socket.create_connection((sys.argv[1], 21), timeout=10, source_address=(src, 0)).close()
    except OSError as exc:
        print("probe from", src, exc)' "$LAB_SERVER4" $CANDIDATES
# conntrack -L's line for each probe: src=CANDIDATE ... helper=alg-ftpI -> "CANDIDATE alg-ftpI"
lab_fw conntrack -L -p tcp --dport 21 2>/dev/null | awk '{s = ""; h = "none"; for (i = 1; i <= NF; i++) {
        if ($i ~ /^src=/ && s == "") s = substr($i, 5); if ($i ~ /^helper=/) h = substr($i, 8)}; print s, h}' |
    sort -t. -k4,4n >"$OUT/alg-2w-probe.txt"
printf 'ftp-load alg-2w probe: of the 32 candidates %s; of the first 8 (10.0.1.11-18) %s\n' \
    "$(awk '{n[$2]++} END {for (h in n) printf "%s %d, ", h, n[h]}' "$OUT/alg-2w-probe.txt" | sed 's/, $//')" \
    "$(awk -F'[. ]' '$4 <= 18 {n[$5]++} END {for (h in n) printf "%s %d, ", h, n[h]}' "$OUT/alg-2w-probe.txt" |
        sed 's/, $//')"
# 4 from each instance, alternating (fewer from one if the hash gave it fewer than 4 of the 32)
SOURCES=$(awk '$2 != "none" {l[$2] = l[$2] " " $1} END {for (h in l) print l[h]}' "$OUT/alg-2w-probe.txt" |
    awk '{for (i = 1; i <= NF; i++) c[i] = c[i] " " $i; if (NF > m) m = NF} END {for (i = 1; i <= m; i++) printf "%s", c[i]}' |
    tr -s ' ' '\n' | grep . | head -"$CONNS" | paste -sd,)
echo "ftp-load alg-2w sources: $SOURCES"
LOAD_ARGS=(--sources "$SOURCES"); QUEUES="5 4101"
warm_up
q5=$(queued 5); q4101=$(queued 4101); PT0=(); for p in "$ALG_PID" "${WPIDS[@]}"; do PT0+=("$(ticks "$p")"); done
# the control connections' conntracks halfway through the PASV phase (they end in a RST after QUIT,
# gone 10 s later)
(sleep $((SECS / 2)); lab_fw conntrack -L -p tcp --dport 21 >"$OUT/alg-2w-control.txt" 2>/dev/null) & SNAP=$!
load alg-2w "$ALG_PID" "${WPIDS[@]}"
wait "$SNAP"
q5=$(( $(queued 5) - q5 )); q4101=$(( $(queued 4101) - q4101 ))
i=0; for p in "$ALG_PID" "${WPIDS[@]}"; do  # whose CPU it was
    printf 'ftp-load alg-2w CPU of %s %s: %s\n' "$( [ $i = 0 ] && echo supervisor || echo "worker $((i - 1))")" "$p" \
        "$(echo "${PT0[$i]} $(ticks "$p")" | awk -v hz="$HZ" '{printf "%.0f ms (user %.0f, system %.0f)", \
            1000 * ($3 + $4 - $1 - $2) / hz, 1000 * ($3 - $1) / hz, 1000 * ($4 - $2) / hz}')"
    i=$((i + 1))
done
WPIDS_END=($(pgrep -P "$ALG_PID" | sort -n))
echo "ftp-load alg-2w processes: workers ${WPIDS[*]} at the start, ${WPIDS_END[*]} at the end (CPU counted for the first)"
printf 'ftp-load alg-2w instances: queued %d to queue 5 (alg-ftp0), %d to queue 4101 (alg-ftp1); control connections by helper (conntrack -L halfway): %s; EXP_NEW events by helper: %s\n' \
    "$q5" "$q4101" \
    "$(grep -o 'helper=[^ ]*' "$OUT/alg-2w-control.txt" | sort | uniq -c | awk '{printf "%s %d, ", substr($2, 8), $1}' | sed 's/, $//')" \
    "$(grep '\[NEW\]' "$OUT/alg-2w-exp.txt" | grep -o 'helper=[^ ]*' | sort | uniq -c | awk '{printf "%s %d, ", substr($2, 8), $1}' | sed 's/, $//')"
lab_fw "$ALG" status --socket "$SOCK" | head -4
lab_fw "$ALG" status --socket "$SOCK" --format json >"$OUT/alg-2w-status.json"
$SYS_PY -c 'import json, sys
d = json.load(open(sys.argv[1]))
for w in d.get("workers", []):
    print("ftp-load alg-2w status worker %(index)s: pid %(pid)s, alive %(alive)s, answered %(answered)s, restarts %(restarts)s" % w)
for name, h in sorted(d.get("helpers", {}).items()):
    c = {k: sum(x.get(k, 0) if isinstance(x.get(k, 0), int) else sum(x[k].values()) for x in h.get("classes", {}).values())
         for k in ("created", "evicted", "used", "refused", "kernel_failed")}
    print("ftp-load alg-2w status helper %s: packets %s, flows %s, expectations created %d (kernel failed %d, refused %d, "
          "evicted %d, used %d), parse errors %s, internal errors %s" % (name, h.get("packets"), h.get("flows"), c["created"],
          c["kernel_failed"], c["refused"], c["evicted"], c["used"], h.get("parse_errors"), h.get("internal_errors")))
print("ftp-load alg-2w status: %s held, %s left to the kernel to evict, %s verdicts, %s dropped" % (d.get("expectations"),
      d.get("evicted_by_kernel"), d.get("verdicts"), d.get("dropped")))' "$OUT/alg-2w-status.json"
printf 'ftp-load alg-2w alg.log: %d lines, %d naming an error or a traceback\n' "$(tail -n +$((log0 + 1)) "$OUT/alg.log" | wc -l)" \
    "$(tail -n +$((log0 + 1)) "$OUT/alg.log" | grep -ciE 'error|traceback')"
lab_fw nft delete table inet alg; stop_alg

# what the VM charges for what alg does per packet beside its Python: a clock read (alg reads the clock a
# few times per packet; without a usable TSC the guest's clock may be an emulated device) and a system call
printf 'ftp-load vm: clocksource %s; ' "$(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)"
$SYS_PY -c 'import os, select, timeit
n = 20000
cost = {name: timeit.timeit(f, number=n) / n * 1e6 for name, f in (
    ("time.monotonic()", __import__("time").monotonic), ("a system call (getppid)", os.getppid),
    ("select() of nothing", lambda: select.select([], [], [], 0)), ("a Python call", lambda: None))}
print("; ".join(f"{k} {v:.2f} us" for k, v in cost.items()))'
for label in conntrackd alg; do
    echo "ftp-load $label adds p50 $(( P50[$label] - P50[none] )) us, p99 $(( P99[$label] - P99[none] )) us," \
        "mean $(( MEAN[$label] - MEAN[none] )) us to a PASV round trip"
done
awk -v a=$(( P50[alg] - P50[none] )) -v c=$(( P50[conntrackd] - P50[none] )) \
    'BEGIN {if (c > 0) printf "ftp-load alg adds %.2fx the p50 latency conntrackd adds\n", a / c}'
for label in none conntrackd alg; do echo "ftp-load work $label: ${WORK[$label]}"; done
if [ "$RATE" != 0 ]; then  # the paced runs: what each helper adds to a round trip below saturation
    for label in conntrackd alg; do
        echo "ftp-load paced at $RATE PASV/s: $label adds p50 $(( P50[$label-paced] - P50[none-paced] )) us," \
            "p99 $(( P99[$label-paced] - P99[none-paced] )) us, mean $(( MEAN[$label-paced] - MEAN[none-paced] )) us" \
            "(${PER_S[$label-paced]} PASV answers/s)"
    done
    awk -v a=$(( P50[alg-paced] - P50[none-paced] )) -v c=$(( P50[conntrackd-paced] - P50[none-paced] )) \
        -v m=$(( MEAN[alg-paced] - MEAN[none-paced] )) -v mc=$(( MEAN[conntrackd-paced] - MEAN[none-paced] )) \
        'BEGIN {if (c > 0 && mc > 0) printf "ftp-load paced: alg adds %.2fx the p50, %.2fx the mean conntrackd adds\n", \
            a / c, m / mc}'
fi
for label in alg alg-b alg-again; do  # (alg-b and alg-again: with FTP_LOAD_ALG_B only)
    [ -n "${PER_S[$label]:-}" ] && awk -v l="$label" -v r="${PER_S[$label]}" -v c="${PER_S[conntrackd]:-0}" \
        -v a=$(( P50[$label] - P50[none] )) -v ac=$(( P50[conntrackd] - P50[none] )) -v u="${US_PER_Q[$label]:-0}" \
        -v uc="${US_PER_Q[conntrackd]:-0}" -v m=$(( MEAN[$label] - MEAN[none] )) \
        -v mc=$(( MEAN[conntrackd] - MEAN[none] )) 'BEGIN {if (c > 0 && ac > 0 && uc > 0 && mc > 0)
        printf "ftp-load %s vs conntrackd: %.2fx the rate, %.2fx the added p50, %.2fx the added mean, " \
            "%.2fx the CPU per queued packet (%d us)\n", l, r / c, a / ac, m / mc, u / uc, u}'
done
echo "ftp-load alg-2w adds p50 $(( P50[alg-2w] - P50[none] )) us, p99 $(( P99[alg-2w] - P99[none] )) us to a PASV round trip"
awk -v a=$(( P50[alg-2w] - P50[none] )) -v c=$(( P50[conntrackd] - P50[none] )) \
    'BEGIN {if (c > 0) printf "ftp-load alg-2w adds %.2fx the p50 latency conntrackd adds\n", a / c}'
awk -v a="${PER_S[alg-2w]:-0}" -v c="${PER_S[conntrackd]:-0}" -v one="${PER_S[alg]:-0}" -v ua="${US_PER_Q[alg-2w]:-0}" \
    -v uc="${US_PER_Q[conntrackd]:-0}" -v u1="${US_PER_Q[alg]:-0}" 'BEGIN {
    printf "ftp-load alg-2w vs conntrackd: %.1f vs %.1f PASV answers/s (%.2fx; one worker %.1f, %.2fx); ", a, c, (c > 0 ? a / c : 0), one, (c > 0 ? one / c : 0)
    printf "helper CPU per queued packet %d vs %d us (%.2fx; one worker %d us)\n", ua, uc, (uc > 0 ? ua / uc : 0), u1}'
echo "ftp-load work alg-2w: ${WORK[alg-2w]}"
