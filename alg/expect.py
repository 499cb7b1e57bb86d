"""Expectations and the policy gate, with the kernel's semantics.

Per master and class at most ExpectMax expectations: a new one evicts the
oldest (nf_ct_expect_related does the same). Each lives ExpectTimeout
seconds. An identical expectation from the same master replaces the old one;
from another master it clashes (the kernel answers EBUSY). On top, a global
budget: past it a request is refused, counted with its reason, and the
caller decides the verdict (by default the packet is still accepted).

The budget is shared (issue 13: 410 INVITEs from one host filled it and a
legitimate FTP 227 was refused): one helper holds at most `helper_cap` and
one source address (the host whose message asked) at most `source_cap`
expectations. Every bound is checked *before* anything is evicted, so a
request that will be refused costs the table nothing (no evict-then-refuse
churn). What one message may ask for is capped by the engine.
"""

from __future__ import annotations

import enum
import ipaddress
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from .frozen import unfrozen
from .model import (EXPECT_F_INACTIVE, EXPECT_F_PERMANENT, EXPECT_F_USERSPACE, EXPECT_PROTO_NAMES, PROTO_NAMES,
                    FlowTuple, IPAddress)


class Refusal(str, enum.Enum):
    BUDGET = "budget"  # alg's global expectation budget is spent
    HELPER_SHARE = "helper-share"  # this helper holds its share of the budget
    SOURCE_SHARE = "source-share"  # the host that asked holds its share of the budget
    PER_MESSAGE = "per-message"  # one message asked for more than ExpectMax of a class (or the message cap)
    CLASH = "clash"  # the same tuple is expected by another master
    INVALID = "invalid"  # unknown class, bad port or family (a helper bug)
    KERNEL_FULL = "kernel-full"  # nf_conntrack_expect_max reached (ENOSPC/EMFILE)
    KERNEL = "kernel"  # any other kernel refusal


@dataclass(frozen=True, slots=True)
class Expectation:
    """One expectation: the expected flow's original-direction tuple and mask."""

    helper: str  # kernel helper name
    cls: str
    class_id: int
    l3: int
    proto: int
    src: IPAddress | None  # None: wildcard (mask 0)
    dst: IPAddress
    sport: int | None
    dport: int
    master: FlowTuple
    timeout: int
    flags: int = 0
    frame: int | None = None
    created: float = 0.0
    tag: str | None = None
    src_prefix: int | None = None  # bits of `src` that must match; None: all of them
    assign_helper: bool = False  # the expected flow gets the master's helper
    # live: the master's conntrack as the kernel names it (its original tuple);
    # `master` is the same flow as its endpoints see it, which may differ by NAT
    kernel_master: FlowTuple | None = None
    source: IPAddress | None = None  # who asked: the sender of the message (budget shares)
    # NAT: (direction, address, port) the expected flow is translated to (CTA_EXPECT_NAT): it
    # comes to the gateway's outside endpoint (dst, dport) and goes on to this inside one
    nat: tuple | None = None
    # the expected tuple in numbers (an address as its integer: cheap to hash); computed once,
    # the table looks it up about twenty times per message
    key: tuple = field(init=False, repr=False, compare=False)
    # `source` as a number (source_key): it keys the sources' shares of the budget, and an
    # ipaddress object hashes through a hex string
    source_key: int | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", (self.l3, self.proto, None if self.src is None else int(self.src),
                                         int(self.dst), self.sport, self.dport))
        object.__setattr__(self, "source_key", source_key(self.source))

    def matches(self, t: FlowTuple) -> bool:
        return (
            t.proto == self.proto
            and t.dst == self.dst
            and t.dport == self.dport
            and (self.src is None or (t._ints[2] ^ self.key[2]) & self.src_mask_int == 0)
            and (self.sport is None or t.sport == self.sport)
        )

    @property
    def src_mask_int(self) -> int:
        """The source mask as a number (0: any source), the way every match compares it: an
        ip_network per comparison cost the reconciler a third of alg's time in the lab (issue 14)."""
        if self.src is None:
            return 0
        return prefix_mask(self.l3, self.src.max_prefixlen if self.src_prefix is None else self.src_prefix)

    @property
    def src_mask(self) -> IPAddress:
        return _ADDRESS[self.l3](self.src_mask_int)

    def _zero(self) -> IPAddress:
        return _ZERO[self.l3]

    def _ones(self) -> IPAddress:
        return _ONES[self.l3]

    def to_json(self) -> dict[str, Any]:
        m = self.master
        extra: dict[str, Any] = {"assign_helper": True} if self.assign_helper else {}
        if self.nat is not None:
            extra["nat"] = {"dir": "reply" if self.nat[0] else "original", "to": str(self.nat[1]),
                            "port": self.nat[2]}
        return extra | {
            "helper": self.helper,
            "class": self.cls,
            "frame": self.frame,
            "l3": f"ipv{self.l3}",
            "proto": EXPECT_PROTO_NAMES[self.proto],
            "src": None if self.src is None else str(self.src),
            "dst": str(self.dst),
            "sport": self.sport,
            "dport": self.dport,
            "mask": {
                "src": str(self.src_mask),
                "dst": str(self._ones()),
                "sport": 0 if self.sport is None else 0xFFFF,
                "dport": 0xFFFF,
            },
            "master": {"src": str(m.src), "dst": str(m.dst), "sport": m.sport, "dport": m.dport,
                       "proto": PROTO_NAMES.get(m.proto, str(m.proto))},
            "timeout": self.timeout,
            "flags": flag_names(self.flags),
        }

    def to_text(self) -> str:
        """One line in the format of `conntrack -L expect` (libnetfilter_conntrack's
        default output: flags comma-joined, as `PERMANENT,INACTIVE`)."""
        m = self.master
        names = flag_names(self.flags)
        flags = " " + ",".join(names) if names else ""
        return (
            f"{self.timeout} proto={self.proto} src={self.src or self._zero()} dst={self.dst} "
            f"sport={self.sport or 0} dport={self.dport} "
            f"mask-src={self.src_mask} mask-dst={self._ones()} "
            f"sport={0 if self.sport is None else 65535} dport=65535 "
            f"master-src={m.src} master-dst={m.dst} sport={m.sport} dport={m.dport}"
            f"{flags} class={self.class_id} helper={self.helper}"
            + (f" nat-to={_endpoint(self.nat[1], self.nat[2])}" if self.nat is not None else "")
        )


_ADDRESS: dict[int, Callable[[int], IPAddress]] = {4: ipaddress.IPv4Address, 6: ipaddress.IPv6Address}
_ZERO: dict[int, IPAddress] = {4: ipaddress.IPv4Address(0), 6: ipaddress.IPv6Address(0)}
_ONES: dict[int, IPAddress] = {4: ipaddress.IPv4Address(2**32 - 1), 6: ipaddress.IPv6Address(2**128 - 1)}


def prefix_mask(l3: int, prefix: int) -> int:
    """The netmask of `prefix` bits in family `l3`, as a number."""
    bits = 32 if l3 == 4 else 128
    return ((1 << prefix) - 1) << (bits - prefix)


def source_key(addr: IPAddress | None) -> int | None:
    """An address as the number that keys its share of the budget (Expectation.source_key)."""
    return None if addr is None else address_key(int(addr), addr.version)


def address_key(number: int, l3: int) -> int:
    """source_key of the address `number` of family `l3` (IPv6 above 2**128: no IPv4 address shares it)."""
    return number | (l3 == 6) << 128


_Unfrozen = unfrozen(Expectation)


def expectation(helper: str, cls: str, class_id: int, l3: int, proto: int, src: IPAddress | None, dst: IPAddress,
                sport: int | None, dport: int, master: FlowTuple, timeout: int, flags: int, frame: int | None,
                created: float, tag: str | None, src_prefix: int | None, assign_helper: bool,
                kernel_master: FlowTuple | None, source: IPAddress | None, nat: tuple | None,
                source_number: int | None) -> Expectation:
    """Expectation(...) with every field given, built at the cost of a plain object (see
    alg.frozen; the engine's way, once per expectation asked for); `source_number` is
    source_key(source)."""
    e: Any = _Unfrozen()
    e.helper = helper
    e.cls = cls
    e.class_id = class_id
    e.l3 = l3
    e.proto = proto
    e.src = src
    e.dst = dst
    e.sport = sport
    e.dport = dport
    e.master = master
    e.timeout = timeout
    e.flags = flags
    e.frame = frame
    e.created = created
    e.tag = tag
    e.src_prefix = src_prefix
    e.assign_helper = assign_helper
    e.kernel_master = kernel_master
    e.source = source
    e.nat = nat
    e.key = (l3, proto, None if src is None else int(src), int(dst), sport, dport)
    e.source_key = source_number
    e.__class__ = Expectation
    return e


def flag_names(flags: int) -> list[str]:
    names = [(EXPECT_F_PERMANENT, "PERMANENT"), (EXPECT_F_INACTIVE, "INACTIVE"), (EXPECT_F_USERSPACE, "USERSPACE")]
    return [n for bit, n in names if flags & bit]


@dataclass
class Admission:
    """What admitting one expectation did to the table."""

    accepted: Expectation | None
    evicted: list[Expectation] = field(default_factory=list)
    refused: Refusal | None = None


class ExpectationTable:
    def __init__(self, budget: int = 4096, helper_cap: int | None = None, source_cap: int | None = None):
        self.budget = budget
        self.helper_cap = budget if helper_cap is None else helper_cap
        self.source_cap = budget if source_cap is None else source_cap
        self.per_helper: Counter[str] = Counter()
        self.per_source: Counter[int] = Counter()  # by Expectation.source_key
        self._by_master: dict[FlowTuple, dict[str, deque[Expectation]]] = {}
        self._by_key: dict[tuple, Expectation] = {}
        # (l3, proto, dst as an integer, dport) -> keys: what a new flow is matched by
        self._by_dest: dict[tuple, dict[tuple, None]] = {}

    def __len__(self) -> int:
        return len(self._by_key)

    def __iter__(self) -> Iterator[Expectation]:
        return iter(list(self._by_key.values()))

    def _deadline(self, e: Expectation) -> float:
        return e.created + e.timeout

    def expire(self, now: float) -> list[Expectation]:
        gone = [e for e in self._by_key.values() if self._deadline(e) <= now]
        for e in gone:
            self.remove(e)
        return gone

    def remove(self, e: Expectation) -> bool:
        key = e.key
        if self._by_key.get(key) is not e:
            return False
        self._forget(e)
        classes = self._by_master.get(e.master)
        if classes is None:
            return True
        q = classes.get(e.cls)
        if q is not None:
            if q[0] is e:  # the oldest: what ExpectMax evicts
                q.popleft()
            else:
                q.remove(e)
            if not q:
                del classes[e.cls]
        if not classes:
            del self._by_master[e.master]
        return True

    def _forget(self, e: Expectation) -> None:
        """Take e (in the table) out of every index but its master's queue."""
        key = e.key
        del self._by_key[key]
        _uncount(self.per_helper, e.helper)
        _uncount(self.per_source, e.source_key)
        where = _dest(key)
        dest = self._by_dest[where]
        del dest[key]
        if not dest:
            del self._by_dest[where]

    def admit(self, e: Expectation, max_expected: int) -> Admission:
        evicted: list[Expectation] = []
        refused = self.admit_into(e, max_expected, evicted)
        return Admission(e if refused is None else None, evicted, refused)

    def admit_into(self, e: Expectation, max_expected: int, evicted: list[Expectation]) -> Refusal | None:
        """admit() without the Admission: what it evicts is appended to `evicted`."""
        master = e.master
        old = self._by_key.get(e.key)
        if old is not None and old.master != master:
            return Refusal.CLASH
        classes = self._by_master.get(master)
        q = _EMPTY if classes is None else classes.get(e.cls, _EMPTY)
        # what admitting e would free: the same tuple asked again, or the
        # oldest of its master and class when that is full (the kernel's eviction)
        freed = old if old is not None else q[0] if len(q) >= max_expected else None
        # which bound admitting e would break (freeing `freed` first), if any
        if len(self._by_key) - (freed is not None) >= self.budget:
            return Refusal.BUDGET
        if self.per_helper.get(e.helper, 0) - (freed is not None and freed.helper == e.helper) >= self.helper_cap:
            return Refusal.HELPER_SHARE
        source = e.source_key
        if source is not None and \
                self.per_source.get(source, 0) - (freed is not None and freed.source_key == source) >= self.source_cap:
            return Refusal.SOURCE_SHARE
        if old is not None:
            self.remove(old)  # same master asks again: the new one replaces it
            classes = self._by_master.get(master)
            q = _EMPTY if classes is None else classes.get(e.cls, _EMPTY)
        if len(q) >= max_expected:
            while len(q) >= max_expected:
                victim = q.popleft()  # the oldest (remove's work, its queue known)
                self._forget(victim)
                evicted.append(victim)
            assert classes is not None
            if not q and len(classes) > 1:  # as remove leaves it: the class added anew, after the master's others
                del classes[e.cls]
                q = _EMPTY
            # (the master's only class, emptied (ExpectMax 1, FTP's): its queue takes e as _add would, without
            # the master's and the class's entries deleted and made again)
        if q is _EMPTY:
            self._add(e)
        else:
            q.append(e)
            self._index(e)
        return None

    def insert(self, e: Expectation) -> bool:
        """Take in one the kernel holds already (adopted): no ExpectMax or budget check,
        it counts against both from now on. False if its tuple is taken."""
        if e.key in self._by_key:
            return False
        self._add(e)
        return True

    def _add(self, e: Expectation) -> None:
        classes = self._by_master.get(e.master)
        if classes is None:
            classes = self._by_master[e.master] = {}
        q = classes.get(e.cls)
        if q is None:
            q = classes[e.cls] = deque()
        q.append(e)
        self._index(e)

    def _index(self, e: Expectation) -> None:
        """Count e in and index it by its key and destination (its master's queue holds it)."""
        key = e.key
        self._by_key[key] = e
        where = _dest(key)
        dest = self._by_dest.get(where)
        if dest is None:
            dest = self._by_dest[where] = {}
        dest[key] = None
        per_helper = self.per_helper
        per_helper[e.helper] = per_helper.get(e.helper, 0) + 1
        source = e.source_key
        if source is not None:
            self.per_source[source] = self.per_source.get(source, 0) + 1

    def of_master(self, master: FlowTuple, cls: str | None = None, tag: str | None = None) -> list[Expectation]:
        classes = self._by_master.get(master)
        if classes is None:
            return []
        if cls is not None:  # (a master's classes have distinct names)
            q = classes.get(cls)
            if q is None:
                return []
            return list(q) if tag is None else [e for e in q if e.tag == tag]
        out = []
        for q in classes.values():
            out += [e for e in q if tag is None or e.tag == tag]
        return out

    def get(self, key: tuple) -> Expectation | None:
        return self._by_key.get(key)

    def holding(self, t: FlowTuple, src_mask: IPAddress, any_sport: bool) -> Expectation | None:
        """Ours among the kernel's: the expectation of tuple t and this mask (as a kernel event names one)."""
        return self.holding_ints(t._ints, int(src_mask), any_sport)

    def expects(self, ints: tuple) -> bool:
        """Whether an expectation in the table has the destination of a tuple given as
        FlowTuple._ints (its address, port and protocol): what holding_ints looks among."""
        return _dest(ints) in self._by_dest

    def holding_ints(self, ints: tuple, src_mask: int, any_sport: bool) -> Expectation | None:
        """holding() of a tuple given as FlowTuple._ints and a source mask as a number."""
        for key in self._by_dest.get(_dest(ints), ()):
            e = self._by_key[key]
            mask = e.src_mask_int
            if (e.l3 == ints[0] and mask == src_mask and (e.sport is None) == any_sport
                    and (e.sport is None or e.sport == ints[4]) and (ints[2] ^ (key[2] or 0)) & mask == 0):
                return e
        return None

    def match(self, t: FlowTuple) -> Expectation | None:
        """The expectation a new flow fulfils, if any (replay's conntrack lookup)."""
        for key in self._by_dest.get(_dest(t._ints), ()):
            e = self._by_key[key]
            if e.matches(t):
                return e
        return None


_EMPTY: deque = deque()  # what a master's class holds when it holds nothing (never appended to)


def _uncount(counter: Counter, key: Any) -> None:
    """One fewer of key in counter, gone at zero (a spoofed source address must not stay behind)."""
    if key is None:
        return
    n = counter.get(key, 0) - 1
    if n > 0:
        counter[key] = n
    else:
        counter.pop(key, None)


def _dest(key: tuple) -> tuple:
    """(l3, proto, dst, dport) of an expectation's key or a FlowTuple's integers
    (both are (l3, proto, src, dst, sport, dport)): what a new flow is matched by."""
    return key[0], key[1], key[3], key[5]


def _endpoint(addr: IPAddress, port: int) -> str:
    return f"[{addr}]:{port}" if addr.version == 6 else f"{addr}:{port}"
