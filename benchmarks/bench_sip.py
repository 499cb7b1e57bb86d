"""SIP helper cost per message: prints numbers, asserts nothing.

    .venv/bin/python benchmarks/bench_sip.py [N]

1. `SipHelper.inspect` on an ~800-byte INVITE with SDP (UDP), new Call-ID each
   time (so each is a new transaction with 2 expectations), and on a 200 OK;
2. the same INVITE over TCP through the engine's stream path;
3. `alg replay` throughput on the recorded SIPp captures (all packets, incl. media).
"""

from __future__ import annotations

import ipaddress
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from alg import TCP, UDP, Direction, FlowTuple, Segment  # noqa: E402
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


def bench(label: str, n: int, fn) -> None:
    t = time.perf_counter()
    fn(n)
    dt = time.perf_counter() - t
    print(f"{label:<48} {n / dt:>10,.0f} msg/s  {dt / n * 1e6:7.1f} us/msg")


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    h = SipHelper()
    flow = FlowTuple(4, UDP, A, B, 5061, 5060)
    msgs = [invite(i) for i in range(n)]
    print(f"INVITE size {len(msgs[0])} bytes")

    def udp(k: int) -> None:
        st = h.new_state()
        for m in msgs[:k]:
            h.inspect(Segment(m, Direction.ORIGINAL, flow, 0.0), st)

    bench("inspect INVITE+SDP, UDP (2 Expect each)", n, udp)

    tflow = FlowTuple(4, TCP, A, B, 40000, 5060)

    def tcp(k: int) -> None:
        st = h.new_state()
        for m in msgs[:k]:
            h.inspect(Segment(m, Direction.ORIGINAL, tflow, 0.0), st)

    bench("inspect INVITE+SDP, TCP framing", n, tcp)

    from sip_kernel import replay_case
    caps = sorted((Path(__file__).resolve().parents[1] / "tests" / "pcaps").glob("sip-*/*.pcap*"))
    t = time.perf_counter()
    frames = 0
    for _ in range(5):
        for c in caps:
            r, _e = replay_case(c)
            frames += r.frames
    dt = time.perf_counter() - t
    print(f"{'replay of the sip-* captures (x5, incl. media)':<48} {frames / dt:>10,.0f} pkt/s  ({frames} packets)")


if __name__ == "__main__":
    main()
