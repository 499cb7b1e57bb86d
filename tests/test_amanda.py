"""Amanda helper: amandad's REP `CONNECT DATA n MESG n INDEX n` opens tcp server:* -> client:n for each;
requests, other packets and bad ports open nothing."""

from __future__ import annotations

import ipaddress

import pytest

import alg
from actions import expects, notices
from alg import TCP, UDP, Direction
from alg.testing import feed
from alg_helpers.amanda import AmandaHelper

SRV, CLI = ipaddress.ip_address("10.0.1.2"), ipaddress.ip_address("10.0.2.2")  # backup server, amandad
FLOW = alg.FlowTuple(4, UDP, SRV, CLI, 850, 10080)
OUT, R = Direction.ORIGINAL, Direction.REPLY
HEAD = b"Amanda 3.5 REP HANDLE 000-00000001 SEQ 1700000002\n"


def rep(connect: bytes, head: bytes = HEAD) -> bytes:
    return head + connect + b"\nOPTIONS features=9ffe;\n"


def test_three_streams():
    wire = rep(b"CONNECT DATA 50001 MESG 50002 INDEX 50003")
    acts = feed(AmandaHelper(), [(OUT, b"Amanda 3.5 REQ HANDLE 000-00000001 SEQ 1700000001\nSERVICE sendbackup\n"),
                                 (R, b"Amanda 3.5 ACK HANDLE 000-00000001 SEQ 1700000001\n\n"), (R, wire)], FLOW)
    es = expects(acts)
    assert [(e.cls, e.proto, e.src, e.dst, e.sport, e.dport) for e in es] == [
        ("amanda", TCP, SRV, CLI, None, p) for p in (50001, 50002, 50003)]
    for e, text in zip(es, (b"50001", b"50002", b"50003"), strict=True):
        (at, n), = e.where
        assert wire[at:at + n] == text


def test_state_stream_prep_and_ipv6():
    s6, c6 = ipaddress.ip_address("fd00:1::2"), ipaddress.ip_address("fd00:2::2")
    wire = rep(b"CONNECT DATA 50001 STATE 50004", head=b"Amanda 2.6 PREP HANDLE 001-0 SEQ 7\n")
    es = expects(feed(AmandaHelper(), [(R, wire)], alg.FlowTuple(6, UDP, s6, c6, 850, 10080)))
    assert [(e.src, e.dst, e.dport) for e in es] == [(s6, c6, 50001), (s6, c6, 50004)]


@pytest.mark.parametrize("connect, ports, codes", [
    (b"CONNECT DATA 70000 MESG 50002", [50002], ["bad-port"]),     # the kernel keeps the low 16 bits: 4464
    (b"CONNECT DATA 123456 MESG 50002", [50002], ["malformed"]),
    (b"CONNECT DATA 0 MESG 50002 INDEX 50003", [50002, 50003], ["bad-port"]),  # the kernel stops at DATA 0
    (b"CONNECT DATA 22 MESG 50002", [50002], ["low-port"]),
    (b"CONNECT DATA -1 MESG 50002", [50002], ["malformed"]),
    (b"CONNECT DATA 50001 MESG 50001", [50001], []),                # one port, one expectation
    (b"CONNECT FEEDME 50001 DATA 50002", [50002], []),             # unknown stream names are skipped
])
def test_stream_ports(connect, ports, codes):
    acts = feed(AmandaHelper(), [(R, rep(connect))], FLOW)
    assert [e.dport for e in expects(acts)] == ports
    assert notices(acts) == codes


@pytest.mark.parametrize("wire", [
    b"CONNECT DATA 50001 MESG 50002\n",                                   # no Amanda header
    HEAD.replace(b"REP", b"ACK") + b"CONNECT DATA 50001\n",              # an ACK carries no streams
    HEAD + b"OPTIONS x; CONNECT DATA 50001\n",                            # CONNECT not at a line start
    HEAD + b"CONNECT DATA 50001",                                         # no line end (the kernel agrees)
])
def test_no_streams(wire):
    assert expects(feed(AmandaHelper(), [(R, wire)], FLOW)) == []


def test_the_servers_side_is_not_read():
    assert feed(AmandaHelper(), [(OUT, rep(b"CONNECT DATA 50001"))], FLOW) == []


def test_min_port_can_be_lowered():
    es = expects(feed(AmandaHelper({"min_port": 1}), [(R, rep(b"CONNECT DATA 22"))], FLOW))
    assert [e.dport for e in es] == [22]


def test_looks_like():
    assert AmandaHelper.looks_like(HEAD) and not AmandaHelper.looks_like(b"CONNECT DATA 1\n")
