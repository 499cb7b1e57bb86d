"""H.323 helper: Q.931 h245Address and fastStart, H.245 OLC/OLCA (own connection and tunnelled),
T.120, call forwarding and RAS open what nf_conntrack_h323 opens; addresses not the sender's, port 0,
low ports and NAT open nothing; PER edge cases and attacks (truncation, huge counts, extension bits,
bad indices) are refused without an exception; any bytes keep the helper's contract (hypothesis)."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import alg
import h323_build as b
from actions import expects, notices
from alg import EXPECT_F_PERMANENT, TCP, UDP, Direction, Unexpect
from alg.testing import check_outcome, feed, split_variants
from alg_helpers.h323 import H323Helper, h225, h245, per

CALLER, CALLEE, GK, THIRD = "10.0.1.2", "10.0.2.2", "10.0.2.9", "10.0.3.3"
A, B = ipaddress.ip_address(CALLER), ipaddress.ip_address(CALLEE)
Q931_FLOW = alg.FlowTuple(4, TCP, A, B, 40000, 1720)
H245_FLOW = alg.FlowTuple(4, TCP, A, B, 40001, 4000)
RAS_FLOW = alg.FlowTuple(4, UDP, A, ipaddress.ip_address(GK), 1719, 1719)
OUT, R = Direction.ORIGINAL, Direction.REPLY


def run(chunks, flow=Q931_FLOW, expected=False, helper=None, nat=None):
    return feed(helper or H323Helper(), chunks, flow, expected=expected, nat=nat)


def tuples(actions):
    return sorted((e.cls, alg.PROTO_NAMES[e.proto], str(e.src), str(e.dst), e.dport) for e in expects(actions))


SETUP = b.q931(b.setup(h245=(CALLER, 4000), fast=[b.olc(control=(CALLER, 5001))]))


@pytest.mark.parametrize("how", sorted(split_variants(SETUP)))
def test_setup_h245_address_and_fast_start_open_h245_and_rtp_rtcp(how):
    for pieces in (split_variants(SETUP)[how],):
        out = run([(OUT, p) for p in pieces])
        assert tuples(out) == [("h245", "tcp", CALLEE, CALLER, 4000), ("media", "udp", CALLEE, CALLER, 5000),
                               ("media", "udp", CALLEE, CALLER, 5001)]
        h245_exp = [e for e in expects(out) if e.cls == "h245"][0]
        assert h245_exp.assign_helper and h245_exp.sport is None


def test_connect_from_the_callee_names_its_h245_address():
    out = run([(OUT, b.q931(b.setup())), (R, b.q931(b.connect(h245=(CALLEE, 1232)), 0x07))])
    assert tuples(out) == [("h245", "tcp", CALLER, CALLEE, 1232)]


@pytest.mark.parametrize("address, code", [((THIRD, 4000), "address-mismatch"), ((CALLER, 0), "bad-port"),
                                           ((CALLER, 80), "low-port"), (("fd00::1", 4000), "no-address")])
def test_an_h245_address_not_the_senders_or_a_low_port_opens_nothing(address, code):
    out = run([(OUT, b.q931(b.setup(h245=address)))])
    assert expects(out) == [] and notices(out) == [code]


def test_fast_start_media_not_the_senders_is_refused():
    out = run([(OUT, b.q931(b.setup(fast=[b.olc(media=(THIRD, 6000), control=(CALLER, 6001))])))])
    assert tuples(out) == [("media", "udp", CALLEE, CALLER, 6000), ("media", "udp", CALLEE, CALLER, 6001)]
    assert notices(out) == ["address-mismatch"]


def test_ipv6_call_opens_ipv6_expectations():
    flow = alg.FlowTuple(6, TCP, ipaddress.ip_address("fd00:1::2"), ipaddress.ip_address("fd00:2::2"), 40000, 1720)
    out = run([(OUT, b.q931(b.setup(h245=("fd00:1::2", 4000))))], flow=flow)
    assert tuples(out) == [("h245", "tcp", "fd00:2::2", "fd00:1::2", 4000)]


def test_h245_connection_olc_and_olca_open_rtp_rtcp_both_ways():
    out = run([(OUT, b.tpkt(b.request_olc(control=(CALLER, 5001)))),
               (R, b.tpkt(b.response_olca(media=(CALLEE, 2006), control=(CALLEE, 2007))))],
              flow=H245_FLOW, expected=True)
    assert tuples(out) == sorted([("media", "udp", CALLEE, CALLER, 5000), ("media", "udp", CALLEE, CALLER, 5001),
                                  ("media", "udp", CALLER, CALLEE, 2006), ("media", "udp", CALLER, CALLEE, 2007)])


def test_olc_reverse_parameters_and_t120_separate_stack():
    msg = b.request_olc(media=(CALLER, 6000), reverse=((CALLER, 7000),), t120=(CALLER, 9000))
    out = run([(OUT, b.tpkt(msg))], flow=H245_FLOW, expected=True)
    assert tuples(out) == [("media", "udp", CALLEE, CALLER, p) for p in (6000, 6001, 7000, 7001)] + [
        ("t120", "tcp", CALLEE, CALLER, 9000)]
    assert [e.flags for e in expects(out) if e.cls == "t120"] == [EXPECT_F_PERMANENT]


def test_h245_tunnelled_in_q931_is_read():
    tunnel = [b.request_olc(control=(CALLER, 5001))]
    out = run([(OUT, b.q931(b.facility(tunnel=tunnel, reason=3), 0x62))])
    assert tuples(out) == [("media", "udp", CALLEE, CALLER, 5000), ("media", "udp", CALLEE, CALLER, 5001)]


def test_facility_h245_address_addition():
    out = run([(R, b.q931(b.facility(h245=(CALLEE, 4100), reason=3), 0x62))])
    assert tuples(out) == [("h245", "tcp", CALLER, CALLEE, 4100)]


def test_call_forwarding_opens_the_new_leg_from_the_receiver_only():
    data = b.q931(b.facility(alternative=(THIRD, 1720)), 0x62)
    out = run([(R, data)])
    assert tuples(out) == [("signalling", "tcp", CALLER, THIRD, 1720)] and expects(out)[0].assign_helper
    off = run([(R, data)], helper=H323Helper({"call_forwarding": False}))
    assert expects(off) == [] and notices(off) == ["forwarding-off"]


def test_an_expected_tcp_flow_speaks_q931_when_its_first_message_is_one():
    """An ACF's call leg (expected, Q.931) is read as Q.931, an h245Address's connection as H.245."""
    out = run([(OUT, b.q931(b.setup(h245=(CALLER, 4000))))], flow=H245_FLOW, expected=True)
    assert tuples(out) == [("h245", "tcp", CALLEE, CALLER, 4000)]
    state = H323Helper().new_state()
    feed(H323Helper(), [(OUT, b.tpkt(b.request_olc(control=(CALLER, 5001))))], H245_FLOW, state, expected=True)
    assert state.kind == "h245"
    # a flow assigned by port is Q.931 whatever it carries: an H.245 message there opens nothing
    assert expects(run([(OUT, b.tpkt(b.request_olc(control=(CALLER, 5001))))])) == []


# ---------------------------------------------------------------- RAS
def test_rrq_opens_the_endpoints_call_signalling_port_to_its_gatekeeper():
    out = run([(OUT, b.rrq([(THIRD, 1720), (CALLER, 1720)]))], flow=RAS_FLOW)
    (e,) = expects(out)
    assert (e.cls, e.proto, str(e.src), str(e.dst), e.dport) == ("signalling", TCP, GK, CALLER, 1720)
    assert e.flags == EXPECT_F_PERMANENT and e.assign_helper
    anyone = run([(OUT, b.rrq([(CALLER, 1720)]))], flow=RAS_FLOW, helper=H323Helper({"gkrouted_only": False}))
    assert expects(anyone)[0].src is None


def test_an_rrq_cut_short_after_its_addresses_opens_nothing_as_in_the_kernel():
    whole = b.rrq([(CALLER, 1720)])
    assert notices(run([(OUT, whole[:24])], flow=RAS_FLOW)) == ["malformed"]


def test_rrq_naming_only_other_hosts_opens_nothing():
    out = run([(OUT, b.rrq([(THIRD, 1720)]))], flow=RAS_FLOW)
    assert expects(out) == [] and notices(out) == ["address-mismatch"]


def test_acf_and_lcf_open_the_call_leg_from_the_endpoint():
    for msg in (b.acf((THIRD, 1720)), b.lcf((THIRD, 1720))):
        out = run([(R, msg)], flow=RAS_FLOW)
        assert tuples(out) == [("signalling", "tcp", CALLER, THIRD, 1720)], msg
        assert expects(out)[0].flags == EXPECT_F_PERMANENT
    assert expects(run([(R, b.acf((CALLER, 1720)))], flow=RAS_FLOW)) == []  # answering ACF: its own address
    assert notices(run([(R, b.acf((THIRD, 0)))], flow=RAS_FLOW)) == ["bad-port"]


def test_gcf_naming_another_port_of_the_gatekeeper_opens_ras_there():
    assert tuples(run([(R, b.gcf((GK, 1719)))], flow=RAS_FLOW)) == []  # the same address and port
    out = run([(R, b.gcf((GK, 1819)))], flow=RAS_FLOW)
    assert tuples(out) == [("signalling", "udp", CALLER, GK, 1819)] and expects(out)[0].assign_helper
    assert notices(run([(R, b.gcf((THIRD, 1819)))], flow=RAS_FLOW)) == ["address-mismatch"]
    assert run([(R, b.gcf((GK, 1819)))], flow=RAS_FLOW, expected=True) == []  # no expectation loops


def test_urq_withdraws_the_flows_expectations():
    assert run([(OUT, b.urq())], flow=RAS_FLOW) == [Unexpect()]


def test_nat_opens_nothing():
    nat = alg.NatMap(Q931_FLOW, alg.FlowTuple(4, TCP, B, ipaddress.ip_address("192.0.2.1"), 1720, 40000))
    out = run([(OUT, b.q931(b.setup(h245=(CALLER, 4000))))], nat=nat)
    assert expects(out) == [] and notices(out) == ["nat"]


# ---------------------------------------------------------------- framing and PER attacks
def test_a_stream_that_is_not_tpkt_stops_the_flow():
    with pytest.raises(alg.ProtocolViolation):
        run([(OUT, b"GET / HTTP/1.1\r\n\r\n")])
    with pytest.raises(alg.ProtocolViolation):
        run([(OUT, b"\x03\x00\x00\x02")])


def test_a_tpkt_waits_for_its_whole_length():
    data = b.q931(b.setup(h245=(CALLER, 4000)))
    helper = H323Helper()
    seg = alg.Segment(data[:-1], OUT, Q931_FLOW, 0.0)
    assert helper.inspect(seg, helper.new_state()) is alg.NEED_DATA


def _uuie_message(user_info: bytes) -> bytes:
    return b.q931(user_info)


@pytest.mark.parametrize("cut", [1, 5, 20, 40, 60])
def test_truncated_per_is_malformed_not_an_exception(cut):
    info = b.setup(h245=(CALLER, 4000), fast=[b.olc(control=(CALLER, 5001))])
    out = run([(OUT, _uuie_message(info[:cut]))])
    assert expects(out) == [] and notices(out) == ["malformed"]


def test_a_user_user_length_past_the_message_is_malformed():
    body = b"\x08\x02\x00\x01\x05\x7e\xff\xff\x05" + b"\x00" * 10
    out = run([(OUT, b.tpkt(body))])
    assert notices(out) == ["malformed"]


def test_a_huge_sequence_of_count_ends_at_the_input_or_the_step_budget():
    # RRQ callSignalAddress with a count of 16,383 and two addresses behind it
    w = b.ras(3).put(0, 1).put(0, 3).word(7).length(len(b.H225_OID)).octets(b.H225_OID).put(1, 1).length(16383)
    for _ in range(2):
        b.h225_address(w, CALLER, 1720)
    assert notices(run([(OUT, w.done())], flow=RAS_FLOW)) == ["malformed"]
    # a SEQUENCE OF NULL-like items (aliases of zero bits cannot exist, but the budget holds for any)
    nulls = per.SeqOf(per.NULL)
    with pytest.raises(per.Malformed):
        per.decode(nulls, b"\xbf\xff")  # 16,383 NULLs: stopped by the step budget
    assert per.Reader(b"").steps == 0


def test_fragmented_lengths_and_big_extension_indices_are_refused():
    with pytest.raises(per.Malformed):
        per.Reader(b"\xc1\x00").length()
    with pytest.raises(per.Malformed):
        per.decode(h245.TRANSPORT_ADDRESS, b"\xff\xff")  # extension alternative index above 63
    with pytest.raises(per.Malformed):  # RasMessage root index 31 of 25
        per.decode(h225.RAS_MESSAGE, bytes([0b0111_1100]))


def test_unknown_extension_additions_and_alternatives_are_skipped_by_length():
    # a Connect whose UUIE carries 40 extension additions, the last of them unknown to the schema
    w = b.head(2).put(1, 1).put(1, 1).length(len(b.H225_OID)).octets(b.H225_OID)
    b.h225_address(w, CALLEE, 1300)
    b.endpoint(w, vendor=False).octets(b"\x22" * 16)
    w.small(39).put((1 << 40) - 1, 40)  # all 40 present
    for i in range(40):
        w.open(bytes([i]) * 3)
    out = run([(R, b.q931(b.uuie(w), 0x07))])
    # the 5th addition is fastStart: its 3 bytes are no SEQUENCE OF OLC, the message is malformed ...
    assert notices(out) == ["malformed"]
    w = b.head(2).put(1, 1).put(1, 1).length(len(b.H225_OID)).octets(b.H225_OID)
    b.h225_address(w, CALLEE, 1300)
    b.endpoint(w, vendor=False).octets(b"\x22" * 16)
    w.small(39).put(1, 1).put(0, 38).put(1, 1).open(b"\x00").open(b"\xaa" * 300)  # ... here it is not present
    assert tuples(run([(R, b.q931(b.uuie(w), 0x07))])) == [("h245", "tcp", CALLER, CALLEE, 1300)]
    # an H.245 TransportAddress extension alternative (nsap) is skipped, the address is not read
    assert per.decode(h245.TRANSPORT_ADDRESS, bytes([0b1000_0000, 0x02, 0xAB, 0xCD])) == ("extension-0", None)


def test_q931_without_user_user_or_with_a_long_call_reference():
    assert run([(OUT, b.tpkt(b"\x08\x02\x00\x01\x05\x04\x03\x88\x93\xa5"))]) == []
    assert notices(run([(OUT, b.tpkt(b"\x08\x1f\x00\x01\x05"))])) == ["malformed"]
    assert notices(run([(OUT, b.tpkt(b"\x09\x02\x00\x01\x05"))])) == ["malformed"]


VALID = [b.q931(b.setup(h245=(CALLER, 4000), fast=[b.olc(control=(CALLER, 5001))])),
         b.q931(b.facility(tunnel=[b.request_olc(control=(CALLER, 5001))], reason=3), 0x62),
         b.q931(b.facility(alternative=(THIRD, 1720)), 0x62)]
RAS = [b.rrq([(CALLER, 1720)]), b.acf((THIRD, 1720)), b.lcf((THIRD, 1720)), b.gcf((GK, 1819))]
H245 = [b.tpkt(b.request_olc(media=(CALLER, 6000), reverse=((CALLER, 7000),), t120=(CALLER, 9000))),
        b.tpkt(b.response_olca(media=(CALLER, 2006), control=(CALLER, 2007)))]


def _mutate(data: bytes, flips: list[tuple[int, int]], cut: int | None) -> bytes:
    buf = bytearray(data)
    for at, bit in flips:
        if 4 <= at < len(buf):  # keep the TPKT header: the rest is the peer's to break
            buf[at] ^= 1 << bit
    return bytes(buf[:cut] if cut else buf)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pick=st.integers(0, 8), flips=st.lists(st.tuples(st.integers(0, 400), st.integers(0, 7)), max_size=6),
       cut=st.none() | st.integers(1, 400))
def test_mutated_messages_keep_the_contract(pick, flips, cut):
    """Bit flips and truncations of valid messages: actions (or NEED_DATA), never an exception."""
    helper = H323Helper()
    if pick < len(VALID):
        data, flow, expected = VALID[pick], Q931_FLOW, False
    elif pick < len(VALID) + len(H245):
        data, flow, expected = H245[pick - len(VALID)], H245_FLOW, True
    else:
        data, flow, expected = RAS[(pick - len(VALID) - len(H245)) % len(RAS)], RAS_FLOW, False
    data = _mutate(data, flips, cut) if flow.proto == UDP else _keep_tpkt(_mutate(data, flips, cut))
    out = helper.inspect(alg.Segment(data, OUT, flow, 0.0, expected), helper.new_state())
    check_outcome(helper, out, len(data), flow)


def _keep_tpkt(data: bytes) -> bytes:
    """The mutated body under a TPKT header that tells its real length (the framing is not the test)."""
    return b"\x03\x00" + struct.pack("!H", len(data)) + data[4:] if len(data) >= 4 else b"\x03\x00\x00\x04"


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200), node=st.sampled_from([h225.H323_USER_INFORMATION, h225.RAS_MESSAGE,
                                                           h245.MULTIMEDIA_SYSTEM_CONTROL_MESSAGE]))
def test_any_bytes_decode_or_are_malformed(data, node):
    try:
        per.decode(node, data)
    except per.Malformed:
        pass


def test_connect_fast_start_answer_opens_the_callees_media():
    answer = b.q931(b.connect(h245=(CALLEE, 4000), fast=[b.olc(media=(CALLEE, 5000), control=(CALLEE, 5001))]), 0x07)
    out = run([(OUT, b.q931(b.setup())), (R, answer)])
    assert tuples(out) == [("h245", "tcp", CALLER, CALLEE, 4000), ("media", "udp", CALLER, CALLEE, 5000),
                           ("media", "udp", CALLER, CALLEE, 5001)]


@pytest.mark.parametrize("data, flow, direction", [
    (SETUP, Q931_FLOW, OUT), (b.tpkt(b.response_olca(media=(CALLEE, 2006))), H245_FLOW, R),
    (b.rrq([(CALLER, 1720)]), RAS_FLOW, OUT), (b.lcf((THIRD, 1720)), RAS_FLOW, R)])
def test_each_expectation_says_where_its_address_and_port_are(data, flow, direction):
    """Offsets into the bytes given to the helper (STYLE.md §6): where a NAT step would write."""
    out = expects(run([(direction, data)], flow=flow, expected=flow is H245_FLOW))
    assert out
    for e in out:
        (addr_at, addr_len), (port_at, port_len) = e.where
        assert data[addr_at:addr_at + addr_len] == e.dst.packed
        assert int.from_bytes(data[port_at:port_at + port_len], "big") in (e.dport, e.dport & ~1, e.dport | 1)


def test_h245_tunnelled_in_an_empty_uuie_is_read():
    """H.225.0 v4's `empty` body (an extension alternative, skipped by length) carrying h245Control."""
    w = b.W().put(0, 1).put(0, 1).put(1, 1).put(0, 1).put(1, 1).small(1).open(b"")  # body: extension 1 (empty)
    out = run([(R, b.q931(b.uuie(w, [b.response_olca(media=(CALLEE, 2006))]), 0x62))])
    assert tuples(out) == [("media", "udp", CALLER, CALLEE, 2006), ("media", "udp", CALLER, CALLEE, 2007)]
