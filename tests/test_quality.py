"""Static checks that keep the public surface typed and the code tidy (STYLE.md §11)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _module_available(name: str) -> bool:
    return subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _module_available("mypy"), reason="mypy not installed (pip install -e .[test])")
def test_mypy_clean():
    out = subprocess.run([sys.executable, "-m", "mypy", "alg", "helpers"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-4000:]


@pytest.mark.skipif(not _module_available("ruff") and not shutil.which("ruff"), reason="ruff not installed")
def test_ruff_clean():
    out = subprocess.run([sys.executable, "-m", "ruff", "check", "alg", "helpers", "tests", "benchmarks", "tools"],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-4000:]
