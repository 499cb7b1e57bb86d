# Shared by the lab scenarios (sourced inside the VM after "$LAB_DIR/netns.sh").
# PASS/FAIL lines are the scenario contract (tests/test_lab.py prints them).

FAILS=0
pass() { echo "PASS $*"; }
fail() { echo "FAIL $*"; FAILS=$((FAILS + 1)); }
check() {  # NAME CMD...: PASS/FAIL on the command's status
    local name=$1; shift
    if "$@"; then pass "$name"; else fail "$name"; fi
}

# alg_related_count HELPER [4|6]: packets that hit alg's own RELATED accept for HELPER in lab-fw
# (comment "alg HELPER related", in alg's chain alg-related, which `alg rules` jumps to from the top of
# FORWARD and INPUT)
alg_related_count() {
    local fams=${2:-46} total=0 n ipt
    for ipt in $([[ $fams == *4* ]] && echo "$LAB_IPT") $([[ $fams == *6* ]] && echo "$LAB_IP6T"); do
        n=$(lab_fw "$ipt" -nvxL alg-related | awk -v c="/* alg $1 related */" 'index($0, c) {s += $1} END {print s+0}')
        total=$((total + n))
    done
    echo "$total"
}

# conntrackd_conf FILE RUNDIR HELPER L4PROTO QUEUE EXPECT_MAX EXPECT_TIMEOUT:
# a conntrackd.conf that runs one of conntrackd's userspace helpers (the reference)
conntrackd_conf() {
    cat >"$1" <<CONF
General {
	HashSize 8192
	HashLimit 65535
	Syslog off
	LogFile $2/conntrackd.log
	LockFile $2/conntrackd.lock
	UNIX { Path $2/conntrackd.ctl }
}
Helper {
	Type $3 inet $4 {
		QueueNum $5
		QueueLen 1024
		Policy $3 {
			ExpectMax $6
			ExpectTimeout $7
		}
	}
}
CONF
}

# alg run in the background (ALG_PID) and expectation events (EW_PID), for the scenarios that keep one
# of each; stop_alg's status is alg's own (0: it stopped cleanly, helpers removed)
stop_alg() { kill -TERM "$ALG_PID" 2>/dev/null; wait "$ALG_PID"; local rc=$?; ALG_PID=; return $rc; }
fw_reset() { lab_fw conntrack -F >/dev/null 2>&1; lab_fw conntrack -F expect >/dev/null 2>&1; }
watch_start() {  # FILE: expectation events in lab-fw
    ip netns exec "$LAB_NS_FW" stdbuf -oL conntrack -E expect >"$1" 2>&1 & EW_PID=$!
    wait_listening "$EW_PID"
}
# wait_listening PID: until the event listener PID (`conntrack -E` in lab-fw, or a shell whose child it
# is) has joined its netlink groups, at most 20 s. A fixed 0.3-0.5 s was too short on a loaded machine:
# the listener, not started yet, missed the first events (a rehearsal's discovery lost three of them).
wait_listening() {
    local i
    for i in $(seq 100); do listening_events "$1" && return 0; sleep 0.2; done
    return 1
}
listening_events() {  # PID: one of the netlink sockets of PID or its children in lab-fw has groups
    local p inodes=" "
    for p in "$1" $(pgrep -P "$1" 2>/dev/null); do
        inodes+=$(ls -l "/proc/$p/fd" 2>/dev/null | sed -n 's/.*socket:\[\([0-9]*\)\]$/\1/p' | tr '\n' ' ')
    done
    # /proc/net/netlink (of lab-fw's namespace): sk Eth Pid Groups ... Inode; NETLINK_NETFILTER is 12
    ip netns exec "$LAB_NS_FW" awk -v s="$inodes" '$2 == 12 && $4 != "00000000" && index(s, " " $10 " ") {f = 1}
        END {exit !f}' /proc/net/netlink
}
watch_stop() { sleep 0.3; kill -INT "$EW_PID" 2>/dev/null; wait "$EW_PID" 2>/dev/null; EW_PID=; }

# A Python start with alg's imports (any `alg` command) costs seconds in the TCG guest: where a scenario
# only needs the daemon's status document, or to know it is up, it reads the status socket with the
# system Python, without site-packages.
# alg_status_json SOCKET: the status document of the alg run answering on SOCKET (the data of
# `alg status --socket SOCKET --format json`, on one line); status 1 if nothing answers
alg_status_json() {
    /usr/bin/python3 -I -S -c '
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(10)
s.connect(sys.argv[1])
sys.stdout.buffer.write(b"".join(iter(lambda: s.recv(65536), b"")) + b"\n")' "$1" 2>/dev/null
}
# alg_wait_ready PID SOCKET [SECONDS]: until the alg run PID answers on its status socket (bound after
# its helpers are registered and its queues bound), at most SECONDS (180); status 1 if it exited first
alg_wait_ready() {
    local pid=$1 sock=$2 until=$((SECONDS + ${3:-180}))
    while [ $SECONDS -lt $until ]; do
        kill -0 "$pid" 2>/dev/null || return 1
        [ -S "$sock" ] && alg_status_json "$sock" >/dev/null && return 0
        sleep 0.2
    done
    return 1
}
# policy_socket DIR: the status socket a policy directory names ([core] status_socket, else the default)
policy_socket() {
    local s
    s=$(sed -n 's/^status_socket *= *"\(.*\)"$/\1/p' "$1"/*.toml 2>/dev/null | tail -1)
    echo "${s:-/run/alg/alg.sock}"
}
# helpers_left NAME...: some of these helpers are still registered with the kernel (nfct), so that a
# scenario's exit runs `alg cleanup` only after an alg that did not remove its own
helpers_left() {
    local list n
    list=$(nfct list helper 2>/dev/null) || return 0  # cannot tell: clean up
    list=$(tr -s '\t\n' ' ' <<<"$list" | grep -o 'name = [^,]*' | sed 's/name = //')
    for n in "$@"; do grep -qx "$n" <<<"$list" && return 0; done
    return 1
}
# listening NS udp|tcp PORT: until something listens on PORT in NS (a SIPp UAS that has started, where a
# fixed second was slept; generous: at most 20 s, then the caller goes on and SIPp's retransmissions cover it)
listening() {
    local f=-Hln _; [ "$2" = tcp ] && f+=t || f+=u
    for _ in $(seq 100); do
        [ -n "$(ip netns exec "$1" ss $f "sport = :$3" 2>/dev/null)" ] && return 0
        sleep 0.2
    done
    return 1
}
