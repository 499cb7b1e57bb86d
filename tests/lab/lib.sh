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
    sleep 0.3
}
watch_stop() { sleep 0.3; kill -INT "$EW_PID" 2>/dev/null; wait "$EW_PID" 2>/dev/null; EW_PID=; }
