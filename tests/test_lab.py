"""Lab tier: the whole cthelper path in the VM with Debian's kernel (tools/lab/labvm.py).

The VM boots once per test session and runs the selected scenario scripts of
tests/lab/scenarios/ (see tests/lab/run-all.sh), in the background from the
session's start (tests/conftest.py's lab_vm); these tests come last and each
reports one scenario, with its PASS/FAIL lines. Skips, with the reason, only
where the VM cannot start."""

from __future__ import annotations

import re

import pytest

SKIPPED = 77  # a scenario that cannot run here says so with this exit status (automake's convention)
from conftest import LAB_SCENARIOS, LAB_TIMES  # noqa: E402  (the summary at the end of the run prints the times)


@pytest.fixture(scope="session")
def lab_run(lab_vm, pytestconfig):
    """The VM's run of the scenarios (conftest's lab_vm started it with the session), once it ends."""
    scratch, vm = lab_vm
    r = vm.wait()
    results = {m.group(1): (int(m.group(2)), int(m.group(3)))
               for m in re.finditer(r"^SCENARIO (\S+) (\d+) (\d+)$", r.stdout, re.M)}
    pytestconfig.stash[LAB_TIMES] = {name: seconds for name, (_, seconds) in results.items()}
    return scratch, results, r


@pytest.mark.lab
@pytest.mark.parametrize("name", LAB_SCENARIOS)
def test_lab_scenario(lab_run, name):
    scratch, results, r = lab_run
    assert name in results, f"the VM run did not reach {name}: rc {r.returncode}\n{r.stdout[-2000:]}{r.stderr[-2000:]}"
    rc, seconds = results[name]
    out = (scratch / f"{name}.out").read_text(errors="replace")
    print(f"{name}: {seconds} s\n{out}")
    if rc == SKIPPED:
        pytest.skip(out.strip().splitlines()[-1] if out.strip() else f"{name} skipped itself")
    assert rc == 0, out[-5000:]
