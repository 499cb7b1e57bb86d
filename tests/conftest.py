"""Test tiers: replay tests need nothing; `kernel` tests need root and network
namespaces on the host kernel; `lab` tests boot the project's lab VM
(tools/lab/labvm.py) once per run. Each skips with its reason."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAB_DIR = ROOT / "tools" / "lab"  # the lab VM runner, in this repository
sys.path.insert(0, str(LAB_DIR))
sys.path.insert(0, str(ROOT / "tests"))
LAB_TIMES = pytest.StashKey[dict]()  # scenario -> seconds in the lab VM (tests/test_lab.py)
LAB_SCENARIOS = sorted(p.stem for p in (ROOT / "tests" / "lab" / "scenarios").glob("*.sh"))


def pytest_collection_modifyitems(config, items):
    """Lab tests skip, with the reason, where the VM cannot run (LAB_PROBE=1 also boots it once to check),
    and come last: the VM runs them in the background from the session's start (lab_vm below)."""
    lab = [item for item in items if "lab" in item.keywords]
    if not lab:
        return
    from labvm import unavailable_reason

    reason = unavailable_reason(probe=os.environ.get("LAB_PROBE") == "1")
    for item in lab if reason else ():
        item.add_marker(pytest.mark.skip(reason=f"lab VM unavailable: {reason}"))
    items[:] = [item for item in items if "lab" not in item.keywords] + lab


@pytest.fixture(scope="session", autouse=True)
def lab_vm(request, tmp_path_factory):
    """The lab VM's one run (tests/lab/run-all.sh), started with the session, so that the VM works
    while the host tests run (they mostly wait on the kernel and on subprocesses; the VM is CPU under
    TCG): None when no lab test is to run, else (scratch folder, labvm.VmRun), which
    tests/test_lab.py waits for. Runs the scenarios selected (all, unless -k or names narrow them)."""
    lab = [item for item in request.session.items if "lab" in item.keywords and not item.get_closest_marker("skip")]
    if not lab:
        yield None
        return
    import compileall

    from labvm import start_in_vm

    # the guest sees this tree read-only: what is not compiled yet it would compile at every start
    for package in ("alg", "helpers"):
        compileall.compile_dir(ROOT / package, quiet=1)
    names = sorted({item.callspec.params["name"] for item in lab})
    scratch = tmp_path_factory.mktemp("lab")
    os.environ["ALG_ROOT"] = str(ROOT)
    run = start_in_vm(str(ROOT / "tests" / "lab" / "run-all.sh"), *([] if names == LAB_SCENARIOS else names),
                      scratch=scratch, timeout=4500, env={"ALG_ROOT": str(ROOT)})
    yield scratch, run
    run.stop()  # an interrupted session leaves no VM behind


def pytest_terminal_summary(terminalreporter, config):
    """The lab's seconds per scenario, slowest first: CI has a time budget and the lab is most of it."""
    times = config.stash.get(LAB_TIMES, None)
    if times:
        terminalreporter.write_line(f"lab VM: {sum(times.values())} s in scenarios: " +
                                    ", ".join(f"{n} {s}" for n, s in sorted(times.items(), key=lambda t: -t[1])))


def kernel_skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root for network namespaces"
    for tool in ("ip", "iptables", "conntrack"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    probe = subprocess.run(["ip", "netns", "add", "alg-probe"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot create a network namespace: {probe.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", "alg-probe"], capture_output=True)
    return None


@pytest.fixture(scope="session")
def kernel_ok() -> None:
    reason = kernel_skip_reason()
    if reason:
        pytest.skip(reason)
