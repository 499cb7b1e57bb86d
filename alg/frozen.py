"""Frozen, slotted dataclasses built at the cost of plain objects, for the packet path.

A frozen dataclass's __init__ sets each field through object.__setattr__ (its own
__setattr__ refuses): three times the cost of the object itself for a three-field
event, eight times for an Expectation's 24 fields, and the daemon builds several
per packet. `unfrozen(cls)` is a class with the same slots and no such __setattr__:
a builder fills one with plain attribute stores and then gives it `cls` as its
class (the same slots, so the same layout: CPython allows the assignment), after
which it is an instance of `cls` like any other: frozen, compared, hashed and
printed by the dataclass's own methods. A builder must set every slot (tests
compare what it builds with what `cls(...)` builds).
"""

from __future__ import annotations

from typing import Any


def unfrozen(cls: type) -> type:
    """A class with the slots of the frozen, slotted dataclass `cls`, which may be set."""
    slots: Any = cls.__dict__.get("__slots__")
    if not slots:
        raise TypeError(f"{cls.__name__} is not a slotted class")
    return type(f"Unfrozen{cls.__name__}", (), {"__slots__": tuple(slots), "__module__": cls.__module__})
