"""Frozen, slotted dataclasses built at the cost of plain objects, for the packet path.

A frozen dataclass's generated __init__ sets each field through object.__setattr__
(its own __setattr__ refuses), a lookup of the name in the type per field: three
times the cost of the object itself for a three-field event, eight times for an
Expectation's 22 fields, and the daemon builds several per packet. Two ways round
it, the objects staying genuine frozen dataclasses (frozen, compared, hashed,
printed, pickled and `dataclasses.replace`d by the dataclass's own methods):

- `slot_setters(cls)`, for a class whose constructor is public (the model's
  FlowTuple, Segment and actions, which plugins build and subclass): a hand-written
  `__init__` stores each field through its slot's own setter.
- `unfrozen(cls)`, for the engine's internal builders (one function per class, about
  a third of the setters' cost again): a class with the same slots and no refusing
  __setattr__; the builder fills one with plain attribute stores and then gives it
  `cls` as its class (the same slots, so the same layout: CPython allows it).

Either way every field must be set: tests/test_model_init.py and tests/test_fastpath.py
compare what they build with what the generated `__init__` builds.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Callable


def slot_setters(cls: type) -> tuple[Callable[[Any, Any], None], ...]:
    """The `__set__` of each of the slotted dataclass `cls`'s fields, in field order."""
    return tuple(cls.__dict__[f.name].__set__ for f in fields(cls))


def unfrozen(cls: type) -> type:
    """A class with the slots of the frozen, slotted dataclass `cls`, which may be set."""
    slots: Any = cls.__dict__.get("__slots__")
    if not slots:
        raise TypeError(f"{cls.__name__} is not a slotted class")
    return type(f"Unfrozen{cls.__name__}", (), {"__slots__": tuple(slots), "__module__": cls.__module__})
