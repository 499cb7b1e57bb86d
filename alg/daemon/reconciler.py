"""The reconciler: alg's expectation table kept true to the kernel's.

The kernel's expectation events say what it created and let go: an
expectation alg attached to a verdict is confirmed by its EXP_NEW; one whose
flow came (or that someone deleted, or that timed out) ends with EXP_DESTROY
and no longer counts against ExpectMax, the budget or a later master's claim
to the same tuple. Events can be lost (ENOBUFS, counted): a missed end shows
up as a clash, which the engine checks with the kernel before refusing.

At start and after a reload the kernel's expectations of alg's helpers are
dumped and adopted into the table: those an earlier instance created, or
that a firewall pair's sync committed, count like alg's own. An EXP_NEW of
one of alg's helpers that alg did not ask for is adopted too: on a pair's
backup, conntrackd commits the primary's expectations (`conntrackd -c`) while
alg runs, and they must count against ExpectMax and the budget from then on.

What the events cost is kept to what they can change: the kernel does not
send alg the EXP_NEW of an expectation alg created over ctnetlink (its answer
said so; alg.kernel.ctnetlink.Events), events of helpers that are not this
process's (the kernel's own, another worker's instances) are dropped on their
helper's name, and the rest are matched by numbers; an expectation is parsed
whole only when it is to be adopted.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Iterable, Protocol

from ..engine import Engine
from .sink import KernelSink

log = logging.getLogger("alg.daemon")


class EventPort(Protocol):
    """alg.kernel.ctnetlink.Events"""

    def fileno(self) -> int: ...
    def read(self) -> list[Any]: ...
    def close(self) -> None: ...


class Reconciler:
    def __init__(self, events: EventPort, engine: Engine, sink: KernelSink, stats: Any,
                 clock: Callable[[], float] = time.monotonic):
        self.events, self.engine, self.sink, self.stats, self.clock = events, engine, sink, stats, clock
        sink.read_events = self.read

    def fileno(self) -> int:
        return self.events.fileno()

    def read(self) -> None:
        slots = self.engine.slots
        last = {}  # the last event per tuple and mask says whether the kernel holds it now
        for ev in self.events.read():
            if ev.tuple_ints is None:
                self.stats.events_lost += 1
            elif ev.helper is None or ev.helper in slots:  # (another helper's, or another worker's, is not ours)
                last[(ev.tuple_ints, ev.mask_key)] = ev
        now = self.clock()
        adopted = []
        table = self.engine.table
        for ev in last.values():
            if ev.kind == "destroy" and not table.expects(ev.tuple_ints):
                continue  # nothing of alg's goes there (an expectation alg let go before the kernel did)
            e = table.holding_ints(ev.tuple_ints, ev.src_mask, ev.any_sport)
            if e is None and ev.kind == "new":
                k = ev.expectation  # parsed whole only now
                if k is not None:
                    adopted.append(k)  # one of our helpers' that alg did not create (a pair's sync committed it)
                continue
            if e is None or (e.kernel_master is not None and e.kernel_master._ints != ev.master_ints):
                continue  # not ours, or another master's expectation of the same tuple
            if ev.kind == "destroy":
                self.engine.ended(e, now)
            else:
                self.sink.confirmed(e.key)
        if adopted:
            self.adopt(adopted)

    def adopt(self, held: Iterable[Any]) -> int:
        """Adopt the kernel's expectations (KernelExpectation) of alg's helpers."""
        now, n = self.clock(), 0
        for k in held:
            if k.helper not in self.engine.slots or self.engine.table.holding(
                    k.tuple, k.mask.src, k.mask.sport == 0) is not None:
                continue
            if self.engine.adopt(k.helper, k.class_id, k.tuple, k.mask, k.master, k.timeout, k.flags, now):
                n += 1
        if n:
            log.info("adopted %d expectations the kernel holds for alg's helpers", n)
        self.stats.adopted += n
        return n

    def close(self) -> None:
        self.sink.read_events = lambda: None
        self.events.close()
