"""Replay throughput for every FTP capture under tests/pcaps (not a test).

Prints, per capture and in total: packets/s and expectations/s of a full
`alg replay` (read, decode, flow table, TCP stream, FTP helper, policy), the
median of several runs; then the per-packet cost of decoding alone and of the
FTP helper alone (fed the control-connection payloads already split out).

    .venv/bin/python benchmarks/bench_replay.py [--runs N]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from alg.decode import DecodeError, decode_ip, decode_link
from alg.engine import Engine, make_slots
from alg.model import Direction, FlowTuple, Segment, NEED_DATA
from alg.pcap import read_frames
from alg.plugins import load_plugins
from alg.policy import default_policy
from alg.replay import replay
import ipaddress

ROOT = Path(__file__).resolve().parents[1]


def engine() -> Engine:
    host = load_plugins()
    specs = {n: c.spec for n, c in host.helpers.items()}
    policy = default_policy(specs)
    return Engine(make_slots([h for h in policy.helpers.values() if h.name == "ftp"], host.helpers), policy.core)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    caps = sorted(p for d in (ROOT / "tests" / "pcaps").glob("ftp-*") for p in d.iterdir()
                  if p.suffix in (".pcap", ".pcapng"))
    tot_pk = tot_ex = 0
    tot_t = 0.0
    print(f"{'capture':55} {'packets':>8} {'expects':>7} {'pkt/s':>10} {'exp/s':>9}")
    for cap in caps:
        times, n_pk, n_ex = [], 0, 0
        for _ in range(a.runs):
            eng = engine()
            t0 = time.perf_counter()
            res = replay(eng, [str(cap)])
            times.append(time.perf_counter() - t0)
            n_ex = len(res.expectations)
        n_pk = sum(1 for _ in read_frames(str(cap)))
        med = statistics.median(times)
        tot_pk, tot_ex, tot_t = tot_pk + n_pk, tot_ex + n_ex, tot_t + med
        print(f"{cap.parent.name + '/' + cap.name:55.55} {n_pk:8} {n_ex:7} {n_pk / med:10.0f} {n_ex / med:9.1f}")
    print(f"{'TOTAL (sum of medians)':55} {tot_pk:8} {tot_ex:7} {tot_pk / tot_t:10.0f} {tot_ex / tot_t:9.1f}")

    # decode alone: link + IP/TCP headers of every frame, frames preloaded
    frames = [(f.linktype, f.data) for cap in caps for f in read_frames(str(cap))]
    runs = []
    for _ in range(a.runs):
        t0 = time.perf_counter()
        for lt, data in frames:
            l3 = decode_link(lt, data)
            if l3 is not None:
                try:
                    decode_ip(l3)
                except DecodeError:
                    pass
        runs.append(time.perf_counter() - t0)
    print(f"decode alone: {statistics.median(runs) / len(frames) * 1e6:.2f} us/packet over {len(frames)} frames")

    # FTP helper alone: every port-21 payload, one line-oriented segment each
    segs = []
    for lt, data in frames:
        l3 = decode_link(lt, data)
        try:
            p = decode_ip(l3) if l3 is not None else None
        except DecodeError:
            p = None
        if p is None or not getattr(p, "payload", b""):
            continue
        if p.dport == 21:
            segs.append(Segment(bytes(p.payload), Direction.ORIGINAL, FlowTuple(p.l3, 6, ipaddress.ip_address(p.src), ipaddress.ip_address(p.dst), p.sport, p.dport), 0.0))
        elif p.sport == 21:
            segs.append(Segment(bytes(p.payload), Direction.REPLY, FlowTuple(p.l3, 6, ipaddress.ip_address(p.dst), ipaddress.ip_address(p.src), p.dport, p.sport), 0.0))
    helper = load_plugins().helpers["ftp"]()
    runs = []
    for _ in range(a.runs):
        t0 = time.perf_counter()
        for s in segs:
            st = helper.new_state()
            data = s.data
            while data:
                out = helper.inspect(Segment(data, s.direction, s.flow, 0.0), st)
                if out is NEED_DATA:
                    break
                data = data[out.consumed:]
        runs.append(time.perf_counter() - t0)
    if segs:
        print(f"FTP helper alone: {statistics.median(runs) / len(segs) * 1e6:.2f} us/control segment over {len(segs)} segments")


if __name__ == "__main__":
    main()
