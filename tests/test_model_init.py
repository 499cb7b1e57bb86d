"""The model classes built per packet and per action have a hand-written
`__init__` (alg.frozen.slot_setters: the generated one cost three to four
times as much, issue 14). Each must still be the dataclass it declares:
the same parameters as the generated `__init__` would take, every field
stored where it belongs, frozen, equal, hashable, picklable, replaceable."""

from __future__ import annotations

import dataclasses
import inspect
import ipaddress
import pickle

import pytest

from alg.model import (Direction, Expect, FlowTuple, Form, Length, NatMap, Notice, Parsed, Rewrite, Segment,
                       Unexpect)

A, B = ipaddress.ip_address("10.0.1.2"), ipaddress.ip_address("10.0.2.2")
FLOW = FlowTuple(4, 17, A, B, 5060, 5061)

# for each class, a value per init field that differs from its default and from
# every other field's value: a setter swapped or forgotten shows
SAMPLES = {
    FlowTuple: dict(l3=4, proto=6, src=A, dst=B, sport=1000, dport=2000),
    Segment: dict(data=b"x", direction=Direction.REPLY, flow=FLOW, now=1.5, expected=True,
                  nat=NatMap(FLOW, FLOW.reversed())),
    Expect: dict(cls="audio", proto=17, src=B, dst=A, sport=4000, dport=5000, flags=4, tag="call",
                 where=((1, 2),), src_prefix=24, assign_helper=True),
    Unexpect: dict(cls="audio", tag="call"),
    Notice: dict(code="low-port", detail="80"),
    Rewrite: dict(offset=3, length=9, addr=A, port=5060, form=Form.HOST_PORT),
    Length: dict(offset=3, length=3, start=20, end=220, form=Form.BE16),
    Parsed: dict(consumed=616, actions=(Notice("x"),)),
}


def _generated(cls: type) -> type:
    """The same fields as a plain dataclass: its __init__ is the one to match."""
    spec = [(f.name, f.type, dataclasses.field(default=f.default) if f.default is not dataclasses.MISSING
             else dataclasses.field()) for f in dataclasses.fields(cls) if f.init]
    return dataclasses.make_dataclass(cls.__name__, spec, frozen=True)


@pytest.mark.parametrize("cls", list(SAMPLES), ids=lambda c: c.__name__)
def test_the_hand_written_init_takes_what_the_generated_one_would(cls):
    def params(init):
        return [(p.name, p.kind, p.default) for p in inspect.signature(init).parameters.values()]
    assert params(cls.__init__) == params(_generated(cls).__init__)
    assert list(SAMPLES[cls]) == [f.name for f in dataclasses.fields(cls) if f.init]


@pytest.mark.parametrize("cls", list(SAMPLES), ids=lambda c: c.__name__)
def test_every_field_is_stored_and_the_object_stays_a_frozen_dataclass(cls):
    values = SAMPLES[cls]
    for obj in (cls(**values), cls(*values.values())):
        assert {n: getattr(obj, n) for n in values} == values
        assert obj == cls(**values) and hash(obj) == hash(cls(**values))
        assert pickle.loads(pickle.dumps(obj)) == obj
        assert repr(obj) == repr(_generated(cls)(**values))
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj, next(iter(values)), None)
        copy = dataclasses.replace(obj)  # every field by keyword
        assert copy == obj and type(copy) is cls


def test_defaults_are_the_declared_ones():
    assert Expect("audio", 17, None, A, None, 5000) == Expect("audio", 17, None, A, None, 5000, 0, None, (), None,
                                                              False)
    assert Segment(b"", Direction.ORIGINAL, FLOW, 0.0) == Segment(b"", Direction.ORIGINAL, FLOW, 0.0, False, None)
    assert (Unexpect(), Notice("x"), Parsed(3)) == (Unexpect(None, None), Notice("x", ""), Parsed(3, ()))
    assert Length(1, 2, 3, 4).form is Form.DECIMAL


def test_a_flow_tuple_compares_and_hashes_by_numbers():
    assert FlowTuple(4, 17, A, B, 1, 2) == FlowTuple(4, 17, ipaddress.ip_address("10.0.1.2"), B, 1, 2)
    assert FlowTuple(4, 17, A, B, 1, 2) != FlowTuple(4, 17, A, B, 1, 3)
    assert FLOW._ints == (4, 17, int(A), int(B), 5060, 5061) and hash(FLOW) == hash(FLOW._ints)


@pytest.mark.parametrize("cls", [FlowTuple, Segment, Expect, Rewrite, Length], ids=lambda c: c.__name__)
def test_a_plugins_subclass_is_built_whole_and_stays_its_own_class(cls):
    """The hand-written __init__ builds its own class through an open twin of its slots
    (alg.frozen.retype); a subclass, whose layout may differ, gets every field all the same."""
    values = SAMPLES[cls]
    plain = type(f"Plain{cls.__name__}", (cls,), {})  # inherits the __init__, has a __dict__
    slotted = type(f"Slotted{cls.__name__}", (cls,), {"__slots__": ()})  # the very same layout
    extra = dataclasses.dataclass(frozen=True, slots=True)(
        type(f"Extra{cls.__name__}", (cls,), {"__annotations__": {"note": str}, "note": "n"}))
    for sub in (plain, slotted, extra):
        obj = sub(**values)
        assert type(obj) is sub and {n: getattr(obj, n) for n in values} == values
        assert obj == sub(**values) and dataclasses.replace(obj) == obj
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj, next(iter(values)), None)
    assert extra(**values, note="m").note == "m"
