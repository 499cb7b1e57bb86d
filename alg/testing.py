"""The test harness for helper authors: alg's own tests use exactly this.

    from alg.testing import feed, replay_case, check_outcome

* `feed(helper, [(direction, bytes), ...], flow)` drives a helper sans-IO the
  way the engine does (TCP bytes accumulate until consumed) and returns the
  actions; `whole`, `byte by byte` and `with trailing data` variants are one
  loop in a test.
* `check_outcome(...)` asserts the invariant every helper keeps.
* `replay_case(folder)` runs a pcap case folder (capture, SOURCE.md,
  expected.jsonl, optional case.toml; see tests/test_pcap_cases.py) and
  returns what replay derived, for comparison with the golden file.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from .engine import Engine, make_slots
from .model import NEED_DATA, PROTO_NAMES, TCP, Action, Direction, Expect, FlowTuple, Helper, Notice, Outcome, \
    Parsed, Segment, Unexpect, ports_ok
from .plugins import PluginHost, load_plugins
from .policy import default_policy, load_policy
from .replay import ReplayResult, replay


def check_outcome(helper: Helper, out: Outcome, given: int, flow: FlowTuple) -> None:
    """What any helper may return for `given` bytes on `flow`."""
    if out is NEED_DATA:
        return
    assert isinstance(out, Parsed), f"{type(helper).__name__} returned {out!r}"
    assert 0 <= out.consumed <= given, f"consumed {out.consumed} of {given}"
    classes = {c.name for c in helper.spec.classes}
    for a in out.actions:
        assert isinstance(a, (Expect, Unexpect, Notice)), a
        if isinstance(a, Expect):
            assert a.cls in classes and a.proto in PROTO_NAMES, a
            assert ports_ok(a.sport, a.dport), a
            assert a.dst.version == flow.l3 and (a.src is None or a.src.version == flow.l3), a


def feed(helper: Helper, chunks: Iterable[tuple[Direction, bytes]], flow: FlowTuple, state: Any = None,
         now: float = 0.0, expected: bool = False) -> list[Action]:
    """Hand the chunks to the helper as the engine would; returns all actions.

    `expected`: the flow came from an expectation of this helper (Segment.expected).

    On TCP, unconsumed bytes of a direction are kept and the next chunk is
    appended; the helper is called again while it consumes something."""
    state = helper.new_state() if state is None else state
    pending = {Direction.ORIGINAL: b"", Direction.REPLY: b""}
    actions: list[Action] = []
    for direction, data in chunks:
        if flow.proto != TCP:
            out = helper.inspect(Segment(data, direction, flow, now, expected), state)
            check_outcome(helper, out, len(data), flow)
            if isinstance(out, Parsed):
                actions += out.actions
            continue
        pending[direction] += data
        while pending[direction]:
            buf = pending[direction]
            out = helper.inspect(Segment(buf, direction, flow, now, expected), state)
            check_outcome(helper, out, len(buf), flow)
            if not isinstance(out, Parsed) or out.consumed == 0:
                break
            pending[direction] = buf[out.consumed:]
            actions += out.actions
    return actions


def split_variants(data: bytes) -> dict[str, list[bytes]]:
    """The h11-style ways to deliver one message: whole, byte by byte, in halves."""
    mid = len(data) // 2
    return {"whole": [data], "bytewise": [data[i:i + 1] for i in range(len(data))], "halves": [data[:mid], data[mid:]]}


@dataclass
class CaseRun:
    rows: list[dict[str, Any]]
    result: ReplayResult
    stats: dict[str, Any]
    conf: dict[str, Any]


def replay_case(case: Path, host: PluginHost | None = None) -> CaseRun:
    conf = tomllib.loads((case / "case.toml").read_text()) if (case / "case.toml").exists() else {}
    host = host or load_plugins()
    specs = {n: c.spec for n, c in host.helpers.items()}
    policy = (load_policy([str(case / conf["policy"])], specs, only_listed=False) if "policy" in conf
              else default_policy(specs))
    wanted: Sequence[str] = conf.get("helpers") or ()
    helpers = [h for h in policy.helpers.values() if not wanted or h.name in wanted]
    engine = Engine(make_slots(helpers, host.helpers), policy.core, track_related=True)
    captures = sorted(str(p) for p in case.iterdir() if p.suffix in (".pcap", ".pcapng"))
    if not captures:
        raise FileNotFoundError(f"{case}: no capture")
    result = replay(engine, captures)
    return CaseRun([e.to_json() for e in result.expectations], result, engine.stats(), conf)
