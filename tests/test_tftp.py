"""TFTP helper: RRQ/WRQ open the server's answer; malformed, low-port and server-side requests open nothing."""

from __future__ import annotations

import ipaddress

import pytest

import alg
from alg import UDP, Direction
from actions import expects, notices
from alg.testing import feed
from alg_helpers.tftp import TftpHelper

C, S = ipaddress.ip_address("10.0.1.2"), ipaddress.ip_address("10.0.2.2")
FLOW = alg.FlowTuple(4, UDP, C, S, 40000, 69)
OUT, R = Direction.ORIGINAL, Direction.REPLY


@pytest.mark.parametrize("wire", [
    b"\0\1boot.bin\0octet\0",
    b"\0\2up.bin\0NetASCII\0",
    b"\0\1pxelinux.0\0octet\0tsize\x000\0blksize\x001468\0",  # RFC 2347/2349 options, as PXE ROMs send
])
def test_request_opens_the_servers_answer(wire):
    (e,) = expects(feed(TftpHelper(), [(OUT, wire)], FLOW))
    assert (e.cls, e.proto, e.src, e.dst, e.sport, e.dport, e.flags) == ("tftp", UDP, S, C, None, 40000, 0)


def test_ipv6():
    c6, s6 = ipaddress.ip_address("fd00:1::2"), ipaddress.ip_address("fd00:2::2")
    (e,) = expects(feed(TftpHelper(), [(OUT, b"\0\1f\0octet\0")], alg.FlowTuple(6, UDP, c6, s6, 50000, 69)))
    assert (e.src, e.dst, e.dport) == (s6, c6, 50000)


@pytest.mark.parametrize("wire", [
    b"\0\1", b"\0\1boot.bin", b"\0\1boot.bin\0octet", b"\0\1\0octet\0", b"\0\1f\0binary\0",
    b"\0\1f\0octet\0blksize\0", b"\0",
])
def test_malformed_requests_open_nothing(wire):
    acts = feed(TftpHelper(), [(OUT, wire)], FLOW)
    assert expects(acts) == [] and notices(acts) == ["malformed"]


def test_data_ack_error_on_the_request_flow_are_read_and_ignored():
    for wire in (b"\0\3\0\1" + b"x" * 512, b"\0\4\0\1", b"\0\5\0\1File not found\0", b"\0\6blksize\x001468\0"):
        assert feed(TftpHelper(), [(OUT, wire)], FLOW) == []


def test_a_request_from_the_servers_side_opens_nothing():
    # the kernel opens the same pinhole whichever side sends RRQ; only the client asks
    assert expects(feed(TftpHelper(), [(R, b"\0\1boot.bin\0octet\0")], FLOW)) == []


def test_low_client_port_refused_unless_allowed():
    low = alg.FlowTuple(4, UDP, C, S, 53, 69)
    acts = feed(TftpHelper(), [(OUT, b"\0\1boot.bin\0octet\0")], low)
    assert expects(acts) == [] and notices(acts) == ["low-port"]
    assert [e.dport for e in expects(feed(TftpHelper({"min_port": 1}), [(OUT, b"\0\1f\0octet\0")], low))] == [53]


def test_looks_like():
    assert TftpHelper.looks_like(b"\0\1boot.bin\0octet\0")
    assert not TftpHelper.looks_like(b"\0\3\0\1data")
