"""The process's memory budget: what alg's flows hold is charged, and past
`[core] memory_budget_mb` the least recently used flows are evicted, counted."""

from __future__ import annotations

from dataclasses import replace

from test_ftp import ACK, C4, PSH, S4, SYN

from alg.decode import Packet
from alg.engine import FLOW_BYTES, Engine, make_slots
from alg.model import TCP
from alg.plugins import load_plugins
from alg.policy import CorePolicy, default_policy

HOST = load_plugins()


def engine(budget_mb: int, helper: str = "ftp") -> Engine:
    policy = default_policy({n: c.spec for n, c in HOST.helpers.items()})
    return Engine(make_slots([policy.helpers[helper]], HOST.helpers), replace(CorePolicy(), memory_budget_mb=budget_mb))


def test_flows_holding_unfinished_lines_are_evicted_past_the_budget():
    eng = engine(1)
    for i in range(300):  # 300 control connections, each 6,000 bytes into a line with no end
        sport = 10000 + i
        eng.process(Packet(4, TCP, C4.packed, S4.packed, sport, 21, b"", 1000, SYN), i)
        eng.process(Packet(4, TCP, C4.packed, S4.packed, sport, 21, b"A" * 6000, 1001, ACK | PSH), i)
        assert eng.flow_bytes <= 1 << 20
    st = eng.stats()
    assert st["flows_evicted_memory"] > 0 and st["flow_bytes"] <= 1 << 20
    assert st["flows"] == len(eng.flows) < 300
    # the charge is what the flows hold: nothing leaks when they go
    held = sum(FLOW_BYTES + f.held() + f.state_cost for f in eng.flows.all())
    assert eng.flow_bytes == held


def test_a_helper_state_that_grows_is_charged():
    eng = engine(256, "sip")
    for i in range(64):  # 64 calls on one flow, none answered: 64 transactions remembered
        msg = (b"INVITE sip:b@10.0.2.2 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.1.2;branch=z9hG4bK%d\r\n"
               b"From: <sip:a@10.0.1.2>;tag=1\r\nTo: <sip:b@10.0.2.2>\r\nCall-ID: %d@10.0.1.2\r\n"
               b"CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n" % (i, i))
        eng.process(Packet(4, 17, C4.packed, S4.packed, 5060, 5060, msg), i)
    (flow,) = eng.flows.all()
    assert flow.state_cost > 1000 and eng.flow_bytes == FLOW_BYTES + flow.state_cost
