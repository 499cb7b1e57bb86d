"""SIP/SDP helper: grammar, SDP, dialog lifecycle, TCP framing, attack cases.

Hand-built messages only where an edge or an attack is the point; the
behaviour on real calls is in tests/pcaps/sip-*.
"""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import alg
from alg import TCP, UDP, Direction, Expect, FlowTuple, Notice, Parsed, Segment, Unexpect
from alg.decode import Packet
from alg.engine import Create, Engine, HelperSlot
from alg.policy import default_helper_policy
from alg_helpers.sip import SipHelper, grammar, sdp

A, B, C = "10.0.1.2", "10.0.2.2", "10.0.1.99"  # caller, callee / registrar, another inside host
A6, B6 = "fd00:1::2", "fd00:2::2"


def flow(proto=UDP, src=A, dst=B, sport=5061, dport=5060) -> FlowTuple:
    return FlowTuple(ipaddress.ip_address(src).version, proto, ipaddress.ip_address(src), ipaddress.ip_address(dst),
                     sport, dport)


def sdp_body(addr=A, media=("m=audio 16000 RTP/AVP 0",), session_c=True, fam=4) -> bytes:
    lines = ["v=0", f"o=- 1 1 IN IP{fam} {addr}", "s=-"] + ([f"c=IN IP{fam} {addr}"] if session_c else []) + ["t=0 0"]
    return ("\r\n".join(lines + list(media)) + "\r\n").encode()


def msg(start: str, callid="call-1", cseq="1 INVITE", body=b"", headers=(), ctype="application/sdp",
        clen: str | None = None) -> bytes:
    h = [start, "Via: SIP/2.0/UDP 10.0.1.2:5061;branch=z9hG4bK1", "From: <sip:a@x>;tag=1", "To: <sip:b@y>",
         f"Call-ID: {callid}", f"CSeq: {cseq}"] + list(headers)
    if body:
        h.append(f"Content-Type: {ctype}")
    h.append(f"Content-Length: {len(body) if clen is None else clen}")
    return ("\r\n".join(h) + "\r\n\r\n").encode() + body


def invite(body=None, callid="call-1", cseq=1, method="INVITE", **kw) -> bytes:
    return msg(f"{method} sip:b@{B} SIP/2.0", callid, f"{cseq} {method}", sdp_body() if body is None else body, **kw)


def response(code: int, cseq="1 INVITE", body=b"", callid="call-1", **kw) -> bytes:
    return msg(f"SIP/2.0 {code} X", callid, cseq, body, **kw)


class Dialog:
    """Drives the helper as the engine would: UDP datagrams or TCP streams."""

    def __init__(self, proto=UDP, options=None, f=None):
        self.helper = SipHelper(options)
        self.state = self.helper.new_state()
        self.flow = f or flow(proto)
        self.buf = [b"", b""]

    def send(self, data: bytes, direction=Direction.ORIGINAL) -> list:
        if self.flow.proto == UDP:
            out = self.helper.inspect(Segment(data, direction, self.flow, 0.0), self.state)
            assert isinstance(out, Parsed) and out.consumed == len(data)
            return list(out.actions)
        self.buf[direction] += data
        actions: list = []
        while self.buf[direction]:
            out = self.helper.inspect(Segment(self.buf[direction], direction, self.flow, 0.0), self.state)
            if out is alg.NEED_DATA:
                break
            assert 0 < out.consumed <= len(self.buf[direction])
            self.buf[direction] = self.buf[direction][out.consumed:]
            actions += out.actions
        return actions


def expects(actions) -> list[tuple]:
    return [(a.cls, str(a.src) if a.src else None, str(a.dst), a.dport) for a in actions if isinstance(a, Expect)]


def notices(actions) -> list[str]:
    return [a.code for a in actions if isinstance(a, Notice)]


ORIG, R = Direction.ORIGINAL, Direction.REPLY


# ---------------------------------------------------------------- grammar
def test_compact_names_case_and_folding():
    raw = (b"INVITE sip:b@10.0.2.2 SIP/2.0\r\nv: SIP/2.0/UDP 10.0.1.2\r\nI: folded-\r\n  call\r\n"
           b"cseq:   7 INVITE\r\nC: application/sdp\r\nL: 3\r\n\r\nabc")
    m = grammar.parse(raw, True, 65536)
    assert m.value(b"call-id") == b"folded- call"
    assert m.value(b"via") == b"SIP/2.0/UDP 10.0.1.2"
    assert grammar.parse_cseq(m.value(b"cseq")) == (7, b"INVITE")
    assert m.value(b"content-type") == b"application/sdp"
    assert m.body == b"abc" and m.length == len(raw)


def test_compact_headers_drive_the_helper():
    body = sdp_body()
    raw = (f"INVITE sip:b@{B} SIP/2.0\r\nv: SIP/2.0/UDP x\r\nf: <sip:a@x>;tag=1\r\nt: <sip:b@y>\r\ni: cid\r\n"
           f"CSeq: 1 INVITE\r\nm: <sip:a@{A}>\r\nc: application/sdp\r\nl: {len(body)}\r\n\r\n").encode() + body
    assert expects(Dialog().send(raw)) == [("audio", B, A, 16000), ("audio", B, A, 16001)]


@pytest.mark.parametrize("line,ok", [
    (b"INVITE sip:a@b SIP/2.0\r\n", True), (b"SIP/2.0 200 OK\r\n", True), (b"INVI", True), (b"SIP/2", True),
    (b"INVITE sip:x SI", True), (b"POST / HTTP/1.1\r\n", False), (b"POST / HTTP", False), (b"GET /x", True),
    (b"\x16\x03\x01", False), (b" INVITE", False), (b"SIP/2.0 999", False),
])
def test_start_line_prefix(line, ok):
    assert grammar.could_be_start(line) is ok


def test_contact_forms():
    c = grammar.parse_contact(b'"Alice" <sip:alice@10.0.1.2:5070;transport=TCP>;expires=60', 0)
    assert (str(c.addr), c.port, c.transport, c.expires) == ("10.0.1.2", 5070, b"tcp", 60)
    c = grammar.parse_contact(b"sip:alice@[fd00:1::2];expires=0", 0)
    assert (str(c.addr), c.port, c.expires) == ("fd00:1::2", None, 0)
    assert grammar.parse_contact(b"<sip:alice@pbx.example.com>", 0).addr is None
    assert grammar.parse_contact(b"<tel:+4912345>", 0) is None
    assert [e for e, _ in grammar.split_list(b'"a,b" <sip:x@1.2.3.4>, <sip:y@1.2.3.5;p=a,b>')] == [
        b'"a,b" <sip:x@1.2.3.4>', b"<sip:y@1.2.3.5;p=a,b>"]


# ---------------------------------------------------------------- SDP
def test_sdp_media_level_connection_wins_and_ipv6():
    body = (b"v=0\r\nc=IN IP4 10.9.9.9\r\nm=audio 16000 RTP/AVP 0\r\nc=IN IP4 10.0.1.2\r\n"
            b"m=video 17000/2 RTP/AVP 96\r\nm=image 18000 udptl t38\r\n")
    s = sdp.parse(body)
    assert [str(m.connection.addr) if m.connection else None for m in s.media] == ["10.0.1.2", None, None]
    assert str(s.connection.addr) == "10.9.9.9"
    assert (s.media[1].count, s.media[2].is_rtp) == (2, False)
    s6 = sdp.parse(b"v=0\nc=IN IP6 fd00:1::2\nm=audio 5004 RTP/AVP 0\n")  # LF-only lines
    assert str(s6.connection.addr) == "fd00:1::2" and s6.media[0].port == 5004


def test_rtcp_attribute_port_count_and_udptl():
    body = sdp_body(media=("m=audio 16000 RTP/AVP 0", "a=rtcp:16101", "m=video 17000/2 RTP/AVP 96",
                           "m=image 18001 udptl t38"))
    got = expects(Dialog().send(invite(body)))
    assert got == [("audio", B, A, 16000), ("audio", B, A, 16101),
                   ("video", B, A, 17000), ("video", B, A, 17001), ("video", B, A, 17002), ("video", B, A, 17003),
                   ("image", B, A, 18001)]


def test_rtcp_attribute_with_third_party_address_is_checked():
    body = sdp_body(media=("m=audio 16000 RTP/AVP 0", f"a=rtcp:16101 IN IP4 {C}"))
    acts = Dialog().send(invite(body))
    assert expects(acts) == [("audio", B, A, 16000)]
    assert "media-address-mismatch" in notices(acts)


def test_port_zero_hold_hostname_and_non_media():
    body = sdp_body(media=("m=audio 0 RTP/AVP 0", "m=application 9 TCP/BFCP *"))
    acts = Dialog().send(invite(body))
    assert expects(acts) == [] and notices(acts) == ["media-not-tracked"]
    assert expects(Dialog().send(invite(sdp_body(addr="0.0.0.0")))) == []
    body = b"v=0\r\nc=IN IP4 media.example.com\r\nt=0 0\r\nm=audio 16000 RTP/AVP 0\r\n"
    acts = Dialog().send(invite(body))
    assert expects(acts) == [] and notices(acts) == ["hostname-in-sdp"]


def test_ipv6_call():
    f = flow(src=A6, dst=B6)
    d = Dialog(f=f)
    acts = d.send(invite(sdp_body(addr=A6, fam=6)))
    assert expects(acts) == [("audio", B6, A6, 16000), ("audio", B6, A6, 16001)]
    acts = d.send(response(200, body=sdp_body(addr=B6, fam=6, media=("m=audio 20000 RTP/AVP 0",))), R)
    assert expects(acts) == [("audio", A6, B6, 20000), ("audio", A6, B6, 20001)]


def test_multipart_body():
    part = sdp_body()
    body = (b"--xyz\r\nContent-Type: application/sdp\r\n\r\n" + part
            + b"\r\n--xyz\r\nContent-Type: application/isup\r\n\r\n\x01\x02\r\n--xyz--\r\n")
    acts = Dialog().send(invite(body, ctype='multipart/mixed;boundary="xyz"'))
    assert expects(acts) == [("audio", B, A, 16000), ("audio", B, A, 16001)]


# ---------------------------------------------------------------- lifecycle
def test_offer_answer_bye():
    d = Dialog()
    assert len(expects(d.send(invite()))) == 2
    assert notices(d.send(invite())) == ["retransmission"]
    assert d.send(response(100), R) == []
    ans = d.send(response(200, body=sdp_body(addr=B, media=("m=audio 20000 RTP/AVP 0",))), R)
    assert expects(ans) == [("audio", A, B, 20000), ("audio", A, B, 20001)]
    bye = d.send(msg(f"BYE sip:b@{B} SIP/2.0", cseq="2 BYE"))
    assert bye == [Unexpect("audio", "call-1"), Unexpect("video", "call-1"), Unexpect("image", "call-1")]


def test_bye_from_the_callee_and_cancel():
    d = Dialog()
    d.send(invite())
    assert Unexpect("audio", "call-1") in d.send(msg(f"BYE sip:a@{A} SIP/2.0", cseq="1 BYE"), R)
    d = Dialog()
    d.send(invite())
    assert Unexpect("audio", "call-1") in d.send(msg(f"CANCEL sip:b@{B} SIP/2.0", cseq="1 CANCEL"))


def test_failed_final_response_withdraws_initial_but_not_reinvite():
    d = Dialog()
    d.send(invite())
    assert Unexpect("audio", "call-1") in d.send(response(486), R)
    d = Dialog()
    d.send(invite())
    d.send(response(200, body=sdp_body(addr=B)), R)
    d.send(invite(cseq=2, body=sdp_body(media=("m=image 18000 udptl t38",))))
    acts = d.send(response(488, cseq="2 INVITE"), R)
    assert notices(acts) == ["reinvite-failed"] and not any(isinstance(a, Unexpect) for a in acts)


def test_reinvite_and_update_replace_media():
    d = Dialog()
    d.send(invite())
    acts = d.send(invite(cseq=2, body=sdp_body(media=("m=audio 16004 RTP/AVP 0",))))
    assert acts[:3] == [Unexpect("audio", "call-1"), Unexpect("video", "call-1"), Unexpect("image", "call-1")]
    assert expects(acts) == [("audio", B, A, 16004), ("audio", B, A, 16005)]
    acts = d.send(invite(cseq=3, method="UPDATE", body=sdp_body(media=("m=audio 16008 RTP/AVP 0",))))
    assert Unexpect("audio", "call-1") in acts and ("audio", B, A, 16008) in expects(acts)


def test_late_offer_in_200_answer_in_ack_and_prack():
    d = Dialog()
    d.send(invite(body=b""))
    assert expects(d.send(response(200, body=sdp_body(addr=B)), R)) == [("audio", A, B, 16000), ("audio", A, B, 16001)]
    assert len(expects(d.send(invite(method="ACK", cseq=1)))) == 2
    d.send(invite(method="PRACK", cseq=5, body=sdp_body(media=("m=audio 30000 RTP/AVP 0",))))
    assert expects(d.send(response(200, cseq="5 PRACK", body=sdp_body(addr=B, media=("m=audio 30002 RTP/AVP 0",))),
                          R))[0] == ("audio", A, B, 30002)


def test_unmatched_response_opens_nothing():
    d = Dialog()
    acts = d.send(response(200, body=sdp_body(addr=B)), R)
    assert expects(acts) == [] and notices(acts) == ["unmatched-response"]
    d.send(invite())
    # a "response" from the same side as the request is not an answer to it
    assert notices(d.send(response(200, body=sdp_body(addr=A)))) == ["unmatched-response"]


def test_cseq_method_must_match():
    assert notices(Dialog().send(msg(f"INVITE sip:b@{B} SIP/2.0", cseq="1 BYE", body=sdp_body()))) == ["malformed"]


def register(expires="3600", contact=f"<sip:alice@{A}:5061>", cseq=1) -> bytes:
    return msg(f"REGISTER sip:{B} SIP/2.0", "reg-1", f"{cseq} REGISTER",
               headers=(f"Contact: {contact}", f"Expires: {expires}"))


def reg_ok(*headers: str, cseq="1 REGISTER") -> bytes:
    return response(200, cseq=cseq, callid="reg-1", headers=headers)


def test_register_binding_and_expiry_zero():
    d = Dialog()
    assert d.send(register()) == []
    acts = d.send(reg_ok(f"Contact: <sip:alice@{A}:5061>;expires=1800"), R)
    assert acts == [Expect("signalling", UDP, ipaddress.ip_address(B), ipaddress.ip_address(A), None, 5061,
                           flags=alg.EXPECT_F_PERMANENT, tag="reg-1", where=acts[0].where)]
    assert d.send(register(expires="0", cseq=2)) == [Unexpect("signalling", "reg-1")]
    d = Dialog()
    d.send(register())
    assert d.send(reg_ok(f"Contact: <sip:alice@{A}:5061>;expires=0"), R) == [
        Unexpect("signalling", "reg-1")]
    assert Dialog().send(register(expires="0", contact="*")) == [Unexpect("signalling")]


def test_register_challenge_then_tcp_transport_and_direct_signalling_off():
    d = Dialog(options={"direct_signalling": False})
    d.send(register(contact=f"<sip:alice@{A}:5070;transport=tcp>"))
    assert d.send(response(401, cseq="1 REGISTER", callid="reg-1"), R) == []
    d.send(register(contact=f"<sip:alice@{A}:5070;transport=tcp>", cseq=2))
    (e,) = d.send(response(200, cseq="2 REGISTER", callid="reg-1"), R)
    assert (e.proto, e.src, str(e.dst), e.dport) == (TCP, None, A, 5070)


# ---------------------------------------------------------------- attacks
def test_sdp_naming_a_third_host_with_direct_media():
    acts = Dialog().send(invite(sdp_body(addr=C)))
    assert expects(acts) == [] and "media-address-mismatch" in notices(acts)
    acts = Dialog(options={"direct_media": False}).send(invite(sdp_body(addr=C)))
    assert expects(acts) == [("audio", None, C, 16000), ("audio", None, C, 16001)]


@pytest.mark.parametrize("port", [0, 22, 445, 1023])
def test_media_ports_below_1024(port):
    acts = Dialog().send(invite(sdp_body(media=(f"m=audio {port} RTP/AVP 0",))))
    assert all(p >= 1024 for *_, p in expects(acts))
    if port:
        assert "low-port" in notices(acts)


def test_contact_naming_another_internal_host():
    d = Dialog()
    acts = d.send(register(contact=f"<sip:alice@{C}:3306>"))
    assert notices(acts) == ["contact-not-sender"]
    assert d.send(reg_ok(f"Contact: <sip:alice@{C}:3306>"), R) == []


def _tcp_packets(segments: list[bytes], src=A, dst=B, sport=40000, dport=5060) -> list[Packet]:
    s, d = ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed
    pkts = [Packet(4, TCP, s, d, sport, dport, b"", 1000, 0x02), Packet(4, TCP, d, s, dport, sport, b"", 5000, 0x12)]
    seq = 1001
    for seg in segments:
        pkts.append(Packet(4, TCP, s, d, sport, dport, seg, seq, 0x18))
        seq += len(seg)
    return pkts


def _engine() -> Engine:
    spec = SipHelper.spec
    return Engine({"sip": HelperSlot(default_helper_policy(spec), SipHelper())})


def _run(engine: Engine, pkts) -> list:
    out = []
    for i, p in enumerate(pkts):
        out += engine.process(p, float(i), i + 1)
    return out


def test_nat_slipstreaming_register_inside_http_body():
    # Samy Kamkar's NAT Slipstreaming: a browser POSTs to attacker:5060 and pads
    # the body so that a TCP segment starts with a SIP REGISTER whose Contact
    # names the victim's port. Parsing starts at the stream's first byte only.
    reg = register(contact=f"<sip:x@{A}:3306;transport=tcp>")
    http = (b"POST /x HTTP/1.1\r\nHost: evil.example:5060\r\nContent-Length: " + str(len(reg) + 1000).encode()
            + b"\r\n\r\n")
    pad = b"A" * 1000
    engine = _engine()
    decisions = _run(engine, _tcp_packets([http + pad, reg]))
    decisions += _run(engine, [Packet(4, TCP, ipaddress.ip_address(B).packed, ipaddress.ip_address(A).packed, 5060,
                                      40000, response(200, cseq="1 REGISTER", callid="reg-1"), 5001, 0x18)])
    assert decisions == [] and len(engine.table) == 0
    assert engine.stats()["helpers"]["sip"]["parse_errors"] == 1


def test_tcp_several_messages_per_segment_and_split_messages():
    two = invite() + invite(cseq=2, callid="call-2", body=sdp_body(media=("m=audio 16100 RTP/AVP 0",)))
    engine = _engine()
    creates = [d for d in _run(engine, _tcp_packets([two])) if isinstance(d, Create)]
    assert sorted(d.expectation.dport for d in creates) == [16000, 16001, 16100, 16101]
    # byte by byte
    engine = _engine()
    creates = [d for d in _run(engine, _tcp_packets([bytes([b]) for b in two])) if isinstance(d, Create)]
    assert sorted(d.expectation.dport for d in creates) == [16000, 16001, 16100, 16101]
    # keep-alive CRLFs between messages (RFC 5626)
    d = Dialog(TCP)
    assert len(expects(d.send(b"\r\n\r\n" + invite() + b"\r\n" + invite(callid="c3")))) == 4


@pytest.mark.parametrize("clen", ["4294967296", "99999999999999999999", "70000"])
def test_tcp_absurd_or_too_large_content_length(clen):
    # CVE-2026-23457: a Content-Length past 32 bits (or past what the flow may
    # buffer) must not be trusted to frame anything
    raw = invite(clen=clen)
    with pytest.raises(alg.ProtocolViolation):
        Dialog(TCP).send(raw)
    engine = _engine()
    assert _run(engine, _tcp_packets([raw, invite(callid="next")])) == []
    assert engine.stats()["helpers"]["sip"]["parse_errors"] == 1


def test_tcp_requires_content_length_and_waits_for_the_body():
    raw = invite()
    cut = raw.index(b"v=0") + 5
    d = Dialog(TCP)
    assert d.send(raw[:cut]) == [] and d.buf[0] == raw[:cut]
    assert len(expects(d.send(raw[cut:]))) == 2
    no_len = raw.replace(b"Content-Length", b"X-Length")
    with pytest.raises(alg.ProtocolViolation):
        Dialog(TCP).send(no_len)


def test_udp_short_datagram_is_counted_not_fatal():
    d = Dialog()
    acts = d.send(invite(clen="5000"))
    assert expects(acts) == [] and notices(acts) == ["malformed"]
    assert len(expects(d.send(invite(callid="ok")))) == 2


def test_engine_pressure_refusal_is_counted_and_packet_decision_unaffected():
    from alg.policy import CorePolicy
    spec = SipHelper.spec
    engine = Engine({"sip": HelperSlot(default_helper_policy(spec), SipHelper())},
                    CorePolicy(expect_budget=3, source_share=1.0))  # one sender: only the budget binds
    s, d = ipaddress.ip_address(A).packed, ipaddress.ip_address(B).packed
    out = []
    for i in range(3):
        call = invite(sdp_body(media=(f"m=audio {16000 + 4 * i} RTP/AVP 0",)), callid=f"c{i}")
        out += engine.process(Packet(4, UDP, s, d, 5061 + i, 5060, call), float(i), i + 1)
    creates = [x for x in out if isinstance(x, Create)]
    assert len(creates) == 3
    refused = engine.stats()["helpers"]["sip"]["classes"]["audio"]["refused"]
    assert refused == {"budget": 3}


# ---------------------------------------------------------------- fuzz
_SEEDS = [invite(), response(200, body=sdp_body(addr=B)), register(), invite(sdp_body(media=(
    "m=audio 16000/3 RTP/AVP 0", "a=rtcp:16101 IN IP4 10.0.1.2", "m=image 18000 udptl t38")))]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.sampled_from(_SEEDS), cuts=st.lists(st.integers(0, 2000), max_size=6),
       junk=st.binary(max_size=64), proto=st.sampled_from([UDP, TCP]), direction=st.sampled_from([ORIG, R]))
def test_fuzz_actions_or_protocol_violation(seed, cuts, junk, proto, direction):
    data = bytearray(seed)
    for c in cuts:
        if data:
            i = c % len(data)
            data[i:i + len(junk) // 4 + 1] = junk[: len(junk) // 4 + 1] or b"\x00"
    d = Dialog(proto)
    try:
        for a in d.send(bytes(data), direction) + d.send(bytes(data), Direction(1 - direction)):
            assert isinstance(a, (Expect, Unexpect, Notice))
            if isinstance(a, Expect):
                assert 1024 <= a.dport <= 65535 and a.dst.version == 4
                assert a.dst in (ipaddress.ip_address(A), ipaddress.ip_address(B))  # direct_media / contact checks
    except alg.ProtocolViolation:
        assert proto == TCP  # UDP never fails the flow


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_random_bytes(data):
    for proto in (UDP, TCP):
        try:
            Dialog(proto).send(data)
        except alg.ProtocolViolation:
            assert proto == TCP


def _parse_the_general_way(data: bytes, stream: bool, max_message: int) -> grammar.Message:
    """grammar.parse by its parts: the end of the head by head_end, the lines checked by
    parse_head's own search, the body framed after it (parse folds the first two into one
    search and frames inline)."""
    end, sep = grammar.head_end(data)
    if end < 0:
        if stream:
            if len(data) > max_message:
                raise alg.ProtocolViolation(f"no end of SIP headers within {max_message} bytes")
            raise grammar.Incomplete
        end, sep = len(data.rstrip(b"\r\n")), 0
    msg = grammar.parse_head(data, end, sep, stream, max_message)
    if msg.length > len(data):
        if stream:
            raise grammar.Incomplete
        raise alg.ProtocolViolation("datagram shorter than its Content-Length")
    grammar.take_body(msg, data)
    return msg


def _outcome(parse, data: bytes, stream: bool) -> object:
    try:
        return parse(data, stream, 700)
    except (alg.ProtocolViolation, grammar.Incomplete) as exc:
        return type(exc), str(exc)


_LINE_BYTES = (b"\r\n", b"\n", b"\n\n", b"\r\n\r\n", b" ", b"\t", b":", b"\r", b"X", b"\x00", b"9")


@settings(max_examples=400, deadline=None)
@given(seed=st.sampled_from(_SEEDS), edits=st.lists(st.tuples(st.integers(0, 2000), st.sampled_from(_LINE_BYTES),
                                                             st.integers(0, 3)), max_size=5),
       stream=st.booleans())
def test_parse_is_its_parts(seed, edits, stream):
    """grammar.parse gives what its parts give (the same message, or the same error), on
    messages whose line ends, blanks and colons are moved about: where the head ends (CRLF
    CRLF, LF LF, neither) and which line is bad is what the fold could get wrong."""
    data = bytearray(seed)
    for at, insert, cut in edits:
        i = at % (len(data) + 1)
        data[i:i + cut] = insert
    data = bytes(data)
    assert _outcome(grammar.parse, data, stream) == _outcome(_parse_the_general_way, data, stream)


def test_offsets_point_at_the_advertised_address_and_port():
    # the NAT step will rewrite in place: every Expect says where its address and port are
    raw = b"\r\n" + invite()  # a leading keep-alive on UDP shifts every offset
    (e, _) = expects_raw = [a for a in Dialog().send(raw) if isinstance(a, Expect)]
    (c_off, c_len), (p_off, p_len) = e.where
    assert raw[c_off:c_off + c_len] == A.encode() and raw[p_off:p_off + p_len] == b"16000"
    assert len(expects_raw) == 2
    d = Dialog()
    reg = register(contact=f"<sip:alice@{A}:5061>")
    d.send(reg)
    (sig,) = d.send(reg_ok(), R)
    ((off, n),) = sig.where
    assert reg[off:off + n] == f"{A}:5061".encode()


def test_policy_file_has_the_kernel_defaults():
    from pathlib import Path

    from alg.policy import load_policy
    path = Path(__file__).resolve().parents[1] / "policies" / "sip.toml"
    pol = load_policy([str(path)], {"sip": SipHelper.spec}, only_listed=True).helpers["sip"]
    assert [(c.name, c.max_expected, c.timeout) for c in pol.classes] == [
        ("signalling", 1, 180), ("audio", 4, 180), ("video", 4, 180), ("image", 2, 180)]
    assert pol.class_id("image") == 3  # the kernel's SIP_EXPECT_IMAGE
    assert dict(pol.options) == {k: o.default for k, o in SipHelper.spec.options.items()}
    assert (pol.ports, set(pol.protocols)) == ((5060,), {UDP, TCP})
