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
# the connection's previous one: ExpectMax 1). Three runs, in this order:
#   none        no helper on the control connections: the round trip without one
#   conntrackd  conntrackd 1.4.7's ftp helper (cthelper, C, queue 5)
#   alg         `alg run` with the ftp helper (as alg-ftp, queue 5)
# For each: PASV round trips completed, their p50/p99, the rate, expectations created per second (the
# kernel's EXP_NEW events), and the latency the helper adds (its p50/p99 minus none's). Under TCG every
# figure is the emulator's; the ratio between the two helpers, measured in the same boot, is the result.
# Where the time goes, per run (a `cost` line): packets on the control connections per PASV (counted in
# lab-fw's raw table; pure ACKs apart: flags ACK alone, at most 52 bytes, which holds with TCP timestamps),
# packets the helper's queue received (its id_sequence), the helper's CPU time (utime + stime from
# /proc/PID/stat; the system part includes the forwarding each verdict sets off) per queued packet
# and as a share of the run, the load generator's and the FTP server's
# CPU, and how busy the VM's CPUs were (/proc/stat).
set -u
source "$LAB_DIR/netns.sh"
# shellcheck source=../tests/lab/lib.sh
source "$ALG_ROOT/tests/lab/lib.sh"
RUN=/run/alg-lab/ftpload; OUT=$LAB_SCRATCH/ftpload
rm -rf "$RUN"; mkdir -p "$RUN/root" "$RUN/policy" "$OUT"
SYS_PY="/usr/bin/python3 -I"            # has pyftpdlib (Debian package)
CONNS=${FTP_LOAD_CONNECTIONS:-8}; SECS=${FTP_LOAD_SECONDS:-20}
SOCK=$RUN/alg.sock
PIDS=(); CTD_PID=; ALG_PID=
cleanup() {
    [ -n "$ALG_PID" ] && kill -TERM "$ALG_PID" 2>/dev/null
    [ -n "$CTD_PID" ] && kill "$CTD_PID" 2>/dev/null
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    wait 2>/dev/null
    lab_net_down
    nfct del helper ftp inet tcp 2>/dev/null; nfct del helper alg-ftp inet tcp 2>/dev/null
    nfct del helper alg-ftp inet6 tcp 2>/dev/null
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
vm_cpu() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9}' /proc/stat; }
counted() {  # COMMENT: packets the raw table's counting rule COMMENT saw
    lab_fw iptables -t raw -nvxL PREROUTING | awk -v c="/* $1 */" 'index($0, c) {s += $1} END {print s + 0}'
}
queued() {  # QUEUE: packets the queue received since it was bound (its id_sequence), in lab-fw
    lab_fw cat /proc/net/netfilter/nfnetlink_queue | awk -v q="$1" '$1 == q {print $8 + 0; f = 1} END {if (!f) print 0}'
}

declare -A P50 P99
load() {  # LABEL [PID]: the load, the expectations it made, the helper PID's cost; sets P50[LABEL] P99[LABEL]
    local label=$1 pid=${2:-} ev line n t0 t1 s0 s1 c0 c1 q pkts acks pasv cpu_gen u s
    lab_fw conntrack -F >/dev/null 2>&1
    # line-buffered: the listener is killed at the end, and what its stdio held would be lost
    ip netns exec "$LAB_NS_FW" stdbuf -oL conntrack -E expect >"$OUT/$label-exp.txt" 2>/dev/null & ev=$!
    sleep 0.5
    lab_fw iptables -t raw -Z PREROUTING
    q0=$(queued 5); t0=$(ticks "$pid"); s0=$(ticks "${PIDS[0]}"); c0=$(vm_cpu)
    line=$(lab_cli $SYS_PY "$LAB_DIR/ftp_load.py" --host "$LAB_SERVER4" --connections "$CONNS" --seconds "$SECS")
    t1=$(ticks "$pid"); s1=$(ticks "${PIDS[0]}"); c1=$(vm_cpu); q=$(( $(queued 5) - q0 ))
    read -r u s <<<"$(echo "$t0 $t1" | awk '{print $3 - $1, $4 - $2}')"  # the helper's user, system ticks
    read -r s0 s1 <<<"$(echo "$s0 $s1" | awk '{print $1 + $2, $3 + $4}')"
    pkts=$(counted ftpload-all); acks=$(counted ftpload-pure-ack)
    sleep 0.5; kill "$ev" 2>/dev/null; wait "$ev" 2>/dev/null
    n=$(grep -c "\[NEW\]" "$OUT/$label-exp.txt")
    read -r _ pasv _ p50 _ p99 _ _ _ _ _ cpu_gen _ <<<"$line"
    P50[$label]=${p50:-0}; P99[$label]=${p99:-0}
    printf 'ftp-load %-10s %s; expectations %d (%s/s)\n' "$label" "$line" "$n" "$(awk -v n="$n" -v s="$SECS" 'BEGIN {printf "%.1f", n / s}')"
    awk -v l="$label" -v pasv="${pasv:-0}" -v pk="$pkts" -v ack="$acks" -v q="$q" -v hz="$HZ" -v u="$u" -v s="$s" \
        -v srv="$((s1 - s0))" -v gen="${cpu_gen:-0}" -v c0="$c0" -v c1="$c1" -v secs="$SECS" 'BEGIN {
        split(c0, a, " "); split(c1, b, " "); busy = b[1] - a[1]; all = b[2] - a[2]; p = pasv > 0 ? pasv : 1
        printf "ftp-load %-10s cost: %.2f packets per PASV (%.2f pure ACKs), %.2f queued per PASV (%d); ", l, pk / p, ack / p, q / p, q
        t = u + s
        printf "helper CPU %.0f ms (user %.0f, system %.0f)", 1000 * t / hz, 1000 * u / hz, 1000 * s / hz
        if (q > 0) printf " = %.0f us per queued packet", 1e6 * t / hz / q
        printf " (%.0f%% of one CPU); load generator CPU %s ms, FTP server %.0f ms; VM CPUs %.0f%% busy\n", \
            100 * t / hz / secs, gen, 1000 * srv / hz, (all > 0 ? 100 * busy / all : 0)
    }'
}
raw_helper() {  # NAME: the control connections get helper NAME; their packets are counted first
    lab_fw iptables -t raw -F PREROUTING
    lab_fw iptables -t raw -A PREROUTING -p tcp -m multiport --ports 21 -m comment --comment ftpload-all
    lab_fw iptables -t raw -A PREROUTING -p tcp -m multiport --ports 21 --tcp-flags ALL ACK -m length --length 0:52 \
        -m comment --comment ftpload-pure-ack
    [ -n "$1" ] && lab_fw iptables -t raw -A PREROUTING -p tcp --dport 21 -j CT --helper "$1"
}

raw_helper ""
load none

nfct add helper ftp inet tcp || { echo "FAIL nfct add helper ftp"; exit 1; }
conntrackd_conf "$RUN/conntrackd.conf" "$RUN" ftp tcp 5 1 300
ip netns exec "$LAB_NS_FW" conntrackd -C "$RUN/conntrackd.conf" >"$OUT/conntrackd.out" 2>&1 & CTD_PID=$!
for _ in $(seq 300); do
    nfct list helper 2>/dev/null | tr -s '\t\n' ' ' | grep -q "name = ftp, .queuenum = 5,.*status = enabled" && break
    sleep 0.1
done
raw_helper ftp
load conntrackd "$CTD_PID"
kill "$CTD_PID"; wait "$CTD_PID" 2>/dev/null; CTD_PID=
raw_helper ""; lab_fw conntrack -F >/dev/null 2>&1  # a helper in use cannot be removed (EBUSY)
nfct del helper ftp inet tcp

start_alg() {  # [PREFIX...]: `alg run` in lab-fw (PREFIX: what runs it instead of $ALG), until it answers
    local cmd=("$ALG")
    [ $# -gt 0 ] && cmd=("$@")
    ip netns exec "$LAB_NS_FW" "${cmd[@]}" run --policy "$RUN/policy" >>"$OUT/alg.log" 2>&1 & ALG_PID=$!
    for _ in $(seq 600); do
        lab_fw "$ALG" status --socket "$SOCK" >/dev/null 2>&1 && return 0
        kill -0 "$ALG_PID" 2>/dev/null || { echo "FAIL alg run"; tail "$OUT/alg.log"; exit 1; }
        sleep 0.2
    done
}
start_alg
raw_helper alg-ftp
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
# FTP_LOAD_PROFILE=1 (passed in with -e): then the same load once more with alg under cProfile, and where
# its time went (the profiler slows alg down: that run's figures are not comparable, the shares are)
if [ -n "${FTP_LOAD_PROFILE:-}" ]; then
    raw_helper ""; lab_fw conntrack -F >/dev/null 2>&1  # a helper in use cannot be removed (EBUSY)
    kill -TERM "$ALG_PID"; wait "$ALG_PID" 2>/dev/null
    start_alg "$ALG_ROOT/.venv/bin/python" -m cProfile -o "$OUT/alg.prof" -m alg
    raw_helper alg-ftp
    load alg-cprofile "$ALG_PID"
    raw_helper ""; lab_fw conntrack -F >/dev/null 2>&1
    kill -TERM "$ALG_PID"; wait "$ALG_PID" 2>/dev/null; ALG_PID=  # the profile is written as alg exits
    "$ALG_ROOT/.venv/bin/python" -c 'import pstats, sys
pstats.Stats(sys.argv[1]).sort_stats("tottime").print_stats(35)' "$OUT/alg.prof" | grep -v "^$" | head -50
fi

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
    echo "ftp-load $label adds p50 $(( P50[$label] - P50[none] )) us, p99 $(( P99[$label] - P99[none] )) us to a PASV round trip"
done
awk -v a=$(( P50[alg] - P50[none] )) -v c=$(( P50[conntrackd] - P50[none] )) \
    'BEGIN {if (c > 0) printf "ftp-load alg adds %.2fx the p50 latency conntrackd adds\n", a / c}'
