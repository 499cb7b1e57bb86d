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

import ipaddress
from typing import Any

from .decode import TCP_SYN, Packet
from .errors import ProtocolViolation
from .model import TCP, Direction, FlowTuple

_MOD = 1 << 32
GAP_SEGMENTS = 16  # segments parked behind a hole before it is skipped
GAP_SECONDS = 20.0  # age of a hole (with data parked behind it) before it is skipped


class TcpStream:
    __slots__ = ("next_seq", "buf", "ooo", "ooo_bytes", "limit", "hole_since", "gaps", "resync", "abandoned")

    def __init__(self, limit: int):
        self.next_seq: int | None = None
        self.buf = b""
        self.ooo: dict[int, bytes] = {}
        self.ooo_bytes = 0
        self.limit = limit
        self.hole_since: float | None = None  # when the first segment was parked behind the current hole
        self.gaps = 0  # holes skipped
        self.resync = False  # buf starts after a skipped hole: the helper must find a boundary first
        self.abandoned = False  # the helper could not resynchronise: bytes are dropped

    def abandon(self) -> None:
        """Stop inspecting this direction (after a gap the helper cannot cross)."""
        self.abandoned, self.resync = True, False
        self.buf, self.ooo, self.ooo_bytes = b"", {}, 0

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


class Flow:
    """One master flow as alg sees it."""

    __slots__ = ("tuple", "helper", "state", "streams", "failed", "last_seen", "related_to")

    def __init__(self, tup: FlowTuple, helper: Any, state: Any, max_buffer: int, now: float):
        self.tuple = tup
        self.helper = helper  # an engine.HelperSlot, or None for flows alg does not inspect
        self.state = state
        self.streams = (TcpStream(max_buffer), TcpStream(max_buffer)) if tup.proto == TCP else None
        self.failed = False
        self.last_seen = now
        self.related_to: Any = None  # replay: the expectation this flow fulfilled


def packet_key(pkt: Packet) -> tuple:
    return (pkt.proto, pkt.src, pkt.dst, pkt.sport, pkt.dport)


def packet_tuple(pkt: Packet) -> FlowTuple:
    return FlowTuple(
        pkt.l3, pkt.proto, ipaddress.ip_address(pkt.src), ipaddress.ip_address(pkt.dst), pkt.sport, pkt.dport
    )


class FlowTable:
    """Flows by packet tuple in both directions, bounded in all and per helper
    (the oldest is evicted first), forgotten after `idle_timeout` seconds."""

    def __init__(self, max_flows: int = 65536, idle_timeout: float = 3600.0):
        self.max_flows = max_flows
        self.idle_timeout = idle_timeout
        self._by_key: dict[tuple, tuple[Flow, Direction]] = {}
        self._flows: dict[tuple, Flow] = {}  # original key -> flow, in insertion order
        self._owned: dict[Any, dict[tuple, None]] = {}  # helper slot -> its flows' keys, in order
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._flows)

    def lookup(self, pkt: Packet) -> tuple[Flow, Direction] | None:
        return self._by_key.get((pkt.proto, pkt.src, pkt.dst, pkt.sport, pkt.dport))

    def add(self, key: tuple, flow: Flow, limit: int | None = None) -> None:
        """Add a flow; `limit` bounds the flows of the same helper."""
        proto, src, dst, sport, dport = key
        if flow.helper is not None:
            owned = self._owned.setdefault(flow.helper, {})
            while limit is not None and len(owned) >= limit:
                self.remove(next(iter(owned)))
                self.evicted += 1
            owned[key] = None
        while len(self._flows) >= self.max_flows:
            self.remove(next(iter(self._flows)))
            self.evicted += 1
        self._flows[key] = flow
        self._by_key[key] = (flow, Direction.ORIGINAL)
        self._by_key[(proto, dst, src, dport, sport)] = (flow, Direction.REPLY)

    def remove(self, key: tuple) -> None:
        flow = self._flows.pop(key, None)
        if flow is None:
            return
        proto, src, dst, sport, dport = key
        if flow.helper is not None:
            self._owned.get(flow.helper, {}).pop(key, None)
        self._by_key.pop(key, None)
        self._by_key.pop((proto, dst, src, dport, sport), None)

    def expire(self, now: float) -> int:
        stale = [k for k, f in self._flows.items() if now - f.last_seen > self.idle_timeout]
        for k in stale:
            self.remove(k)
        return len(stale)
