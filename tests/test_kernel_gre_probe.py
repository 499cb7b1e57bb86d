"""The PPTP finding (README, "PPTP and H.323"): ctnetlink lets a userspace helper create GRE
expectations keyed by call ID, one per direction, and the GRE packets pass as RELATED
(tools/probe_gre_expect.py; host kernel, namespaces)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.kernel
PROBE = Path(__file__).resolve().parent.parent / "tools" / "probe_gre_expect.py"


def test_gre_expectations_from_userspace(kernel_ok: None) -> None:
    out = subprocess.run([sys.executable, str(PROBE)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "6 RELATED, 0 dropped" in out.stdout and "2 of 2 dropped" in out.stdout, out.stdout
