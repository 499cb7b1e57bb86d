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
from typing import IO, Callable, Iterable, Iterator

from .decode import DecodeError, Defragmenter, decode_ip, decode_link
from .engine import Create, Engine
from .expect import Expectation
from .pcap import read_frames


@dataclass
class ReplayResult:
    expectations: list[Expectation] = field(default_factory=list)
    frames: int = 0
    undecodable: int = 0
    not_ip: int = 0
    related_flows: int = 0
    found: int = 0  # expectations derived so far
    warnings: list[str] = field(default_factory=list)


# link types worth naming in a warning (https://www.tcpdump.org/linktypes.html)
_LINKTYPE_NAMES = {1: "Ethernet", 101: "raw IP", 105: "802.11", 113: "Linux cooked", 127: "802.11 radiotap",
                   239: "NFLOG", 276: "Linux cooked v2"}


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
                 warn: Callable[[str], None] | None = None) -> Iterator[tuple[str, Expectation]]:
    """(capture file, expectation) as they are found, one capture after the other.

    The flow table and the expectations carry over from one file to the next
    (rotated captures of one session: `tcpdump -C/-G` files). Warnings (a
    truncated file, frames that are not IP) go to `warn` and `result.warnings`."""
    shown = progress if isinstance(progress, Progress) else Progress(progress)

    def note(msg: str) -> None:
        result.warnings.append(msg)
        if warn is not None:
            shown.clear()
            warn(msg)

    for path in paths:
        defrag = Defragmenter()
        seen: Counter = Counter()  # frames by link type
        ip: Counter = Counter()  # of which IP
        for frame in read_frames(path, note):
            result.frames += 1
            seen[frame.linktype] += 1
            shown.update(path, frame.number, result.found)
            l3 = decode_link(frame.linktype, frame.data)
            if l3 is None:
                result.not_ip += 1
                continue
            ip[frame.linktype] += 1
            try:
                pkt = decode_ip(l3)
                if pkt.frag is not None:
                    whole = defrag.feed(pkt)
                    if whole is None:
                        continue
                    pkt = whole
            except DecodeError:
                result.undecodable += 1
                continue
            for d in engine.process(pkt, frame.time, frame.number):
                if isinstance(d, Create):
                    result.found += 1
                    shown.clear()
                    yield path, d.expectation
        if not seen:
            note(f"{path}: no packets")
        for linktype, n in sorted(seen.items()):
            if not ip[linktype]:
                name = _LINKTYPE_NAMES.get(linktype)
                note(f"{path}: none of the {n} frames of link type {linktype}" + (f" ({name})" if name else "")
                     + " is an IP packet" + ("" if linktype in _LINKTYPE_NAMES else " (link type not supported)"))
    result.related_flows = engine.related_flows
    shown.clear()


def row(e: Expectation, fmt: str, path: str | None = None) -> str:
    """One output line; JSON rows name the capture file (`file`) when given."""
    if fmt != "json":
        return e.to_text()
    return json.dumps(e.to_json() | ({"file": path} if path is not None else {}), sort_keys=True)


def write(expectations: Iterable[Expectation], fmt: str, out: IO[str] | None = None) -> None:
    out = out or sys.stdout
    for e in expectations:
        out.write(row(e, fmt) + "\n")
