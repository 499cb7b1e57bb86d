"""One runner for every pcap case under tests/pcaps/.

A case is a folder: the capture(s) (`*.pcap`, `*.pcapng`), `SOURCE.md` (who
made it, with what software, how), `expected.jsonl` (the golden output of
`alg replay --format json`) and optionally `case.toml`:

    helpers = ["ftp"]          # replay only these helpers (default: all)
    policy = "policy.toml"     # a policy file next to the case
    related_min = 2            # follow-up flows in the capture that must be
                               # matched by an expectation (RELATED)
    not_decoded = {}           # frames not decoded, by kind, exactly (encapsulation cases)
    [stats]                    # counters that must be reached, e.g.
    "sip.notices.hostname-in-sdp" = 1

Regenerate goldens after a deliberate change with ALG_REGEN=1 and review the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from alg.testing import replay_case

CASES = Path(__file__).parent / "pcaps"


def case_dirs() -> list[Path]:
    return sorted(p for p in CASES.iterdir() if p.is_dir() and (p / "SOURCE.md").exists())


def _dig(stats: dict[str, Any], dotted: str) -> Any:
    helper, *rest = dotted.split(".")
    node: Any = stats["helpers"][helper]
    for part in rest:
        node = node.get(part, 0) if isinstance(node, dict) else 0
    return node


@pytest.mark.parametrize("case", case_dirs(), ids=lambda p: p.name)
def test_pcap_case(case: Path) -> None:
    run = replay_case(case)
    golden = case / "expected.jsonl"
    lines = [json.dumps(e, sort_keys=True) for e in run.rows]
    if os.environ.get("ALG_REGEN"):
        golden.write_text("".join(line + "\n" for line in lines))
    assert lines == golden.read_text().splitlines()
    assert run.result.related_flows >= run.conf.get("related_min", 0), "follow-up flows not matched"
    for key, minimum in run.conf.get("stats", {}).items():
        assert _dig(run.stats, key) >= minimum, key
    assert run.result.undecodable == 0 or run.conf.get("undecodable_ok")
    if "not_decoded" in run.conf:
        assert dict(run.result.not_decoded) == run.conf["not_decoded"]
