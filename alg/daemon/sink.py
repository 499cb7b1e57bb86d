"""The kernel sink: expectations created and deleted in the kernel.

Every expectation exists in the kernel before its packet goes on, so that the
flow it announces cannot arrive first. One per packet rides on the packet's
verdict (NFQA_EXP; the worker decides which: QueueWorker._on_verdict), the
others are created over ctnetlink before the verdict. A master whose first
packet waits in our queue is not in the kernel's table yet (ctnetlink answers
ENOENT): its other expectations are created right after the verdict. The
kernel ignores an attachment it cannot make, so each one is confirmed from the
kernel's expectation events (the reconciler calls `confirmed`); one not
confirmed in time is counted as failed and created over ctnetlink instead
(whose answer then says why, e.g. the table is full). Retries wait on a timer
heap.

A verdict is sent with its batch's others, so an attachment reaches the kernel at
the batch's end. Whatever the sink then asks over ctnetlink (a delete, a create that
may make the kernel evict, a lookup) must not overtake it: a re-INVITE that
withdraws the media an INVITE earlier in the batch attached would delete nothing,
and the attachment would be made after, a pinhole alg no longer counts. Before its
next request the sink has the queues send the verdicts that carry an attachment
(`unsent`).

An expectation ExpectMax evicts is deleted over ctnetlink, unless the kernel
evicts it itself: creating an expectation whose master's helper allows
max_expected of its class, the kernel removes the oldest of that master and
class first (nf_conntrack_expect.c, __nf_ct_expect_check and
evict_oldest_expect), so with the same ExpectMax as alg's the EXP_DELETE is a
second round trip for the same work. The worker decides when that holds
(`create(e, evicts=victim)`); whatever keeps the kernel from creating e makes
the sink delete the victim as before.
"""

from __future__ import annotations

import errno as E
import heapq
import itertools
import logging
import time
from typing import Any, Callable, Protocol

from ..engine import Engine, RateLimitedLog
from ..errors import KernelError
from ..expect import Expectation
from ..model import FlowTuple

log = logging.getLogger("alg.daemon")
RETRY_DELAYS = (0.002, 0.01, 0.05, 0.2)  # ENOENT: the master's verdict is not through yet
ATTACH_WAIT = 1.0  # seconds for the kernel's event about an expectation attached to a verdict


class ExpectationPort(Protocol):
    """What the sink needs of ctnetlink (alg.kernel.ctnetlink.Ctnetlink)."""

    def create(self, e: Any, master: FlowTuple, exclusive: bool = False) -> None: ...
    def delete(self, e: Any) -> None: ...
    def get(self, e: Any) -> Any: ...


def errno_name(code: int) -> str:
    return E.errorcode.get(code, str(code))


class KernelSink:
    def __init__(self, ct: ExpectationPort, engine: Engine, stats: Any, warn: RateLimitedLog,
                 is_full: Callable[[KernelError], bool], clock: Callable[[], float] = time.monotonic):
        self.ct, self.engine, self.stats, self.warn, self.is_full, self.clock = ct, engine, stats, warn, is_full, clock
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._attached: dict[tuple, Expectation] = {}  # key -> attached, waiting for the kernel's event
        # reads the kernel's expectation events (the reconciler's): before an attachment is
        # given up, since what came meanwhile may confirm it or say that its flow came
        self.read_events: Callable[[], None] = lambda: None
        self._deferred: dict[tuple, Expectation] = {}  # key -> waiting for its master's verdict (ENOENT)
        self._unsent: set[Callable[[], None]] = set()  # sends a queue's verdicts, an attachment among them

    # ------------------------------------------------------------ timers
    def later(self, delay: float, work: Callable[[], None]) -> None:
        heapq.heappush(self._timers, (self.clock() + delay, next(self._order), work))

    def next_due(self) -> float | None:
        return self._timers[0][0] if self._timers else None

    def run_due(self) -> None:
        now = self.clock()
        while self._timers and self._timers[0][0] <= now:
            heapq.heappop(self._timers)[2]()

    # ------------------------------------------------------------ work
    def unsent(self, send: Callable[[], None]) -> None:
        """A queue holds a verdict with an attachment, not sent yet: `send` sends the queue's
        verdicts, before the sink's next ctnetlink request (see the module's docstring)."""
        self._unsent.add(send)

    def _send_verdicts(self) -> None:
        if self._unsent:
            sends, self._unsent = self._unsent, set()
            for send in sends:
                try:
                    send()
                except KernelError as exc:  # as the batch's own flush would have: those packets are lost
                    self.stats.kernel_errors[errno_name(exc.errno)] += 1
                    self.warn(logging.ERROR, "verdict", "verdicts not sent: %s", exc)

    def create(self, e: Expectation, attempt: int = 0, evicts: Expectation | None = None) -> bool:
        """Create e now; False when refused for lack of room. `evicts`: an expectation ExpectMax
        evicts for e, which the kernel removes itself when it creates e (see the module's
        docstring); deleted here if e is not created now."""
        assert e.kernel_master is not None
        self._send_verdicts()
        try:
            self.ct.create(e, e.kernel_master)
        except KernelError as exc:
            if evicts is not None:  # the kernel may have stopped before its eviction (EBUSY, ENOENT, ...)
                self.delete(evicts)
            if exc.errno == E.ENOENT and attempt < len(RETRY_DELAYS):
                self.stats.deferred += 1
                self._deferred[e.key] = e
                self.later(RETRY_DELAYS[attempt], lambda: self._retry(e, attempt + 1))
                return True
            self._settle(e)
            return self._failed(e, exc)
        self._settle(e)
        if evicts is not None:
            self.stats.evicted_by_kernel += 1
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s: created %s", e.helper, e.to_text())
        return True

    def _settle(self, e: Expectation) -> None:
        if self._deferred.get(e.key) is e:
            del self._deferred[e.key]

    def _retry(self, e: Expectation, attempt: int) -> None:
        if self.engine.table.get(e.key) is e:  # not ended or replaced meanwhile
            self.create(e, attempt)
        else:
            self._settle(e)

    def after_verdict(self, e: Expectation) -> None:
        """Create e once its master's first packet has had its verdict."""
        self._deferred[e.key] = e
        self.later(0.0, lambda: self._retry(e, 0))

    def settled(self, e: Expectation) -> bool:
        """Whether the kernel holds e unless it let it go: e was created over ctnetlink (or
        adopted, or its attachment confirmed), not waiting for a verdict or a retry."""
        key = e.key
        return self._attached.get(key) is not e and self._deferred.get(key) is not e

    def attached(self, e: Expectation, evicts: Expectation | None = None) -> None:
        """e rode on a verdict of its master: wait for the kernel's word. `evicts`: as create's,
        the kernel removes it as it creates e."""
        self._attached[e.key] = e
        self.stats.attached += 1
        if evicts is not None:
            self.stats.evicted_by_kernel += 1
        self.later(ATTACH_WAIT, lambda: self._attach_timeout(e))

    def confirmed(self, key: tuple) -> None:
        """The kernel announced an expectation with this key (l3, proto, src, dst, sport, dport)."""
        self._attached.pop(key, None)

    def _attach_timeout(self, e: Expectation) -> None:
        if self._attached.get(e.key) is e:
            # unread events (a long batch of packets under load) may hold its EXP_NEW, or the
            # end of an expectation already used: asked only now, the kernel would no longer
            # hold it, and creating it again would open what its flow has used
            self.read_events()
        if self._attached.pop(e.key, None) is not e or self.engine.table.get(e.key) is not e:
            return
        self._send_verdicts()
        try:
            held = self.ct.get(e) is not None
        except KernelError:
            held = False
        if not held:  # the kernel dropped the attachment: its master is confirmed now
            self.stats.attach_failed += 1
            self.create(e)  # a refusal (the table full, a clash) is counted and logged by its cause
            if self.engine.table.get(e.key) is e:
                self.warn(logging.WARNING, "attach", "%s: an expectation attached to a verdict was not created; "
                          "created over ctnetlink: %s", e.helper, e.to_text())

    def _failed(self, e: Expectation, exc: KernelError) -> bool:
        name = errno_name(exc.errno)
        full = self.is_full(exc)
        self.stats.kernel_errors[name] += 1
        self.engine.kernel_failed(e, name, full)
        if not full:
            self.warn(logging.WARNING, f"create-{name}", "%s: expectation %s refused by the kernel: %s",
                      e.helper, e.to_text(), exc)
        return not full

    def delete(self, e: Expectation) -> None:
        self._attached.pop(e.key, None)
        self._send_verdicts()
        try:
            self.ct.delete(e)
        except KernelError as exc:
            if exc.errno != E.ENOENT:  # already used or timed out
                self.stats.kernel_errors[errno_name(exc.errno)] += 1

    def holds(self, e: Expectation) -> bool:
        """Whether the kernel still holds e's tuple (asked before a clash is refused)."""
        self._send_verdicts()
        try:
            return self.ct.get(e) is not None
        except KernelError:
            return True  # in doubt the clash stands
