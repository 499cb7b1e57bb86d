"""Frozen, slotted dataclasses built at the cost of plain objects, for the packet path.

A frozen dataclass's generated __init__ sets each field through object.__setattr__
(its own __setattr__ refuses), a lookup of the name in the type per field: three
times the cost of the object itself for a three-field event, eight times for an
Expectation's 22 fields, and the daemon builds several per packet. Two ways round
it, the objects staying genuine frozen dataclasses (frozen, compared, hashed,
printed, pickled and `dataclasses.replace`d by the dataclass's own methods):

- `unfrozen(cls)`: a class with the same slots and no refusing __setattr__ (the same
  layout: CPython lets an object change between the two). The engine's internal
  builders (one function per class) fill a new one with plain attribute stores and
  then give it `cls` as its class. The model's public constructors of six fields
  or more (FlowTuple, Segment, Expect, which plugins build and subclass) do the
  same with `self` in a hand-written `__init__`: `retype` it to the open class,
  store each field, give it its class back (Expect: 0.38 us, 0.66 us through the
  setters below; issue 14). For an instance of a plugin's subclass, whose layout
  may differ, they fall back to the setters (`set_slots`).
- `slot_setters(cls)`: the `__set__` of each of its slots. The smaller public
  classes (Parsed, Notice, Unexpect, Rewrite, Length) store each field through
  them: with two to five fields the two class changes would cost as much.

Either way every field must be set: tests/test_model_init.py and tests/test_fastpath.py
compare what they build with what the generated `__init__` builds.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Callable


def slot_setters(cls: type) -> tuple[Callable[[Any, Any], None], ...]:
    """The `__set__` of each of the slotted dataclass `cls`'s fields, in field order."""
    return tuple(cls.__dict__[f.name].__set__ for f in fields(cls))


def set_slots(obj: Any, setters: tuple[Callable[[Any, Any], None], ...], values: tuple) -> None:
    """Each field of `obj` set through its slot's setter (`slot_setters` of its class or a base)."""
    for setter, value in zip(setters, values, strict=True):
        setter(obj, value)


# obj.__class__ = cls for an object whose own __setattr__ refuses (a frozen dataclass's)
retype: Callable[[Any, type], None] = object.__dict__["__class__"].__set__


def unfrozen(cls: type) -> type:
    """A class with the slots of the frozen, slotted dataclass `cls`, which may be set."""
    slots: Any = cls.__dict__.get("__slots__")
    if not slots:
        raise TypeError(f"{cls.__name__} is not a slotted class")
    return type(f"Unfrozen{cls.__name__}", (), {"__slots__": tuple(slots), "__module__": cls.__module__})
