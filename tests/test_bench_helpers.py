"""benchmarks/bench_helpers.py keeps running: every helper it times is shown messages of its capture
(a renamed capture or a helper the engine no longer reaches would leave a figure of nothing)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_helpers  # noqa: E402


def test_every_helper_is_timed_on_messages_of_its_capture(capsys):
    bench_helpers.main(["--rounds", "1", "--repeat", "1"])
    rows = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+) +\S+ +(\d+) ", capsys.readouterr().out, re.M)}
    assert set(rows) == set(bench_helpers.CASES)
    assert all(n > 0 for n in rows.values()), rows
