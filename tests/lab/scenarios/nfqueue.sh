#!/bin/bash
# nfqueue: alg.kernel.nfqueue.QueueBinding on a kernel that has the queue's conntrack glue
# (CONFIG_NETFILTER_NETLINK_GLUE_CT) and nfnetlink_cthelper. tests/test_kernel_nfqueue.py runs
# here in full: on hosts without them its conntrack checks are skipped or take the fallback path
# (bound without NFQA_CFG_F_CONNTRACK); here packets must come with their conntrack (tuples,
# ctinfo, helper name and private data) and a verdict's NFQA_CT must set the private data.
set -u
# shellcheck source=../lib.sh
source "$ALG_ROOT/tests/lab/lib.sh"
PY="$ALG_ROOT/.venv/bin/python"
modprobe nfnetlink_cthelper 2>/dev/null
# a burst of 3,000 accepted in one batch verdict is forwarded at once: the per-CPU backlog
# (netdev_max_backlog, 1000 by default) would drop two thirds of it on the way to the sink,
# as it would on a firewall left at that default
sysctl -qw net.core.netdev_max_backlog=10000
cd "$ALG_ROOT" || exit 1
out=$("$PY" -m pytest -q -rs --durations=12 -p no:cacheprovider --basetemp "$LAB_SCRATCH/nfqueue-pytest" -m kernel \
    tests/test_kernel_nfqueue.py 2>&1); rc=$?
echo "$out" | tail -80
[ $rc -eq 0 ] && pass nfqueue-kernel-tests || fail nfqueue-kernel-tests
echo "$out" | grep -Eq "[0-9]+ skipped" && fail nfqueue-nothing-skipped || pass nfqueue-nothing-skipped
exit $((FAILS > 0))
