"""The SIP helper builds the actions every INVITE yields (Expect, Unexpect,
Parsed) without their constructors, as alg.frozen does for the engine's
records (issue 14: the constructors were a sixth of an INVITE's cost). Each
must be what the constructor builds: the same class, every field set, equal,
hashed alike, still frozen, picklable, printable."""

from __future__ import annotations

import dataclasses
import ipaddress
import pickle

import pytest

from alg import UDP, Expect, Parsed, Unexpect
from alg_helpers import sip

A, B = ipaddress.ip_address("10.0.1.2"), ipaddress.ip_address("10.0.2.2")
WHERE = ((10, 8), (40, 5))
NOTICE = sip.Notice("x")

CASES = [
    (sip._media_expect("video", B, A, 16002, "call-7", WHERE),
     Expect("video", UDP, B, A, None, 16002, 0, "call-7", WHERE)),
    (sip._media_expect("audio", None, A, 5004, "c", ()), Expect("audio", UDP, None, A, None, 5004, 0, "c", ())),
    (sip._parsed(616, (NOTICE,)), Parsed(616, (NOTICE,))),
    *zip(sip._withdraw_media("call-7"), (Unexpect("audio", "call-7"), Unexpect("video", "call-7"),
                                          Unexpect("image", "call-7")), strict=True),
]


@pytest.mark.parametrize("built, constructed", CASES, ids=lambda x: type(x).__name__)
def test_built_actions_are_what_the_constructors_build(built, constructed):
    assert type(built) is type(constructed)
    for f in dataclasses.fields(constructed):  # every field set (an unset slot raises here)
        assert getattr(built, f.name) == getattr(constructed, f.name), f.name
    assert built == constructed and hash(built) == hash(constructed) and repr(built) == repr(constructed)
    assert pickle.loads(pickle.dumps(built)) == constructed
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(built, dataclasses.fields(built)[0].name, None)

