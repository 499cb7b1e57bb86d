"""The per-packet path's shortcuts say the same as the long way round: what the
engine and the queue worker keep or build by hand to save time per packet
(issue 14) must give what the plain construction gives."""

from __future__ import annotations

import dataclasses
import ipaddress
import struct

from alg.engine import _moved
from alg.expect import Expectation, ExpectationTable, Refusal
from alg.flows import RECORD_VERSION, FlowRecord, RecordFlag
from alg.kernel import nfqueue as Q
from alg.kernel import nlmsg as L
from alg.kernel.ctnetlink import pack_tuple
from alg.model import Expect, FlowTuple, Form, NatMap
from alg.nat import render

ip = ipaddress.ip_address
A, B = ip("10.0.1.2"), ip("10.0.2.2")
MASTER = FlowTuple(4, 17, A, B, 5060, 5060)


def test_an_expect_moved_outside_keeps_every_other_field():
    # every field set to a value that is not its default: a field added to Expect and
    # forgotten in the engine's hand-made copy fails here
    a = Expect("audio", 17, ip("10.0.9.9"), A, 4000, 5000, flags=0x4, tag="call", where=((1, 2),),
               src_prefix=24, assign_helper=True)
    defaults = {f.name: f.default for f in dataclasses.fields(Expect)}
    assert all(getattr(a, n) != d for n, d in defaults.items() if d is not dataclasses.MISSING)
    assert _moved(a, ip("192.0.2.1"), 6000) == dataclasses.replace(a, dst=ip("192.0.2.1"), dport=6000)


def test_record_flags_set_without_intflag_operations_match_them():
    for value in range(0x40):
        rec = FlowRecord(RecordFlag(value), (7, 9))
        for bit in RecordFlag:
            got = rec.with_flags(bit)
            assert got == FlowRecord(rec.flags | bit, (7, 9)) and type(got.flags) is RecordFlag
            assert rec.has(bit) == bool(rec.flags & bit)


def test_a_record_unpacked_twice_is_the_same_and_new_bytes_are_read_anew():
    one = struct.pack("!BBHII4x", RECORD_VERSION, 0x05, 0, 1, 2)
    two = struct.pack("!BBHII4x", RECORD_VERSION, 0x07, 0, 1, 3)
    assert FlowRecord.unpack(one) == FlowRecord(RecordFlag(0x05), (1, 2))
    assert FlowRecord.unpack(bytes(one)) == FlowRecord.unpack(one)
    assert FlowRecord.unpack(two) == FlowRecord(RecordFlag(0x07), (1, 3))
    assert FlowRecord.unpack(bytearray(two)) == FlowRecord.unpack(two)  # (not kept: not hashable)
    assert FlowRecord.unpack(b"\x09" + two[1:]) is None  # another layout


def test_source_shares_do_not_mix_an_ipv4_source_with_the_ipv6_address_of_its_number():
    t = ExpectationTable(budget=10, source_cap=1)
    v4 = Expectation("sip", "audio", 0, 4, 17, None, B, None, 4000, MASTER, 180, source=A)
    v6_master = FlowTuple(6, 17, ip("::a00:102"), ip("fd00::2"), 5060, 5060)
    v6 = Expectation("sip", "audio", 0, 6, 17, None, ip("fd00::2"), None, 4000, v6_master, 180,
                     source=ip("::a00:102"))  # the same integer as 10.0.1.2
    assert t.admit(v4, 4).accepted and t.admit(v6, 4).accepted
    again = Expectation("sip", "audio", 0, 4, 17, None, B, None, 4002, MASTER, 180, source=A)
    assert t.admit(again, 4).refused is Refusal.SOURCE_SHARE
    t.remove(v4)
    assert t.admit(again, 4).accepted


def test_nat_map_compares_ports_then_addresses_as_before():
    nat = NatMap(FlowTuple(4, 17, A, B, 5060, 5060), FlowTuple(4, 17, B, ip("192.0.2.1"), 5060, 40000))
    assert nat.map(0, A, 5060) == (ip("192.0.2.1"), 40000)
    assert nat.map(0, A, None) == (ip("192.0.2.1"), None)
    assert nat.map(0, A, 5061) is None and nat.map(0, ip("10.0.1.3"), 5060) is None
    assert nat.map(0, B, 5060) == (B, 5060)


def test_render_keeps_a_plain_string_form_apart_from_the_enum():
    assert render(Form.ADDR, A, None) == b"10.0.1.2"
    try:
        render("addr", A, None)  # type: ignore[arg-type]
    except ValueError:
        pass
    else:
        raise AssertionError("a form that is not a Form member must not find the member's rendering")


def glued(info: bytes, timeout: int) -> bytes:
    s, d = A.packed, B.packed
    ct = L.nest(Q.NFQA_CT, pack_tuple(Q.CTA_TUPLE_ORIG, 4, 17, s, d, 5060, 5060),
                pack_tuple(Q.CTA_TUPLE_REPLY, 4, 17, d, s, 5060, 5060), L.nla(Q.CTA_ID, L.be32(7)),
                L.nla(Q.CTA_STATUS, L.be32(0x8)), L.nla(7, L.be32(timeout)),  # CTA_TIMEOUT
                L.nest(Q.CTA_HELP, L.nla(Q.CTA_HELP_NAME, b"sip\0"), L.nla(Q.CTA_HELP_INFO, info)))
    head = L.nla(Q.NFQA_PACKET_HDR, struct.pack("!IHB", 1, 0x0800, 2))
    return struct.pack("!BBH", 2, 0, 9) + head + ct + L.nla(Q.NFQA_PAYLOAD, b"\x45")


def test_a_conntrack_decoded_once_per_bytes_follows_its_private_data():
    first = Q.parse_packet(glued(b"\x01" * 16, 180)).ct
    assert first is not None and first.helper_info == b"\x01" * 16
    assert Q.parse_packet(glued(b"\x01" * 16, 180)).ct == first
    changed = Q.parse_packet(glued(b"\x02" * 16, 180)).ct
    assert changed is not None and changed.helper_info == b"\x02" * 16
    assert first.orig.flow() == FlowTuple(4, 17, A, B, 5060, 5060)
