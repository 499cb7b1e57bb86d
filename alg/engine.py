"""The dispatcher: one decoded packet in, kernel work out.

`Engine.process` finds the packet's flow, feeds its helper (a dictionary
lookup and a direct call, no pluggy on this path), puts every expectation
request through the policy gate and returns the `Decision`s (expectations to
create or delete) for the caller to carry out: the replay sink records them,
the daemon sends them to ctnetlink and reports kernel failures back with
`kernel_failed`. Nothing here does I/O, reads a clock or can fail a packet's
verdict: a helper that raises costs its flow, not the packet.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from .decode import Packet
from .errors import ProtocolViolation
from .expect import Admission, Expectation, ExpectationTable, Refusal
from .flows import Flow, FlowTable, packet_key, packet_tuple
from .model import (NEED_DATA, PROTO_NAMES, TCP, Direction, Expect, FlowTuple, Helper, Notice, Parsed, Segment,
                    Unexpect, ports_ok)
from .policy import CorePolicy, HelperPolicy

log = logging.getLogger("alg.engine")


@dataclass(frozen=True, slots=True)
class Create:
    expectation: Expectation


@dataclass(frozen=True, slots=True)
class Delete:
    expectation: Expectation
    why: str  # 'evicted' | 'removed'


Decision = Create | Delete

# The setting that decides each engine refusal, named in explanations.
REFUSAL_KNOBS: dict[str, str] = {
    Refusal.BUDGET: "core.expect_budget",
    Refusal.CLASH: "none: the kernel lets one master expect a tuple (EBUSY)",
    Refusal.KERNEL_FULL: "sysctl net.netfilter.nf_conntrack_expect_max",
    Refusal.INVALID: "none: a helper bug",
}
HEADLINE_MAX = 100  # characters of a message's first line shown in an explanation


@dataclass(frozen=True, slots=True)
class Explanation:
    """Why a control message did or did not open a pinhole: one per helper
    action, collected in `Engine.explained` when that is a list (replay's
    `--explain`; the daemon may drain it with `take_explanations` and log it)."""

    frame: int | None
    helper: str
    flow: FlowTuple  # the master, original direction
    direction: Direction
    message: str  # the message's first line for text protocols, '' for binary ones
    found: str  # the expected flow asked for, or the notice's detail
    decision: str  # expected | refused | ignored | withdrawn | flow no longer inspected (replay: not inspected)
    reason: str = ""  # the refusal's or the notice's code; evictions for an expectation
    knob: str = ""  # the policy setting that decides it

    def to_json(self) -> dict[str, Any]:
        return {"frame": self.frame, "helper": self.helper, "master": str(self.flow),
                "direction": self.direction.name.lower(), "message": self.message, "found": self.found,
                "decision": self.decision, "reason": self.reason, "knob": self.knob}

    def to_text(self) -> str:
        why = f" ({self.reason})" if self.reason else ""
        knob = f" [{self.knob}]" if self.knob else ""
        msg = f" {self.message!r}" if self.message else ""
        return (f"frame {self.frame} {self.helper} {self.flow} {self.direction.name.lower()}{msg}: "
                f"{self.found or '-'} => {self.decision}{why}{knob}")


def _endpoint(addr: Any, port: int | None, prefix: int | None = None) -> str:
    """'10.0.0.1:21', '[fd00::1]:21', '*:*', 'fe80::1/64:*' for an explanation."""
    text = "*" if addr is None else str(addr) + (f"/{prefix}" if prefix is not None else "")
    if addr is not None and addr.version == 6:
        text = f"[{text}]"
    return f"{text}:{'*' if port is None else port}"


def headline(data: bytes) -> str:
    """A text message's first line (a command, a request or status line), else ''."""
    line = data[:HEADLINE_MAX].split(b"\n", 1)[0].rstrip(b"\r").decode("latin-1")
    return line if line.isascii() and line.isprintable() else ""


@dataclass(frozen=True, slots=True)
class ExpectationEvent:
    """What `alg_expectation_event` observers get."""

    kind: str  # created | refused | evicted | removed | failed | used
    expectation: Expectation
    reason: str = ""


@dataclass
class ClassStats:
    created: int = 0
    evicted: int = 0
    removed: int = 0
    used: int = 0  # ended before their timeout: their flow came (or someone deleted them in the kernel)
    refused: Counter = field(default_factory=Counter)  # by Refusal value
    kernel_failed: Counter = field(default_factory=Counter)  # by errno name


@dataclass
class HelperStats:
    packets: int = 0
    bytes: int = 0
    parse_errors: int = 0
    internal_errors: int = 0
    flows: int = 0
    gaps: int = 0  # TCP holes that did not fill and were skipped (lost segments)
    desynced: int = 0  # flow directions given up after a gap (the helper could not resynchronise)
    notices: Counter = field(default_factory=Counter)
    classes: dict[str, ClassStats] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "packets": self.packets, "bytes": self.bytes, "flows": self.flows,
            "parse_errors": self.parse_errors, "internal_errors": self.internal_errors,
            "gaps": self.gaps, "desynced": self.desynced,
            "notices": dict(self.notices),
            "classes": {
                n: {"created": c.created, "evicted": c.evicted, "removed": c.removed, "used": c.used,
                    "refused": dict(c.refused), "kernel_failed": dict(c.kernel_failed)}
                for n, c in self.classes.items()
            },
        }


class HelperSlot:
    """A configured helper: its policy, its instance and its counters."""

    __slots__ = ("policy", "helper", "stats", "max_expected")

    def __init__(self, policy: HelperPolicy, helper: Helper):
        self.policy = policy
        self.helper = helper
        self.stats = HelperStats(classes={c.name: ClassStats() for c in policy.classes})
        self.max_expected = {c.name: c.max_expected for c in policy.classes}


class RateLimitedLog:
    """Logs a message kind at most once per interval, with the count suppressed."""

    def __init__(self, logger: logging.Logger, interval: float, clock: Callable[[], float] = time.monotonic):
        self.logger, self.interval, self.clock = logger, interval, clock
        self._last: dict[str, float] = {}
        self._suppressed: Counter = Counter()

    def __call__(self, level: int, kind: str, msg: str, *args: Any) -> None:
        now = self.clock()
        last = self._last.get(kind)
        if last is not None and now - last < self.interval:
            self._suppressed[kind] += 1
            return
        self._last[kind] = now
        n = self._suppressed.pop(kind, 0)
        self.logger.log(level, msg + (f" ({n} more since last report)" if n else ""), *args)


class Engine:
    def __init__(
        self,
        slots: Mapping[str, HelperSlot],
        core: CorePolicy | None = None,
        *,
        track_related: bool = False,
        max_flows: int = 65536,
    ):
        self.core = core or CorePolicy()
        self.slots = dict(slots)
        self.flows = FlowTable(max_flows)
        self.table = ExpectationTable(self.core.expect_budget)
        self.track_related = track_related  # replay: new flows fulfil expectations
        self.related_flows = 0
        self._swept = 0.0
        self.events: list[ExpectationEvent] = []
        self.explained: list[Explanation] | None = None  # a list: record why (see Explanation)
        self.warn = RateLimitedLog(log, self.core.log_interval)
        # Whether the kernel still holds an expectation, asked before refusing a clash
        # (the daemon sets it): an expectation used by its flow leaves the kernel at
        # once, and a new master may then expect the same tuple. None: the table is
        # the truth (replay removes used ones itself).
        self.kernel_holds: Callable[[Expectation], bool] | None = None
        # replay chooses the helper by protocol and destination port, as the
        # raw-table `CT --helper` rule would
        self.by_port: dict[tuple[int, int], HelperSlot] = {}
        for slot in self.slots.values():
            if slot.policy.enabled:
                for proto in slot.policy.protocols:
                    for port in slot.policy.ports:
                        self.by_port.setdefault((proto, port), slot)

    # ------------------------------------------------------------ per packet
    def process(self, pkt: Packet, now: float, frame: int | None = None,
                slot: HelperSlot | None = None) -> list[Decision]:
        """Inspect one packet. `slot` forces the helper (live: the queue's)."""
        if now - self._swept >= 1.0 or now < self._swept:
            self.sweep(now)
        found = self.flows.lookup(pkt)
        if found is not None and pkt.proto == TCP and found[1] is Direction.ORIGINAL and _reopens(found[0], pkt):
            # a new connection on the same ports (a phone reconnecting from its
            # fixed source port): conntrack makes it a new flow, so do we
            self.flows.remove(packet_key(pkt))
            found = None
        flow, direction = found if found is not None else self._new_flow(pkt, now, slot)
        flow.last_seen = now
        h = flow.helper
        if h is None or flow.failed:
            return []
        h.stats.packets += 1
        h.stats.bytes += len(pkt.payload)
        try:
            if flow.streams is not None:
                stream = flow.streams[direction]
                gaps = stream.gaps
                if not stream.feed(pkt.seq, pkt.tcp_flags, pkt.payload, now):
                    return []
                if stream.gaps != gaps:
                    h.stats.gaps += stream.gaps - gaps
                    self.warn(logging.INFO, f"gap-{h.policy.name}", "%s: %s: lost TCP segment skipped (%s)",
                              h.policy.name, flow.tuple, direction.name.lower())
                return self._inspect_stream(flow, direction, stream, now, frame)
            if not pkt.payload:
                return []
            outcome = h.helper.inspect(Segment(pkt.payload, direction, flow.tuple, now), flow.state)
            if not isinstance(outcome, Parsed):
                return []
            return self._apply(flow, outcome.actions, now, frame, direction, pkt.payload)
        except ProtocolViolation as exc:
            flow.failed = True
            h.stats.parse_errors += 1
            self.warn(logging.INFO, f"violation-{h.policy.name}", "%s: %s: %s", h.policy.name, flow.tuple, exc)
            self._stopped(h, flow, direction, frame, "protocol-violation", str(exc))
        except Exception as exc:  # a helper bug must not cost the packet its verdict
            flow.failed = True
            h.stats.internal_errors += 1
            self.warn(logging.ERROR, f"bug-{h.policy.name}", "%s: helper raised %s on %s: %s",
                      h.policy.name, type(exc).__name__, flow.tuple, exc)
            self._stopped(h, flow, direction, frame, "helper-error", f"{type(exc).__name__}: {exc}")
        return []

    def _stopped(self, h: HelperSlot, flow: Flow, direction: Direction, frame: int | None, reason: str,
                 detail: str) -> None:
        """Explain why a flow is no longer inspected (nothing it says later opens anything)."""
        if self.explained is not None:
            self.explained.append(Explanation(frame, h.policy.name, flow.tuple, direction, "", detail[:200],
                                              "flow no longer inspected", reason))

    def sweep(self, now: float) -> list[Expectation]:
        """Forget idle flows and timed-out expectations (at most once a second)."""
        self._swept = now
        self.flows.expire(now)
        return self.table.expire(now)

    def _new_flow(self, pkt: Packet, now: float, slot: HelperSlot | None) -> tuple[Flow, Direction]:
        tup = packet_tuple(pkt)
        if self.track_related:
            exp = self.table.match(tup)
            if exp is not None:
                if not exp.flags & 0x1:  # PERMANENT ones stay
                    self.ended(exp, now)
                self.related_flows += 1
                child = self.slots.get(exp.helper) if exp.assign_helper else None
                flow = self._flow_for(tup, child, now)
                flow.related_to = exp
                self.flows.add(packet_key(pkt), flow)
                return flow, Direction.ORIGINAL
        if slot is None:
            slot = self.by_port.get((pkt.proto, pkt.dport))
            if slot is None:
                # a capture that starts mid-flow: the first packet may be the server's
                rev = self.by_port.get((pkt.proto, pkt.sport))
                if rev is not None and pkt.proto == TCP and not pkt.tcp_flags & 0x02:
                    flow = self._flow_for(tup.reversed(), rev, now)
                    self.flows.add((pkt.proto, pkt.dst, pkt.src, pkt.dport, pkt.sport), flow, rev.policy.max_flows)
                    return flow, Direction.REPLY
        if slot is not None and pkt.l3 not in slot.policy.families:
            slot = None
        flow = self._flow_for(tup, slot, now)
        self.flows.add(packet_key(pkt), flow, slot.policy.max_flows if slot else None)
        return flow, Direction.ORIGINAL

    def _flow_for(self, tup, slot: HelperSlot | None, now: float) -> Flow:
        if slot is None:
            return Flow(tup, None, None, 0, now)
        slot.stats.flows += 1
        return Flow(tup, slot, slot.helper.new_state(), slot.policy.max_buffer, now)

    def _inspect_stream(self, flow: Flow, direction: Direction, stream, now: float, frame) -> list[Decision]:
        decisions: list[Decision] = []
        helper = flow.helper.helper
        if stream.resync:
            skip = helper.resync(Segment(stream.buf, direction, flow.tuple, now), flow.state)
            if skip is NEED_DATA:
                return decisions
            if skip is None:
                stream.abandon()
                flow.helper.stats.desynced += 1
                return decisions
            if not isinstance(skip, int) or not 0 <= skip <= len(stream.buf):
                raise RuntimeError(f"helper resync skipped {skip!r} of {len(stream.buf)} bytes")
            stream.buf, stream.resync = stream.buf[skip:], False
        while stream.buf:
            outcome = helper.inspect(Segment(stream.buf, direction, flow.tuple, now), flow.state)
            if outcome is NEED_DATA:
                break
            assert isinstance(outcome, Parsed)
            if outcome.consumed <= 0 or outcome.consumed > len(stream.buf):
                raise RuntimeError(f"helper consumed {outcome.consumed} of {len(stream.buf)} bytes")
            message = stream.buf[: outcome.consumed] if self.explained is not None else b""
            stream.buf = stream.buf[outcome.consumed :]
            decisions += self._apply(flow, outcome.actions, now, frame, direction, message)
        return decisions

    # ------------------------------------------------------------ actions
    def _apply(self, flow: Flow, actions: Iterable, now: float, frame: int | None,
               direction: Direction = Direction.ORIGINAL, message: bytes = b"") -> list[Decision]:
        h: HelperSlot = flow.helper
        out: list[Decision] = []
        for a in actions:
            seen = len(self.events)
            if isinstance(a, Expect):
                out += self._expect(h, flow, a, now, frame)
            elif isinstance(a, Unexpect):
                for e in self.table.of_master(flow.tuple, a.cls, a.tag):
                    self.table.remove(e)
                    h.stats.classes[e.cls].removed += 1
                    self.events.append(ExpectationEvent("removed", e))
                    out.append(Delete(e, "removed"))
            elif isinstance(a, Notice):
                h.stats.notices[a.code] += 1
            if self.explained is not None and (self.events[seen:] or not isinstance(a, Unexpect)):
                self.explained.append(self._explain(h, flow, a, frame, direction, message, self.events[seen:]))
        return out

    def _explain(self, h: HelperSlot, flow: Flow, a: Any, frame: int | None, direction: Direction,
                 message: bytes, events: list[ExpectationEvent]) -> Explanation:
        """What became of one action, from the events it caused."""
        def say(found: str, decision: str, reason: str = "", knob: str = "") -> Explanation:
            return Explanation(frame, h.policy.name, flow.tuple, direction, headline(message), found, decision,
                               reason, knob)

        if isinstance(a, Notice):
            return say(a.detail, "ignored", a.code, h.helper.spec.knobs.get(a.code, ""))
        if isinstance(a, Unexpect):
            return say(f"class {a.cls or 'any'} tag {a.tag or 'any'}", "withdrawn", f"{len(events)} removed")
        found = (f"{a.cls} {PROTO_NAMES.get(a.proto, a.proto)} {_endpoint(a.src, a.sport, a.src_prefix)} -> "
                 f"{_endpoint(a.dst, a.dport)}")
        kinds = {ev.kind: ev for ev in events}
        if "refused" in kinds:
            why = kinds["refused"].reason
            return say(found, "refused", why, REFUSAL_KNOBS.get(why, ""))
        if "created" not in kinds:
            return say(found, "refused", Refusal.INVALID.value, REFUSAL_KNOBS[Refusal.INVALID])
        evicted = sum(ev.kind == "evicted" for ev in events)
        if evicted:  # the kernel's way with ExpectMax: the oldest goes
            return say(found, "expected", f"evicted {evicted} older (ExpectMax {h.max_expected[a.cls]})",
                       f"classes.{a.cls}.expect_max")
        return say(found, "expected")

    def _expect(self, h: HelperSlot, flow: Flow, a: Expect, now: float, frame) -> list[Decision]:
        pol = h.policy
        cls = h.stats.classes.get(a.cls)
        l3 = flow.tuple.l3
        if cls is None or a.proto not in PROTO_NAMES or not ports_ok(a.sport, a.dport) \
                or a.dst.version != l3 or (a.src is not None and a.src.version != l3):
            if cls is not None:
                cls.refused[Refusal.INVALID.value] += 1
            else:  # not even a class to count it in: a helper bug
                h.stats.internal_errors += 1
            self.warn(logging.ERROR, f"invalid-{pol.name}", "%s: invalid expectation request %r", pol.name, a)
            return []
        ec = pol.expect_class(a.cls)
        e = Expectation(pol.name, a.cls, pol.class_id(a.cls), l3, a.proto, a.src, a.dst, a.sport, a.dport,
                        flow.tuple, ec.timeout, a.flags, frame, now, a.tag, a.src_prefix, a.assign_helper)
        held = self.table.get(e.key)
        if held is not None and held.master != e.master and self.kernel_holds is not None \
                and not self.kernel_holds(held):
            self.ended(held, now)  # used, and we missed the kernel's event: no clash
        adm: Admission = self.table.admit(e, h.max_expected[a.cls])
        out: list[Decision] = []
        for victim in adm.evicted:
            cls.evicted += 1
            self.events.append(ExpectationEvent("evicted", victim))
            out.append(Delete(victim, "evicted"))
        if adm.refused is not None:
            self.refused(e, adm.refused)
            return out
        cls.created += 1
        self.events.append(ExpectationEvent("created", e))
        out.append(Create(e))
        return out

    def refused(self, e: Expectation, why: Refusal, detail: str = "") -> None:
        h = self.slots.get(e.helper)
        if h is not None:
            h.stats.classes[e.cls].refused[why.value] += 1
        self.events.append(ExpectationEvent("refused", e, why.value))
        hint = ""
        if why in (Refusal.BUDGET, Refusal.KERNEL_FULL):
            hint = " - the expectation table is full; raise it (see `alg doctor`)"
        self.warn(logging.WARNING, f"refused-{why.value}", "%s: expectation refused (%s%s) for %s%s",
                  e.helper, why.value, f": {detail}" if detail else "", e.master, hint)

    def ended(self, e: Expectation, now: float) -> None:
        """The kernel let e go: its flow came (or someone deleted it), or it timed out.
        Either way it no longer counts against ExpectMax, the budget or clashes."""
        if not self.table.remove(e):
            return
        if now < e.created + e.timeout - 1:  # not its timeout
            h = self.slots.get(e.helper)
            if h is not None and e.cls in h.stats.classes:
                h.stats.classes[e.cls].used += 1
            self.events.append(ExpectationEvent("used", e))

    def kernel_failed(self, e: Expectation, errno_name: str, full: bool) -> None:
        """The daemon reports a create the kernel refused: undo and count it."""
        self.table.remove(e)
        h = self.slots.get(e.helper)
        if h is not None:
            c = h.stats.classes[e.cls]
            c.created -= 1
            c.kernel_failed[errno_name] += 1
        self.events.append(ExpectationEvent("failed", e, errno_name))
        if full:
            self.refused(e, Refusal.KERNEL_FULL, errno_name)

    def take_explanations(self) -> list[Explanation]:
        """What `explained` gathered since the last call (live: log at debug level)."""
        if self.explained is None:
            return []
        explained, self.explained = self.explained, []
        return explained

    def log_explanations(self) -> None:
        """The daemon's debug log of why (call after `process` with `explained` set
        to a list when debug logging is on): rate-limited per helper and reason."""
        for x in self.take_explanations():
            self.warn(logging.DEBUG, f"explain-{x.helper}-{x.decision}-{x.reason}", "%s", x.to_text())

    def take_events(self) -> list[ExpectationEvent]:
        events, self.events = self.events, []
        return events

    def stats(self) -> dict[str, Any]:
        return {
            "helpers": {n: s.stats.to_json() for n, s in self.slots.items()},
            "flows": len(self.flows),
            "flows_evicted": self.flows.evicted,
            "expectations": len(self.table),
            "expect_budget": self.table.budget,
        }


def _reopens(flow: Flow, pkt: Packet) -> bool:
    """A SYN (without ACK) whose sequence number is not the flow's own."""
    if pkt.tcp_flags & 0x12 != 0x02 or flow.streams is None:
        return False
    nxt = flow.streams[Direction.ORIGINAL].next_seq
    return nxt is not None and nxt != (pkt.seq + 1) % (1 << 32)


def make_slots(policies: Iterable[HelperPolicy], classes: Mapping[str, type[Helper]]) -> dict[str, HelperSlot]:
    return {p.name: HelperSlot(p, classes[p.helper](p.options)) for p in policies if p.enabled}
