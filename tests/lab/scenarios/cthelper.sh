#!/bin/bash
# cthelper: alg's nfnetlink_cthelper adapter against a kernel that has it.
# Register / list / re-register (idempotent) / disable / unregister a helper,
# cross-checked with `nfct list helper`; update of an nfct-pre-registered helper.
# Helpers are global to the kernel, so no namespaces are needed here.
set -u
# shellcheck source=../lib.sh
source "$ALG_ROOT/tests/lab/lib.sh"
PY="$ALG_ROOT/.venv/bin/python"
cleanup() { nfct del helper alg-selftest inet tcp 2>/dev/null; nfct del helper alg-pre inet tcp 2>/dev/null; true; }
trap cleanup EXIT
modprobe nfnetlink_cthelper 2>/dev/null

out=$("$PY" -m alg.kernel.cthelper --selftest 2>&1); rc=$?
echo "$out"
[ $rc -eq 0 ] && pass cthelper-selftest || fail cthelper-selftest

# cross-check the list with nfct after a kept registration
"$PY" -m alg.kernel.cthelper --selftest --keep >/dev/null 2>&1
nl=$(nfct list helper 2>&1)
echo "$nl" | grep -A12 'alg-selftest' | grep -q 'queuenum = 7' && pass cthelper-nfct-sees-queue || { fail cthelper-nfct-sees-queue; echo "$nl"; }
echo "$nl" | grep -A12 'alg-selftest' | grep -q 'status = disabled' && pass cthelper-nfct-sees-disabled || fail cthelper-nfct-sees-disabled
nfct del helper alg-selftest inet tcp 2>/dev/null

# pre-registered by nfct (like the anchor): alg must update it, enable it, and unregister it
nfct add helper ftp inet tcp && \
"$PY" - <<'PYEOF'
import sys
from alg.kernel.cthelper import Cthelper
from alg.model import ExpectClass
from alg.policy import HelperPolicy
hp = HelperPolicy(helper="ftp", name="ftp", enabled=True, queue=3, queue_len=16, protocols=(6,), families=(4,),
                  ports=(21,), classes=(ExpectClass("ftp", 1, 300),), options={}, max_buffer=4096)
with Cthelper() as c:
    c.register(hp, priv_data_len=24)
    h = [x for x in c.list() if x["name"] == "ftp"]
    ok = len(h) == 1 and h[0]["enabled"] and h[0]["queue"] == 3
    print("PASS" if ok else "FAIL", "cthelper-update-preregistered", "" if ok else h)
    c.unregister("ftp", 6)
    gone = not [x for x in c.list() if x["name"] == "ftp"]
    print("PASS" if gone else "FAIL", "cthelper-unregister-preregistered")
    sys.exit(0 if ok and gone else 1)
PYEOF
[ $? -eq 0 ] || FAILS=$((FAILS + 1))
nfct del helper ftp inet tcp 2>/dev/null
# alg doctor on a kernel that has it all: cthelper and the queue's conntrack glue are ok
doc=$("$ALG_ROOT/.venv/bin/alg" doctor 2>&1)
echo "$doc" | grep -E "^(ok|warn|fail) +(nfnetlink_cthelper|nfqueue conntrack glue)"
echo "$doc" | grep -Eq "^ok +nfnetlink_cthelper:" && pass doctor-cthelper-ok || fail doctor-cthelper-ok
echo "$doc" | grep -Eq "^ok +nfqueue conntrack glue:" && pass doctor-glue-ok || fail doctor-glue-ok

[ $FAILS -eq 0 ] && echo "cthelper: all PASS" && exit 0
echo "cthelper: $FAILS FAIL"; exit 1

