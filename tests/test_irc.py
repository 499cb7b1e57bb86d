"""IRC DCC helper: offers from the client open tcp *:* -> client:port; forged, low, passive and
truncated offers, relayed offers and HTTP on the port open nothing."""

from __future__ import annotations

import ipaddress

import pytest

import alg
from alg import TCP, Direction
from actions import expects, notices
from alg.testing import feed, split_variants
from alg_helpers.irc import IrcHelper

C, S = ipaddress.ip_address("10.0.1.2"), ipaddress.ip_address("10.0.2.2")
C_NUM = str(int(C)).encode()  # 167772418
FLOW = alg.FlowTuple(4, TCP, C, S, 40000, 6667)
OUT, R = Direction.ORIGINAL, Direction.REPLY


def dcc(body: bytes, prefix: bytes = b"") -> bytes:
    return prefix + b"PRIVMSG bob :\x01DCC " + body + b"\x01\r\n"


@pytest.mark.parametrize("variant", ["whole", "bytewise", "halves"])
def test_send_offer(variant):
    wire = b"NICK alice\r\nUSER alice 0 * :a\r\n" + dcc(b"SEND f.bin " + C_NUM + b" 5000 1234")
    acts = feed(IrcHelper(), [(OUT, c) for c in split_variants(wire)[variant]], FLOW)
    (e,) = expects(acts)
    assert (e.cls, e.proto, e.src, e.dst, e.sport, e.dport, e.flags) == ("dcc", TCP, None, C, None, 5000, 0)
    (addr, port) = e.where
    line = wire[wire.index(b"PRIVMSG"):]  # what the helper is handed once the lines before are read
    assert line[addr[0]:addr[0] + addr[1]] == C_NUM and line[port[0]:port[0] + port[1]] == b"5000"


@pytest.mark.parametrize("body, dport", [
    (b"CHAT chat " + C_NUM + b" 5001", 5001),
    (b"SEND \"my file.txt\" " + C_NUM + b" 5002 99", 5002),   # quoted name with a space (the kernel fails here)
    (b"TSEND f " + C_NUM + b" 5003 1", 5003),
    (b"SCHAT chat " + C_NUM + b" 5004", 5004),
    (b"MOVE f " + C_NUM + b" 5005 1", 5005),
    (b"SEND f " + C_NUM + b" 5006 1 token7", 5006),
])
def test_dcc_types_and_quoted_names(body, dport):
    assert [e.dport for e in expects(feed(IrcHelper(), [(OUT, dcc(body))], FLOW))] == [dport]


def test_tags_prefix_lowercase_command_and_no_closing_ctcp():
    wire = b"@time=x :alice!a@h privmsg bob :\x01DCC SEND f " + C_NUM + b" 5010 1\r\n"
    assert [e.dport for e in expects(feed(IrcHelper(), [(OUT, wire)], FLOW))] == [5010]


def test_every_line_of_a_segment_is_read():
    # the kernel reads only the first message of a segment: the second offer would be missed there
    wire = b"PING :x\r\n" + dcc(b"SEND a " + C_NUM + b" 5011 1") + dcc(b"SEND b " + C_NUM + b" 5012 1")
    assert [e.dport for e in expects(feed(IrcHelper(), [(OUT, wire)], FLOW))] == [5011, 5012]


@pytest.mark.parametrize("body, code", [
    (b"SEND f 167772419 5000 1", "address-mismatch"),       # 10.0.1.3: a third host ("Forged DCC")
    (b"SEND f " + str(int(C) + (1 << 32)).encode() + b" 5000 1", "malformed"),  # the kernel truncates to C
    (b"SEND f " + C_NUM + b" 66561 1", "bad-port"),           # the kernel truncates to 1025
    (b"SEND f " + C_NUM + b" 22 1", "low-port"),
    (b"SEND f " + C_NUM + b" 0 1 7", "passive"),
    (b"SEND f 0 5000 1", "malformed"),
    (b"SEND f fd00:1::2 5000 1", "family-mismatch"),
    (b"SEND f " + C_NUM, "malformed"),
    (b"SEND \"unclosed " + C_NUM + b" 5000", "malformed"),
    (b"SEND f " + C_NUM + b" 50x0", "malformed"),
    (b"SEND f 10.0.1.2 5000 1", "malformed"),
])
def test_refused_offers(body, code):
    acts = feed(IrcHelper(), [(OUT, dcc(body))], FLOW)
    assert expects(acts) == [] and notices(acts) == [code]


def test_min_port_can_be_lowered():
    assert [e.dport for e in expects(feed(IrcHelper({"min_port": 1}), [(OUT, dcc(b"SEND f " + C_NUM + b" 22 1"))],
                                          FLOW))] == [22]


def test_not_dcc_and_relayed_offers_open_nothing():
    chunks = [(OUT, b"PRIVMSG bob :hello \x01DCC SEND f " + C_NUM + b" 5000 1\x01\r\n"),  # not at the start
              (OUT, b"NOTICE bob :\x01DCC SEND f " + C_NUM + b" 5000 1\x01\r\n"),
              (OUT, b"PRIVMSG bob :\x01DCC RESUME f 5000 0\x01\r\n"),
              (OUT, b"PRIVMSG bob :\x01ACTION waves\x01\r\n"),
              (R, b":bob!b@h PRIVMSG alice :\x01DCC SEND f 167772674 5000 1\x01\r\n")]
    assert feed(IrcHelper(), chunks, FLOW) == []


def test_ipv6_literal():
    c6, s6 = ipaddress.ip_address("fd00:1::2"), ipaddress.ip_address("fd00:2::2")
    flow6 = alg.FlowTuple(6, TCP, c6, s6, 40000, 6667)
    (e,) = expects(feed(IrcHelper(), [(OUT, dcc(b"SEND f fd00:1::2 5000 1"))], flow6))
    assert (e.dst, e.dport) == (c6, 5000)
    acts = feed(IrcHelper(), [(OUT, dcc(b"SEND f " + C_NUM + b" 5000 1"))], flow6)
    assert notices(acts) == ["family-mismatch"]


def test_http_request_first_stops_the_flow():
    with pytest.raises(alg.ProtocolViolation):
        feed(IrcHelper(), [(OUT, b"POST /x HTTP/1.1\r\nHost: a\r\n\r\n" + dcc(b"SEND f " + C_NUM + b" 5000 1"))],
             FLOW)


def test_looks_like():
    assert IrcHelper.looks_like(b"NICK alice\r\n") and not IrcHelper.looks_like(b"GET / HTTP/1.1\r\n")


def test_a_line_that_never_ends_stops_the_flow():
    with pytest.raises(alg.ProtocolViolation):
        feed(IrcHelper(), [(OUT, b"PRIVMSG bob :" + b"x" * 9000)], FLOW)


def test_a_large_server_burst_is_read_past():
    # the server's side is consumed whole, however large its segments (MOTD, NAMES)
    burst = b":irc 372 alice :- " + b"m" * 30000 + b"\r\n"
    assert feed(IrcHelper(), [(R, burst), (OUT, dcc(b"SEND f " + C_NUM + b" 5000 1"))], FLOW) != []
