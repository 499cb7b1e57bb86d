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


def fields_of(obj: object) -> dict:
    """Every slot of a slotted dataclass instance (an unset one raises AttributeError)."""
    return {name: getattr(obj, name) for name in type(obj).__slots__}  # type: ignore[attr-defined]


def frozen(obj: object) -> bool:
    try:
        setattr(obj, type(obj).__slots__[0], None)  # type: ignore[attr-defined]
    except dataclasses.FrozenInstanceError:
        return True
    return False


def test_frozen_dataclasses_built_as_plain_objects_are_the_ones_their_class_builds():
    from alg.engine import Create, Delete, ExpectationEvent, Remember, _create, _delete, _event, _remember
    from alg.expect import expectation, source_key
    from alg.flows import KernelView, flow_record
    from alg.nat import Edit, edit
    from alg.model import Direction

    # every field set to a value that is not its default: one added to Expectation and
    # forgotten by the builder fails here
    values = ("sip", "audio", 1, 4, 17, ip("10.0.9.0"), A, 4000, 5000, MASTER, 180, 0x4, 7, 2.5, "call", 24, True,
              FlowTuple(4, 17, A, ip("192.0.2.1"), 5060, 40000), B, (1, A, 5000))
    assert len(values) == len(dataclasses.fields(Expectation)) - 2  # (key and source_key are computed)
    e, plain = expectation(*values, source_key(B)), Expectation(*values)
    assert type(e) is Expectation and fields_of(e) == fields_of(plain) and e == plain and hash(e) == hash(plain)
    ev = _event("evicted", e, "why")
    assert type(ev) is ExpectationEvent and fields_of(ev) == fields_of(ExpectationEvent("evicted", e, "why"))
    assert fields_of(_create(e)) == fields_of(Create(e)) and fields_of(_delete(e, "removed")) == {
        "expectation": e, "why": "removed"} == fields_of(Delete(e, "removed"))
    view = KernelView(key=(7, MASTER), direction=Direction.REPLY, new=True, confirmed=True, expected=True,
                      record=FlowRecord(), tuples=lambda: (MASTER, MASTER), natted=True, nat=lambda: None)
    assert fields_of(view) == fields_of(KernelView(*fields_of(view).values()))
    assert fields_of(KernelView((7,), Direction.ORIGINAL, False, False, False, None, print)) == {
        "key": (7,), "direction": Direction.ORIGINAL, "new": False, "confirmed": False, "expected": False,
        "record": None, "tuples": print, "natted": False, "nat": None}
    rec = flow_record(0x15, (7, 9))
    assert type(rec) is FlowRecord and fields_of(rec) == fields_of(FlowRecord(RecordFlag(0x15), (7, 9))) and \
        type(rec.flags) is RecordFlag and rec == FlowRecord.unpack(rec.pack())
    assert fields_of(_remember(rec)) == fields_of(Remember(rec))
    assert type(edit(3, 4, b"x")) is Edit and fields_of(edit(3, 4, b"x")) == fields_of(Edit(3, 4, b"x"))
    assert all(frozen(x) for x in (e, ev, _create(e), _delete(e, "removed"), view, rec, _remember(rec),
                                   edit(3, 4, b"x")))


def test_a_record_without_boundaries_comes_back_from_its_bytes_as_the_same_object():
    # the engine tells a conntrack's record unchanged by identity, before comparing
    rec = FlowRecord(RecordFlag.STARTED).with_flags(RecordFlag.KNOWN_ORIGINAL)
    assert FlowRecord.unpack(rec.pack()) is rec
    assert FlowRecord.unpack(FlowRecord(RecordFlag.STARTED, (1, 2)).pack()) == FlowRecord(RecordFlag.STARTED, (1, 2))


def test_admitting_with_evictions_leaves_the_table_as_removing_then_adding_does():
    """admit_into evicts from the queue it holds: the table (its order too, which decides
    what an Unexpect withdraws first and what ExpectMax evicts next) is what the plain
    remove-then-add way of the kernel's semantics leaves."""
    import random

    rnd = random.Random(14)
    masters = [FlowTuple(4, 17, A, B, 5060 + i, 5060) for i in range(3)]
    table = ExpectationTable(budget=8, source_cap=6)
    model: list[Expectation] = []  # oldest first
    classes: dict[FlowTuple, list[str]] = {m: [] for m in masters}  # a master's classes, as the table orders them
    for _ in range(400):
        master, cls = rnd.choice(masters), rnd.choice(("audio", "video"))
        e = Expectation("sip", cls, 0, 4, 17, None, B, None, 4000 + rnd.randrange(40), master, 180,
                        source=rnd.choice((A, B)))
        cap = 2 if cls == "audio" else 1
        evicted: list[Expectation] = []
        refused = table.admit_into(e, cap, evicted)
        # the model: the same tuple again replaces it, the oldest of a full class goes
        old = next((x for x in model if x.key == e.key), None)
        if old is not None and old.master != e.master:
            assert refused is Refusal.CLASH
            continue
        mine = [x for x in model if x.master == e.master and x.cls == e.cls and x is not old]
        gone = mine[:len(mine) + 1 - cap] if len(mine) >= cap else []
        left = len(model) - (old is not None) - len(gone)
        if left >= table.budget or sum(x.source == e.source for x in model if x is not old and x not in gone) \
                >= table.source_cap:
            assert refused in (Refusal.BUDGET, Refusal.SOURCE_SHARE) and not evicted
            continue
        assert refused is None and evicted == gone
        model = [x for x in model if x is not old and x not in gone]
        if not any(x.master == e.master and x.cls == e.cls for x in model):
            classes[e.master] = [c for c in classes[e.master] if c != e.cls] + [cls]  # emptied: added anew
        model.append(e)
        assert list(table) == model
        for m in masters:
            assert table.of_master(m) == [x for c in classes[m] for x in model if x.master == m and x.cls == c]
        assert sorted(table.per_source.items()) == sorted(
            {k: sum(x.source_key == k for x in model) for k in {x.source_key for x in model}}.items())


def test_tuples_packed_and_read_in_one_struct_call_are_the_ones_built_attribute_by_attribute():
    """pack_tuple's and _tuple_ints's fixed layouts against the attribute-by-attribute way: both
    families, every nest type, the kernel's unflagged nests, and damaged or cut bodies."""
    import random

    from alg.kernel import ctnetlink as C
    from alg.kernel import nlmsg as L

    def by_attributes(body: bytes):
        fixed = dict(C._FIXED_TUPLES)
        C._FIXED_TUPLES.clear()
        try:
            return C._tuple_ints(body)
        finally:
            C._FIXED_TUPLES.update(fixed)

    rnd = random.Random(14)
    for i in range(3000):
        l3 = rnd.choice((4, 6))
        n = 4 if l3 == 4 else 16
        args = (rnd.choice((1, 2, 3, 4, 5, 9)), l3, rnd.randrange(256), rnd.randbytes(n), rnd.randbytes(n),
                rnd.randrange(65536), rnd.randrange(65536))
        whole = C.pack_tuple(*args)
        assert whole == C._nest_tuple(*args)
        body = whole[4:]
        if i % 3 == 1:  # as ctnetlink writes it: no NLA_F_NESTED
            a = L.parse_attrs(body)
            body = L.nla(C.CTA_TUPLE_IP, a[C.CTA_TUPLE_IP]) + L.nla(C.CTA_TUPLE_PROTO, a[C.CTA_TUPLE_PROTO])
        if i % 5 == 2:
            damaged = bytearray(body)
            damaged[rnd.randrange(len(body))] ^= 1 << rnd.randrange(8)
            body = bytes(damaged)
        if i % 7 == 3:
            body = body[:rnd.randrange(len(body))]
        assert C._tuple_ints(body) == by_attributes(body)
        if i % 15 == 0 and i % 7 != 3:  # (whole, undamaged)
            assert C._tuple_ints(body) == (l3, args[2], int.from_bytes(args[3], "big"),
                                           int.from_bytes(args[4], "big"), args[5], args[6])


def test_a_record_packed_for_a_verdict_comes_back_from_its_bytes_as_itself():
    """FlowRecord.pack keeps the record by its bytes, which the flow's next packet brings back
    (the kernel gives back its NFCTH_PRIV_DATA_LEN, zero-filled past the 16): unpacked, they must
    be that record, as reading them anew says, and the kept records stay bounded."""
    from alg.flows import _RECORDS_MAX, _records

    rec = FlowRecord(RecordFlag.STARTED | RecordFlag.KNOWN_ORIGINAL | RecordFlag.BOUNDARY_ORIGINAL, (1006, 5000))
    data = rec.pack()
    assert FlowRecord.unpack(data) is rec and FlowRecord.unpack(data + bytes(8)) is rec
    assert FlowRecord._unpack(data) == rec  # the long way round
    assert FlowRecord.unpack(bytes(24)) is None and FlowRecord.unpack(b"\x09" + data[1:]) is None
    for n in range(_RECORDS_MAX + 10):
        FlowRecord(RecordFlag.STARTED, (n, n)).pack()
    assert len(_records) <= _RECORDS_MAX
    assert FlowRecord.unpack(data) == rec  # (dropped from the kept ones: read anew)


def test_a_message_that_asks_for_nothing_is_not_put_through_the_policy_gate():
    """The engine skips _apply for a message without actions: that is what _apply does with one
    (nothing decided, counted, explained or rewritten), with explanations on and off."""
    from alg.engine import Engine
    from alg.flows import Flow

    for explained in (None, []):
        eng = Engine({})
        eng.explained = explained
        flow = Flow(FlowTuple(4, 6, A, B, 40000, 21), None, None, 8192, 0.0)
        assert eng._apply(flow, (), 0.0, None, message=b"PASV\r\n") == []
        assert eng._apply(flow, [], 0.0, None, message=b"PASV\r\n") == []
        assert eng._events == [] and eng.explained == explained


def test_a_workers_record_attribute_is_the_one_pack_ct_help_makes():
    """The queue worker writes a flow's record into NFQA_CT as its helper's CTA_HELP head and the
    record's bytes (pack_ct_help's nest made once a name): the same bytes, for records of any flags
    and boundaries, as long as a record packs to FLOW_RECORD_LEN bytes, and under the name a
    reload gave the queue (the head made with the old one would name a helper the kernel refuses)."""
    from alg.daemon.worker import QueueWorker
    from alg.flows import FLOW_RECORD_LEN

    worker = QueueWorker(None, "ftp", None, None, None, None)  # type: ignore[arg-type]
    for name in ("ftp", "alg-ftp", "x" * 15):
        worker.helper = name  # (as a reload gives the queue another helper)
        for rec in (FlowRecord(), FlowRecord(RecordFlag(0x3F), (2**32 - 1, 7))):
            data = rec.pack()
            assert len(data) == FLOW_RECORD_LEN
            assert worker._record_head + data == Q.pack_ct_help(name, data)


def test_a_flow_found_by_an_equal_key_or_its_reverse_becomes_the_most_recent():
    """FlowTable.get moves the flow by the key object the table holds (Flow.key): the same
    order as the key it was asked with (or its reverse) gives, live and in replay."""
    from alg.flows import Flow, FlowTable

    class Slot:
        class policy:
            name = "ftp"

    for both_ways in (False, True):
        table = FlowTable()
        keys = [(6, b"\x0a\x00\x00\x01", b"\x0a\x00\x00\x02", 40000 + i, 21) if both_ways
                else (1000 + i, Q.CtTuple(4, 6, A.packed, B.packed, 40000 + i, 21)) for i in range(3)]
        flows = [Flow(MASTER, Slot, None, 0, 0.0) for _ in keys]
        for k, f in zip(keys, flows, strict=True):
            table.add(k, f, both_ways=both_ways)
        asked = (6, keys[0][2], keys[0][1], keys[0][4], keys[0][3]) if both_ways else \
            (keys[0][0], Q.CtTuple(*dataclasses.astuple(keys[0][1])[:6]))  # an equal key, not the table's
        assert asked is not keys[0] and table.get(asked)[0] is flows[0]
        assert table.oldest() == (keys[1], flows[1])
        assert list(table._owned["ftp"]) == [keys[1], keys[2], keys[0]]
