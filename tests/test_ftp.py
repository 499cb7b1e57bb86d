"""Unit tests of helpers/ftp.py, sans-IO (h11 style): the helper is fed bytes
and its actions are checked; no sockets, no engine unless stated."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import alg
from alg.model import NEED_DATA, Direction, Expect, FlowTuple, Notice, Parsed, Segment
from alg_helpers.ftp import FtpHelper

TCP = 6
C4, S4 = ipaddress.ip_address("10.0.1.2"), ipaddress.ip_address("10.0.2.2")
C6, S6 = ipaddress.ip_address("fd00:1::2"), ipaddress.ip_address("fd00:2::2")
FLOW4 = FlowTuple(4, TCP, C4, S4, 40000, 21)
FLOW6 = FlowTuple(6, TCP, C6, S6, 40000, 21)
ORIG, REPLY = Direction.ORIGINAL, Direction.REPLY


def feed(data: bytes, direction=ORIG, flow=FLOW4, helper=None, state=None, chunk=None):
    """Feed `data` like the engine's stream does: the helper sees the unconsumed
    buffer; returns (actions, leftover bytes)."""
    helper = helper or FtpHelper()
    state = state if state is not None else helper.new_state()
    actions: list = []
    buf = b""
    pieces = [data] if chunk is None else [data[i:i + chunk] for i in range(0, len(data), chunk)]
    for piece in pieces:
        buf += piece
        while buf:
            out = helper.inspect(Segment(buf, direction, flow, 0.0), state)
            if out is NEED_DATA:
                break
            assert isinstance(out, Parsed) and 0 < out.consumed <= len(buf)
            actions += out.actions
            buf = buf[out.consumed:]
    return actions, buf


def expects(actions):
    return [a for a in actions if isinstance(a, Expect)]


CASES = [
    # (name, direction, flow, bytes, expected (src, dst, dport) or None)
    ("PORT", ORIG, FLOW4, b"PORT 10,0,1,2,156,64\r\n", (S4, C4, 40000)),
    ("227", REPLY, FLOW4, b"227 Entering Passive Mode (10,0,2,2,156,65).\r\n", (C4, S4, 40001)),
    ("229-v4", REPLY, FLOW4, b"229 Entering Extended Passive Mode (|||40002|)\r\n", (C4, S4, 40002)),
    ("229-v6", REPLY, FLOW6, b"229 Entering Extended Passive Mode (|||40003|)\r\n", (C6, S6, 40003)),
    ("EPRT-v4", ORIG, FLOW4, b"EPRT |1|10.0.1.2|40004|\r\n", (S4, C4, 40004)),
    ("EPRT-v6", ORIG, FLOW6, b"EPRT |2|fd00:1::2|40005|\r\n", (S6, C6, 40005)),
]


@pytest.mark.parametrize("mode", ["whole", "bytewise", "trailing"])
@pytest.mark.parametrize("name,direction,flow,data,want", CASES, ids=[c[0] for c in CASES])
def test_cases(mode, name, direction, flow, data, want):
    if mode == "trailing":
        acts, rest = feed(data + b"NOOP", direction, flow)
        assert rest == b"NOOP"
    else:
        acts, rest = feed(data, direction, flow, chunk=1 if mode == "bytewise" else None)
        assert rest == b""
    (e,) = expects(acts)
    assert (e.src, e.dst, e.dport, e.sport, e.proto, e.cls) == (*want, None, TCP, "ftp")


def test_several_commands_in_one_segment():
    acts, _ = feed(b"TYPE I\r\nPORT 10,0,1,2,0,21\r\nRETR x\r\nPORT 10,0,1,2,0,22\r\n")
    assert [e.dport for e in expects(acts)] == [21, 22]


def test_command_split_across_segments():
    helper, state = FtpHelper(), FtpHelper().new_state()
    assert helper.inspect(Segment(b"PORT 10,0,1", ORIG, FLOW4, 0), state) is NEED_DATA
    out = helper.inspect(Segment(b"PORT 10,0,1,2,1,1\r\n", ORIG, FLOW4, 0), state)
    assert expects(out.actions)[0].dport == 257


@pytest.mark.parametrize("line,code", [
    (b"PORT 10,0,9,9,156,64\r\n", "address-mismatch"),        # PORT bounce (RFC 2577)
    (b"PORT 10,0,1,2,0,0\r\n", "bad-port"),
    (b"PORT 10,0,1,2,256,1\r\n", "malformed"),                # number > 255
    (b"PORT 10,0,1,2,999,1\r\n", "malformed"),
    (b"PORT 1000,0,1,2,4,1\r\n", "malformed"),              # not 0.1.2.4 from the tail of 1000
    (b"PORT 10,0,1,2,4,1,7\r\n", "malformed"),               # a seventh number
    (b"PORT 10,0,1,2,4,1 junk\r\n", "malformed"),
    (b"PORT x10,0,1,2,4,1\r\n", "malformed"),
    (b"EPRT |1|10.0.1.2|65536|\r\n", "bad-port"),
    (b"EPRT |1|10.0.1.2|0|\r\n", "bad-port"),
    (b"EPRT |2|fd00:1::2|4000|\r\n", "family-mismatch"),      # v6 address on a v4 master
    (b"EPRT |1|10.0.9.9|4000|\r\n", "address-mismatch"),
    (b"EPRT |1|300.0.1.2|4000|\r\n", "malformed"),
])
def test_refused(line, code):
    acts, _ = feed(line)
    assert expects(acts) == []
    assert [a.code for a in acts if isinstance(a, Notice)] == [code]


def test_227_numbers_inside_a_longer_run_are_not_read():
    acts, _ = feed(b"227 Entering Passive Mode (1010,0,2,2,4,1).\r\n", REPLY)
    assert expects(acts) == [] and [a.code for a in acts] == ["malformed"]


def test_227_bounce_refused_unless_loose():
    line = b"227 Entering Passive Mode (192,0,2,7,156,64).\r\n"
    assert expects(feed(line, REPLY)[0]) == []
    (e,) = expects(feed(line, REPLY, helper=FtpHelper({"loose": True}))[0])
    assert e.dst == ipaddress.ip_address("192.0.2.7") and e.src == C4


def test_eprt_family_mismatch_v6_flow():
    acts, _ = feed(b"EPRT |1|10.0.1.2|4000|\r\n", flow=FLOW6)
    assert expects(acts) == [] and acts[0].code == "family-mismatch"


def test_auth_tls_then_records_skipped():
    helper = FtpHelper()
    state = helper.new_state()
    feed(b"AUTH TLS\r\n", ORIG, helper=helper, state=state)
    acts, _ = feed(b"234 Proceed with negotiation.\r\n", REPLY, helper=helper, state=state)
    assert any(isinstance(a, Notice) and a.code == "tls" for a in acts)
    # a TLS record whose body happens to contain a PORT command is skipped whole
    body = b"PORT 10,0,1,2,1,1\r\n"
    record = bytes([23, 3, 3]) + len(body).to_bytes(2, "big") + body
    acts, rest = feed(record, ORIG, helper=helper, state=state, chunk=3)
    assert expects(acts) == [] and rest == b""


def test_failed_auth_keeps_inspecting():
    helper = FtpHelper()
    state = helper.new_state()
    feed(b"AUTH TLS\r\n", ORIG, helper=helper, state=state)
    feed(b"530 Please login with USER and PASS.\r\n", REPLY, helper=helper, state=state)
    acts, _ = feed(b"PORT 10,0,1,2,1,1\r\n", ORIG, helper=helper, state=state)
    assert len(expects(acts)) == 1


def test_long_line_without_newline_needs_data():
    # the engine bounds the buffer (spec.max_buffer); the helper itself only waits
    assert FtpHelper.spec.max_buffer == 8192
    acts, rest = feed(b"A" * 10000)
    assert acts == [] and len(rest) == 10000


@settings(max_examples=500, deadline=None)
@given(st.binary(min_size=1, max_size=300), st.sampled_from([ORIG, REPLY]), st.sampled_from([FLOW4, FLOW6]),
       st.booleans())
def test_fuzz_never_crashes(data, direction, flow, encrypted):
    helper = FtpHelper()
    state = helper.new_state()
    state.encrypted = encrypted
    try:
        out = helper.inspect(Segment(data, direction, flow, 0.0), state)
    except alg.ProtocolViolation:
        return
    assert out is NEED_DATA or (isinstance(out, Parsed) and 0 < out.consumed <= len(data))
    if out is not NEED_DATA:
        for a in out.actions:
            assert isinstance(a, (Expect, Notice))
            if isinstance(a, Expect):
                assert a.dst == (flow.src if direction is ORIG else flow.dst)
                assert 0 < a.dport < 65536


# ---------------------------------------------------------------- through the engine
from alg.decode import Packet  # noqa: E402
from alg.engine import Create, Delete, Engine, make_slots  # noqa: E402
from alg.plugins import load_plugins  # noqa: E402
from alg.policy import default_policy  # noqa: E402

SYN, ACK, PSH = 0x02, 0x10, 0x08


def ftp_engine() -> Engine:
    host = load_plugins()
    policy = default_policy({n: c.spec for n, c in host.helpers.items()})
    return Engine(make_slots([h for h in policy.helpers.values() if h.name == "ftp"], host.helpers), policy.core)


class Conn:
    """A client->server FTP control connection driven packet by packet."""

    def __init__(self, eng: Engine):
        self.eng, self.cseq, self.sseq, self.t = eng, 1000, 5000, 0.0
        self.c, self.s = C4.packed, S4.packed
        self.send(True, b"", SYN)
        self.send(False, b"", SYN | ACK)

    def pkt(self, client: bool, data: bytes, flags: int = ACK | PSH, seq: int | None = None) -> Packet:
        if client:
            p = Packet(4, TCP, self.c, self.s, 40000, 21, data, self.cseq if seq is None else seq, flags)
        else:
            p = Packet(4, TCP, self.s, self.c, 21, 40000, data, self.sseq if seq is None else seq, flags)
        if seq is None:
            adv = len(data) + (1 if flags & SYN else 0)
            if client:
                self.cseq += adv
            else:
                self.sseq += adv
        return p

    def send(self, client: bool, data: bytes, flags: int = ACK | PSH):
        self.t += 0.01
        return self.eng.process(self.pkt(client, data, flags), self.t)


def test_engine_second_pasv_evicts_first():
    conn = Conn(ftp_engine())
    d1 = conn.send(False, b"227 Entering Passive Mode (10,0,2,2,156,65).\r\n")
    d2 = conn.send(False, b"227 Entering Passive Mode (10,0,2,2,156,66).\r\n")
    assert [type(d) for d in d1] == [Create]
    kinds = sorted(type(d).__name__ for d in d2)
    assert kinds == ["Create", "Delete"]  # ExpectMax=1: the kernel evicts the oldest
    (gone,) = [d for d in d2 if isinstance(d, Delete)]
    assert gone.why == "evicted" and gone.expectation.dport == 40001


def test_engine_retransmission_and_out_of_order():
    eng = ftp_engine()
    conn = Conn(eng)
    first, second = b"PORT 10,0,1,2,", b"1,1\r\n"
    p1 = conn.pkt(True, first)
    p2 = conn.pkt(True, second)
    assert eng.process(p2, 1.0) == []           # out of order: held back
    got = eng.process(p1, 1.1)                  # gap filled: one PORT, one expectation
    assert [d.expectation.dport for d in got if isinstance(d, Create)] == [257]
    assert eng.process(p1, 1.2) == [] and eng.process(p2, 1.3) == []  # retransmissions: nothing new


def test_cleartext_after_ccc_is_inspected_again():
    helper = FtpHelper()
    state = helper.new_state()
    feed(b"AUTH TLS\r\n", ORIG, helper=helper, state=state)
    feed(b"234 Proceed with negotiation.\r\n", REPLY, helper=helper, state=state)
    body = b"CCC\r\n"  # the CCC command itself travels inside TLS
    feed(bytes([23, 3, 3, 0, len(body)]) + body, ORIG, helper=helper, state=state)
    acts, rest = feed(b"PORT 10,0,1,2,1,2\r\n", ORIG, helper=helper, state=state)
    assert [e.dport for e in expects(acts)] == [258] and rest == b""


def test_engine_byte_bound_per_flow():
    eng = ftp_engine()
    conn = Conn(eng)
    for _ in range(5):  # 10 kB without a line end: more than max_buffer (8192)
        conn.send(True, b"A" * 2000)
    # the stream gave up on this flow (ProtocolViolation, counted): even a valid
    # PORT from the right address opens nothing afterwards
    assert [d for d in conn.send(True, b"\r\nPORT 10,0,1,2,1,1\r\n") if isinstance(d, Create)] == []
    assert eng.stats()["helpers"]["ftp"]["parse_errors"] == 1


def lost_segment_then_ports(conn: Conn, n: int) -> list:
    """After a command (the stream is FTP), a PORT command whose middle 8 bytes are lost, then n PORT
    commands, one a segment."""
    out = conn.send(True, b"USER a\r\nPORT 10,0,")
    conn.cseq += 8  # "1,2,1,1\r\n" minus its last two bytes never reaches us
    out += conn.send(True, b"\r\n")
    for i in range(n):
        out += conn.send(True, b"PORT 10,0,1,2,%d,%d\r\n" % (1 + i // 256, i % 256))
    return out


def test_engine_resyncs_after_a_lost_segment():
    eng = ftp_engine()
    out = lost_segment_then_ports(Conn(eng), 300)
    created = [d.expectation.dport for d in out if isinstance(d, Create)]
    assert created == [256 * (1 + i // 256) + i % 256 for i in range(300)]  # every PORT after the hole
    st = eng.stats()["helpers"]["ftp"]
    assert (st["gaps"], st["desynced"], st["parse_errors"]) == (1, 0, 0)


def test_a_hole_before_the_stream_spoke_ftp_gives_the_direction_up():
    # an HTTP POST to port 21 whose head is lost: its body's PORT lines are not FTP
    eng = ftp_engine()
    conn = Conn(eng)
    conn.cseq += 120  # the request's head never reaches us
    out = []
    for i in range(20):
        out += conn.send(True, b"PORT 10,0,1,2,0,%d\r\n" % (22 + i))
    assert [d for d in out if isinstance(d, Create)] == []
    assert eng.stats()["helpers"]["ftp"]["desynced"] == 1


def test_engine_resync_mid_line_skips_to_the_next_line():
    eng = ftp_engine()
    conn = Conn(eng)
    conn.send(True, b"USER a\r\nPO")
    conn.cseq += 3  # "RT " lost: "10,0,1,2,1,1" must not be read as anything
    out = conn.send(True, b"10,0,1,2,1,1\r\nPORT 10,0,1,2,1,2\r\n")
    for _ in range(20):
        out += conn.send(True, b"NOOP\r\n")
    assert [d.expectation.dport for d in out if isinstance(d, Create)] == [258]


def test_engine_hole_filled_in_time_is_no_gap():
    eng = ftp_engine()
    conn = Conn(eng)
    lost = conn.pkt(True, b"PORT 10,0,1,2,1,1\r\n")
    out = conn.send(True, b"PORT 10,0,1,2,1,2\r\n")
    out += eng.process(lost, conn.t + 0.2)  # the retransmission, 200 ms later
    assert [d.expectation.dport for d in out if isinstance(d, Create)] == [257, 258]
    assert eng.stats()["helpers"]["ftp"]["gaps"] == 0


def test_resync_inside_tls_gives_the_direction_up():
    helper = FtpHelper()
    state = helper.new_state()
    state.encrypted = True
    assert helper.resync(Segment(b"\x17\x03\x03\x00\x10", ORIG, FLOW4, 0.0), state) is None
    state.encrypted = False
    assert helper.resync(Segment(b"227 Entering", REPLY, FLOW4, 0.0), state) is None  # not known to be FTP
    state.known[REPLY] = True  # a reply was read before the hole
    assert helper.resync(Segment(b"227 Entering", REPLY, FLOW4, 0.0), state) == 0
    assert helper.resync(Segment(b"ering Passive\r\n227 ", REPLY, FLOW4, 0.0), state) == 15
    assert helper.resync(Segment(b"ering", REPLY, FLOW4, 0.0), state) is NEED_DATA


def test_an_http_post_to_port_21_opens_nothing():
    """NAT Slipstreaming: a browser POSTs to the page's server on port 21 with a body
    line that reads as PORT naming the browser's host; the flow is not FTP."""
    eng = ftp_engine()
    conn = Conn(eng)
    body = b"PORT 10,0,1,2,12,234\r\n"
    out = conn.send(True, b"POST / HTTP/1.1\r\nHost: x:21\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    assert out == [] and eng.stats()["helpers"]["ftp"]["parse_errors"] == 1
