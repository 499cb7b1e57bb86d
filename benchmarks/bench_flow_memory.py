"""Bytes per tracked flow with the flow table at max_flows (no privileges).

For each helper, one engine (replay's path: alg's own flow table) takes
max_flows new control flows (default 65,536, the policy's default max_flows),
each with one control message in (FTP: a SYN, then `USER anonymous`; SIP: an
INVITE without SDP over UDP), so that every flow has its helper state. Printed
per flow, side by side:

  traced      what Python allocated for the flows (tracemalloc, before/after)
  RSS         the process's resident set growth (/proc/self/statm)
  charged     what the engine charges to [core] memory_budget_mb (FLOW_BYTES + buffers + helper state)
  kernel      the kernel's own conntrack object (nf_conntrack objsize in /proc/slabinfo, read in the
              same run: the reference; a conntrack with helper extension takes a little more)

`charged` is the figure the memory budget trusts: traced above it means the
budget lets alg hold more than it says.

    .venv/bin/python benchmarks/bench_flow_memory.py [--flows 65536]
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import os
import sys
import time
import tracemalloc

from alg.decode import TCP_ACK, TCP_SYN, Packet
from alg.engine import Engine, make_slots
from alg.model import TCP, UDP
from alg.plugins import load_plugins
from alg.policy import CorePolicy, default_policy

SERVER = ipaddress.ip_address("10.0.2.2").packed
PAGE = os.sysconf("SC_PAGE_SIZE")


def client(i: int) -> bytes:
    return ipaddress.ip_address(0x0A000000 + (1 << 16) + i).packed  # 10.1.x.y: one address per flow


def ftp_flow(eng: Engine, i: int) -> None:
    eng.process(Packet(4, TCP, client(i), SERVER, 40000, 21, b"", 1000, TCP_SYN), i * 1e-4)
    eng.process(Packet(4, TCP, client(i), SERVER, 40000, 21, b"USER anonymous\r\n", 1001, TCP_ACK), i * 1e-4)


def sip_flow(eng: Engine, i: int) -> None:
    msg = (b"INVITE sip:b@10.0.2.2 SIP/2.0\r\nVia: SIP/2.0/UDP 10.1.0.1;branch=z9hG4bK%d\r\n"
           b"From: <sip:a@10.1.0.1>;tag=%d\r\nTo: <sip:b@10.0.2.2>\r\nCall-ID: %d@10.1.0.1\r\n"
           b"CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n" % (i, i, i))
    eng.process(Packet(4, UDP, client(i), SERVER, 5060, 5060, msg), i * 1e-4)


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def kernel_conntrack() -> int | None:
    try:
        with open("/proc/slabinfo") as f:
            for line in f:
                if line.startswith("nf_conntrack "):
                    return int(line.split()[3])  # objsize
    except OSError:
        pass
    return None


def measure(helper: str, flows: int, make) -> tuple[float, float, float, float]:
    host = load_plugins()
    policy = default_policy({n: c.spec for n, c in host.helpers.items()})
    hp = policy.helpers[helper]
    eng = Engine(make_slots([hp], host.helpers), CorePolicy(memory_budget_mb=1 << 12))
    gc.collect()
    r0 = rss()
    tracemalloc.start()
    t0 = tracemalloc.get_traced_memory()[0]
    start = time.perf_counter()
    for i in range(flows):
        make(eng, i)
    took = time.perf_counter() - start
    gc.collect()
    traced = tracemalloc.get_traced_memory()[0] - t0
    tracemalloc.stop()
    grown = rss() - r0
    held = len(eng.flows)
    assert held == min(flows, hp.max_flows), (held, flows)
    return traced / held, grown / held, eng.flow_bytes / held, took


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--flows", type=int, default=65536, help="flows to open (the default max_flows)")
    args = ap.parse_args()
    kernel = kernel_conntrack()
    print(f"{args.flows} flows per helper (max_flows 65536), one control message each; bytes per flow")
    print(f"{'helper':<6} {'traced':>8} {'RSS':>8} {'charged':>8} {'kernel':>8} {'traced/charged':>15}")
    for helper, make in (("ftp", ftp_flow), ("sip", sip_flow)):
        traced, grown, charged, _took = measure(helper, args.flows, make)
        print(f"{helper:<6} {traced:>8,.0f} {grown:>8,.0f} {charged:>8,.0f} "
              f"{kernel if kernel is not None else '-':>8} {traced / charged:>14.2f}x")
    print("traced: tracemalloc (Python objects the flows keep); RSS includes the allocator's slack and tracemalloc's "
          "own bookkeeping; kernel: nf_conntrack objsize from /proc/slabinfo (root), the kernel's entry for the "
          "same flow" + ("" if kernel is not None else " (unreadable here)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
