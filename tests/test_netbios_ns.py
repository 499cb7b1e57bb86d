"""NetBIOS-NS helper: a broadcast name service request opens udp <asker's subnet>:137 -> asker:sport;
unicast, responses and junk open nothing; the subnet comes from the policy."""

from __future__ import annotations

import ipaddress
import struct

import pytest

import alg
from actions import expects, notices
from alg import EXPECT_F_PERMANENT, UDP, Direction
from alg.testing import feed
from alg_helpers.netbios_ns import NetbiosNsHelper

ME = ipaddress.ip_address("10.0.2.1")
NAME = b"\x20" + b"EBEMEHFEEFFDFECACACACACACACACAAA" + b"\x00"  # ALGTEST<00>, RFC 1002 §4.1


def query(flags: int = 0x0110, questions: int = 1) -> bytes:
    return struct.pack("!HHHHHH", 0x4242, flags, questions, 0, 0, 0) + NAME + struct.pack("!HH", 0x20, 1)


def flow(dst: str, sport: int = 45000) -> alg.FlowTuple:
    return alg.FlowTuple(4, UDP, ME, ipaddress.ip_address(dst), sport, 137)


@pytest.mark.parametrize("dst", ["10.0.2.255", "255.255.255.255"])
def test_broadcast_query_opens_the_subnets_answers(dst):
    (e,) = expects(feed(NetbiosNsHelper(), [(Direction.ORIGINAL, query())], flow(dst)))
    assert (e.cls, e.proto, e.src, e.src_prefix, e.dst, e.sport, e.dport, e.flags) == (
        "netbios-ns", UDP, ME, 24, ME, 137, 45000, EXPECT_F_PERMANENT)


def test_the_subnet_is_the_policys():
    helper = NetbiosNsHelper({"subnet_prefix_v4": 16})
    assert notices(feed(helper, [(Direction.ORIGINAL, query())], flow("10.0.2.255"))) == ["not-broadcast"]
    (e,) = expects(feed(helper, [(Direction.ORIGINAL, query())], flow("10.0.255.255")))
    assert e.src_prefix == 16
    (e,) = expects(feed(NetbiosNsHelper({"subnet_only": False}), [(Direction.ORIGINAL, query())],
                        flow("10.0.2.255")))
    assert e.src is None


@pytest.mark.parametrize("opcode", [5, 6, 8])  # registration, release, refresh: conflicts are answered
def test_other_requests(opcode):
    assert len(expects(feed(NetbiosNsHelper(), [(Direction.ORIGINAL, query(opcode << 11 | 0x0110))],
                            flow("10.0.2.255")))) == 1


@pytest.mark.parametrize("wire, dst, code", [
    (query(), "10.0.2.2", "not-broadcast"),           # unicast: the answer is the query's reply
    (query(), "10.0.3.255", "not-broadcast"),         # another subnet's broadcast
    (query(0x8500), "10.0.2.255", "not-a-request"),   # a response
    (query(7 << 11), "10.0.2.255", "not-a-request"),  # WACK
    (query(questions=0), "10.0.2.255", "not-a-request"),
    (b"\x42\x42\x01", "10.0.2.255", "malformed"),
])
def test_nothing_opens(wire, dst, code):
    acts = feed(NetbiosNsHelper(), [(Direction.ORIGINAL, wire)], flow(dst))
    assert expects(acts) == [] and notices(acts) == [code]


def test_answers_on_the_flow_are_not_read():
    assert feed(NetbiosNsHelper(), [(Direction.REPLY, query())], flow("10.0.2.255")) == []
