"""The SIP helper's most frequent actions built at a third of their constructors' cost.

`settable(cls)` is a class with the slots of the frozen, slotted action `cls`, which may be
set: an instance filled with plain stores and then given `cls` as its class (the same slots,
so the same layout) is a genuine `cls`, without a store through each slot's setter. The
engine builds its own records this way (alg.frozen.unfrozen, which a helper may not import:
helpers use only `alg` itself). tests/test_sip_build.py compares what is built so with the
constructors.
"""

from __future__ import annotations


def settable(cls: type) -> type:
    """A class with the slots of the frozen, slotted `cls`, which may be set."""
    return type(f"Settable{cls.__name__}", (), {"__slots__": cls.__dict__["__slots__"], "__module__": __name__})
