"""Two third-party helpers for the lab's fault scenario (tests/lab/scenarios/faults.sh):
`faulty` raises on every packet (a broken plugin), `quiet` reads every datagram and asks
for nothing (a flow to keep the queue busy). Found through the entry points of the
dist-info folder beside this module, as an installed plugin would be."""

from __future__ import annotations

import alg
from alg.model import ExpectClass, HelperSpec, Parsed, Segment


class Faulty(alg.Helper):
    spec = HelperSpec(name="faulty", protocols=(17,), ports=(7777,), classes=(ExpectClass("data", 1, 60),),
                      families=(4,), queue=41)

    def inspect(self, segment: Segment, state: object) -> Parsed:
        raise RuntimeError("a helper that raises on every packet")


class Quiet(alg.Helper):
    spec = HelperSpec(name="quiet", protocols=(17,), ports=(7778,), classes=(ExpectClass("data", 1, 60),),
                      families=(4,), queue=42)

    def inspect(self, segment: Segment, state: object) -> Parsed:
        return Parsed(len(segment.data))


@alg.hookimpl
def alg_register_helpers(register):
    register(Faulty)
    register(Quiet)
