"""The daemon's own cost per queued packet on the path it takes where the kernel hands
over each packet's conntrack (NFQA_CT), which this machine's kernel cannot: the queue
worker, engine and SIP helper fed INVITE+SDP packets with their conntrack by the
userspace kernel of the tests (tests/fakekernel.py), no system calls. Add the binding's
own cost (benchmarks/bench_drain.py, "binding") for the whole per-packet CPU.

Beside it, in the same run: the SIP helper alone on the same packets (Segments built
before the clock, as bench_sip.py does), so that the rest, the daemon's own bookkeeping
per packet, shows; a plain bytes-level parse of the same INVITE's request line, c= and
m= (the floor a Python reader pays for looking at the payload at all); and the same
packets from phones behind masquerade (each INVITE rewritten: Via, Contact,
SDP, Content-Length, checksums; media expected outside with CTA_EXPECT_NAT).

Then, as the daemon's loop does after each batch, the expectation events go to the
`alg_expectation_event` observers (none are installed here: the hook call alone).

The fake kernel is not alg: in a run of its own, the share of the serve loop's time spent inside
its calls (the queue's receive, verdict and flush with the verdicts it applies, ctnetlink's
create, delete and get) is taken, and the worker's figure without that share printed beside
it: alg's own per packet (wall-clock shares: CPU-time clocks cost half a microsecond a read).

    .venv/bin/python benchmarks/bench_worker.py [--n 20000] [--profile 25]

`--profile N` adds a flat profile of the serve loop (cProfile, the N functions with the most
time of their own, in microseconds per packet; the profiler itself inflates small calls).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import ipaddress
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fakekernel import FakeKernel  # noqa: E402

from alg import Direction, FlowTuple, Segment  # noqa: E402
from alg.daemon import Daemon  # noqa: E402
from alg.daemon.supervisor import settle_collector  # noqa: E402
from alg.plugins import load_plugins  # noqa: E402

SDP = (b"v=0\r\no=- 1 1 IN IP4 10.0.1.2\r\ns=-\r\nc=IN IP4 10.0.1.2\r\nt=0 0\r\n"
       b"m=audio %d RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n")


def invite(i: int) -> bytes:
    sdp = SDP % (10000 + 2 * (i % 20000))  # each call its own media port
    return (b"INVITE sip:bob@10.0.2.2 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.1.2:5060;branch=z9hG4bK%d\r\n"
            b"Max-Forwards: 70\r\nFrom: <sip:alice@10.0.1.2>;tag=%d\r\nTo: <sip:bob@10.0.2.2>\r\n"
            b"Call-ID: %d@10.0.1.2\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@10.0.1.2:5060>\r\n"
            b"Content-Type: application/sdp\r\nContent-Length: %d\r\n\r\n" % (i, i, i, len(sdp))) + sdp


def reference(payload: bytes) -> tuple:
    line = payload[:payload.find(b"\r\n")]
    c = payload.find(b"\r\nc=")
    m = payload.find(b"\r\nm=")
    return line.split(b" "), payload[c + 4:payload.find(b"\r\n", c + 2)], payload[m + 4:payload.find(b"\r\n", m + 2)]


def timed(obj: object, names: tuple[str, ...], spent: list[float]) -> None:
    """Each of obj's methods `names` made to add the seconds it takes to spent[0] (outermost calls only)."""
    depth = [0]

    def timing(method: Callable[..., object]) -> Callable[..., object]:
        def wrapper(*args: object, **kwargs: object) -> object:
            depth[0] += 1
            t0 = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                depth[0] -= 1
                if not depth[0]:
                    spent[0] += time.perf_counter() - t0
        return wrapper

    for name in names:
        setattr(obj, name, timing(getattr(obj, name)))


def run(n: int, nat: bool, profile: cProfile.Profile | None = None,
        fake: list[float] | None = None) -> tuple[float, int, int, int, float]:
    """CPU seconds per packet, verdicts, expectations held, packets rewritten, and CPU seconds per
    packet of handing the expectation events to the observers (the daemon's loop, per batch).
    `fake`: [0.0, 0.0], to which the seconds spent inside the fake kernel's calls while serving, and
    those spent serving, are added (wall clock)."""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "sip.toml").write_text('helper = "sip"\nqueue = 9\n')
        (Path(tmp) / "alg.toml").write_text(f'[core]\nstatus_socket = "{tmp}/alg.sock"\n')
        k = FakeKernel()
        d = Daemon(load_plugins(), [f"{tmp}/sip.toml", f"{tmp}/alg.toml"], kernel=k.ports())
        for slot in d.engine.slots.values():
            d._register(slot)
        flows = [k.connect("sip", 4, 17, "10.0.1.2", "10.0.2.2", 5060 + i % 64, 5060,
                           reply_dst="192.0.2.1" if nat else None) for i in range(64)]
        for cid in flows:  # confirmed: their expectations go over "ctnetlink" (the fake's), as live
            k.send(9, cid, False, invite(0))
        d.workers[9].serve()
        for i in range(1, n + 1):
            k.send(9, flows[i % 64], False, invite(i))
        d.engine.take_events()
        # as the daemon's loop does once started; the fake kernel's queued packets, which a
        # daemon does not hold, are frozen with the rest and cost no collection
        settle_collector()
        spent = [0.0, 0.0]
        if fake is not None:  # (the daemon holds the fake kernel and its queue: their methods are looked up per call)
            timed(k, ("create", "delete", "get"), spent)
            timed(d.workers[9].queue, ("receive", "verdict", "flush"), spent)
        cost = observed = 0.0
        while True:
            t0, w0 = time.process_time(), time.perf_counter()
            if profile is not None:
                profile.enable()
            served = d.workers[9].serve()
            if profile is not None:
                profile.disable()
            t1 = time.process_time()
            spent[1] += time.perf_counter() - w0
            d._observe()  # (the supervisor's step: every event of the batch to the hook)
            cost, observed = cost + t1 - t0, observed + time.process_time() - t1
            if not served:
                break
        gc.unfreeze()  # (this run's objects collectable again)
        if fake is not None:
            fake[0] += spent[0]
            fake[1] += spent[1]
        rewritten = d.engine.stats()["helpers"]["sip"]["rewritten"]
        return cost / n, d.stats.verdicts - 64, len(k.expectations), rewritten, observed / n


def helper_alone(n: int) -> float:
    """CPU seconds per packet of the SIP helper's inspect on what run() feeds the worker:
    the same 64 flows (each warmed with its first INVITE), the same INVITEs in turn."""
    from alg_helpers.sip import SipHelper

    h = SipHelper()
    a, b = ipaddress.ip_address("10.0.1.2"), ipaddress.ip_address("10.0.2.2")
    flows = [FlowTuple(4, 17, a, b, 5060 + i, 5060) for i in range(64)]
    states = [h.new_state() for _ in flows]
    for flow, state in zip(flows, states, strict=True):
        h.inspect(Segment(invite(0), Direction.ORIGINAL, flow, 1.0), state)
    todo = [(Segment(invite(i), Direction.ORIGINAL, flows[i % 64], 2.0), states[i % 64]) for i in range(1, n + 1)]
    t0 = time.process_time()
    for seg, state in todo:
        h.inspect(seg, state)
    return (time.process_time() - t0) / n


def flat(profile: cProfile.Profile, n: int, top: int) -> None:
    """The functions with the most time of their own, in us per packet."""
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    rows = sorted(((tt, ct, calls, f"{Path(file).name}:{line}({name})")
                   for (file, line, name), (_cc, calls, tt, ct, _callers) in stats.items()), reverse=True)
    total = sum(r[0] for r in rows)
    print(f"flat profile of the serve loop, {n} packets (cProfile, {total / n * 1e6:.0f} us per packet "
          "with its own overhead): own, cumulative (us per packet), calls per packet")
    for tt, ct, calls, name in rows[:top]:
        print(f"  {tt / n * 1e6:7.2f} {ct / n * 1e6:8.2f} {calls / n:7.2f}  {name}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--profile", type=int, default=0, metavar="N", help="print the top N of a flat profile")
    args = ap.parse_args()
    n = args.n
    fake = [0.0, 0.0]
    run(n // 4, nat=False, fake=fake)  # (first: a run after others takes their garbage's collections with it)
    fake_share = fake[0] / fake[1]
    gc.collect()  # (its garbage not collected in the runs measured below)
    worker, verdicts, held, _, observed = run(n, nat=False)
    natted, _, _, rewritten, _ = run(n, nat=True)
    helper = helper_alone(n)
    payloads = [invite(i) for i in range(1, n + 1)]
    t0 = time.process_time()
    for p in payloads:
        reference(p)
    ref = (time.process_time() - t0) / n
    print(f"{n} INVITE+SDP packets with their conntrack, {len(payloads[0])} bytes each")
    print(f"  worker + engine + SIP helper: {worker * 1e6:6.1f} us CPU per packet "
          f"({verdicts} verdicts, {held} expectations held by the fake kernel)")
    print(f"  of which the SIP helper alone: {helper * 1e6:6.1f} us; the rest, the daemon's bookkeeping: "
          f"{(worker - helper) * 1e6:.1f} us")
    print(f"  of which the fake kernel of the tests (its calls timed, in a run of its own): {fake_share:.0%}; "
          f"alg's own: about {worker * (1 - fake_share) * 1e6:.1f} us per packet")
    print(f"  the same behind masquerade:   {natted * 1e6:6.1f} us ({rewritten} packets rewritten)")
    print(f"  bytes-level parse (reference): {ref * 1e6:6.1f} us ({worker / ref:.1f}x, NATed {natted / ref:.1f}x)")
    print(f"  then its expectation events to the observers (the daemon's loop, none installed): "
          f"{observed * 1e6:.1f} us per packet")
    if args.profile:
        prof = cProfile.Profile()
        run(n // 4, nat=False, profile=prof)
        flat(prof, n // 4, args.profile)


if __name__ == "__main__":
    main()
