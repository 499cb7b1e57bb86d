"""The daemon's own cost per queued packet on the path it takes where the kernel hands
over each packet's conntrack (NFQA_CT), which this machine's kernel cannot: the queue
worker, engine and SIP helper fed INVITE+SDP packets with their conntrack by the
userspace kernel of the tests (tests/fakekernel.py), no system calls. Add the binding's
own cost (benchmarks/bench_drain.py, "binding") for the whole per-packet CPU.

Beside it, in the same run: a plain bytes-level parse of the same INVITE's request
line, c= and m= (the floor a Python reader pays for looking at the payload at all), and
the same packets from phones behind masquerade (each INVITE rewritten: Via, Contact,
SDP, Content-Length, checksums; media expected outside with CTA_EXPECT_NAT).

    .venv/bin/python benchmarks/bench_worker.py [--n 20000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fakekernel import FakeKernel  # noqa: E402

from alg.daemon import Daemon  # noqa: E402
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


def run(n: int, nat: bool) -> tuple[float, int, int, int]:
    """CPU seconds per packet, verdicts, expectations held, packets rewritten."""
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
        t0 = time.process_time()
        while d.workers[9].serve():
            pass
        cost = (time.process_time() - t0) / n
        rewritten = d.engine.stats()["helpers"]["sip"]["rewritten"]
        return cost, d.stats.verdicts - 64, len(k.expectations), rewritten


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    n = ap.parse_args().n
    worker, verdicts, held, _ = run(n, nat=False)
    natted, _, _, rewritten = run(n, nat=True)
    payloads = [invite(i) for i in range(1, n + 1)]
    t0 = time.process_time()
    for p in payloads:
        reference(p)
    ref = (time.process_time() - t0) / n
    print(f"{n} INVITE+SDP packets with their conntrack, {len(payloads[0])} bytes each")
    print(f"  worker + engine + SIP helper: {worker * 1e6:6.1f} us CPU per packet "
          f"({verdicts} verdicts, {held} expectations held by the fake kernel)")
    print(f"  the same behind masquerade:   {natted * 1e6:6.1f} us ({rewritten} packets rewritten)")
    print(f"  bytes-level parse (reference): {ref * 1e6:6.1f} us ({worker / ref:.1f}x, NATed {natted / ref:.1f}x)")


if __name__ == "__main__":
    main()
