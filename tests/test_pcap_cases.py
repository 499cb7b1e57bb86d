"""One runner for every pcap case under tests/pcaps/.

A case is a folder: the capture(s) (`*.pcap`, `*.pcapng`), `SOURCE.md` (who
made it, with what software, how), `expected.jsonl` (the golden output of
`alg replay --format json`) and optionally `case.toml`:

    helpers = ["ftp"]          # replay only these helpers (default: all)
    policy = "policy.toml"     # a policy file next to the case
    related_min = 2            # follow-up flows in the capture that must be
                               # matched by an expectation (RELATED)
    [stats]                    # counters that must be reached, e.g.
    "sip.notices.hostname-in-sdp" = 1

Regenerate goldens after a deliberate change with ALG_REGEN=1 and review the diff.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any

import pytest

from alg.engine import Engine, make_slots
from alg.plugins import load_plugins
from alg.policy import default_policy, load_policy
from alg.replay import replay

CASES = Path(__file__).parent / "pcaps"


def case_dirs() -> list[Path]:
    return sorted(p for p in CASES.iterdir() if p.is_dir() and (p / "SOURCE.md").exists())


def run_case(case: Path) -> tuple[list[dict[str, Any]], Any, dict[str, Any]]:
    conf = tomllib.loads((case / "case.toml").read_text()) if (case / "case.toml").exists() else {}
    host = load_plugins()
    specs = {n: c.spec for n, c in host.helpers.items()}
    policy = load_policy([case / conf["policy"]], specs, only_listed=False) if "policy" in conf else default_policy(specs)
    helpers = [h for h in policy.helpers.values() if not conf.get("helpers") or h.name in conf["helpers"]]
    engine = Engine(make_slots(helpers, host.helpers), policy.core, track_related=True)
    captures = sorted(str(p) for p in case.iterdir() if p.suffix in (".pcap", ".pcapng"))
    assert captures, f"{case}: no capture"
    result = replay(engine, captures)
    return [e.to_json() for e in result.expectations], result, {"conf": conf, "stats": engine.stats()}


def _dig(stats: dict[str, Any], dotted: str) -> Any:
    helper, *rest = dotted.split(".")
    node: Any = stats["helpers"][helper]
    for part in rest:
        node = node.get(part, 0) if isinstance(node, dict) else 0
    return node


@pytest.mark.parametrize("case", case_dirs(), ids=lambda p: p.name)
def test_pcap_case(case: Path) -> None:
    got, result, info = run_case(case)
    golden = case / "expected.jsonl"
    lines = [json.dumps(e, sort_keys=True) for e in got]
    if os.environ.get("ALG_REGEN"):
        golden.write_text("".join(line + "\n" for line in lines))
    want = golden.read_text().splitlines()
    assert lines == want
    conf = info["conf"]
    assert result.related_flows >= conf.get("related_min", 0), "follow-up flows not matched by an expectation"
    for key, minimum in conf.get("stats", {}).items():
        assert _dig(info["stats"], key) >= minimum, key
    assert result.undecodable == 0 or conf.get("undecodable_ok")
