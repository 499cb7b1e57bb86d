"""Test tiers (see ../shared/DESIGN.md): replay tests need nothing; `kernel`
tests need root and network namespaces on the host kernel; `lab` tests boot
the VM of ../shared/lab once per run. Each skips with its reason."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_LAB_PLACES = (ROOT.parent / "shared" / "lab", Path("/work/shared/lab"))  # next to the project, or in /work
LAB_DIR = Path(os.environ.get("LAB_DIR") or next((p for p in _LAB_PLACES if p.is_dir()), _LAB_PLACES[0]))
sys.path.insert(0, str(LAB_DIR))
sys.path.insert(0, str(ROOT / "tests"))
try:
    from labvm import pytest_collection_modifyitems, pytest_configure  # noqa: F401  (pytest hooks)
except ImportError:  # no lab checkout next to the project: lab tests skip below
    def pytest_collection_modifyitems(config, items):  # type: ignore[no-redef]
        for item in items:
            if "lab" in item.keywords:
                item.add_marker(pytest.mark.skip(reason=f"no lab at {LAB_DIR} (set LAB_DIR)"))


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
