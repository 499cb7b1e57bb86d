"""SIP helper cost on hostile inputs, beside a normal message's cost measured
in the same run: prints numbers, asserts nothing.

    .venv/bin/python benchmarks/bench_sip_hostile.py

Each case is one message an attacker can send (at most 64 KiB: a UDP
datagram, or the helper's TCP `max_buffer`), given to `SipHelper.inspect`
the way the engine gives it. Printed per case: CPU time per packet, per KB,
both as a multiple of the normal INVITE's, and what the message yielded
(expectations, notices). "1-byte segments" feeds a message one byte per call
with the unconsumed bytes handed back each time, as the engine does (the
buffers are built before the clock starts: the copy is the engine's cost,
not the helper's); its cost is per segment and for the whole message.
"""

from __future__ import annotations

import collections
import ipaddress
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_sip import invite  # noqa: E402

import alg  # noqa: E402
from alg import TCP, UDP, Direction, Expect, FlowTuple, Notice, Segment  # noqa: E402
from alg_helpers.sip import SipHelper  # noqa: E402

A, B = ipaddress.ip_address("10.0.1.2"), ipaddress.ip_address("10.0.2.2")
UDP_FLOW = FlowTuple(4, UDP, A, B, 5061, 5060)
TCP_FLOW = FlowTuple(4, TCP, A, B, 40000, 5060)
LIMIT = 65000  # bytes: a UDP datagram, and within the TCP max_buffer


def message(start: str, headers: list[bytes], body: bytes = b"", ctype: bytes = b"application/sdp") -> bytes:
    head = [start.encode(), b"Via: SIP/2.0/UDP 10.0.1.2:5061;branch=z9hG4bK-1", b"From: <sip:a@10.0.1.2>;tag=1",
            b"To: <sip:b@10.0.2.2>", b"Call-ID: hostile-1@10.0.1.2", b"CSeq: 1 " + start.split()[0].encode()]
    head += headers
    if body:
        head.append(b"Content-Type: " + ctype)
    head.append(b"Content-Length: " + str(len(body)).encode())
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def fill(unit: bytes, room: int) -> bytes:
    return unit * max(0, room // len(unit))


SDP_HEAD = b"v=0\r\no=- 1 1 IN IP4 10.0.1.2\r\ns=-\r\nc=IN IP4 10.0.1.2\r\nt=0 0\r\n"
SDP = SDP_HEAD + b"m=audio 16000 RTP/AVP 0\r\n"
INV = "INVITE sip:b@10.0.2.2 SIP/2.0"


def cases() -> dict[str, bytes]:
    base = len(message(INV, [], SDP_HEAD))
    room = LIMIT - base - 64
    parts = b"".join(b"--b\r\nContent-Type: application/sdp\r\n\r\n" + SDP_HEAD
                     + b"".join(b"m=audio %d/8 RTP/AVP 0\r\n" % (20000 + 100 * i + 2 * k) for i in range(32))
                     for k in range(8)) + b"--b--\r\n"
    return {
        "whitespace run in a header value": message(INV, [b"Subject: " + b" " * room + b"x"], SDP),
        "whitespace run before a colon": message(INV, [b"Subject" + b" " * room + b": x"], SDP),
        "whitespace run in the Call-ID": message(INV, [], SDP).replace(
            b"Call-ID: ", b"Call-ID: " + b" " * room, 1),
        "continuation lines (Call-ID)": message(INV, [], SDP).replace(
            b"Call-ID: hostile-1@10.0.1.2", b"Call-ID: hostile-1@10.0.1.2" + fill(b"\r\n x", room), 1),
        "continuation lines (unread header)": message(INV, [b"Subject: x" + fill(b"\r\n x", room)], SDP),
        "many headers": message(INV, [fill(b"X-A: b\r\n", room)[:-2]], SDP),
        "many compact Contact headers (m:)": message("REGISTER sip:10.0.2.2 SIP/2.0",
                                                     [fill(b"m: <sip:a@10.0.1.2:5061>\r\n", room)[:-2]]),
        "REGISTER, 2,500 Contacts in one header": message(
            "REGISTER sip:10.0.2.2 SIP/2.0", [b"Contact: " + b",".join([b"<sip:a@10.0.1.2:5061>"] * 2500)]),
        "many m= lines": message(INV, [], SDP_HEAD + fill(b"m=audio 20000 RTP/AVP 0\r\n", room - len(SDP_HEAD))),
        "many c= lines": message(INV, [], SDP_HEAD + fill(b"c=IN IP4 10.0.1.2\r\n", room - len(SDP_HEAD))),
        "many a=rtcp lines": message(INV, [], SDP_HEAD + b"m=audio 20000 RTP/AVP 0\r\n"
                                     + fill(b"a=rtcp:20001\r\n", room - len(SDP_HEAD) - 32)),
        "multipart: 8 SDP bodies x 32 m= /8": message(INV, [], parts, b'multipart/mixed;boundary="b"'),
        "max-size INVITE (long SDP attributes)": message(INV, [], SDP_HEAD + b"m=audio 20000 RTP/AVP 0\r\n"
                                                         + fill(b"a=fmtp:101 0-15\r\n", room - len(SDP_HEAD) - 32)),
        "long method token": message("X" * 30000 + " sip:b@10.0.2.2 SIP/2.0", [], SDP),
        "long Call-ID": message(INV, [], SDP).replace(b"hostile-1@", b"h" * room + b"@", 1),
    }


def cost(fn, repeat: int) -> float:
    """CPU seconds per call, best of 3."""
    best = float("inf")
    for _ in range(3):
        t = time.process_time()
        for _ in range(repeat):
            fn()
        best = min(best, time.process_time() - t)
    return best / repeat


def once(helper: SipHelper, data: bytes, flow: FlowTuple) -> alg.Outcome | str:
    try:
        return helper.inspect(Segment(data, Direction.ORIGINAL, flow, 0.0), helper.new_state())
    except alg.ProtocolViolation as exc:
        return f"ProtocolViolation: {str(exc)[:40]}"


def summary(out) -> str:
    if isinstance(out, str):
        return out
    if out is alg.NEED_DATA:
        return "NEED_DATA"
    exp = sum(isinstance(a, Expect) for a in out.actions)
    notes = collections.Counter(a.code for a in out.actions if isinstance(a, Notice))
    return f"{exp} Expect, notices {dict(notes)}" if notes else f"{exp} Expect"


def bytewise(helper: SipHelper, data: bytes) -> tuple[float, int]:
    """CPU seconds to feed `data` one byte per call (the engine's way) and the calls made."""
    bufs = [data[:i] for i in range(1, len(data) + 1)]
    best = float("inf")
    for _ in range(3):
        state = helper.new_state()
        t = time.process_time()
        for buf in bufs:
            helper.inspect(Segment(buf, Direction.ORIGINAL, TCP_FLOW, 0.0), state)
        best = min(best, time.process_time() - t)
    return best, len(bufs)


def main() -> None:
    h = SipHelper()
    normal = invite(1)
    t_norm = cost(lambda: h.inspect(Segment(normal, Direction.ORIGINAL, UDP_FLOW, 0.0), h.new_state()), 3000)
    kb_norm = t_norm / (len(normal) / 1024)
    print(f"{'case':<40} {'bytes':>6} {'us/pkt':>9} {'x norm':>7} {'us/KB':>7} {'x norm':>7}  yields")
    print(f"{'normal INVITE+SDP (UDP)':<40} {len(normal):>6} {t_norm * 1e6:>9.1f} {1:>7.1f} {kb_norm * 1e6:>7.1f} "
          f"{1:>7.1f}  {summary(once(h, normal, UDP_FLOW))}")
    worst_pkt = worst_kb = (0.0, "")
    for name, data in cases().items():
        for flow in (UDP_FLOW, TCP_FLOW):
            t = cost(lambda data=data, flow=flow: once(h, data, flow), 20)
            per_kb = t / (len(data) / 1024)
            label = f"{name} ({alg.PROTO_NAMES[flow.proto]})"
            worst_pkt, worst_kb = max(worst_pkt, (t, label)), max(worst_kb, (per_kb, label))
            print(f"{label:<40} {len(data):>6} {t * 1e6:>9.1f} {t / t_norm:>7.1f} {per_kb * 1e6:>7.1f} "
                  f"{per_kb / kb_norm:>7.1f}  {summary(once(h, data, flow))}")
    for name, data in (("1-byte segments, normal INVITE", normal),
                       ("1-byte segments, 16 KB INVITE", message(INV, [fill(b"X-A: b\r\n", 16000)[:-2]], SDP))):
        total, calls = bytewise(h, data)
        per_kb = total / (len(data) / 1024)
        worst_kb = max(worst_kb, (per_kb, name))
        print(f"{name:<40} {len(data):>6} {total / calls * 1e6:>9.2f} {'':>7} {per_kb * 1e6:>7.1f} "
              f"{per_kb / kb_norm:>7.1f}  {calls} calls, {total * 1e3:.1f} ms for the message")
    print(f"worst per packet: {worst_pkt[0] * 1e6:.0f} us ({worst_pkt[1]}), {worst_pkt[0] / t_norm:.0f}x a normal INVITE")
    print(f"worst per KB:     {worst_kb[0] * 1e6:.1f} us ({worst_kb[1]}), {worst_kb[0] / kb_norm:.1f}x a normal INVITE's")


if __name__ == "__main__":
    main()
