"""Replay: a capture in, the expectations that would have been created out.

The very same engine and helpers as the daemon, with the userspace flow
table standing in for conntrack (the first packet of a flow fixes its
direction; a new flow that matches an expectation is RELATED and consumes
it) and a list standing in for ctnetlink.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import IO, Any, Callable, Iterable, Iterator

from .decode import LINKTYPE_NAMES, DecodeError, Defragmenter, NotDecoded, Packet, decapsulate, decode_frame
from .engine import Create, Engine, Explanation, Mangle, headline
from .expect import Expectation
from .flows import packet_tuple
from .model import PROTO_NAMES, Direction
from .pcap import read_frames

HINT_FLOWS_MAX = 65536  # flows remembered as checked for a helper's signature off its ports


@dataclass
class ReplayResult:
    expectations: list[Expectation] = field(default_factory=list)
    frames: int = 0
    undecodable: int = 0
    not_ip: int = 0
    related_flows: int = 0
    found: int = 0  # expectations derived so far
    warnings: list[str] = field(default_factory=list)
    not_decoded: Counter = field(default_factory=Counter)  # frames without IP we read, by kind
    # (helper, proto name, port): flows that look like a helper's protocol on a port its policy does not list
    port_hints: Counter = field(default_factory=Counter)


class PortHints:
    """Spots a helper's protocol on ports its policy does not list (SIP on 5061,
    FTP on 2121): the first payload each way of each such flow is shown to
    every helper's cheap `looks_like`; a flow counts once. Bounded: past
    HINT_FLOWS_MAX flows it starts over."""

    def __init__(self, engine: Engine, result: ReplayResult):
        self.by_port = engine.by_port
        self.result = result
        self.helpers = [(name, slot.helper, slot.policy.protocols) for name, slot in engine.slots.items()]
        self.checked: set[tuple] = set()  # flow directions whose first payload was looked at
        self.hinted: set[tuple] = set()  # flows counted

    def see(self, pkt: Packet, frame: int) -> Explanation | None:
        """An explanation when `pkt` starts a flow that looks like a helper's protocol off its ports."""
        if not pkt.payload or (pkt.proto, pkt.dport) in self.by_port or (pkt.proto, pkt.sport) in self.by_port:
            return None
        key = (pkt.proto, pkt.src, pkt.dst, pkt.sport, pkt.dport)
        if key in self.checked:
            return None
        if len(self.checked) >= HINT_FLOWS_MAX:
            self.checked.clear()
            self.hinted.clear()
        self.checked.add(key)
        flow = (pkt.proto, *sorted(((pkt.src, pkt.sport), (pkt.dst, pkt.dport))))
        for name, helper, protocols in self.helpers:
            if pkt.proto in protocols and flow not in self.hinted and helper.looks_like(pkt.payload):
                self.hinted.add(flow)
                # the server's port is the lower one, as a rule (clients take ephemeral ports)
                port = min(pkt.sport, pkt.dport)
                self.result.port_hints[(name, PROTO_NAMES[pkt.proto], port)] += 1
                return Explanation(frame, name, packet_tuple(pkt), Direction.ORIGINAL, headline(pkt.payload),
                                   f"{PROTO_NAMES[pkt.proto]} port {port}", "not inspected", "unknown port", "ports")
        return None


class Progress:
    """A one-line indicator on a terminal (stderr), erased before other output."""

    EVERY = 5000  # frames

    def __init__(self, out: IO[str] | None):
        self.out = out
        self.shown = False

    def update(self, path: str, frame: int, found: int) -> None:
        if self.out is not None and frame % self.EVERY == 0:
            self.out.write(f"\r\033[K{path}: {frame} packets, {found} expectations")
            self.out.flush()
            self.shown = True

    def clear(self) -> None:
        if self.shown and self.out is not None:
            self.out.write("\r\033[K")
            self.out.flush()
            self.shown = False


def replay(engine: Engine, paths: Iterable[str], progress: IO[str] | None = None) -> ReplayResult:
    result = ReplayResult()
    for e in replay_iter(engine, paths, result, progress):
        result.expectations.append(e)
    return result


def replay_iter(engine: Engine, paths: Iterable[str], result: ReplayResult,
                progress: IO[str] | Progress | None = None) -> Iterator[Expectation]:
    for _path, e in replay_found(engine, paths, result, progress):
        yield e


def replay_found(engine: Engine, paths: Iterable[str], result: ReplayResult,
                 progress: IO[str] | Progress | None = None,
                 warn: Callable[[str], None] | None = None,
                 explain: Callable[[str, Explanation], None] | None = None,
                 rewritten: Callable[[str, int, bytes, Mangle], None] | None = None,
                 ) -> Iterator[tuple[str, Expectation]]:
    """(capture file, expectation) as they are found, one capture after the other.

    The flow table and the expectations carry over from one file to the next
    (rotated captures of one session: `tcpdump -C/-G` files). Warnings (a
    truncated file, frames that are not IP) go to `warn` and `result.warnings`;
    with `explain`, what became of each helper action (`Explanation`) goes there;
    with `rewritten` (and NAT rules on the engine), each packet's NAT rewrite:
    (file, frame, its payload, the edits)."""
    if explain is not None:
        engine.explained = []
    shown = progress if isinstance(progress, Progress) else Progress(progress)

    def note(msg: str) -> None:
        result.warnings.append(msg)
        if warn is not None:
            shown.clear()
            warn(msg)

    hints = PortHints(engine, result)
    for path in paths:
        defrag = Defragmenter()
        seen: Counter = Counter()  # frames by link type
        ip: Counter = Counter()  # of which IP
        unsupported: Counter = Counter()  # frames not decoded that may hide IP, by kind
        other: Counter = Counter()  # frames known to be something else (ARP, LLDP...)
        for frame in read_frames(path, note):
            result.frames += 1
            seen[frame.linktype] += 1
            shown.update(path, frame.number, result.found)
            try:
                pkt = decode_frame(frame.linktype, frame.data)
                ip[frame.linktype] += 1
                while pkt.frag is not None:  # the kernel reassembles before conntrack, then so do we
                    whole = defrag.feed(pkt)
                    if whole is None:
                        break
                    pkt = decapsulate(whole)  # a fragmented tunnel packet: what it carries
                if pkt.frag is not None:
                    continue
            except NotDecoded as exc:
                result.not_ip += 1
                result.not_decoded[exc.kind] += 1
                (unsupported if exc.unsupported else other)[exc.kind] += 1
                continue
            except DecodeError as exc:
                result.undecodable += 1
                result.not_decoded[str(exc)] += 1
                unsupported[str(exc)] += 1
                continue
            hint = hints.see(pkt, frame.number)
            if hint is not None and explain is not None:
                explain(path, hint)
            for d in engine.process(pkt, frame.time, frame.number):
                if isinstance(d, Create):
                    result.found += 1
                    shown.clear()
                    yield path, d.expectation
                elif isinstance(d, Mangle) and rewritten is not None and d.edits:
                    shown.clear()
                    rewritten(path, frame.number, pkt.payload, d)
            if explain is not None and engine.explained:
                shown.clear()
                for x in engine.take_explanations():
                    explain(path, x)
        if not seen:
            note(f"{path}: no packets")
        for linktype, n in sorted(seen.items()):
            if not ip[linktype]:
                name = LINKTYPE_NAMES.get(linktype)
                supported = "" if linktype in LINKTYPE_NAMES else " (link type not supported)"
                note(f"{path}: none of the {n} frames of link type {linktype}" + (f" ({name})" if name else "")
                     + f" is an IP packet we can read{supported}: {kinds(unsupported + other)}")
                unsupported.clear()
        if unsupported:
            note(f"{path}: {sum(unsupported.values())} frames not decoded: {kinds(unsupported)}")
    result.related_flows = engine.related_flows
    shown.clear()


def summary(result: ReplayResult, stats: dict[str, Any]) -> str:
    """The end of a replay, for a person: what each helper saw and did, what was
    refused and why, what was not decoded, and traffic on ports the policy misses."""
    lines = [f"alg replay: {result.frames} frames, {result.frames - result.not_ip - result.undecodable} IP packets, "
             f"{len(result.expectations) or result.found} expectations, {result.related_flows} flows came as expected"]
    for name, h in sorted(stats["helpers"].items()):
        classes = h["classes"].values()
        created, evicted = sum(c["created"] for c in classes), sum(c["evicted"] for c in classes)
        refused: Counter = Counter()
        for c in classes:
            refused.update(c["refused"])
        parts = [f"{h['flows']} flows", f"{created} expectations"]
        if evicted:
            parts.append(f"{evicted} evicted (ExpectMax)")
        if refused:
            parts.append(f"refused: {kinds(refused)}")
        if h["notices"]:
            parts.append(f"no expectation: {kinds(Counter(h['notices']))}")
        if h["parse_errors"] or h["internal_errors"]:
            parts.append(f"{h['parse_errors']} flows broke the protocol, {h['internal_errors']} helper errors")
        if h["flows"] or created or refused or h["notices"]:
            lines.append(f"  {name}: " + "; ".join(parts))
    if result.not_decoded:
        lines.append(f"  not decoded: {kinds(result.not_decoded)}")
    for (helper, proto, port), n in sorted(result.port_hints.items()):
        lines.append(f"  {n} {proto} flows on port {port} look like {helper}, whose policy does not list that port"
                     f" (add {port} to its `ports`, and to the CT --helper rule, to inspect them)")
    return "\n".join(lines) + "\n"


def kinds(counts: Counter) -> str:
    """'3 ARP, 1 ethertype 0x88b5': counts by kind, the most frequent first."""
    return ", ".join(f"{n} {kind}" for kind, n in counts.most_common())


def row(e: Expectation, fmt: str, path: str | None = None) -> str:
    """One output line; JSON rows name the capture file (`file`) when given."""
    if fmt != "json":
        return e.to_text()
    return json.dumps(e.to_json() | ({"file": path} if path is not None else {}), sort_keys=True)


def write(expectations: Iterable[Expectation], fmt: str, out: IO[str] | None = None) -> None:
    out = out or sys.stdout
    for e in expectations:
        out.write(row(e, fmt) + "\n")


def rewrite_row(path: str, frame: int, payload: bytes, m: Mangle, fmt: str) -> str:
    """One rewritten packet: each edit's offset, the bytes it had and has now."""
    edits = [{"offset": e.offset, "old": payload[e.offset:e.offset + e.length].decode("latin-1"),
              "new": e.data.decode("latin-1")} for e in m.edits or ()]
    if fmt == "json":
        return json.dumps({"file": path, "frame": frame, "rewrite": edits}, sort_keys=True)
    return f"frame {frame} rewritten: " + ", ".join(f"@{x['offset']} {x['old']!r} -> {x['new']!r}" for x in edits)
