"""Replay: a capture in, the expectations that would have been created out.

The very same engine and helpers as the daemon, with the userspace flow
table standing in for conntrack (the first packet of a flow fixes its
direction; a new flow that matches an expectation is RELATED and consumes
it) and a list standing in for ctnetlink.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import IO, Iterable, Iterator

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


def replay(engine: Engine, paths: Iterable[str], progress: IO[str] | None = None) -> ReplayResult:
    result = ReplayResult()
    for e in replay_iter(engine, paths, result, progress):
        result.expectations.append(e)
    return result


def replay_iter(engine: Engine, paths: Iterable[str], result: ReplayResult,
                progress: IO[str] | None = None) -> Iterator[Expectation]:
    for path in paths:
        defrag = Defragmenter()
        for frame in read_frames(path):
            result.frames += 1
            if progress is not None and result.frames % 5000 == 0:
                progress.write(f"\r{path}: {result.frames} packets, {len(result.expectations)} expectations")
                progress.flush()
            l3 = decode_link(frame.linktype, frame.data)
            if l3 is None:
                result.not_ip += 1
                continue
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
                    yield d.expectation
    result.related_flows = engine.related_flows
    if progress is not None and result.frames >= 5000:
        progress.write("\r\033[K")
        progress.flush()


def write(expectations: Iterable[Expectation], fmt: str, out: IO[str] | None = None) -> None:
    out = out or sys.stdout
    for e in expectations:
        out.write((json.dumps(e.to_json(), sort_keys=True) if fmt == "json" else e.to_text()) + "\n")
