"""PPTP helper: a call set up on tcp/1723 opens its two GRE flows keyed by call IDs (outgoing and
incoming calls), clearing withdraws them; bad framing stops the flow; replies nobody asked for, refused
calls, wrong sides and NAT open nothing; state stays bounded; GRE flows with the keys match (engine)."""

from __future__ import annotations

import ipaddress
import struct
from pathlib import Path

import pytest

import alg
from actions import expects, notices
from alg import GRE, TCP, Direction, Unexpect
from alg.decode import Packet, decode_frame
from alg.engine import Create, Delete, Engine, make_slots
from alg.plugins import load_plugins
from alg.policy import default_policy
from alg.testing import feed, split_variants
from alg_helpers.pptp import MAX_CALLS, PptpHelper

PNS, PAC = ipaddress.ip_address("10.0.1.2"), ipaddress.ip_address("10.0.2.2")
FLOW = alg.FlowTuple(4, TCP, PNS, PAC, 40000, 1723)
OUT, R = Direction.ORIGINAL, Direction.REPLY
CAPTURE = Path(__file__).parent / "pcaps" / "pptp-ndpi_pptp" / "capture.pcap"
SIZES = {1: 156, 2: 156, 3: 16, 4: 16, 7: 168, 8: 32, 9: 220, 10: 24, 11: 28, 12: 16, 13: 148}


def msg(ctrl: int, body: bytes = b"", length: int | None = None, magic: int = 0x1A2B3C4D) -> bytes:
    """A PPTP control message (RFC 2637 §2): header, then `body` padded to the type's length."""
    size = SIZES.get(ctrl, 16)
    body = body.ljust(size - 12, b"\0")
    return struct.pack("!HHIHH", size if length is None else length, 1, magic, ctrl, 0) + body


SCCRQ = msg(1, b"\x01\x00")
SCCRP = msg(2, b"\x01\x00\x01")  # version 1.0, result 1 (success)
SESSION = [(OUT, SCCRQ), (R, SCCRP)]


def ocrq(pns: int) -> bytes:
    return msg(7, struct.pack("!HH", pns, 1))


def ocrp(pac: int, pns: int, result: int = 1) -> bytes:
    return msg(8, struct.pack("!HHB", pac, pns, result))


def icrq(pac: int) -> bytes:
    return msg(9, struct.pack("!HH", pac, 1))


def icrp(pns: int, pac: int, result: int = 1) -> bytes:
    return msg(10, struct.pack("!HHB", pns, pac, result))


def iccn(pns: int) -> bytes:
    return msg(11, struct.pack("!H", pns))


def keys(actions) -> set:
    return {(e.proto, e.src, e.dst, e.sport, e.dport) for e in expects(actions)}


@pytest.mark.parametrize("variant", ["whole", "bytewise", "halves"])
def test_outgoing_call_opens_gre_both_ways(variant):
    chunks = SESSION + [(OUT, c) for c in split_variants(ocrq(0x1234))[variant]]
    chunks += [(R, c) for c in split_variants(ocrp(0x5678, 0x1234))[variant]]
    acts = feed(PptpHelper(), chunks, FLOW)
    assert keys(acts) == {(GRE, PNS, PAC, None, 0x5678), (GRE, PAC, PNS, None, 0x1234)}
    assert {e.cls for e in expects(acts)} == {"gre"} and notices(acts) == []


def test_incoming_call_opens_on_connected():
    acts = feed(PptpHelper(), SESSION + [(R, icrq(77)), (OUT, icrp(88, 77))], FLOW)
    assert expects(acts) == []  # not before the PAC says the call is connected
    acts = feed(PptpHelper(), SESSION + [(R, icrq(77)), (OUT, icrp(88, 77)), (R, iccn(88))], FLOW)
    assert keys(acts) == {(GRE, PNS, PAC, None, 77), (GRE, PAC, PNS, None, 88)}


def test_messages_coalesced_in_one_segment_are_all_read():
    acts = feed(PptpHelper(), [(OUT, SCCRQ), (R, SCCRP), (OUT, ocrq(1) + ocrq(2)), (R, ocrp(11, 1) + ocrp(12, 2))],
                FLOW)
    assert {e.dport for e in expects(acts)} == {1, 2, 11, 12}


@pytest.mark.parametrize("clear", [(OUT, msg(12, struct.pack("!H", 0x1234))),   # Call-Clear-Request (PNS's ID)
                                   (R, msg(13, struct.pack("!H", 0x5678))),     # Call-Disconnect-Notify (PAC's)
                                   (R, msg(13, struct.pack("!H", 0x1234))),     # ... naming the PNS's (Microsoft)
                                   (OUT, msg(3))])                              # Stop-Control-Connection-Request
def test_clearing_withdraws_the_call(clear):
    acts = feed(PptpHelper(), SESSION + [(OUT, ocrq(0x1234)), (R, ocrp(0x5678, 0x1234)), clear], FLOW)
    (gone,) = [a for a in acts if isinstance(a, Unexpect)]
    assert gone.cls == "gre" and gone.tag in (None, expects(acts)[0].tag)


def test_clearing_another_call_withdraws_nothing():
    acts = feed(PptpHelper(), SESSION + [(OUT, ocrq(1)), (R, ocrp(2, 1)), (OUT, msg(12, struct.pack("!H", 9)))], FLOW)
    assert not [a for a in acts if isinstance(a, Unexpect)]


@pytest.mark.parametrize("chunks, code", [
    ([(R, ocrp(0x5678, 0x1234))], "unsolicited"),                         # a reply without request
    ([(OUT, ocrq(1)), (R, ocrp(0x5678, 0x1234))], "unsolicited"),         # names a call the PNS never asked for
    ([(OUT, iccn(5))], "wrong-side"),                                     # the PNS cannot connect its own call
    ([(R, ocrq(1))], "wrong-side"),                                       # a PAC requesting an outgoing call
    ([(R, iccn(5))], "unsolicited"),                                      # connected, never offered
    ([(R, icrq(4)), (OUT, icrp(5, 6))], "unsolicited"),                   # answers another incoming call
    ([(OUT, ocrq(1)), (R, ocrp(2, 1, result=2))], "refused"),             # General Error
    ([(R, icrq(4)), (OUT, icrp(5, 4, result=3))], "refused"),             # Do Not Accept
    ([(OUT, ocrq(1)[:12].replace(b"\0\xa8", b"\0\x20", 1) + b"\0" * 20)], "short-message"),
    ([(OUT, msg(42))], "unknown-type"),
])
def test_what_opens_nothing(chunks, code):
    acts = feed(PptpHelper(), SESSION + chunks, FLOW)
    assert expects(acts) == [] and code in notices(acts)


def test_a_second_reply_to_one_request_opens_nothing_more():
    acts = feed(PptpHelper(), SESSION + [(OUT, ocrq(1)), (R, ocrp(2, 1)), (R, ocrp(3, 1))], FLOW)
    assert {e.dport for e in expects(acts)} == {1, 2} and notices(acts) == ["unsolicited"]


def test_calls_need_a_successful_session():
    assert notices(feed(PptpHelper(), [(OUT, ocrq(1)), (R, ocrp(2, 1))], FLOW)) == ["no-session"] * 2
    failed = msg(2, b"\x01\x00\x02")  # result 2: General error
    acts = feed(PptpHelper(), [(OUT, SCCRQ), (R, failed), (OUT, ocrq(1)), (R, ocrp(2, 1))], FLOW)
    assert expects(acts) == [] and "no-session" in notices(acts)


@pytest.mark.parametrize("wire", [
    msg(1, magic=0x1A2B3C4E),      # bad magic cookie
    msg(1, length=11),              # shorter than the header
    msg(1, length=0),
    msg(1, length=0xFFFF),          # a huge length: would make the helper wait for 64 KiB
])
def test_broken_framing_stops_the_flow(wire):
    with pytest.raises(alg.ProtocolViolation):
        feed(PptpHelper(), [(OUT, wire)], FLOW)


def test_many_calls_keep_state_bounded():
    helper, state = PptpHelper(), PptpHelper().new_state()
    feed(helper, SESSION, FLOW, state)
    acts = feed(helper, [(OUT, b"".join(ocrq(i) for i in range(MAX_CALLS * 4)))], FLOW, state)
    assert len(state.calls) == MAX_CALLS and notices(acts).count("too-many-calls") == MAX_CALLS * 3
    assert helper.state_size(state) <= 64 * MAX_CALLS
    # answering the tracked ones still works; the untracked are unsolicited
    acts = feed(helper, [(R, ocrp(9000, 0) + ocrp(9001, MAX_CALLS))], FLOW, state)
    assert {e.dport for e in expects(acts)} == {0, 9000} and notices(acts) == ["unsolicited"]


def test_behind_nat_nothing_is_opened_and_it_says_why():
    outside = alg.FlowTuple(4, TCP, ipaddress.ip_address("192.0.2.1"), PAC, 50000, 1723)
    nat = alg.NatMap(FLOW, outside.reversed())
    acts = feed(PptpHelper(), SESSION + [(OUT, ocrq(1)), (R, ocrp(2, 1))], FLOW, nat=nat)
    assert expects(acts) == [] and notices(acts) == ["nat"]


def test_ipv6():
    p6, a6 = ipaddress.ip_address("fd00:1::2"), ipaddress.ip_address("fd00:2::2")
    acts = feed(PptpHelper(), SESSION + [(OUT, ocrq(1)), (R, ocrp(2, 1))], alg.FlowTuple(6, TCP, p6, a6, 40000, 1723))
    assert keys(acts) == {(GRE, p6, a6, None, 2), (GRE, a6, p6, None, 1)}


def test_resync_finds_the_next_message():
    helper = PptpHelper()
    seg = alg.Segment(b"junk" * 3 + ocrq(1), OUT, FLOW, 0.0)
    assert helper.resync(seg, helper.new_state()) == 12
    assert helper.resync(alg.Segment(b"junk", OUT, FLOW, 0.0), helper.new_state()) is alg.NEED_DATA


def test_looks_like():
    assert PptpHelper.looks_like(SCCRQ) and not PptpHelper.looks_like(ocrq(1)) and not PptpHelper.looks_like(b"x")


def test_a_gre_expect_must_mask_the_source_key():
    ok = alg.Expect("gre", GRE, PNS, PAC, None, 0)  # call ID 0 is valid (ndpi_pptp's PNS)
    assert alg.model.invalid_expect(["gre"], ok, 4) is None
    assert "sport None" in alg.model.invalid_expect(["gre"], alg.Expect("gre", GRE, PNS, PAC, 5, 1), 4)
    assert alg.model.invalid_expect(["gre"], alg.Expect("gre", GRE, PNS, PAC, None, 0x10000), 4)


def gre(src, dst, key: int) -> Packet:
    """A GRE v1 packet as the kernel's GRE tracker keys it: destination key = the call ID, source key 0
    (no keymap without nf_conntrack_pptp). alg's decoder peels GRE as a tunnel, so it is built here."""
    return Packet(4, GRE, src.packed, dst.packed, 0, key, b"\x30\x01\x88\x0b")


def test_gre_flows_of_the_real_call_match_its_expectations():
    """ndpi_pptp's control connection through the engine, with GRE packets of its call (keys 11755 and 0)
    inserted before the Call-Clear-Request; another call ID is not related."""
    from alg.pcap import read_frames

    host = load_plugins()
    policy = default_policy({n: c.spec for n, c in host.helpers.items()})
    engine = Engine(make_slots([policy.helpers["pptp"]], host.helpers), policy.core, track_related=True)
    frames = list(read_frames(str(CAPTURE), lambda m: None))
    pns, pac = ipaddress.ip_address("192.168.43.22"), ipaddress.ip_address("191.101.61.1")
    made, deleted = [], []
    for f in frames:
        if f.number == 16:  # the Call-Clear-Request: the call's data flows first
            t = f.time - 0.1
            engine.process(gre(pns, pac, 999), t)
            assert engine.related_flows == 0  # another call ID
            engine.process(gre(pns, pac, 11755), t)
            engine.process(gre(pac, pns, 0), t)
            engine.process(gre(pac, pns, 0), t)  # the same flow again: still one
            assert engine.related_flows == 2
        out = engine.process(decode_frame(f.linktype, f.data), f.time, f.number)
        made += [d.expectation for d in out if isinstance(d, Create)]
        deleted += [d for d in out if isinstance(d, Delete)]
    assert {(e.src, e.dst, e.dport) for e in made} == {(pns, pac, 11755), (pac, pns, 0)}
    assert deleted == []  # both were used by their GRE flows before the call was cleared
