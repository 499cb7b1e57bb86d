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

import ipaddress
import logging
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from operator import attrgetter
from typing import Any, Callable, Iterable, Mapping

from .decode import Packet
from .errors import ProtocolViolation
from .expect import Expectation, ExpectationTable, Refusal, address_key, expectation
from .frozen import unfrozen
from .flows import (BOUNDARY, KNOWN, Flow, FlowRecord, FlowTable, KernelView, RecordFlag, flow_record, packet_key,
                    packet_tuple)
from .metrics import counter, gauge, to_json
from .model import (NEED_DATA, PROTO_NAMES, TCP, UDP, Direction, Expect, FlowTuple, Helper, Length, NatMap, Notice,
                    Parsed, Rewrite, Segment, Unexpect, invalid_expect)
from .nat import Edit, RewriteError, edit, message_edits
from .policy import CorePolicy, HelperPolicy

log = logging.getLogger("alg.engine")


@dataclass(frozen=True, slots=True)
class Create:
    expectation: Expectation


@dataclass(frozen=True, slots=True)
class Delete:
    expectation: Expectation
    why: str  # 'evicted' | 'removed'


@dataclass(frozen=True, slots=True)
class Remember:
    """Live: write the flow's record into its conntrack (with the packet's verdict)."""

    record: FlowRecord


@dataclass(frozen=True, slots=True)
class Mangle:
    """NAT: the packet's payload edited (offsets into its L4 payload, sorted, disjoint)."""

    edits: tuple[Edit, ...] | None  # None: the message's rewrite could not be made


Decision = Create | Delete | Remember | Mangle
NAT_PORT_TRIES = 64  # outside port pairs tried for a message's NATed expectations (the kernel tries them all)

# The setting that decides each engine refusal, named in explanations.
REFUSAL_KNOBS: dict[str, str] = {
    Refusal.BUDGET: "core.expect_budget",
    Refusal.HELPER_SHARE: "core.helper_share",
    Refusal.SOURCE_SHARE: "core.source_share",
    Refusal.PER_MESSAGE: "classes.<class>.expect_max, core.expect_per_message",
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


_UnfrozenEvent, _UnfrozenCreate, _UnfrozenDelete = unfrozen(ExpectationEvent), unfrozen(Create), unfrozen(Delete)
_UnfrozenRemember = unfrozen(Remember)


def _event(kind: str, e: Expectation, reason: str = "") -> ExpectationEvent:
    """ExpectationEvent(kind, e, reason), built as cheaply as a plain object (see alg.frozen)."""
    ev: Any = _UnfrozenEvent()
    ev.kind, ev.expectation, ev.reason = kind, e, reason
    ev.__class__ = ExpectationEvent
    return ev


def _create(e: Expectation) -> Create:
    d: Any = _UnfrozenCreate()
    d.expectation = e
    d.__class__ = Create
    return d


def _delete(e: Expectation, why: str) -> Delete:
    d: Any = _UnfrozenDelete()
    d.expectation, d.why = e, why
    d.__class__ = Delete
    return d


def _remember(record: FlowRecord) -> Remember:
    d: Any = _UnfrozenRemember()
    d.record = record
    d.__class__ = Remember
    return d


@dataclass
class ClassStats:
    created: int = counter("expectations admitted by the policy and sent to the kernel (kernel_failed: refused there)")
    evicted: int = counter("expectations withdrawn to make room under ExpectMax")
    removed: int = counter("expectations withdrawn by the helper (a call ended, a request failed)")
    used: int = counter("expectations ended before their timeout: their flow came (or were deleted in the kernel)")
    refused: Counter = counter("expectation requests refused, by reason", label="reason")
    kernel_failed: Counter = counter("expectations the kernel refused to create, by errno", label="errno")
    adopted: int = counter("expectations alg did not create taken into its table (an earlier instance's, "
                           "or committed by a firewall pair's sync)")


@dataclass
class HelperStats:
    packets: int = counter("packets of the helper's flows inspected")
    bytes: int = counter("payload bytes of the helper's flows inspected")
    parse_errors: int = counter("flows given up because the peer broke the protocol")
    internal_errors: int = counter("flows given up because the helper raised (a bug)")
    flows: int = counter("flows the helper took on")
    gaps: int = counter("TCP holes that did not fill and were skipped (lost segments)")
    desynced: int = counter("flow directions given up after a gap (no resynchronisation)")
    midstream: int = counter("flows met mid-stream that alg could not resume (never read as a new stream)")
    natted: int = counter("flows whose conntrack is NATed (judged by their real endpoints)")
    rewritten: int = counter("packets rewritten for NAT (payload, lengths and checksums)")
    nat_failed: int = counter("packets left unchanged because their NAT rewrite could not be made")
    notices: Counter = counter("things worth counting the helper noticed, by code", label="code")
    classes: dict[str, ClassStats] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return to_json(self) | {"classes": {n: to_json(c) for n, c in self.classes.items()}}


@dataclass
class TableStats:
    """alg's expectation table and flow table (rendered beside the daemon's figures)."""

    flows: int = gauge("flows in alg's flow table")
    flows_evicted: int = counter("flows evicted from alg's flow table (least recently used first)")
    flows_evicted_memory: int = counter("of which for the memory budget ([core] memory_budget_mb)")
    flow_bytes: int = gauge("bytes alg's flows hold, as charged to the memory budget")
    expectations: int = gauge("expectations alg holds (its own and adopted)")
    expect_budget: int = gauge("alg's expectation budget ([core] expect_budget)")
    expectations_by_helper: Counter = gauge("expectations held, by helper", label="helper")
    refused_sources: Counter = gauge("requests refused for a share of the budget, by sender address (bounded)",
                                     label="source")


class HelperSlot:
    """A configured helper: its policy, its instance and its counters."""

    __slots__ = ("policy", "helper", "stats", "max_expected", "class_names", "classes")

    def __init__(self, policy: HelperPolicy, helper: Helper):
        self.policy = policy
        self.helper = helper
        self.stats = HelperStats(classes={c.name: ClassStats() for c in policy.classes})
        self.max_expected = {c.name: c.max_expected for c in policy.classes}
        # looked up for every expectation (the policy's own lookups walk its classes)
        self.class_names = tuple(c.name for c in policy.classes)
        # name -> (counters, ExpectMax, class id, timeout): what an Expect's class decides, in one
        # lookup (the id and timeout of the first class of a name)
        self.classes: dict[str, tuple[ClassStats, int, int, int]] = {}
        for i, c in enumerate(policy.classes):
            self.classes.setdefault(c.name, (self.stats.classes[c.name], self.max_expected[c.name], i, c.timeout))


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
        self.flows = FlowTable(max_flows, removed=self._uncharge)
        self.flow_bytes = 0  # what alg's flows hold, as charged to [core] memory_budget_mb
        self.flows_evicted_memory = 0
        self.table = ExpectationTable()
        self._limit_table()
        self.refused_sources: Counter = Counter()  # who was refused a share (bounded: REFUSED_SOURCES_MAX)
        self.track_related = track_related  # replay: new flows fulfil expectations
        self.related_flows = 0
        self._swept = 0.0
        # what happened to expectations, (kind, expectation, reason): ExpectationEvents once taken
        # (take_events), so that a daemon nobody observes builds none (drop_events)
        self._events: list[tuple[str, Expectation, str]] = []
        self.explained: list[Explanation] | None = None  # a list: record why (see Explanation)
        self.warn = RateLimitedLog(log, self.core.log_interval)
        # Whether the kernel still holds an expectation, asked before refusing a clash
        # (the daemon sets it): an expectation used by its flow leaves the kernel at
        # once, and a new master may then expect the same tuple. None: the table is
        # the truth (replay removes used ones itself).
        self.kernel_holds: Callable[[Expectation], bool] | None = None
        # replay: the conntrack tuples a flow would get from the gateway's NAT (alg.nat.NatRules)
        self.nat_rules: Callable[[FlowTuple], NatMap | None] | None = None
        self.by_port: dict[tuple[int, int], HelperSlot] = {}
        self._index_ports()

    # ------------------------------------------------------------ configuration
    def reconfigure(self, slots: Mapping[str, HelperSlot], core: CorePolicy) -> None:
        """Apply a reloaded policy: new helper slots (existing flows follow their
        helper's new slot, so new options reach them; a helper that is gone stops
        inspecting its flows), the budget, the logging interval."""
        self.core = core
        self.slots = dict(slots)
        self._limit_table()
        self.warn.interval = core.log_interval
        self._index_ports()
        for flow in self.flows.all():
            if flow.helper is not None:
                flow.helper = self.slots.get(flow.helper.policy.name)

    def _limit_table(self) -> None:
        budget = self.core.expect_budget
        enabled = sum(1 for slot in self.slots.values() if slot.policy.enabled)
        # a helper alone may use the whole budget; beside others, its share
        self.table.budget = budget
        self.table.helper_cap = budget if enabled <= 1 else _share(budget, self.core.helper_share)
        self.table.source_cap = _share(budget, self.core.source_share)

    def _index_ports(self) -> None:
        # replay chooses the helper by protocol and destination port, as the
        # raw-table `CT --helper` rule would
        self.by_port = {}
        for slot in self.slots.values():
            if slot.policy.enabled:
                for proto in slot.policy.assigned:
                    for port in slot.policy.ports:
                        self.by_port.setdefault((proto, port), slot)

    # ------------------------------------------------------------ per packet
    def process(self, pkt: Packet, now: float, frame: int | None = None,
                slot: HelperSlot | None = None, view: KernelView | None = None) -> list[Decision]:
        """Inspect one packet. `slot` forces the helper (live: the queue's);
        `view` is what the kernel says of the packet's flow (live), without it
        the userspace flow table stands in for conntrack (replay)."""
        if view is not None:
            found = self.flows.get(view.key)
            if found is not None and (found[0].kernel is not None or not view.confirmed):
                flow, direction = found[0], view.direction  # (what _kernel_flow says of it, without the call)
            else:
                found = self._kernel_flow(pkt, view, now, slot, found)
                if found is None:
                    return []
                flow, direction = found
        else:
            if now - self._swept >= 1.0 or now < self._swept:
                self.sweep(now)
            found = self.flows.lookup(pkt)
            if found is not None and pkt.proto == TCP and found[1] is _ORIGINAL \
                    and _reopens(found[0], pkt):
                # a new connection on the same ports (a phone reconnecting from its
                # fixed source port): conntrack makes it a new flow, so do we
                self.flows.remove(packet_key(pkt))
                found = None
            if found is None:
                found = self._new_flow(pkt, now, slot)
            flow, direction = found
        flow.last_seen = now
        out = self._inspect(flow, direction, pkt, now, frame)
        if flow.nat is not None and out:
            out = self._one_mangle(flow, direction, pkt, out)
        self._charge(flow)
        if view is not None and view.record is not flow.record and view.record != flow.record and not view.expected:
            # the kernel keeps no record for a conntrack created by an expectation
            # (ctnetlink_change_helper leaves a child's helper alone)
            out.append(_remember(flow.record))
        return out

    def _inspect(self, flow: Flow, direction: Direction, pkt: Packet, now: float, frame) -> list[Decision]:
        h = flow.helper
        if h is None or flow.failed:
            return []
        h.stats.packets += 1
        h.stats.bytes += len(pkt.payload)
        try:
            if flow.streams is not None:
                last = flow.rewrote
                if last is not None and last[:3] == (direction, pkt.seq, pkt.payload):
                    return [Mangle(last[3])]  # a retransmission: rewritten as the first time
                stream = flow.streams[direction]
                out = self._feed(flow, direction, stream, pkt, now, frame, pkt)
                if flow.streams is not None:
                    self._note_stream(flow, direction, stream)
                return out
            if not pkt.payload:
                return []
            outcome = h.helper.inspect(Segment(pkt.payload, direction, flow.tuple, now,
                                               flow.expected if flow.related_to is None else _expected(flow),
                                               None if flow.nat is None else _nat(flow)), flow.state)
            if not isinstance(outcome, Parsed):
                return []
            if not int(flow.record.flags) & _KNOWN_BITS[direction]:  # (set once: with_flags' call saved after that)
                flow.record = flow.record.with_flags(KNOWN[direction])
            return self._apply(flow, outcome.actions, now, frame, direction, pkt.payload, 0)
        except ProtocolViolation as exc:
            self._give_up(flow)
            h.stats.parse_errors += 1
            self.warn(logging.INFO, f"violation-{h.policy.name}", "%s: %s: %s", h.policy.name, flow.tuple, exc)
            self._stopped(h, flow, direction, frame, "protocol-violation", str(exc))
        except Exception as exc:  # a helper bug must not cost the packet its verdict
            self._give_up(flow)
            h.stats.internal_errors += 1
            self.warn(logging.ERROR, f"bug-{h.policy.name}", "%s: helper raised %s on %s: %s",
                      h.policy.name, type(exc).__name__, flow.tuple, exc)
            self._stopped(h, flow, direction, frame, "helper-error", f"{type(exc).__name__}: {exc}")
        return []

    def _feed(self, flow: Flow, direction: Direction, stream, pkt: Packet, now: float, frame,
              pkt_in: Packet | None = None) -> list[Decision]:
        h = flow.helper
        gaps = stream.gaps
        if not stream.feed(pkt.seq, pkt.tcp_flags, pkt.payload, now):
            return []
        if stream.gaps != gaps:
            h.stats.gaps += stream.gaps - gaps
            self.warn(logging.INFO, f"gap-{h.policy.name}", "%s: %s: lost TCP segment skipped (%s)",
                      h.policy.name, flow.tuple, direction.name.lower())
            if not flow.record.has(KNOWN[direction]):
                # a hole before the stream showed it speaks the protocol: what
                # follows may be anyone's bytes (a PORT line in an HTTP body)
                stream.abandon()
                h.stats.desynced += 1
                return []
        # where this packet's bytes start in the buffer, for NAT edits (negative: not there)
        at = (pkt.seq - stream.next_seq + len(stream.buf)) % (1 << 32) if flow.nat is not None else 0
        return self._inspect_stream(flow, direction, stream, now, frame, at)

    def _one_mangle(self, flow: Flow, direction: Direction, pkt: Packet, out: list[Decision]) -> list[Decision]:
        """The edits of all the packet's messages as one, or none if one could not be made."""
        mangles = [d for d in out if type(d) is Mangle]
        if not mangles:
            return out
        rest: list[Decision] = [d for d in out if type(d) is not Mangle]
        if len(mangles) == 1:  # one message (a datagram's): its edits are sorted already
            one = mangles[0]
            if not one.edits:  # None (not made) or none to make
                return rest
            edits = one.edits
        else:
            if any(d.edits is None for d in mangles):
                return rest
            edits = tuple(sorted((e for d in mangles for e in d.edits or ()), key=_offset))
            if not edits:
                return rest
            one = Mangle(edits)
        size = len(pkt.payload)
        for e in edits:
            if e.offset + e.length > size:  # a message that goes on in the next packet
                flow.helper.stats.nat_failed += 1
                return rest
        flow.helper.stats.rewritten += 1
        if flow.streams is not None:
            flow.rewrote = (direction, pkt.seq, pkt.payload, edits)
        rest.append(one)
        return rest

    def _charge(self, flow: Flow) -> None:
        """Charge the flow's bytes to the memory budget; past it, evict the least
        recently used flows (whose record, live, keeps what must outlive them)."""
        flow.packets += 1
        h = flow.helper
        if h is not None and not flow.failed and flow.packets % STATE_SIZE_EVERY == 1:
            flow.state_cost = h.helper.state_size(flow.state)
        cost = FLOW_BYTES + (0 if flow.streams is None else flow.held()) + (0 if flow.failed else flow.state_cost)
        if cost != flow.cost:
            self.flow_bytes += cost - flow.cost
            flow.cost = cost
        budget = self.core.memory_budget_mb << 20
        while self.flow_bytes > budget:
            oldest = self.flows.oldest()
            if oldest is None or oldest[1] is flow:
                break
            self.flows.remove(oldest[0])
            self.flows.evicted += 1
            self.flows_evicted_memory += 1

    def _uncharge(self, flow: Flow) -> None:
        self.flow_bytes -= flow.cost
        flow.cost = 0

    def _give_up(self, flow: Flow) -> None:
        """Never inspect the flow again (kept in its record, so it outlives our table)."""
        flow.failed = True
        flow.state = None
        flow.streams = None  # nor keep its bytes
        flow.record = flow.record.with_flags(RecordFlag.GIVEN_UP)

    def _note_stream(self, flow: Flow, direction: Direction, stream) -> None:
        """Record where the next message of this direction starts, when known."""
        record = flow.record
        flags = old = int(record.flags)  # (numbers: an IntFlag operation costs a Python call)
        boundary = record.boundary
        if stream.abandoned:
            flags &= ~_BOUNDARY_BITS[direction]
            if all(s.abandoned for s in flow.streams or ()):
                self._give_up(flow)
                return
        elif stream.next_seq is not None and not stream.ooo and not stream.resync:
            at = (stream.next_seq - len(stream.buf)) % (1 << 32)
            flags |= _BOUNDARY_BITS[direction]
            boundary = (at, boundary[1]) if direction is _ORIGINAL else (boundary[0], at)
        if flags != old or boundary != record.boundary:
            flow.record = flow_record(flags, boundary)

    def _kernel_flow(self, pkt: Packet, view: KernelView, now: float, slot: HelperSlot | None,
                     found: tuple[Flow, Direction] | None) -> tuple[Flow, Direction] | None:
        """The flow of a queued packet, from its conntrack. A flow alg does not
        know is new only when the kernel says the packet opens it; otherwise
        alg lost it (evicted, or alg restarted) and the conntrack's record says
        how to go on: given up stays given up, a TCP direction resumes at its
        recorded boundary, or resynchronises if it spoke the protocol, or is
        given up. Mid-stream bytes are never read as the start of a stream.
        `found`: the flow table's entry for the packet (self.flows.get(view.key))."""
        if found is not None:
            flow = found[0]
            if flow.kernel is None and view.confirmed:
                # its first packet had no conntrack to name it by (looked up, unconfirmed)
                flow.kernel = view.tuples()[1]
                if view.nat is not None:
                    flow.nat = view.nat()
                if flow.helper is not None:
                    flow.helper.stats.natted += view.natted
            return flow, view.direction
        if slot is None or pkt.l3 not in slot.policy.families:
            return None
        ends, kernel = view.tuples()
        flow = self._flow_for(ends, slot, now)
        if view.confirmed or view.key[0] is not None:
            flow.kernel = kernel
            slot.stats.natted += view.natted
        flow.expected = view.expected
        if view.nat is not None:
            flow.nat = view.nat()
        record = view.record or FlowRecord()
        if view.new:
            flow.record = FlowRecord(RecordFlag.STARTED)
        elif record.flags & RecordFlag.GIVEN_UP or (flow.streams is not None
                                                     and not record.flags & RecordFlag.STARTED):
            flow.record = record
            self._give_up(flow)  # or it began before alg saw it: mid-stream bytes
            slot.stats.midstream += 1
        else:
            flow.record = replace(record, flags=record.flags | RecordFlag.STARTED)
            if flow.streams is not None:
                for d, stream in zip(Direction, flow.streams, strict=True):
                    if record.flags & BOUNDARY[d]:
                        stream.next_seq = record.boundary[d]
                    else:
                        stream.resync = True
                    if not record.flags & KNOWN[d]:
                        stream.abandon()
                if all(s.abandoned for s in flow.streams):
                    self._give_up(flow)
                    slot.stats.midstream += 1
        self.flows.add(view.key, flow, slot.policy.max_flows, both_ways=False)
        return flow, view.direction

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
                flow.expected = True
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
        flow = Flow(tup, slot, slot.helper.new_state(), slot.policy.max_buffer, now)
        if self.nat_rules is not None:
            flow.nat = self.nat_rules(tup)
        return flow

    def _inspect_stream(self, flow: Flow, direction: Direction, stream, now: float, frame,
                        at: int = 0) -> list[Decision]:
        """`at`: where the packet being inspected starts in the buffer (NAT edits must fall in it)."""
        decisions: list[Decision] = []
        helper = flow.helper.helper
        tup, state = flow.tuple, flow.state
        expected = _expected(flow)  # (once, not per message)
        if stream.resync:
            skip = helper.resync(Segment(stream.buf, direction, tup, now, expected), state)
            if skip is NEED_DATA:
                return decisions
            if skip is None:
                stream.abandon()
                flow.helper.stats.desynced += 1
                return decisions
            if not isinstance(skip, int) or not 0 <= skip <= len(stream.buf):
                raise RuntimeError(f"helper resync skipped {skip!r} of {len(stream.buf)} bytes")
            stream.buf, stream.resync = stream.buf[skip:], False
            at -= skip
        nat = None if flow.nat is None else _nat(flow)
        keep = self.explained is not None or nat is not None  # whether _apply is shown the message's bytes
        known = _KNOWN_BITS[direction]
        buf = stream.buf
        while buf:
            outcome = helper.inspect(Segment(buf, direction, tup, now, expected, nat), state)
            if outcome is NEED_DATA:
                break
            assert isinstance(outcome, Parsed)
            consumed = outcome.consumed
            if consumed <= 0 or consumed > len(buf):
                raise RuntimeError(f"helper consumed {consumed} of {len(buf)} bytes")
            message = buf[:consumed] if keep else b""
            buf = stream.buf = buf[consumed:]
            if not int(flow.record.flags) & known:
                flow.record = flow.record.with_flags(KNOWN[direction])
            if outcome.actions:  # (most messages of a control channel ask for nothing: _apply's call saved)
                decisions += self._apply(flow, outcome.actions, now, frame, direction, message, at)
            at -= consumed
        return decisions

    # ------------------------------------------------------------ actions
    def _apply(self, flow: Flow, actions: Iterable, now: float, frame: int | None,
               direction: Direction = Direction.ORIGINAL, message: bytes = b"", at: int = 0) -> list[Decision]:
        """The actions of one message. It may ask for at most ExpectMax of a class and
        `expect_per_message` in all: the rest is refused (counted), never admitted and
        evicted again by the same message (one INVITE asking 4,096 ports made 8,000
        ctnetlink operations). Under NAT (`at`: where the packet inspected starts in
        the message) its expectations move outside and its spans are rewritten."""
        actions = tuple(actions)
        if not actions:
            return []  # nothing asked for, nothing to rewrite: as the long way round, after _one_mangle
        tup = flow.tuple
        ints = tup._ints  # (l3, proto, src, dst, sport, dport), the addresses as numbers
        if direction is _ORIGINAL:  # (_sender and source_key, without their calls)
            sender, sender_key = tup.src, address_key(ints[2], ints[0])
        else:
            sender, sender_key = tup.dst, address_key(ints[3], ints[0])
        h: HelperSlot = flow.helper
        out: list[Decision] = []
        asked: dict[str, int] = {}  # Expects of each class in this message
        total = 0  # and in all
        nat = None if flow.nat is None else _nat(flow)
        outside: dict[int, int | None] = {}  # the sender's own ports expected outside (_outside_ports)
        if nat is not None:
            outside = self._outside_ports(flow, direction, actions, sender, nat)
        events, explained = self._events, self.explained  # (the same lists throughout the message)
        for a in actions:
            kind = type(a)
            if kind is Rewrite or kind is Length:
                continue  # NAT spans: the message's rewrite below (a message has a score of them)
            seen = len(events)
            if kind is Expect or kind is not Unexpect and isinstance(a, Expect):
                nat_to = None
                if nat is not None and a.dport in outside and a.dst == sender:
                    port = outside[a.dport]
                    if port is None:  # every outside port tried is another master's
                        self.refused(_expectation(h, flow, a, now, frame, sender, None, sender_key), Refusal.CLASH,
                                     "no free outside port")
                        continue
                    # the expected flow comes to the outside endpoint and is translated to the inside one
                    nat_to = (Direction(1 - direction), a.dst, a.dport)
                    a = _moved(a, nat.outside(direction), port)
                c = h.classes.get(a.cls)
                n = asked.get(a.cls, 0)
                if c is not None and (n >= c[1] or total >= self.core.expect_per_message):
                    c[0].refused[Refusal.PER_MESSAGE.value] += 1
                    events.append(("refused", _expectation(h, flow, a, now, frame, sender, None, sender_key),
                                   Refusal.PER_MESSAGE.value))
                    if explained is not None:
                        explained.append(self._explain(h, flow, a, frame, direction, message, events[-1:]))
                    continue
                asked[a.cls] = n + 1
                total += 1
                self._expect(h, c, flow, a, now, frame, sender, nat_to, sender_key, out)
            elif kind is Unexpect or isinstance(a, Unexpect):
                for e in self.table.of_master(flow.tuple, a.cls, a.tag):
                    self.table.remove(e)
                    h.stats.classes[e.cls].removed += 1
                    events.append(("removed", e, ""))
                    out.append(_delete(e, "removed"))
            elif isinstance(a, Notice):
                h.stats.notices[a.code] += 1
            elif isinstance(a, (Rewrite, Length)):
                continue
            if explained is not None and (events[seen:] or not isinstance(a, Unexpect)):
                explained.append(self._explain(h, flow, a, frame, direction, message, events[seen:]))
        if nat is not None:
            out.append(self._message_rewrite(flow, direction, actions, message, at, sender, outside, nat))
        return out

    def _outside_ports(self, flow: Flow, direction: Direction, actions: tuple, sender: Any,
                       nat: NatMap) -> dict[int, int | None]:
        """Inside port -> outside port, for the message's expectations of the
        sender's own address: the same ports if no other master expects them
        outside, else all moved by the smallest even offset that frees them (an
        RTP/RTCP pair stays a pair), None when NAT_PORT_TRIES offsets do not.
        (Keyed by the port alone: the address is the sender's, and an ipaddress
        object hashes through a hex string.)"""
        there = nat.outside(direction)
        inside = [a for a in actions if isinstance(a, Expect) and a.dst == sender]
        if not inside:
            return {}
        l3, master = flow.tuple.l3, flow.tuple
        # the sender's own port on this flow is reached outside where the NAT put it (nf_nat_sip:
        # "if the signalling port matches the connection's source port ... use the destination
        # port in the opposite direction"): an M-SEARCH answered on its masqueraded port
        own = flow.tuple.sport if direction is _ORIGINAL else flow.tuple.dport
        mapped = nat.map(direction, sender, own)
        base = {a.dport: a.dport for a in inside}
        if mapped is not None and mapped[1] is not None and own in base:
            base[own] = mapped[1]
        for shift in range(0, 2 * NAT_PORT_TRIES, 2):
            if all(base[a.dport] + shift < 65536 and self._port_free(
                    (l3, a.proto, None if a.src is None else int(a.src), int(there), a.sport,
                     base[a.dport] + shift), master)
                   for a in inside):
                return {a.dport: base[a.dport] + shift for a in inside}
        return {a.dport: None for a in inside}

    def _port_free(self, key: tuple, master: FlowTuple) -> bool:
        held = self.table.get(key)
        return held is None or held.master == master or (
            self.kernel_holds is not None and not self.kernel_holds(held))

    def _message_rewrite(self, flow: Flow, direction: Direction, actions: tuple, message: bytes, at: int,
                         sender: Any, outside: dict[int, int | None], nat: NatMap) -> Mangle:
        """The message's spans rewritten for the far side, as edits of the packet
        being inspected (`Mangle(None)`: they cannot be made); `outside`: the
        sender's ports expected outside (_outside_ports)."""
        there = nat.outside(direction)
        rewrites, lengths = [], []
        for a in actions:
            if not isinstance(a, Rewrite):
                if isinstance(a, Length):
                    lengths.append(a)
                continue
            moved = outside.get(a.port) if a.port is not None else None
            if moved is not None and a.addr != sender:
                moved = None
            to = (there, moved) if moved is not None else nat.map(direction, a.addr, a.port)
            if to is not None:
                rewrites.append((a, to[0], to[1]))
        if not rewrites:
            return Mangle(())
        try:
            edits = message_edits(len(message), rewrites, lengths, message)
            if not at:  # (the packet starts the message: its offsets are the packet's)
                return Mangle(tuple(edits))
            for e in edits:
                if e.offset < at:
                    raise RewriteError("a span in bytes of an earlier packet")
            return Mangle(tuple(edit(e.offset - at, e.length, e.data) for e in edits))
        except RewriteError as exc:
            flow.helper.stats.nat_failed += 1
            self.warn(logging.WARNING, f"nat-{flow.helper.policy.name}", "%s: %s: NAT rewrite not made: %s",
                      flow.helper.policy.name, flow.tuple, exc)
            return Mangle(None)

    def _explain(self, h: HelperSlot, flow: Flow, a: Any, frame: int | None, direction: Direction,
                 message: bytes, events: list[tuple[str, Expectation, str]]) -> Explanation:
        """What became of one action, from the events it caused ((kind, expectation, reason))."""
        def say(found: str, decision: str, reason: str = "", knob: str = "") -> Explanation:
            return Explanation(frame, h.policy.name, flow.tuple, direction, headline(message), found, decision,
                               reason, knob)

        if isinstance(a, Notice):
            return say(a.detail, "ignored", a.code, h.helper.spec.knobs.get(a.code, ""))
        if isinstance(a, Unexpect):
            return say(f"class {a.cls or 'any'} tag {a.tag or 'any'}", "withdrawn", f"{len(events)} removed")
        found = (f"{a.cls} {PROTO_NAMES.get(a.proto, a.proto)} {_endpoint(a.src, a.sport, a.src_prefix)} -> "
                 f"{_endpoint(a.dst, a.dport)}")
        reasons = {kind: reason for kind, _e, reason in events}
        if "refused" in reasons:
            why = reasons["refused"]
            return say(found, "refused", why, REFUSAL_KNOBS.get(why, ""))
        if "created" not in reasons:
            return say(found, "refused", Refusal.INVALID.value, REFUSAL_KNOBS[Refusal.INVALID])
        evicted = sum(kind == "evicted" for kind, _e, _r in events)
        if evicted:  # the kernel's way with ExpectMax: the oldest goes
            return say(found, "expected", f"evicted {evicted} older (ExpectMax {h.max_expected[a.cls]})",
                       f"classes.{a.cls}.expect_max")
        return say(found, "expected")

    def _expect(self, h: HelperSlot, c: tuple[ClassStats, int, int, int] | None, flow: Flow, a: Expect, now: float,
                frame, sender: Any, nat_to: tuple | None, sender_key: int | None, out: list[Decision]) -> None:
        """Put one Expect through the policy gate; its decisions are appended to `out`.
        `c`: h.classes[a.cls], None for a class the helper does not have."""
        cls = None if c is None else c[0]
        l3 = flow.tuple.l3
        # what invalid_expect checks, said quickly for what it passes (TCP or UDP, each port
        # 1-65535 or a None sport, addresses of the flow's family); anything else it judges
        family = _FAMILY.get(l3)
        proto, sport, dport, src = a.proto, a.sport, a.dport, a.src
        if cls is None or not ((proto == UDP or proto == TCP) and type(dport) is int and 0 < dport < 65536
                               and (sport is None or type(sport) is int and 0 < sport < 65536)
                               and type(a.dst) is family and (src is None or type(src) is family)):
            invalid = invalid_expect(h.class_names, a, l3)
            if invalid is not None or cls is None:  # (an unknown class is invalid)
                pol = h.policy
                if cls is not None:
                    cls.refused[Refusal.INVALID.value] += 1
                else:  # not even a class to count it in: a helper bug
                    h.stats.internal_errors += 1
                self.warn(logging.ERROR, f"invalid-{pol.name}", "%s: invalid expectation request %r: %s", pol.name,
                          a, invalid)
                return
        assert c is not None  # (an unknown class was refused above)
        _cls, max_expected, class_id, timeout = c  # (_expectation, inline: its call costs as much as its work)
        e = expectation(h.policy.name, a.cls, class_id, l3, proto, src, a.dst, sport, dport, flow.tuple, timeout,
                        a.flags, frame, now, a.tag, a.src_prefix, a.assign_helper, flow.kernel, sender, nat_to,
                        sender_key)
        table = self.table
        held = table.get(e.key)
        if held is not None and held.master != e.master and self.kernel_holds is not None \
                and not self.kernel_holds(held):
            self.ended(held, now)  # used, and we missed the kernel's event: no clash
        evicted: list[Expectation] = []
        refused = table.admit_into(e, max_expected, evicted)
        events = self._events
        for victim in evicted:
            cls.evicted += 1
            events.append(("evicted", victim, ""))
            out.append(_delete(victim, "evicted"))
        if refused is not None:
            self.refused(e, refused)
            return
        cls.created += 1
        events.append(("created", e, ""))
        out.append(_create(e))

    def refused(self, e: Expectation, why: Refusal, detail: str = "") -> None:
        h = self.slots.get(e.helper)
        if h is not None:
            h.stats.classes[e.cls].refused[why.value] += 1
        self._events.append(("refused", e, why.value))
        if why is Refusal.SOURCE_SHARE and e.source is not None and (
                e.source in self.refused_sources or len(self.refused_sources) < REFUSED_SOURCES_MAX):
            self.refused_sources[e.source] += 1
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
            self._events.append(("used", e, ""))

    def adopt(self, helper: str, class_id: int, tup: FlowTuple, mask: FlowTuple, master: FlowTuple,
              timeout: int, flags: int, now: float) -> Expectation | None:
        """Take into the table an expectation the kernel holds for one of our helpers
        that this instance did not create (an earlier instance's, before a restart
        or reload, or one a firewall pair's sync committed): it counts against
        ExpectMax and the budget like our own. Its master is named as the kernel
        names it (the endpoints' view of a NATed master is not known)."""
        slot = self.slots.get(helper)
        if slot is None or not 0 <= class_id < len(slot.policy.classes):
            return None
        width = 32 if tup.l3 == 4 else 128
        bits = bin(int(mask.src)).count("1")
        e = Expectation(helper, slot.policy.classes[class_id].name, class_id, tup.l3, tup.proto,
                        tup.src if bits else None, tup.dst, tup.sport if mask.sport else None, tup.dport, master,
                        timeout, flags, None, now, None, bits if 0 < bits < width else None,
                        kernel_master=master)
        if not self.table.insert(e):
            return None
        if e.cls in slot.stats.classes:
            slot.stats.classes[e.cls].adopted += 1
        return e

    def kernel_failed(self, e: Expectation, errno_name: str, full: bool) -> None:
        """The daemon reports a create the kernel refused: undo and count it."""
        self.table.remove(e)
        h = self.slots.get(e.helper)
        if h is not None:
            h.stats.classes[e.cls].kernel_failed[errno_name] += 1
        self._events.append(("failed", e, errno_name))
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
        """What happened to expectations since the last call (or drop_events)."""
        events, self._events = self._events, []
        return [_event(kind, e, reason) for kind, e, reason in events]

    def has_events(self) -> bool:
        """Whether something happened to expectations since the last take_events (or drop_events)."""
        return bool(self._events)

    def drop_events(self) -> None:
        """Forget what happened since the last call, unseen (nobody observes it)."""
        self._events = []

    def stats(self) -> dict[str, Any]:
        table = TableStats(len(self.flows), self.flows.evicted, self.flows_evicted_memory, self.flow_bytes,
                           len(self.table), self.table.budget,
                           Counter(self.table.per_helper),
                           Counter({str(a): n for a, n in self.refused_sources.most_common()}))
        return {"helpers": {n: s.stats.to_json() for n, s in self.slots.items()}, **to_json(table),
                "expect_helper_cap": self.table.helper_cap, "expect_source_cap": self.table.source_cap}


# What one flow costs alg beyond the bytes it buffers and its helper's state (measured with
# tracemalloc on live FTP flows: the flow, its streams, record, tuples and table entries)
FLOW_BYTES = 1536
STATE_SIZE_EVERY = 16  # packets of a flow between measurements of its helper's state
REFUSED_SOURCES_MAX = 64  # source addresses named in the refusal counters (spoofable: bounded)
# as plain numbers: an IntFlag operand costs a Python call (30 times an int's)
_KNOWN_BITS, _BOUNDARY_BITS = tuple(int(bit) for bit in KNOWN), tuple(int(bit) for bit in BOUNDARY)
_FAMILY = {4: ipaddress.IPv4Address, 6: ipaddress.IPv6Address}  # an expectation's addresses, by the flow's l3
_offset = attrgetter("offset")
_ORIGINAL = Direction.ORIGINAL  # (a module name: an enum member read off its class costs a lookup in the enum)


def _share(budget: int, fraction: float) -> int:
    return max(1, int(budget * fraction))


def _expectation(h: HelperSlot, flow: Flow, a: Expect, now: float, frame: int | None, sender: Any,
                 nat_to: tuple | None, sender_key: int | None) -> Expectation:
    """The expectation `a` asks for (`sender_key`: source_key(sender))."""
    _stats, _max, class_id, timeout = h.classes[a.cls]
    tup = flow.tuple
    return expectation(h.policy.name, a.cls, class_id, tup.l3, a.proto, a.src, a.dst, a.sport, a.dport, tup, timeout,
                       a.flags, frame, now, a.tag, a.src_prefix, a.assign_helper, flow.kernel, sender, nat_to,
                       sender_key)


def _moved(a: Expect, dst: Any, dport: int) -> Expect:
    """`a` asked at another destination (dataclasses.replace, without its cost per call)."""
    if type(a) is not Expect:
        return replace(a, dst=dst, dport=dport)
    return Expect(a.cls, a.proto, a.src, dst, a.sport, dport, a.flags, a.tag, a.where, a.src_prefix, a.assign_helper)


def _nat(flow: Flow) -> NatMap | None:
    """The flow's NAT mapping when its helper rewrites (policy `nat`), else None."""
    return flow.nat if flow.nat is not None and flow.helper is not None and flow.helper.policy.nat else None


def _sender(flow: Flow, direction: Direction) -> Any:
    return flow.tuple.src if direction is _ORIGINAL else flow.tuple.dst


def _expected(flow: Flow) -> bool:
    """The flow was created by an expectation of its own helper: in replay it fulfilled
    one; live, its conntrack has a master and this helper's queue got it."""
    e = flow.related_to
    if e is None:
        return flow.expected
    return flow.helper is not None and e.helper == flow.helper.policy.name


def _reopens(flow: Flow, pkt: Packet) -> bool:
    """A SYN (without ACK) whose sequence number is not the flow's own."""
    if pkt.tcp_flags & 0x12 != 0x02 or flow.streams is None:
        return False
    nxt = flow.streams[_ORIGINAL].next_seq
    return nxt is not None and nxt != (pkt.seq + 1) % (1 << 32)


def make_slots(policies: Iterable[HelperPolicy], classes: Mapping[str, type[Helper]]) -> dict[str, HelperSlot]:
    return {p.name: HelperSlot(p, classes[p.helper](p.options)) for p in policies if p.enabled}
