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
