"""SIP helper cost per message, beside a plain bytes-level parse of the same
message measured in the same run: prints numbers, asserts nothing.

    .venv/bin/python benchmarks/bench_sip.py [N]

1. reference: a bytes-level parse of the INVITE's request line, `c=` and
   `m=` lines (find/split, nothing else): what reading the three things the
   helper must read costs in Python on this machine, now;
2. `SipHelper.inspect` on a 616-byte INVITE with SDP (UDP), a new Call-ID each
   time (so each is a new transaction with 2 expectations), as a ratio to 1;
3. the same INVITE over TCP (the helper's stream framing, one message per call);
   and the UDP INVITE under NAT (behind a masquerade: the helper also names
   the spans the core rewrites; the line above is the no-NAT path);
4. `SipState.size()` of a flow holding `max_transactions` (512) transactions,
   which the engine asks for every few packets of a flow (kept as the state
   changes: its cost does not grow with the transactions);
5. `alg replay` throughput on the SIP captures (all packets, incl. media that
   the helper does not see), plugins loaded before the clock starts.

The Segment each call gets is built before the clock starts (the engine
builds it; it is not the helper's cost). Hostile inputs: bench_sip_hostile.py.
"""

from __future__ import annotations

import ipaddress
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from alg import TCP, UDP, Direction, FlowTuple, NatMap, Segment  # noqa: E402
from alg_helpers.sip import SipHelper  # noqa: E402

A, B = ipaddress.ip_address("10.0.1.2"), ipaddress.ip_address("10.0.2.2")
SDP = (b"v=0\r\no=user1 53655765 2353687637 IN IP4 10.0.1.2\r\ns=-\r\nc=IN IP4 10.0.1.2\r\nt=0 0\r\n"
       b"m=audio 16000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
       b"a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=ptime:20\r\na=sendrecv\r\n")


def invite(i: int) -> bytes:
    head = (f"INVITE sip:bob@10.0.2.2:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.1.2:5061;branch=z9hG4bK-{i}\r\n"
            f"From: alice <sip:alice@10.0.1.2:5061>;tag={i}\r\nTo: bob <sip:bob@10.0.2.2:5060>\r\n"
            f"Call-ID: {i}-4242@10.0.1.2\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@10.0.1.2:5061>\r\n"
            f"Max-Forwards: 70\r\nUser-Agent: bench\r\nAllow: INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE\r\n"
            f"Content-Type: application/sdp\r\nContent-Length: {len(SDP)}\r\n\r\n")
    return head.encode() + SDP


def reference(data: bytes) -> tuple:
    """Request line, c= address and m= port of one INVITE, bytes-level."""
    nl = data.find(b"\r\n")
    method, uri, _version = data[:nl].split(b" ", 2)
    c = data.find(b"\nc=", nl)
    addr = data[c + 3:data.find(b"\r", c)].split(b" ")[2]
    m = data.find(b"\nm=", nl)
    kind, port, _rest = data[m + 3:data.find(b"\r", m)].split(b" ", 2)
    return method, uri, addr, kind, int(port)


def timed(fns: dict, n: int, rounds: int = 5) -> dict:
    """CPU seconds per call of each function, the best of `rounds` rounds
    that run them in turn (the machine is shared: CPU time of this process,
    not wall time, and the reference and the helper see the same load)."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, fn in fns.items():
            t = time.process_time()
            fn(n)
            best[name] = min(best[name], time.process_time() - t)
    return {k: v / n for k, v in best.items()}


def line(label: str, per: float, ref: float | None = None, unit: str = "msg") -> None:
    ratio = f"  {per / ref:5.1f}x reference" if ref else ""
    print(f"{label:<46} {1 / per:>10,.0f} {unit}/s  {per * 1e6:7.2f} us/{unit}{ratio}")


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    h = SipHelper()
    msgs = [invite(i) for i in range(n)]
    print(f"INVITE size {len(msgs[0])} bytes, best of 5 rounds of {n}")
    segs = {proto: [Segment(m, Direction.ORIGINAL, FlowTuple(4, proto, A, B, 40000 if proto == TCP else 5061, 5060),
                            0.0) for m in msgs] for proto in (UDP, TCP)}
    nat = NatMap(FlowTuple(4, UDP, A, B, 5061, 5060), FlowTuple(4, UDP, B, ipaddress.ip_address("192.0.2.1"), 5060, 1024))
    segs["nat"] = [Segment(m, Direction.ORIGINAL, nat.original, 0.0, nat=nat) for m in msgs]

    def helper(proto: int | str):
        def run(k: int) -> None:
            st = h.new_state()
            for seg in segs[proto][:k]:  # a new Call-ID each: new transactions, as on a busy trunk
                h.inspect(seg, st)
        return run

    per = timed({"ref": lambda k: [reference(m) for m in msgs[:k]], UDP: helper(UDP), TCP: helper(TCP),
                 "nat": helper("nat")}, n)
    line("reference: request line, c=, m= (bytes)", per["ref"])
    line("inspect INVITE+SDP, UDP (2 Expect each)", per[UDP], per["ref"])
    line("inspect INVITE+SDP, TCP framing", per[TCP], per["ref"])
    line("inspect INVITE+SDP, UDP, under NAT (12 spans)", per["nat"], per["ref"])
    full = h.new_state()
    for seg in segs[UDP][:h.options["max_transactions"]]:
        h.inspect(seg, full)
    size = timed({"size": lambda k: [full.size() for _ in range(k)]}, n)["size"]
    line(f"SipState.size() of a flow of {len(full.transactions)} transactions", size, per["ref"], unit="call")

    replay_bench()


def replay_bench() -> None:
    """`alg replay` of the SIP captures: the engine (decode, flows, helper,
    expectations) per packet. Plugins are loaded and a fresh engine built for
    each capture before the clock starts (entry-point discovery is start-up
    cost, and was more than half of the time when it was timed too)."""
    from alg.engine import Engine, make_slots
    from alg.plugins import load_plugins
    from alg.policy import default_policy
    from alg.replay import replay

    host = load_plugins()
    pol = default_policy({n: c.spec for n, c in host.helpers.items()})
    caps = [str(c) for c in sorted((Path(__file__).resolve().parents[1] / "tests" / "pcaps").glob("sip-*/*.pcap*"))]
    best, frames = float("inf"), 0
    for _ in range(5):
        engines = [Engine(make_slots([pol.helpers["sip"]], host.helpers), pol.core, track_related=True) for _ in caps]
        t = time.process_time()
        frames = sum(replay(e, [c]).frames for e, c in zip(engines, caps, strict=True))
        best = min(best, time.process_time() - t)
    line(f"replay of the sip-* captures ({frames} packets, incl. media)", best / frames, unit="pkt")


if __name__ == "__main__":
    main()
