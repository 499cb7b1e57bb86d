#!/bin/bash
# Runs inside ONE lab VM boot: every tests/lab/scenarios/*.sh (or those named),
# each in its own process with ALG_ROOT / ALG / LAB_* set; per-scenario output
# in $LAB_SCRATCH/<name>.out and a summary line `SCENARIO <name> <rc> <seconds>`.
set -u
ALG_ROOT=${ALG_ROOT:?}
export ALG_ROOT ALG=${ALG:-$ALG_ROOT/.venv/bin/alg} LAB_DIR LAB_SCRATCH
for m in nf_conntrack nfnetlink_cthelper nfnetlink_queue nf_conntrack_netlink; do modprobe "$m"; done
names=("$@")
[ ${#names[@]} -gt 0 ] || names=($(cd "$ALG_ROOT/tests/lab/scenarios" && ls *.sh | sed 's/\.sh$//'))
for n in "${names[@]}"; do
    t0=$(date +%s)
    timeout 900 bash "$ALG_ROOT/tests/lab/scenarios/$n.sh" >"$LAB_SCRATCH/$(basename "$n").out" 2>&1
    rc=$?
    echo "SCENARIO $n $rc $(( $(date +%s) - t0 ))"
done
