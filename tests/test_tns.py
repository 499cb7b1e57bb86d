"""TNS helper: REDIRECT inline and in the DATA packets after it, connect-string parsing, attacks."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import alg
from alg import TCP, Direction, Expect, Notice
from alg.testing import feed, split_variants
from alg_helpers.tns import TnsHelper

C, S = ipaddress.ip_address("10.0.1.2"), ipaddress.ip_address("10.0.2.2")
FLOW = alg.FlowTuple(4, TCP, C, S, 40000, 1521)
OUT, R = Direction.ORIGINAL, Direction.REPLY
ADDR = b"(ADDRESS=(PROTOCOL=TCP)(HOST=10.0.2.2)(PORT=1522))"
CONNECT_DATA = b"(DESCRIPTION=(CONNECT_DATA=(SERVICE_NAME=XE)))"


def packet(ptype: int, body: bytes) -> bytes:
    return struct.pack(">HHBBH", 8 + len(body), 0, ptype, 0, 0) + body


def redirect(data: bytes, inline: bool = True, announced: int | None = None) -> bytes:
    n = len(data) if announced is None else announced
    return packet(5, struct.pack(">H", n) + (data if inline else b""))


def data_packet(payload: bytes) -> bytes:
    return packet(6, b"\0\0" + payload)


CONNECT = packet(1, b"\x01\x3b" + b"\0" * 48 + CONNECT_DATA)


def expects(actions):
    return [a for a in actions if isinstance(a, Expect)]


def notices(actions):
    return [a.code for a in actions if isinstance(a, Notice)]


@pytest.mark.parametrize("variant", ["whole", "bytewise", "halves"])
def test_inline_redirect(variant):
    wire = redirect(ADDR + b"\0" + CONNECT_DATA)
    acts = feed(TnsHelper(), [(OUT, CONNECT)] + [(R, c) for c in split_variants(wire)[variant]], FLOW)
    (e,) = expects(acts)
    assert (e.cls, e.proto, e.src, e.dst, e.sport, e.dport, e.flags) == ("tns", TCP, C, S, None, 1522, 0)
    host, port = e.where
    assert wire[host[0]:host[0] + host[1]] == b"10.0.2.2" and wire[port[0]:port[0] + port[1]] == b"1522"


def test_redirect_data_in_the_following_data_packets():
    payload = ADDR + b"\0" + CONNECT_DATA
    # announced length, data in two DATA packets (python-oracledb reads it that way)
    acts = feed(TnsHelper(), [(R, redirect(payload, inline=False)), (R, data_packet(payload[:20])),
                              (R, data_packet(payload[20:]))], FLOW)
    assert [e.dport for e in expects(acts)] == [1522]
    # length 0: the next DATA packet carries it (conntrackd's reading)
    acts = feed(TnsHelper(), [(R, redirect(b"", inline=False, announced=0)), (R, data_packet(payload))], FLOW)
    assert [e.dport for e in expects(acts)] == [1522]


@pytest.mark.parametrize("text, dport", [
    (b"(address = (protocol = tcp) (host = 10.0.2.2 ) (port = 1600 ))", 1600),
    (b"(DESCRIPTION=(ADDRESS=(PROTOCOL=TCPS)(PORT=2484)(HOST=10.0.2.2)))", 2484),
    (b"(ADDRESS=(PROTOCOL=TCP)(HOST=10.0.2.2)(PORT=1522))(ADDRESS=(PROTOCOL=TCP)(HOST=10.0.2.2)(PORT=9))", 1522),
])
def test_connect_string_grammar(text, dport):
    assert [e.dport for e in expects(feed(TnsHelper(), [(R, redirect(text + b"\0"))], FLOW))] == [dport]


def test_ipv6_literal_with_and_without_brackets():
    c6, s6 = ipaddress.ip_address("fd00:1::2"), ipaddress.ip_address("fd00:2::2")
    flow6 = alg.FlowTuple(6, TCP, c6, s6, 40000, 1521)
    for host in (b"fd00:2::2", b"[fd00:2::2]"):
        (e,) = expects(feed(TnsHelper(), [(R, redirect(b"(ADDRESS=(PROTOCOL=TCP)(HOST=" + host + b")(PORT=1522))"))],
                            flow6))
        assert (e.src, e.dst, e.dport) == (c6, s6, 1522)


def test_hostname_gives_no_expectation_and_is_counted():
    acts = feed(TnsHelper(), [(R, redirect(b"(ADDRESS=(PROTOCOL=TCP)(HOST=db2.example.com)(PORT=1522))"))], FLOW)
    assert expects(acts) == [] and notices(acts) == ["hostname"]


def test_redirect_to_a_third_host_gives_nothing_unless_allowed():
    wire = redirect(b"(ADDRESS=(PROTOCOL=TCP)(HOST=10.9.9.9)(PORT=22))")
    acts = feed(TnsHelper(), [(R, wire)], FLOW)
    assert expects(acts) == [] and notices(acts) == ["address-mismatch"]
    assert [str(e.dst) for e in expects(feed(TnsHelper({"allowed_networks": ["10.9.9.0/24"]}), [(R, wire)], FLOW))] \
        == ["10.9.9.9"]


def test_client_side_and_non_redirect_packets_open_nothing():
    # a CONNECT naming an address (client side), a DATA without REDIRECT, a REFUSE
    acts = feed(TnsHelper(), [(OUT, redirect(ADDR)), (R, packet(11, b"")), (R, data_packet(ADDR)),
                              (R, packet(4, b"\0\0" + ADDR))], FLOW)
    assert expects(acts) == []


def test_inspection_stops_at_accept():
    acts = feed(TnsHelper(), [(R, packet(2, b"\x01\x3b" + b"\0" * 20)), (R, redirect(ADDR))], FLOW)
    assert expects(acts) == []


def test_bad_ports_protocols_and_lengths():
    for text, code in [(b"(ADDRESS=(PROTOCOL=TCP)(HOST=10.0.2.2)(PORT=0))", "bad-port"),
                       (b"(ADDRESS=(PROTOCOL=TCP)(HOST=10.0.2.2)(PORT=70000))", "bad-port"),
                       (b"(ADDRESS=(PROTOCOL=IPC)(KEY=x))", "not-tcp"),
                       (b"nothing here", "no-address")]:
        acts = feed(TnsHelper(), [(R, redirect(text))], FLOW)
        assert expects(acts) == [] and notices(acts) == [code]
    with pytest.raises(alg.ProtocolViolation):
        feed(TnsHelper(), [(R, b"\x00\x03\x00\x00\x05\x00\x00\x00")], FLOW)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([OUT, R]), st.one_of(
    st.binary(max_size=200), st.builds(redirect, st.sampled_from([ADDR, b"", ADDR[:30]]), st.booleans()),
    st.builds(data_packet, st.sampled_from([ADDR, b"(HOST=1.2.3.4)"])))), max_size=8))
def test_fuzz_actions_or_protocol_violation(chunks):
    try:
        feed(TnsHelper(), chunks, FLOW)
    except alg.ProtocolViolation:
        pass
