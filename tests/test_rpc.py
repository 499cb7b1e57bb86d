"""RPC portmapper helper: GETPORT / GETADDR over UDP and TCP record marking, xid matching, attacks."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import alg
from alg import TCP, UDP, Direction, Expect, Notice
from alg.testing import feed, split_variants
from alg_helpers.rpc import RpcHelper, parse_uaddr

C, S, THIRD = ipaddress.ip_address("10.0.1.2"), ipaddress.ip_address("10.0.2.2"), ipaddress.ip_address("10.9.9.9")
UDP_FLOW = alg.FlowTuple(4, UDP, C, S, 40000, 111)
TCP_FLOW = alg.FlowTuple(4, TCP, C, S, 40000, 111)
OUT, R = Direction.ORIGINAL, Direction.REPLY


def getport_call(xid: int, prog: int = 100003, vers: int = 3, prot: int = TCP) -> bytes:
    return struct.pack(">10I", xid, 0, 2, 100000, 2, 3, 0, 0, 0, 0) + struct.pack(">4I", prog, vers, prot, 0)


def xdr_string(s: bytes) -> bytes:
    return struct.pack(">I", len(s)) + s + b"\0" * (-len(s) % 4)


def getaddr_call(xid: int, netid: bytes = b"tcp", vers: int = 4) -> bytes:
    return (struct.pack(">10I", xid, 0, 2, 100000, vers, 3, 0, 0, 0, 0) + struct.pack(">2I", 100003, 3)
            + xdr_string(netid) + xdr_string(b"") + xdr_string(b""))


def reply(xid: int, result: bytes) -> bytes:
    return struct.pack(">6I", xid, 1, 0, 0, 0, 0) + result


def port_reply(xid: int, port: int) -> bytes:
    return reply(xid, struct.pack(">I", port))


def rec(msg: bytes, last: bool = True) -> bytes:
    return struct.pack(">I", len(msg) | (0x80000000 if last else 0)) + msg


def expects(actions):
    return [a for a in actions if isinstance(a, Expect)]


def notices(actions):
    return [a.code for a in actions if isinstance(a, Notice)]


def test_getport_udp_expects_client_to_server_port_permanent():
    acts = feed(RpcHelper(), [(OUT, getport_call(7)), (R, port_reply(7, 2049))], UDP_FLOW)
    (e,) = expects(acts)
    assert (e.cls, e.proto, e.src, e.dst, e.sport, e.dport) == ("rpc", TCP, C, S, None, 2049)
    assert e.flags == alg.EXPECT_F_PERMANENT
    assert e.where == ((24, 4),)  # the port in the reply datagram


def test_protocol_comes_from_the_call_and_permanent_is_a_policy_knob():
    acts = feed(RpcHelper({"permanent": False}), [(OUT, getport_call(7, prot=UDP)), (R, port_reply(7, 20048))],
                UDP_FLOW)
    (e,) = expects(acts)
    assert (e.proto, e.dport, e.flags) == (UDP, 20048, 0)


@pytest.mark.parametrize("variant", ["whole", "bytewise", "halves"])
def test_tcp_record_delivered_whole_bytewise_halves(variant):
    chunks = [(OUT, c) for c in split_variants(rec(getport_call(9)))[variant]]
    chunks += [(R, c) for c in split_variants(rec(port_reply(9, 2049)))[variant]]
    (e,) = expects(feed(RpcHelper(), chunks, TCP_FLOW))
    assert (e.proto, e.dport) == (TCP, 2049)


def test_tcp_fragments_and_several_records_in_one_segment():
    call = getport_call(11)
    fragmented = rec(call[:12], last=False) + rec(call[12:32], last=False) + rec(call[32:])
    batched = rec(getport_call(12, prog=100099)) + rec(getport_call(13, prot=UDP))
    replies = rec(port_reply(13, 20048)) + rec(port_reply(12, 0)) + rec(port_reply(11, 2049))
    acts = feed(RpcHelper(), [(OUT, fragmented + batched), (R, replies)], TCP_FLOW)
    assert [(e.proto, e.dport) for e in expects(acts)] == [(UDP, 20048), (TCP, 2049)]
    assert notices(acts) == ["not-registered"]


def test_oversized_record_is_skipped_not_buffered():
    h = RpcHelper()
    big = rec(struct.pack(">2I", 5, 1) + b"\0" * 100_000)  # a long DUMP-like reply
    acts = feed(h, [(OUT, rec(getport_call(1))), (R, big[:40_000]), (R, big[40_000:] + rec(port_reply(1, 2049)))],
                TCP_FLOW)
    assert [e.dport for e in expects(acts)] == [2049]


def test_getaddr_universal_addresses_v4_and_v6():
    acts = feed(RpcHelper(), [(OUT, getaddr_call(3, b"udp", vers=3)), (R, reply(3, xdr_string(b"10.0.2.2.4.24")))],
                UDP_FLOW)
    (e,) = expects(acts)
    assert (e.proto, e.dst, e.dport) == (UDP, S, 1048)
    c6, s6 = ipaddress.ip_address("fd00:1::2"), ipaddress.ip_address("fd00:2::2")
    flow6 = alg.FlowTuple(6, TCP, c6, s6, 40000, 111)
    acts = feed(RpcHelper(), [(OUT, rec(getaddr_call(4, b"tcp6"))), (R, rec(reply(4, xdr_string(b"fd00:2::2.8.1"))))],
                flow6)
    (e,) = expects(acts)
    assert (e.proto, e.src, e.dst, e.dport) == (TCP, c6, s6, 2049)


@pytest.mark.parametrize("uaddr, want", [
    (b"10.0.2.2.4.24", ("10.0.2.2", 1048)), (b"::1.0.111", ("::1", 111)), (b"10.0.2.2.256.1", None),
    (b"10.0.2.2.4", None), (b"host.example.4.1", None), (b"\xff.1.1", None), (b"10.0.2.2.-1.5", None),
])
def test_parse_uaddr(uaddr, want):
    got = parse_uaddr(uaddr)
    assert (None if got is None else (str(got[0]), got[1])) == want


# ------------------------------------------------------------ attacks and refusals
def test_reply_without_a_matching_call_gives_nothing():
    acts = feed(RpcHelper(), [(OUT, getport_call(1)), (R, port_reply(2, 2049))], UDP_FLOW)
    assert expects(acts) == [] and notices(acts) == ["unmatched-reply"]
    assert expects(feed(RpcHelper(), [(R, port_reply(1, 2049))], UDP_FLOW)) == []


def test_reply_from_another_host_gives_nothing():
    # another host's answer is another flow: THIRD:111 -> client, on which the client never asked
    flow = alg.FlowTuple(4, UDP, THIRD, C, 111, 40000)
    acts = feed(RpcHelper(), [(OUT, port_reply(7, 2049))], flow)
    assert expects(acts) == [] and notices(acts) == ["reply-from-originator"]
    # and the engine never gives that flow the rpc helper (its destination port is the client's)
    from alg.engine import Engine, make_slots
    from alg.plugins import load_plugins
    from alg.policy import default_policy
    host = load_plugins()
    pol = default_policy({n: c.spec for n, c in host.helpers.items()})
    eng = Engine(make_slots([pol.helpers["rpc"]], host.helpers), pol.core)
    from alg.decode import Packet
    call = Packet(4, UDP, C.packed, S.packed, 40000, 111, getport_call(7))
    fake = Packet(4, UDP, THIRD.packed, C.packed, 111, 40000, port_reply(7, 2049))
    assert eng.process(call, 0.0) == [] and eng.process(fake, 0.1) == []


def test_getaddr_naming_a_third_host_gives_nothing_unless_allowed():
    chunks = [(OUT, getaddr_call(5)), (R, reply(5, xdr_string(b"10.9.9.9.8.1")))]
    acts = feed(RpcHelper(), chunks, UDP_FLOW)
    assert expects(acts) == [] and notices(acts) == ["address-mismatch"]
    (e,) = expects(feed(RpcHelper({"allowed_networks": ["10.9.0.0/16"]}), chunks, UDP_FLOW))
    assert e.dst == THIRD
    (e,) = expects(feed(RpcHelper({"loose": True}), chunks, UDP_FLOW))
    assert e.dst == THIRD


def test_unspecified_address_means_the_server_and_wrong_family_is_refused():
    (e,) = expects(feed(RpcHelper(), [(OUT, getaddr_call(5)), (R, reply(5, xdr_string(b"0.0.0.0.8.1")))], UDP_FLOW))
    assert e.dst == S
    acts = feed(RpcHelper(), [(OUT, getaddr_call(6, b"tcp6")), (R, reply(6, xdr_string(b"fd00::2.8.1")))], UDP_FLOW)
    assert expects(acts) == [] and notices(acts) == ["family-mismatch"]
    acts = feed(RpcHelper(), [(OUT, getaddr_call(7, b"local")), (R, reply(7, xdr_string(b"10.0.2.2.8.1")))], UDP_FLOW)
    assert expects(acts) == [] and notices(acts) == ["unknown-netid"]


def test_pending_calls_expire_and_are_bounded():
    h = RpcHelper({"call_timeout": 10, "max_pending": 2})
    st_ = h.new_state()
    feed(h, [(OUT, getport_call(1))], UDP_FLOW, st_, now=0.0)
    acts = feed(h, [(R, port_reply(1, 2049))], UDP_FLOW, st_, now=11.0)
    assert expects(acts) == [] and notices(acts) == ["call-expired"]
    acts = feed(h, [(OUT, getport_call(2)), (OUT, getport_call(3)), (OUT, getport_call(4))], UDP_FLOW, st_, now=20.0)
    assert notices(acts) == ["pending-full"]
    acts = feed(h, [(R, port_reply(2, 2049)), (R, port_reply(4, 2050))], UDP_FLOW, st_, now=21.0)
    assert [e.dport for e in expects(acts)] == [2050] and notices(acts) == ["unmatched-reply"]


def test_denied_or_failed_replies_and_other_procedures_give_nothing():
    h = RpcHelper()
    denied = struct.pack(">4I", 7, 1, 1, 0)
    prog_unavail = struct.pack(">6I", 8, 1, 0, 0, 0, 1)
    dump = struct.pack(">10I", 9, 0, 2, 100000, 2, 4, 0, 0, 0, 0)
    acts = feed(h, [(OUT, getport_call(7)), (R, denied), (OUT, getport_call(8)), (R, prog_unavail), (OUT, dump),
                    (R, port_reply(9, 2049))], UDP_FLOW)
    assert expects(acts) == [] and notices(acts) == ["denied", "not-accepted", "unmatched-reply"]


def test_garbage_is_a_protocol_violation():
    with pytest.raises(alg.ProtocolViolation):
        feed(RpcHelper(), [(OUT, struct.pack(">2I", 1, 7))], UDP_FLOW)
    with pytest.raises(alg.ProtocolViolation):
        feed(RpcHelper(), [(OUT, getport_call(1)[:30])], UDP_FLOW)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([OUT, R]), st.one_of(
    st.binary(max_size=200),
    st.builds(lambda x, p: rec(getport_call(x)) if p else getport_call(x), st.integers(0, 3), st.booleans()),
    st.builds(lambda x, p: rec(port_reply(x, p)), st.integers(0, 3), st.integers(0, 70000)))), max_size=8),
    st.sampled_from([UDP_FLOW, TCP_FLOW]))
def test_fuzz_actions_or_protocol_violation(chunks, flow):
    try:
        feed(RpcHelper(), chunks, flow)  # feed checks every outcome
    except alg.ProtocolViolation:
        pass
