"""The invariant every helper keeps (STYLE.md §12): any bytes, from either side,
give actions, NEED_DATA or ProtocolViolation, and nothing else; a Parsed never
consumes more than it was given, and every Expect it returns is well formed."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import alg
from alg.errors import ProtocolViolation
from alg.plugins import load_plugins
from alg.testing import check_outcome

HOST = load_plugins()


def flows(spec):
    for proto in spec.protocols:
        for l3 in spec.families:
            a, b = (("10.1.0.2", "10.2.0.2") if l3 == 4 else ("fd00:1::2", "fd00:2::2"))
            yield alg.FlowTuple(l3, proto, ipaddress.ip_address(a), ipaddress.ip_address(b), 40000,
                                spec.ports[0] if spec.ports else 1)


CASES = [(name, flow) for name, cls in sorted(HOST.helpers.items()) for flow in flows(cls.spec)]


@pytest.mark.parametrize("name, flow", CASES, ids=[f"{n}-{f.l3}-{alg.PROTO_NAMES[f.proto]}" for n, f in CASES])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chunks=st.lists(st.tuples(st.sampled_from([alg.Direction.ORIGINAL, alg.Direction.REPLY]),
                                 st.one_of(st.binary(max_size=300),
                                           st.sampled_from([b"PORT 10,1,0,2,1,2\r\n", b"227 (10,2,0,2,4,1)\r\n",
                                                            b"INVITE sip:a@b SIP/2.0\r\nContent-Length: 9\r\n\r\n",
                                                            b"\x00\x00\x00\x28" + b"\x01" * 36,
                                                            b"M-SEARCH * HTTP/1.1\r\n\r\n"]))),
                       max_size=6))
def test_any_bytes_give_actions_or_a_protocol_violation(name, flow, chunks):
    helper = HOST.helpers[name]()
    state = helper.new_state()
    for now, (direction, data) in enumerate(chunks):
        if not data:
            continue
        try:
            out = helper.inspect(alg.Segment(data, direction, flow, float(now)), state)
        except ProtocolViolation:
            return
        check_outcome(helper, out, len(data), flow)
