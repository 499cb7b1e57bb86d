"""The longer fuzz run behind `./dev fuzz [SECONDS] [TARGET...]`: hypothesis per target for a time
budget, printing the inputs tried per target and any failure (with the input that shrank from it).

Targets and the invariant each keeps (the short versions run in CI: tests/test_fuzz_helpers.py,
tests/test_core.py):

* `decode`     any bytes: `decode_ip` gives a Packet or raises DecodeError;
* `engine`     frames of the capture corpus (tests/pcaps), mutated, through decode, the
               defragmenter and one engine with every helper: nothing escapes `process`;
* `<helper>`   each helper, any chunks from either side (corpus payloads mutated, or random):
               actions, NEED_DATA or ProtocolViolation, nothing else (alg.testing.check_outcome);
* `policy`     a policy file built from known keys and hostile values: a Policy or ConfigError.

The hypothesis example database is off: each run explores afresh (`--seed` repeats one).
"""

from __future__ import annotations

import argparse
import ipaddress
import random
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable

from hypothesis import HealthCheck, given, settings, seed
from hypothesis import strategies as st

import alg
from alg.decode import DecodeError, Defragmenter, decode_ip, decode_link
from alg.engine import Engine, make_slots
from alg.errors import ConfigError, ProtocolViolation
from alg.pcap import read_frames
from alg.plugins import load_plugins
from alg.policy import default_policy, load_policy
from alg.testing import check_outcome

ROOT = Path(__file__).resolve().parents[1]
HOST = load_plugins()
SPECS = {n: c.spec for n, c in HOST.helpers.items()}
BATCH = 500  # examples per hypothesis run; runs repeat until the target's time is spent


def corpus() -> tuple[list[tuple[int, bytes]], dict[int, list[bytes]]]:
    """(link type, frame) of every capture, and the L4 payloads by port (a helper's seeds)."""
    frames: list[tuple[int, bytes]] = []
    payloads: dict[int, list[bytes]] = {}
    for path in sorted((ROOT / "tests" / "pcaps").glob("*/*.pcap*")):
        for f in read_frames(str(path)):
            frames.append((f.linktype, f.data))
            l3 = decode_link(f.linktype, f.data)
            try:
                pkt = decode_ip(l3) if l3 is not None else None
            except DecodeError:
                continue
            if pkt is not None and pkt.payload:
                for port in (pkt.sport, pkt.dport):
                    payloads.setdefault(port, []).append(pkt.payload)
    return frames, payloads


def mutated(seeds: list[bytes], limit: int = 4000) -> st.SearchStrategy[bytes]:
    """A seed with a few bit flips, insertions, deletions or repeats (random bytes without seeds)."""
    if not seeds:
        return st.binary(max_size=limit)

    @st.composite
    def strategy(draw) -> bytes:
        data = bytearray(draw(st.sampled_from(seeds))[:limit])
        for _ in range(draw(st.integers(0, 6))):
            op = draw(st.sampled_from(["flip", "insert", "delete", "repeat", "whitespace"]))
            at = draw(st.integers(0, len(data)))
            if op == "flip" and data:
                data[min(at, len(data) - 1)] ^= 1 << draw(st.integers(0, 7))
            elif op == "insert":
                data[at:at] = draw(st.binary(max_size=16))
            elif op == "delete":
                del data[at:at + draw(st.integers(1, 64))]
            elif op == "repeat":
                data[at:at] = bytes(data[at:at + draw(st.integers(1, 32))]) * draw(st.integers(1, 50))
            else:
                data[at:at] = draw(st.sampled_from([b" ", b"\t", b"\r\n", b"\r\n ", b"(", b"<"])) * \
                    draw(st.integers(1, 500))
        return bytes(data)

    return st.one_of(strategy(), st.binary(max_size=300))


# ---------------------------------------------------------------- targets: each returns a test to run
def decode_target(_frames, _payloads) -> Callable:
    @given(st.binary(max_size=1600))
    def test(data: bytes) -> None:
        try:
            decode_ip(data)
        except DecodeError:
            pass
    return test


def engine_target(frames, _payloads) -> Callable:
    by_type: dict[int, list[bytes]] = {}
    for linktype, data in frames:
        by_type.setdefault(linktype, []).append(data)
    policy = default_policy(SPECS)

    @given(st.lists(st.sampled_from(sorted(by_type)).flatmap(
        lambda lt: st.tuples(st.just(lt), mutated(by_type[lt], 2000))), min_size=1, max_size=20))
    def test(batch: list[tuple[int, bytes]]) -> None:
        engine = Engine(make_slots(policy.helpers.values(), HOST.helpers), policy.core, track_related=True)
        defrag = Defragmenter()
        for t, (linktype, data) in enumerate(batch):
            l3 = decode_link(linktype, data)
            if l3 is None:
                continue
            try:
                pkt = decode_ip(l3)
                if pkt.frag is not None and (pkt := defrag.feed(pkt)) is None:
                    continue
            except DecodeError:
                continue
            engine.process(pkt, float(t))
    return test


def helper_target(name: str) -> Callable:
    def make(_frames, payloads) -> Callable:
        cls = HOST.helpers[name]
        seeds = [p for port in cls.spec.ports for p in payloads.get(port, [])][:2000]
        flows = []
        for proto in cls.spec.protocols:
            for l3 in cls.spec.families:
                a, b = ("10.1.0.2", "10.2.0.2") if l3 == 4 else ("fd00:1::2", "fd00:2::2")
                flows.append(alg.FlowTuple(l3, proto, ipaddress.ip_address(a), ipaddress.ip_address(b), 40000,
                                           cls.spec.ports[0]))

        @given(st.sampled_from(flows), st.booleans(),
               st.lists(st.tuples(st.sampled_from(list(alg.Direction)), mutated(seeds)), max_size=8))
        def test(flow, expected, chunks) -> None:
            helper = cls()
            state = helper.new_state()
            for now, (direction, data) in enumerate(chunks):
                if not data:
                    continue
                try:
                    out = helper.inspect(alg.Segment(data, direction, flow, float(now), expected), state)
                except ProtocolViolation:
                    return
                check_outcome(helper, out, len(data), flow)
        return test
    return make


def policy_target(_frames, _payloads) -> Callable:
    keys = ["helper", "name", "enabled", "queue", "queue_len", "protocols", "families", "ports", "max_buffer",
            "max_flows", "classes", "options", "loose", "max_transactions", "allowed_networks"]
    values = st.one_of(st.integers(-(1 << 40), 1 << 40), st.booleans(), st.text(max_size=20).map(repr),
                       st.sampled_from(['"ftp"', '"sip"', '"tcp"', '["tcp"]', '[["tcp"]]', "[{}]", "[1, 2]",
                                        '["10.0.0.0/33"]', "{}", "{ a = 1 }", "1e999", "nan", "[" * 300 + "]" * 300]))
    line = st.tuples(st.sampled_from(keys), values).map(lambda kv: f"{kv[0]} = {kv[1]}")
    table = st.sampled_from(["", "[options]", "[classes.ftp]", "[classes.audio]", "[core]", "[[x]]"])

    @given(st.sampled_from(sorted(SPECS)), st.lists(st.one_of(line, table), max_size=12))
    def test(helper: str, lines: list[str]) -> None:
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "p.toml"
            path.write_text(f'helper = "{helper}"\n' + "\n".join(lines) + "\n")
            try:
                load_policy([str(path)], SPECS, only_listed=True)
            except ConfigError as exc:
                assert exc.file == str(path), exc
    return test


TARGETS: dict[str, Callable] = {"decode": decode_target, "engine": engine_target,
                                **{n: helper_target(n) for n in sorted(SPECS)}, "policy": policy_target}


def run_target(name: str, seconds: float, base_seed: int, frames, payloads) -> tuple[int, list[str]]:
    tried = [0]
    failures: list[str] = []
    inner = TARGETS[name](frames, payloads)
    counting = inner.hypothesis.inner_test

    def counted(*args, **kwargs):
        tried[0] += 1
        return counting(*args, **kwargs)

    inner.hypothesis.inner_test = counted
    test = settings(max_examples=BATCH, deadline=None, database=None, suppress_health_check=list(HealthCheck))(inner)
    deadline = time.monotonic() + seconds
    run = 0
    while time.monotonic() < deadline and not failures:
        seed(base_seed + run)(test)  # a fresh part of the input space each run
        run += 1
        try:
            test()
        except Exception as exc:  # a failure hypothesis has shrunk: report it and go on to the next target
            failures.append("".join(traceback.format_exception(exc)[-6:]))
    return tried[0], failures


def main() -> int:
    ap = argparse.ArgumentParser(description="alg's longer fuzz run")
    ap.add_argument("seconds", nargs="?", type=float, default=60.0, help="per target (default 60)")
    ap.add_argument("targets", nargs="*", help=f"default all: {', '.join(TARGETS)}")
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args()
    unknown = [t for t in args.targets if t not in TARGETS]
    if unknown:
        ap.error(f"unknown target(s) {', '.join(unknown)} (known: {', '.join(TARGETS)})")
    base = random.randrange(1 << 30) if args.seed is None else args.seed
    frames, payloads = corpus()
    print(f"fuzz: seed {base}, {args.seconds:g} s per target, corpus {len(frames)} frames")
    failed = 0
    for name in args.targets or list(TARGETS):
        t = time.monotonic()
        tried, failures = run_target(name, args.seconds, base, frames, payloads)
        rate = tried / max(time.monotonic() - t, 1e-9)
        print(f"{name:<8} {tried:>9,} inputs  {rate:>8,.0f}/s  {'FAILED' if failures else 'ok'}", flush=True)
        for f in failures:
            print("  " + f.replace("\n", "\n  "))
        failed += bool(failures)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
