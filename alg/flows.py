"""Userspace flow table and TCP byte streams.

Live, the kernel's conntrack is the authority and this table only carries
what the kernel cannot: each flow's helper state and its unconsumed TCP
bytes. In replay it also stands in for conntrack: the first packet of a flow
fixes its original direction.

Theory of operation of `TcpStream` (one per direction): the first SYN (or,
when a capture starts mid-stream, the first segment seen) fixes the next
expected sequence number. An in-order segment is appended to `buf`; an
old one (retransmission) is trimmed to what is new, or ignored; a segment
from the future is parked in `ooo` until the hole fills. The helper consumes
from the front of `buf`. Buffered bytes (in order plus parked) are bounded by
the helper's `max_buffer`: past it the stream raises ProtocolViolation and
the flow stops being inspected, as a peer that never finishes a command
must not make us hold memory.

Holes that never fill. Live, a hole is a segment the firewall has not seen
yet: TCP retransmits it after three duplicate ACKs (about one round trip) or
its retransmission timeout (200 ms at least, doubling on each retry), and
meanwhile the sender can put on the wire only what its window allows beyond
the hole, a few segments on a control connection. In a capture a hole is
usually a packet the capture missed (tcpdump's "dropped by kernel", a lossy
SPAN port): it never fills, and capture time plays the clock. Either way,
once `GAP_SEGMENTS` segments or half of `max_buffer` bytes are parked behind
the hole, or the hole is older than `GAP_SECONDS` while data waits, the hole
is skipped: the unconsumed bytes before it (a message cut short) are dropped,
the stream jumps to the first parked segment, `gaps` is counted and
`resync` is set, so that the engine lets the helper find its next message
boundary (`Helper.resync`) before inspecting again. A retransmission of the
skipped bytes arriving later is old data and ignored: skipping too early
costs what the hole held, the same as a hole that never fills. A helper
that cannot resynchronise gives the direction up (`abandon`): its bytes are
dropped from then on, the other direction goes on.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

from .decode import TCP_SYN, Packet
from .errors import ProtocolViolation
from .frozen import unfrozen
from .model import TCP, Direction, FlowTuple

_MOD = 1 << 32
GAP_SEGMENTS = 16  # segments parked behind a hole before it is skipped
GAP_SECONDS = 20.0  # age of a hole (with data parked behind it) before it is skipped


_NO_SEGMENTS: dict[int, bytes] = {}  # shared by every stream with nothing parked (never written to)


class TcpStream:
    __slots__ = ("next_seq", "buf", "ooo", "ooo_bytes", "limit", "hole_since", "gaps", "resync", "abandoned")

    def __init__(self, limit: int):
        self.next_seq: int | None = None
        self.buf = b""
        self.ooo: dict[int, bytes] = _NO_SEGMENTS  # one of its own once a segment is parked
        self.ooo_bytes = 0
        self.limit = limit
        self.hole_since: float | None = None  # when the first segment was parked behind the current hole
        self.gaps = 0  # holes skipped
        self.resync = False  # buf starts after a skipped hole: the helper must find a boundary first
        self.abandoned = False  # the helper could not resynchronise: bytes are dropped

    def abandon(self) -> None:
        """Stop inspecting this direction (after a gap the helper cannot cross)."""
        self.abandoned, self.resync = True, False
        self.buf, self.ooo, self.ooo_bytes = b"", _NO_SEGMENTS, 0

    def feed(self, seq: int, flags: int, payload: bytes, now: float | None = None) -> bool:
        """Take a segment; True when new in-order bytes were appended (then
        `resync` tells whether `buf` starts after a skipped hole).

        `now` (capture or monotonic time) lets a hole age; without it only
        the amount of parked data decides when a hole is skipped."""
        if self.abandoned:
            return False
        if flags & TCP_SYN:
            seq = (seq + 1) % _MOD
            if self.next_seq is None:
                self.next_seq = seq
        if not payload:
            return False
        if self.next_seq is None:
            self.next_seq = seq
        ahead = (seq - self.next_seq) % _MOD
        if ahead >= _MOD // 2:  # starts before next_seq: retransmission or overlap
            behind = _MOD - ahead
            if behind >= len(payload):
                return False
            payload, seq = payload[behind:], self.next_seq
            ahead = 0
        if ahead:
            if self.ooo is _NO_SEGMENTS:
                self.ooo = {}
            if seq not in self.ooo or len(self.ooo[seq]) < len(payload):
                self.ooo_bytes += len(payload) - len(self.ooo.get(seq, b""))
                self.ooo[seq] = payload
            if self.hole_since is None or (now is not None and now < self.hole_since):
                self.hole_since = now if now is not None else 0.0
            if not self._hole_is_lost(now):
                self._check()
                return False
            self._skip_hole()
            skipped = True
        else:
            self._append(payload)
            skipped = False
        if self.ooo:  # (most segments come in order, nothing parked: _drain's call saved)
            self._drain()
        if not self.ooo:
            self.hole_since = None
        elif skipped:  # a further hole behind the skipped one starts its own clock
            self.hole_since = now if now is not None else 0.0
        self._check()
        return True

    def _hole_is_lost(self, now: float | None) -> bool:
        return (len(self.ooo) >= GAP_SEGMENTS or self.ooo_bytes >= self.limit // 2
                or (now is not None and self.hole_since is not None and now - self.hole_since >= GAP_SECONDS))

    def _skip_hole(self) -> None:
        """Give up on the hole: resume at the first parked segment."""
        first = min(self.ooo, key=lambda s: (s - self.next_seq) % _MOD)  # type: ignore[operator]
        self.buf = b""  # a message cut short by the hole
        self.next_seq = first
        self.gaps += 1
        self.resync = True

    def _drain(self) -> None:
        assert self.next_seq is not None
        while self.ooo:
            progressed = False
            for s in list(self.ooo):
                a = (s - self.next_seq) % _MOD
                data = self.ooo[s]
                if a == 0 or a >= _MOD // 2:
                    del self.ooo[s]
                    self.ooo_bytes -= len(data)
                    skip = 0 if a == 0 else _MOD - a
                    if skip < len(data):
                        self._append(data[skip:])
                        progressed = True
            if not progressed:
                break

    def _append(self, data: bytes) -> None:
        self.buf += data
        self.next_seq = (self.next_seq + len(data)) % _MOD  # type: ignore[operator]

    def _check(self) -> None:
        if len(self.buf) + self.ooo_bytes > self.limit:
            raise ProtocolViolation(f"more than {self.limit} bytes buffered without a complete message")


# ---------------------------------------------------------------- what outlives alg's table
FLOW_RECORD_LEN = 16  # bytes of the conntrack's helper private data alg uses (NFCTH_PRIV_DATA_LEN)
_RECORD = struct.Struct("!BBHII4x")
RECORD_VERSION = 1


class RecordFlag(enum.IntFlag):
    """Facts about a flow kept in its conntrack (helper private data), so that
    they outlive alg's own table: eviction, an idle hour, a restart of alg."""

    STARTED = 0x01  # alg saw the flow begin (its first packet, or a TCP SYN)
    GIVEN_UP = 0x02  # the flow broke its protocol (or alg could not follow it): never inspect it again
    KNOWN_ORIGINAL = 0x04  # the helper read a whole message from this direction: the stream speaks the protocol
    KNOWN_REPLY = 0x08
    BOUNDARY_ORIGINAL = 0x10  # `boundary` of this direction is a message boundary (TCP)
    BOUNDARY_REPLY = 0x20


KNOWN = (RecordFlag.KNOWN_ORIGINAL, RecordFlag.KNOWN_REPLY)
BOUNDARY = (RecordFlag.BOUNDARY_ORIGINAL, RecordFlag.BOUNDARY_REPLY)
_FLAGS_MASK = 0x3F  # every RecordFlag bit
# Each flags value made once: an IntFlag operation (&, |, a call) costs half a microsecond,
# and a record's flags are read or set for every packet
_FLAGS = tuple(RecordFlag(v) for v in range(_FLAGS_MASK + 1))
_RECORDS_MAX = 1024  # records kept unpacked for their bytes (_records)


@dataclass(frozen=True, slots=True)
class FlowRecord:
    """The flow's record in its conntrack, FLOW_RECORD_LEN bytes:

    version (1 byte), flags (1), reserved (2), for each direction the TCP
    sequence number of the last message boundary alg consumed up to (4 + 4),
    reserved (4). A record of zeros (what the kernel gives a new conntrack)
    says nothing. The kernel allows at most 32 bytes (the size of
    `struct nf_conn_help`'s data: nfnetlink_cthelper refuses more)."""

    flags: RecordFlag = RecordFlag(0)
    boundary: tuple[int, int] = (0, 0)

    def pack(self) -> bytes:
        flags = int(self.flags)
        data = _RECORD.pack(RECORD_VERSION, flags, 0, *self.boundary)
        if type(self) is FlowRecord and flags <= _FLAGS_MASK:  # (what unpack makes of data: this record)
            # a record is packed to go into its conntrack (the daemon's verdict), and its bytes come
            # back with the flow's next packet: unpacked as this very object, the engine sees at a
            # glance that the conntrack holds the flow's record (a TCP flow's moves with every message)
            _keep(data, self)
        return data

    def with_flags(self, bits: int) -> "FlowRecord":
        """This record with `bits` set too (itself when they are set already)."""
        flags, bits = int(self.flags), int(bits)
        if flags | bits == flags:
            return self
        if self.boundary == (0, 0) and flags | bits <= _FLAGS_MASK:
            return _PLAIN[flags | bits]
        return flow_record(flags | bits, self.boundary)

    def has(self, bits: int) -> bool:
        """Whether any of `bits` is set (without an IntFlag operation)."""
        return bool(int(self.flags) & int(bits))

    @classmethod
    def unpack(cls, data: bytes | None) -> "FlowRecord | None":
        """None when there is no record (no private data, zeros, or another layout)."""
        if not data or len(data) < _RECORD.size:
            return None
        if cls is FlowRecord and type(data) is bytes:  # (the daemon reads one record per packet)
            key = data if len(data) == _RECORD.size else data[:_RECORD.size]  # (what _unpack reads of it)
            if key in _records:
                return _records[key]
            return _keep(key, cls._unpack(key))
        return cls._unpack(data)

    @classmethod
    def _unpack(cls, data: bytes) -> "FlowRecord | None":
        version, flags, _r, b0, b1 = _RECORD.unpack_from(data)
        if version != RECORD_VERSION:
            return None
        if cls is FlowRecord:
            return _PLAIN[flags & _FLAGS_MASK] if b0 == b1 == 0 else flow_record(flags & _FLAGS_MASK, (b0, b1))
        return cls(_FLAGS[flags & _FLAGS_MASK], (b0, b1))


# The records without boundaries (every UDP flow's), one of each: the record a packet's
# conntrack brings is then the flow's own object, and the engine sees it unchanged at a glance
_PLAIN = tuple(FlowRecord(f) for f in _FLAGS)


# A record's bytes -> the record (FlowRecord is frozen: shared), the oldest dropped past
# _RECORDS_MAX: a UDP flow's record seldom changes, a TCP flow's comes back as it was packed
_records: dict[bytes, FlowRecord | None] = {}


def _keep(data: bytes, record: FlowRecord | None) -> FlowRecord | None:
    if len(_records) >= _RECORDS_MAX and data not in _records:
        del _records[next(iter(_records))]
    _records[data] = record
    return record


def as_flags(value: int) -> RecordFlag:
    """The RecordFlag of a number (made once for each value)."""
    return _FLAGS[value] if 0 <= value <= _FLAGS_MASK else RecordFlag(value)


_UnfrozenRecord = unfrozen(FlowRecord)


def flow_record(flags: int, boundary: tuple[int, int]) -> FlowRecord:
    """FlowRecord(as_flags(flags), boundary), built at the cost of a plain object (see alg.frozen):
    a TCP flow's record moves with every message, and comes back unpacked with its next packet."""
    r: Any = _UnfrozenRecord()
    r.flags, r.boundary = as_flags(flags), boundary
    r.__class__ = FlowRecord
    return r


@dataclass(frozen=True, slots=True, init=False)
class KernelView:
    """What the kernel says about a queued packet's flow (from the conntrack that
    comes with it): the daemon builds it, replay has none.

    `key` identifies the conntrack; `ends` are the real endpoints in the
    original direction (each direction's source: the client before source
    NAT, the server after destination NAT), which is how helpers judge the
    flow; `kernel` is the conntrack's original tuple, how the kernel names
    it as a master. Both are built only for a flow alg does not know yet."""

    key: tuple
    direction: Direction
    new: bool  # the packet opens the flow (ctinfo NEW in the original direction)
    confirmed: bool  # the conntrack is in the kernel's table (not while its first packet waits)
    expected: bool  # the conntrack was created by an expectation
    record: FlowRecord | None
    tuples: Callable[[], tuple[FlowTuple, FlowTuple]]  # () -> (ends, kernel)
    natted: bool = False  # the kernel translates the flow (its reply tuple is not the original's reverse)
    nat: Callable[[], Any] | None = None  # () -> model.NatMap, for a NATed flow

    def __new__(cls, key: tuple, direction: Direction, new: bool, confirmed: bool, expected: bool,
                record: FlowRecord | None, tuples: Callable[[], tuple[FlowTuple, FlowTuple]], natted: bool = False,
                nat: Callable[[], Any] | None = None) -> "KernelView":
        # one per queued packet: built as a plain object (alg.frozen), no __init__ after it
        v: Any = _UnfrozenView()
        v.key, v.direction, v.new, v.confirmed, v.expected = key, direction, new, confirmed, expected
        v.record, v.tuples, v.natted, v.nat = record, tuples, natted, nat
        v.__class__ = cls
        return v


_UnfrozenView = unfrozen(KernelView)


class Flow:
    """One master flow as alg sees it."""

    __slots__ = ("tuple", "helper", "state", "streams", "failed", "last_seen", "related_to", "kernel",
                 "record", "expected", "cost", "state_cost", "packets", "nat", "rewrote", "key")

    def __init__(self, tup: FlowTuple, helper: Any, state: Any, max_buffer: int, now: float):
        self.tuple = tup
        self.helper = helper  # an engine.HelperSlot, or None for flows alg does not inspect
        self.state = state
        self.streams = (TcpStream(max_buffer), TcpStream(max_buffer)) if tup.proto == TCP else None
        self.failed = False
        self.last_seen = now
        self.related_to: Any = None  # replay: the expectation this flow fulfilled
        self.kernel: FlowTuple | None = None  # live: the conntrack's original tuple (the master's name)
        self.record = FlowRecord()  # live: what the conntrack keeps for it
        self.expected = False  # created by an expectation (live: the conntrack has a master)
        self.cost = 0  # bytes charged to the memory budget
        self.state_cost = 0  # of which the helper's state, as last measured
        self.packets = 0
        self.nat: Any = None  # model.NatMap: the kernel translates this flow (its helper may rewrite)
        self.rewrote: Any = None  # (direction, seq, payload, edits): the last TCP segment rewritten
        self.key: tuple = ()  # its original key in the FlowTable that holds it (FlowTable.add sets it)

    def held(self) -> int:
        """Bytes buffered for the helper (both directions, in order and parked)."""
        if self.streams is None:
            return 0
        a, b = self.streams  # (no generator: the engine asks for every packet)
        return len(a.buf) + a.ooo_bytes + len(b.buf) + b.ooo_bytes


def packet_key(pkt: Packet) -> tuple:
    return (pkt.proto, pkt.src, pkt.dst, pkt.sport, pkt.dport)


def packet_tuple(pkt: Packet) -> FlowTuple:
    return FlowTuple(
        pkt.l3, pkt.proto, ipaddress.ip_address(pkt.src), ipaddress.ip_address(pkt.dst), pkt.sport, pkt.dport
    )


class FlowTable:
    """Flows by key, bounded in all and per helper: the least recently used is
    evicted first. Replay keys a flow by its packet tuple in both directions
    and forgets it after `idle_timeout` seconds (capture time); live, a flow
    is keyed by its conntrack and lives until evicted, since what must outlive
    the table is in the conntrack's record."""

    def __init__(self, max_flows: int = 65536, idle_timeout: float = 3600.0,
                 removed: Callable[[Flow], None] | None = None):
        self.max_flows = max_flows
        self.removed = removed  # told of every flow that leaves (evicted, expired or removed)
        self.idle_timeout = idle_timeout
        self._by_key: dict[tuple, tuple[Flow, Direction]] = {}
        self._flows: OrderedDict[tuple, Flow] = OrderedDict()  # original key -> flow, least recent first
        self._owned: dict[Any, OrderedDict[tuple, None]] = {}  # helper name -> its flows' keys, least recent first
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._flows)

    def all(self) -> list[Flow]:
        return list(self._flows.values())

    def lookup(self, pkt: Packet) -> tuple[Flow, Direction] | None:
        return self.get((pkt.proto, pkt.src, pkt.dst, pkt.sport, pkt.dport))

    def get(self, key: tuple) -> tuple[Flow, Direction] | None:
        """The flow of `key` (either direction's), now the most recently used."""
        found = self._by_key.get(key)
        if found is not None:
            # the key object the table holds (its key if the flow is found the original way): the
            # two orderings find it by identity, with no key comparison (a live key's conntrack
            # tuple, decoded anew for each packet, compares in Python)
            orig = found[0].key
            self._flows.move_to_end(orig)
            helper = found[0].helper
            if helper is not None:  # _owner(flow)
                self._owned[helper.policy.name].move_to_end(orig)
        return found

    def add(self, key: tuple, flow: Flow, limit: int | None = None, both_ways: bool = True) -> None:
        """Add a flow; `limit` bounds the flows of the same helper. `both_ways`:
        the reverse of `key` finds it too (replay's packet tuples)."""
        owner = _owner(flow)
        if owner is not None:
            owned = self._owned.setdefault(owner, OrderedDict())
            while limit is not None and len(owned) >= limit:
                self.remove(next(iter(owned)))
                self.evicted += 1
        while len(self._flows) >= self.max_flows:
            self.remove(next(iter(self._flows)))
            self.evicted += 1
        if owner is not None:
            self._owned[owner][key] = None
        self._flows[key] = flow
        flow.key = key
        self._by_key[key] = (flow, Direction.ORIGINAL)
        if both_ways:
            self._by_key[_reverse(key)] = (flow, Direction.REPLY)

    def oldest(self) -> tuple[tuple, Flow] | None:
        """The least recently used flow and its key (without using it)."""
        return next(iter(self._flows.items()), None)

    def remove(self, key: tuple) -> None:
        flow = self._flows.pop(key, None)
        if flow is None:
            return
        if self.removed is not None:
            self.removed(flow)
        owner = _owner(flow)
        if owner is not None and owner in self._owned:
            self._owned[owner].pop(key, None)
        self._by_key.pop(key, None)
        rev = _reverse(key)
        if self._by_key.get(rev, (None,))[0] is flow:
            del self._by_key[rev]

    def expire(self, now: float) -> int:
        """Forget flows idle for longer than `idle_timeout` (replay)."""
        stale = []
        for k, f in self._flows.items():  # least recent first: stop at the first fresh one
            if now - f.last_seen <= self.idle_timeout:
                break
            stale.append(k)
        for k in stale:
            self.remove(k)
        return len(stale)


def _owner(flow: Flow) -> str | None:
    return None if flow.helper is None else flow.helper.policy.name


def _reverse(key: tuple) -> tuple:
    if len(key) == 5:  # replay: (proto, src, dst, sport, dport)
        proto, src, dst, sport, dport = key
        return (proto, dst, src, dport, sport)
    return key  # live: the conntrack's key has one form
