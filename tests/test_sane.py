"""SANE helper: SANE_NET_START's reply opens tcp client:* -> server:port; other calls, failed starts,
odd port words and low ports open nothing."""

from __future__ import annotations

import ipaddress
import struct

import pytest

import alg
from actions import expects, notices
from alg import TCP, Direction
from alg.testing import feed, split_variants
from alg_helpers.sane import SaneHelper

C, S = ipaddress.ip_address("10.0.1.2"), ipaddress.ip_address("10.0.2.2")
FLOW = alg.FlowTuple(4, TCP, C, S, 40000, 6566)
OUT, R = Direction.ORIGINAL, Direction.REPLY
START = struct.pack("!II", 7, 0)  # SANE_NET_START, handle 0
OPEN = struct.pack("!II", 2, 4) + b"test"  # SANE_NET_OPEN "test" (a string: length word, bytes)


def reply(status: int = 0, port: int = 40123, zero: int = 0) -> bytes:
    return struct.pack("!IHHI", status, zero, port, 0x1234) + struct.pack("!I", 0)  # byte order, empty resource


@pytest.mark.parametrize("variant", ["whole", "bytewise", "halves"])
def test_start_reply_opens_the_data_port(variant):
    chunks = [(OUT, OPEN), (R, b"\0" * 12)] + [(OUT, c) for c in split_variants(START)[variant]]
    chunks += [(R, c) for c in split_variants(reply())[variant]]
    (e,) = expects(feed(SaneHelper(), chunks, FLOW))
    assert (e.cls, e.proto, e.src, e.dst, e.sport, e.dport, e.flags) == ("sane", TCP, C, S, None, 40123, 0)
    assert e.where == ((6, 2),)


def test_ipv6():
    c6, s6 = ipaddress.ip_address("fd00:1::2"), ipaddress.ip_address("fd00:2::2")
    (e,) = expects(feed(SaneHelper(), [(OUT, START), (R, reply())], alg.FlowTuple(6, TCP, c6, s6, 40000, 6566)))
    assert (e.src, e.dst, e.dport) == (c6, s6, 40123)


def test_only_the_reply_to_start_is_read():
    # a reply that looks like one, to another call; a START coalesced with another call (not 8 bytes)
    assert feed(SaneHelper(), [(OUT, OPEN), (R, reply())], FLOW) == []
    assert feed(SaneHelper(), [(OUT, START + struct.pack("!I", 10)), (R, reply())], FLOW) == []
    # another call after START disarms it (the kernel's state machine)
    assert feed(SaneHelper(), [(OUT, START), (OUT, OPEN), (R, reply())], FLOW) == []
    # one START, one expectation: a second reply opens nothing
    assert len(expects(feed(SaneHelper(), [(OUT, START), (R, reply()), (R, reply(port=40124))], FLOW))) == 1
    # a start request sent by the server's side arms nothing
    assert feed(SaneHelper(), [(R, START), (R, reply())], FLOW) == []


@pytest.mark.parametrize("wire, code", [
    (reply(status=9), "start-failed"),      # SANE_STATUS_ACCESS_DENIED
    (reply(zero=1), "malformed"),           # the kernel ignores it too
    (reply(port=0), "bad-port"),            # the kernel expects port 0
    (reply(port=111), "low-port"),          # the kernel opens it
])
def test_refused_replies(wire, code):
    acts = feed(SaneHelper(), [(OUT, START), (R, wire)], FLOW)
    assert expects(acts) == [] and notices(acts) == [code]


def test_min_port_can_be_lowered():
    assert [e.dport for e in expects(feed(SaneHelper({"min_port": 1}), [(OUT, START), (R, reply(port=111))],
                                          FLOW))] == [111]


def test_looks_like():
    assert SaneHelper.looks_like(struct.pack("!III", 0, 0x01000003, 4) + b"user")
    assert not SaneHelper.looks_like(START)
