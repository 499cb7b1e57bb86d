"""Lab tier: the whole cthelper path in the VM with Debian's kernel (tools/lab/labvm.py).

The VM boots once per test session and runs every scenario script in
tests/lab/scenarios/ (see tests/lab/run-all.sh); each scenario is reported as
its own test, with its PASS/FAIL lines. Skips, with the reason, only where the
VM cannot start."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SKIPPED = 77  # a scenario that cannot run here says so with this exit status (automake's convention)
from conftest import LAB_TIMES  # noqa: E402  (the summary at the end of the run prints them)

SCENARIOS = sorted(p.stem for p in (ROOT / "tests" / "lab" / "scenarios").glob("*.sh"))


@pytest.fixture(scope="session")
def lab_run(tmp_path_factory, pytestconfig):
    from labvm import run_in_vm  # tools/lab/labvm.py (conftest puts it on sys.path)

    scratch = tmp_path_factory.mktemp("lab")
    os.environ["ALG_ROOT"] = str(ROOT)
    r = run_in_vm(str(ROOT / "tests" / "lab" / "run-all.sh"), scratch=scratch, timeout=3300,
                  env={"ALG_ROOT": str(ROOT)})
    results = {m.group(1): (int(m.group(2)), int(m.group(3)))
               for m in re.finditer(r"^SCENARIO (\S+) (\d+) (\d+)$", r.stdout, re.M)}
    pytestconfig.stash[LAB_TIMES] = {name: seconds for name, (_, seconds) in results.items()}
    return scratch, results, r


@pytest.mark.lab
@pytest.mark.parametrize("name", SCENARIOS)
def test_lab_scenario(lab_run, name):
    scratch, results, r = lab_run
    assert name in results, f"the VM run did not reach {name}: rc {r.returncode}\n{r.stdout[-2000:]}{r.stderr[-2000:]}"
    rc, seconds = results[name]
    out = (scratch / f"{name}.out").read_text(errors="replace")
    print(f"{name}: {seconds} s\n{out}")
    if rc == SKIPPED:
        pytest.skip(out.strip().splitlines()[-1] if out.strip() else f"{name} skipped itself")
    assert rc == 0, out[-5000:]
