"""SIP helper against an attacker: work, expectations and memory per message
are bounded, whatever the message.

Each test sends what an attacker can send and checks a count (bytes the
framing searched, calls into the per-element parsers, expectations asked
for, bytes held by the flow state), never the clock: the timings are in
benchmarks/bench_sip_hostile.py.
"""

from __future__ import annotations

import random
import sys

import pytest

import alg
from alg import TCP, UDP, Direction, Expect
from alg.engine import Create, Delete
from alg_helpers.sip import MAX_BINDINGS, MAX_CALL_ID, MAX_PENDING_REGISTERS, MAX_STATUSES, SipHelper, grammar, sdp
from test_sip import A, B, Dialog, _engine, _run, _tcp_packets, expects, invite, msg, notices, reg_ok, register, \
    response, sdp_body

ORIG, R = Direction.ORIGINAL, Direction.REPLY


def big_invite(extra_headers: int) -> bytes:
    return invite(headers=tuple(f"X-Pad-{i}: {'y' * 20}" for i in range(extra_headers)))


# ---------------------------------------------------------------- work
def test_tcp_one_byte_segments_search_each_byte_a_bounded_number_of_times():
    # 29 ms per 1-byte segment before: the whole buffer was parsed again on
    # each one. Now the scan resumes where it stopped.
    raw = big_invite(400)  # ~13 KB
    assert len(raw) > 12000
    d = Dialog(TCP)
    got = []
    for i in range(len(raw)):
        got += d.send(raw[i:i + 1])
    assert len(expects(got)) == 2
    # per call: the new byte and the 3 before it (an empty line may straddle
    # segments); per message: the head parsed twice (for Content-Length, then
    # with the body). Parsing the buffer again per segment would be ~len**2/2.
    calls = len(raw)
    assert d.state.scanned <= 4 * calls + 2 * len(raw)


def test_tcp_body_arriving_byte_by_byte_does_not_reparse_the_head():
    body = sdp_body(media=tuple(f"a=x-pad:{'z' * 60}" for _ in range(100)) + ("m=audio 16000 RTP/AVP 0",))
    raw = invite(body)
    d = Dialog(TCP)
    head = raw.index(b"\r\n\r\n") + 4
    d.send(raw[:head])
    before = d.state.scanned
    for i in range(head, len(raw)):
        d.send(raw[i:i + 1])
    assert d.state.scanned - before <= len(raw)  # the head is not searched again per body byte


def test_unfinished_start_line_is_checked_incrementally():
    d = Dialog(TCP)
    line = b"INVITE sip:" + b"a" * 3000
    for i in range(len(line)):
        d.send(line[i:i + 1])
    assert d.state.scanned <= 2 * len(line)
    with pytest.raises(alg.ProtocolViolation):  # a second space, then not SIP/2.0
        d.send(b" HTTP/1.1")


def test_register_with_2500_contacts_parses_a_bounded_number(monkeypatch):
    calls = []
    real = grammar.parse_contact
    monkeypatch.setattr(grammar, "parse_contact", lambda *a: calls.append(1) or real(*a))
    many = ", ".join([f"<sip:alice@{A}:5061>"] * 2500)
    d = Dialog()
    acts = d.send(register(contact=many))
    assert "contacts-skipped" in notices(acts)
    one_header_each = msg(f"REGISTER sip:{B} SIP/2.0", "reg-2", "1 REGISTER",
                          headers=tuple(f"m: <sip:alice@{A}:{5000 + i}>" for i in range(2500)))
    assert "contacts-skipped" in notices(d.send(one_header_each))
    assert len(calls) <= 2 * grammar.MAX_LIST
    (e,) = d.send(response(200, cseq="1 REGISTER", callid="reg-1"), R)  # the binding still works
    assert e.dport == 5061


def test_sdp_with_thousands_of_lines_reads_a_bounded_number(monkeypatch):
    calls = []
    real = sdp._connection
    monkeypatch.setattr(sdp, "_connection", lambda *a: calls.append(1) or real(*a))
    lines = tuple(f"c=IN IP4 {A}" for _ in range(3000)) + ("m=audio 16000 RTP/AVP 0",)
    acts = Dialog().send(invite(sdp_body(media=lines, session_c=False)))
    assert len(calls) <= sdp.MAX_LINES * 2 and "sdp-truncated" in notices(acts)
    rtcp = sdp.parse(b"m=audio 16000 RTP/AVP 0\r\n" + b"a=rtcp:16001\r\n" * 5000)
    assert rtcp.truncated and rtcp.lines == sdp.MAX_LINES


def test_folded_header_over_thousands_of_lines_is_read_to_a_bound():
    raw = invite().replace(b"Call-ID: call-1", b"Call-ID: call-1" + b"\r\n x" * 20000)
    m = grammar.parse(raw, False, len(raw))
    assert len(m.value(b"call-id")) <= grammar.MAX_FOLDED
    acts = Dialog().send(raw)
    assert len(expects(acts)) == 2 and all(len(a.tag) <= MAX_CALL_ID for a in acts if isinstance(a, Expect))


# ---------------------------------------------------------------- expectations
def multipart_invite(bodies: int = 8, lines: int = 32) -> bytes:
    parts = b"".join(b"--b\r\nContent-Type: application/sdp\r\n\r\n" + sdp_body(
        media=tuple(f"m=audio {20000 + 100 * i + 2 * k}/8 RTP/AVP 0" for i in range(lines))) for k in range(bodies))
    return invite(parts + b"--b--\r\n", ctype='multipart/mixed;boundary="b"')


def test_multipart_invite_asks_for_a_capped_number_of_media_expectations():
    # 8 SDP bodies x 32 m= lines x 8 streams x RTP+RTCP: 4,096 before
    acts = Dialog().send(multipart_invite())
    assert len(expects(acts)) == SipHelper.spec.options["max_media_expects"].default
    assert "media-capped" in notices(acts)
    acts = Dialog(options={"max_media_expects": 2}).send(multipart_invite())
    assert len(expects(acts)) == 2


def test_multipart_invite_through_the_engine_is_a_bounded_number_of_operations():
    engine = _engine()
    decisions = _run(engine, _tcp_packets([multipart_invite()]))
    creates = [d for d in decisions if isinstance(d, Create)]
    deletes = [d for d in decisions if isinstance(d, Delete)]
    assert len(creates) + len(deletes) <= 2 * SipHelper.spec.options["max_media_expects"].default
    assert engine.stats()["helpers"]["sip"]["notices"]["media-capped"] == 1


def test_responses_per_transaction_are_capped():
    d = Dialog()
    d.send(invite())
    opened = 0
    for code in range(101, 200):
        opened += len(expects(d.send(response(code, body=sdp_body(addr=B, media=(f"m=audio {20000 + 2 * code} "
                                                                                  f"RTP/AVP 0",))), R)))
    assert opened <= 2 * MAX_STATUSES


# ---------------------------------------------------------------- memory
@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_long_method_token_is_refused(proto):
    raw = msg(f"{'X' * (grammar.MAX_METHOD + 1)} sip:b@{B} SIP/2.0", cseq=f"1 {'X' * (grammar.MAX_METHOD + 1)}")
    if proto == "tcp":
        with pytest.raises(alg.ProtocolViolation):
            Dialog(TCP).send(raw)
    else:
        d = Dialog()
        assert notices(d.send(raw)) == ["malformed"] and not d.state.transactions


def test_state_after_hostile_requests_stays_within_its_bound():
    # 512 requests with 30 KB methods held 15.7 MB; 256-byte Call-IDs 445 KB per flow
    normal, hostile = Dialog(), Dialog()
    for i in range(600):
        normal.send(msg(f"OPTIONS sip:b@{B} SIP/2.0", f"c{i}", f"{i} OPTIONS"))
        hostile.send(msg(f"{'Y' * 32} sip:b@{B} SIP/2.0", f"{i}{'h' * 4000}", f"{4000000000 + i} {'Y' * 32}"))
    assert len(hostile.state.transactions) == SipHelper.spec.options["max_transactions"].default
    n, h = normal.state.size(), hostile.state.size()
    assert h <= 2 * n + 512 * (MAX_CALL_ID + grammar.MAX_METHOD), (n, h)


def test_unanswered_registers_hold_a_bounded_number_of_bindings():
    d = Dialog()
    for i in range(100):
        contacts = ", ".join(f"<sip:alice@{A}:{5000 + k}>" for k in range(12))
        d.send(msg(f"REGISTER sip:{B} SIP/2.0", f"reg-{i}", "1 REGISTER", headers=(f"Contact: {contacts}",)))
    assert len(d.state.bindings) == MAX_PENDING_REGISTERS
    assert all(len(c) <= MAX_BINDINGS for c in d.state.bindings.values())


def test_tcp_message_waiting_for_its_body_holds_no_copy_of_its_head():
    # the engine buffers the bytes; the helper keeps only where it stopped
    d = Dialog(TCP)
    raw = invite(sdp_body(media=("m=audio 16000 RTP/AVP 0",) + tuple("a=x" for _ in range(2000))),
                 headers=tuple(f"X-Pad-{i}: {'y' * 40}" for i in range(1000)))
    empty = d.state.size()
    d.send(raw[:raw.index(b"v=0") + 5])
    assert d.state.size() - empty < 512
    assert len(expects(d.send(raw[raw.index(b"v=0") + 5:]))) == 2


def _walk(state) -> int:
    """SipState.size() the long way: every container, key and value visited."""
    size = sys.getsizeof

    def key(k):
        return size(k) + sum(size(x) for x in k)
    n = size(state) + size(state.transactions) + size(state.confirmed) + size(state.bindings)
    n += sum(key(k) + size(tr) + size(tr.statuses) for k, tr in state.transactions.items())
    n += sum(size(k) for k in state.confirmed)
    n += sum(key(k) + size(cs) + sum(size(c) + size(c.host) + size(c.transport) + size(c.where) for c in cs)
             for k, cs in state.bindings.items())
    return n + sum(size(sc) + size(sc.prefix) for sc in state.scans or ())


@pytest.mark.parametrize("proto", [UDP, TCP], ids=["udp", "tcp"])
def test_state_size_is_kept_as_the_tables_change_and_equals_a_full_walk(proto):
    d = Dialog(proto, options={"max_transactions": 6})  # small: evictions of transactions and dialogs too
    steps = []
    for i in range(10):
        call = f"call-{i}-{'x' * (i * 7)}"  # Call-IDs of different lengths: sizes differ per entry
        steps += [(invite(callid=call), ORIG), (response(100, callid=call), R), (response(180, callid=call), R),
                  (response(200, callid=call, body=sdp_body(addr=B)), R), (response(200, callid=call), R)]
        if i % 3 == 0:
            steps += [(invite(callid=call, cseq=2), R),  # the same key from the other side replaces it
                      (msg(f"BYE sip:a@{A} SIP/2.0", call, "3 BYE"), ORIG)]
        contacts = ", ".join(f"<sip:alice@{A}:{5000 + k}>" for k in range(i % 4 + 1))
        reg = msg(f"REGISTER sip:{B} SIP/2.0", f"reg-{i}", f"{i} REGISTER", headers=(f"Contact: {contacts}",))
        steps += [(reg, ORIG), (reg, ORIG)]  # a retransmission holds nothing more
        if i % 2:
            steps.append((reg_ok(f"Contact: <sip:alice@{A}:5000>;expires=60", cseq=f"{i} REGISTER"), R))
    for raw, direction in steps:
        d.send(raw, direction)
        assert d.state.size() == _walk(d.state)
    assert d.state.held and len(d.state.transactions) == 6 and d.state.bindings


def test_state_size_does_not_walk_the_transactions(monkeypatch):
    d = Dialog()
    for i in range(300):
        d.send(invite(callid=f"c{i}"))
        d.send(response(200, callid=f"c{i}"), R)
    calls = []
    real = sys.getsizeof
    monkeypatch.setattr(sys, "getsizeof", lambda o: calls.append(o) or real(o))
    d.state.size()
    assert len(calls) <= 8  # the state, its three tables, two TCP scans (not 300 transactions and dialogs)


def test_cseq_read_by_the_search_that_finds_it_is_what_the_general_reading_gives():
    """Message.cseq reads the usual one-line CSeq with the search that finds the header
    (grammar.CSEQ_FIELDS: a bounded method run, so a long method costs no more than a short one),
    anything else the general way (parse_cseq of its value): on random values (blanks, tabs,
    case, numbers past 32 bits, methods at and past MAX_METHOD, continuation lines, more on the
    line) both readings must agree."""
    rng = random.Random(7)
    n = grammar.MAX_METHOD
    pieces = ([b"", b" ", b"\t", b"\r\n "], [b"1", b"4294967295", b"12345678901", b"", b"x"],
              [b" ", b"\t ", b"", b"\r\n "],
              [b"INVITE", b"invite", b"A" * n, b"A" * (n + 1), b"A" * (5 * n), b"", b";"],
              [b"", b"", b" ", b"\r", b" x", b"\r\n more", b"\r\n\t"])
    read = 0
    for _ in range(5000):
        value = b"".join(rng.choice(p) for p in pieces)
        data = b"OPTIONS sip:b@10.0.2.2 SIP/2.0\r\nCSeq:" + value + b"\r\nTo: <sip:b@10.0.2.2>\r\n\r\n"
        try:
            m = grammar.parse(data, False, 65535)
        except alg.ProtocolViolation:
            continue
        assert m.cseq() == grammar.parse_cseq(m.first(grammar.CSEQ_HEADER)), value
        read += m.cseq() is not None
    assert read > 200  # (the usual form was among them)

