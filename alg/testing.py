"""The test harness for helper authors: alg's own tests use exactly this.

    from alg.testing import feed, flow, check_outcome, check_case, case_dirs

* `feed(helper, [(direction, bytes), ...], flow)` drives a helper sans-IO the
  way the engine does (TCP bytes accumulate until consumed) and returns the
  actions; `split_variants(data)` gives the whole / byte-by-byte / halves
  deliveries, so each test case is one loop.
* `flow("udp", "10.0.0.1", 4000, "10.0.0.2", 69)` makes the master's tuple.
* `check_outcome(...)` asserts the invariant every helper keeps; its messages
  name the valid classes, protocols and actions.
* `check_case(folder)` replays a capture case folder and compares it with its
  golden file (below); `case_dirs(root)` lists the case folders under `root`.

Installed with alg, the pytest plugin `alg.pytest_plugin` (entry point
`pytest11`) offers the same as fixtures: `alg_host`, `alg_helper`, `alg_feed`,
`alg_case`, and the option `--alg-regen`.

A capture case is a folder::

    tests/cases/tftp-read/
        capture.pcap        one or more captures (*.pcap, *.pcapng), replayed in name order as one
                            stream: Ethernet, Linux cooked, raw IP, loopback or NFLOG link types
        SOURCE.md           where it comes from: who captured it, with what software and commands,
                            or the public repository, path, commit and licence it was copied from
        expected.jsonl      the golden output: one line per expectation, what `alg replay --format
                            json capture.pcap` prints (keys sorted, without `file`), in order
        case.toml           optional:
            helpers = ["tftp"]          replay only these helpers (default: every loaded one)
            policy = "policy.toml"      a policy file in the folder, overriding the defaults
            related_min = 1             follow-up flows in the capture that must have matched an
                                        expectation (the kernel would have made them RELATED)
            undecodable_ok = true       frames alg cannot decode are no failure
            [stats]                     counters that must be reached, e.g.
            "tftp.notices.bad-mode" = 1     (helper.path.in.its.status.counters = minimum)

Make the golden file by running `alg replay --format json` (or the test with
`--alg-regen` / ALG_REGEN=1), then read it line by line: it is the claim.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from .engine import Engine, make_slots
from .model import NEED_DATA, PROTO_NUMBERS, TCP, Action, Direction, Expect, FlowTuple, Helper, Length, NatMap, \
    Notice, Outcome, Parsed, Rewrite, Segment, Unexpect, invalid_expect, ip
from .plugins import PluginHost, load_plugins
from .policy import default_policy, load_policy
from .replay import ReplayResult, replay


def check_outcome(helper: Helper, out: Outcome, given: int, flow: FlowTuple) -> None:
    """What any helper may return for `given` bytes on `flow`."""
    name = type(helper).__name__
    if out is NEED_DATA:
        return
    assert isinstance(out, Parsed), f"{name}.inspect returned {out!r}: return alg.Parsed(consumed, actions) or " \
                                    f"alg.NEED_DATA"
    assert 0 <= out.consumed <= given, f"{name}: consumed {out.consumed} of the {given} bytes given"
    classes = [c.name for c in helper.spec.classes]
    for a in out.actions:
        assert isinstance(a, (Expect, Unexpect, Notice, Rewrite, Length)), \
            f"{name}: action {a!r} is none of alg.Expect, alg.Unexpect, alg.Notice, alg.Rewrite, alg.Length"
        if isinstance(a, (Rewrite, Length)):  # NAT spans: in the message the outcome consumed
            spans = [(a.offset, a.length)] + ([(a.start, a.end - a.start)] if isinstance(a, Length) else [])
            assert all(0 <= at and 0 <= n and at + n <= out.consumed for at, n in spans), \
                f"{name}: {a!r} is not inside the {out.consumed} bytes consumed"
        if isinstance(a, Expect):
            why = invalid_expect(classes, a, flow.l3)
            assert why is None, f"{name}: invalid {a!r}: {why}"


def flow(proto: str, src: str, sport: int, dst: str, dport: int) -> FlowTuple:
    """A master flow's original-direction tuple: flow("tcp", "10.0.0.1", 40000, "10.0.0.2", 21)."""
    s, d = ip(src), ip(dst)
    return FlowTuple(s.version, PROTO_NUMBERS[proto], s, d, sport, dport)


def feed(helper: Helper, chunks: Iterable[tuple[Direction, bytes]], flow: FlowTuple, state: Any = None,
         now: float = 0.0, expected: bool = False, nat: NatMap | None = None) -> list[Action]:
    """Hand the chunks to the helper as the engine would; returns all actions.

    `expected`: the flow came from an expectation of this helper (Segment.expected);
    `nat`: the master is NATed (Segment.nat): the helper adds its `Rewrite`/`Length` spans.

    On TCP, unconsumed bytes of a direction are kept and the next chunk is
    appended; the helper is called again while it consumes something."""
    state = helper.new_state() if state is None else state
    pending = {Direction.ORIGINAL: b"", Direction.REPLY: b""}
    actions: list[Action] = []
    for direction, data in chunks:
        if flow.proto != TCP:
            out = helper.inspect(Segment(data, direction, flow, now, expected, nat), state)
            check_outcome(helper, out, len(data), flow)
            if isinstance(out, Parsed):
                actions += out.actions
            continue
        pending[direction] += data
        while pending[direction]:
            buf = pending[direction]
            out = helper.inspect(Segment(buf, direction, flow, now, expected, nat), state)
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


def case_dirs(root: Path) -> list[Path]:
    """The case folders (those with a SOURCE.md) under `root`, sorted."""
    return sorted(p for p in Path(root).iterdir() if p.is_dir() and (p / "SOURCE.md").exists())


def _dig(stats: dict[str, Any], dotted: str) -> Any:
    helper, *rest = dotted.split(".")
    node: Any = stats["helpers"][helper]
    for part in rest:
        node = node.get(part, 0) if isinstance(node, dict) else 0
    return node


def check_case(case: Path, host: PluginHost | None = None, regen: bool = False) -> CaseRun:
    """Replay a case folder and assert what its files claim (regen: rewrite expected.jsonl first)."""
    case = Path(case)
    if not (case / "SOURCE.md").exists():
        raise AssertionError(f"{case}: no SOURCE.md saying where the capture comes from")
    run = replay_case(case, host)
    golden = case / "expected.jsonl"
    lines = [json.dumps(e, sort_keys=True) for e in run.rows]
    if regen:
        golden.write_text("".join(line + "\n" for line in lines))
    assert golden.exists(), f"{case}: no expected.jsonl (make it with --alg-regen, then review it)"
    assert lines == golden.read_text().splitlines(), f"{case.name}: replay differs from expected.jsonl"
    assert run.result.related_flows >= run.conf.get("related_min", 0), \
        f"{case.name}: {run.result.related_flows} follow-up flows matched, case.toml wants {run.conf['related_min']}"
    for key, minimum in run.conf.get("stats", {}).items():
        assert _dig(run.stats, key) >= minimum, f"{case.name}: counter {key} below {minimum}"
    assert run.result.undecodable == 0 or run.conf.get("undecodable_ok"), \
        f"{case.name}: {run.result.undecodable} undecodable frames (undecodable_ok = true in case.toml if expected)"
    if "not_decoded" in run.conf:  # frames whose link layers replay could not peel, by kind
        assert dict(run.result.not_decoded) == run.conf["not_decoded"], \
            f"{case.name}: frames not decoded {dict(run.result.not_decoded)}, case.toml wants {run.conf['not_decoded']}"
    return run
