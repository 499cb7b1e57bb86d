"""The sans-IO helper API: what a helper declares, sees and returns.

A helper is a descriptor (`HelperSpec`) plus a small class with one method,
`inspect(segment, state)`. The core owns every socket, the clock, the flow
table and the kernel; the helper only turns bytes into actions:

* `Expect`   open a pinhole: the kernel should treat the described flow as
             RELATED to the flow the bytes came from (the master);
* `Unexpect` withdraw what this master expected earlier (by class and/or tag);
* `Notice`   something worth counting that is not an error (a hostname where
             an address was wanted, an address that is not the sender's...);
* `Rewrite`  under NAT: a span of the message names an endpoint (address
             and/or port) the far side will use;
* `Length`   under NAT: a span holds the length of a region of the message.

NAT: when the kernel translates the master flow (masquerade, SNAT, a DNAT
port forward) `segment.nat` is a `NatMap` (else None) and a helper returns,
beside its `Expect`s, a `Rewrite` for every span that names an inside
endpoint and a `Length` for every length field around them; emit them only
when `segment.nat` is set (they cost nothing then). The core does the rest,
the same for every helper: an `Expect` for the sender's own address is
turned into an expectation of the gateway's outside address (with the
kernel's CTA_EXPECT_NAT, so the expected flow is translated back to the
inside endpoint), on the same port or, when another master holds that one,
the next free port pair; each `Rewrite` gets the endpoint the far side must
use (the expectation's, or `NatMap.map`'s), each `Length` its new value, and
the packet its new lengths and checksums. A message whose rewrite cannot be
made (a span outside the packet being inspected, overlapping spans) is left
untouched and counted (`nat_failed`); no packet is ever half rewritten.

`inspect` returns `Parsed(consumed, actions)` or `NEED_DATA`. On TCP the core
hands over the in-order bytes not yet consumed for that direction; on UDP one
whole datagram. A peer that breaks the protocol makes the helper raise
`ProtocolViolation`.

Lost TCP segments: when a hole in a direction's byte stream does not fill
(see `alg.flows`), the core skips it and, before `inspect` sees the bytes
after it, calls `resync(segment, state)` so that the helper can find its
next message boundary. Text protocols declare `HelperSpec(resync="line")`
(the default method then skips to the next line end); binary ones either
override `resync` (scan for a record they recognise, reset their
per-direction state) or keep the default `resync=None`: that direction is no
longer inspected (counted as `desynced`), the other one goes on.
"""

from __future__ import annotations

import builtins
import enum
import ipaddress
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping, Sequence, Union

from .frozen import retype, set_slots, slot_setters, unfrozen

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

TCP = 6
UDP = 17
PROTO_NAMES = {TCP: "tcp", UDP: "udp"}
PROTO_NUMBERS = {v: k for k, v in PROTO_NAMES.items()}
# An expected flow may also be GRE (PPTP's data, RFC 2637 §4.1): ctnetlink carries a GRE
# tuple's keys where TCP/UDP carry ports (CTA_PROTO_SRC_PORT/DST_PORT), so an Expect's
# `dport` is the key (the call ID) and `sport` must be None: the kernel's GRE tracker takes
# the source key from a keymap only nf_conntrack_pptp fills (tools/probe_gre_expect.py)
GRE = 47
EXPECT_PROTO_NAMES = {**PROTO_NAMES, GRE: "gre"}
GRE_KEY_MAX = 0xFFFF  # a PPTP call ID is 16 bits; 0 is a valid one

# Expectation flags, from include/uapi/linux/netfilter/nf_conntrack_common.h
EXPECT_F_PERMANENT = 0x1
EXPECT_F_INACTIVE = 0x2
EXPECT_F_USERSPACE = 0x4
HELPER_NAME_MAX = 15  # NF_CT_HELPER_NAME_LEN - 1
# include/uapi/linux/netfilter/nf_conntrack_common.h / nf_conntrack_helper.h:
# nfnetlink_cthelper refuses (EINVAL) a policy with more classes or a larger max
EXPECT_CLASSES_MAX = 4  # NF_CT_MAX_EXPECT_CLASSES
EXPECT_MAX_MAX = 255  # NF_CT_EXPECT_MAX_CNT
RESYNC_LINE = "line"  # HelperSpec.resync: resume at the next line end after lost bytes


class Direction(enum.IntEnum):
    """Which way a packet goes relative to the master flow (kernel numbering)."""

    ORIGINAL = 0  # from the side that opened the flow
    REPLY = 1


_ORIGINAL = Direction.ORIGINAL  # (a module name: read off its class, an enum member costs 60 ns more)


@dataclass(frozen=True, slots=True, eq=False, init=False)
class FlowTuple:
    """A connection's original-direction tuple."""

    l3: int  # 4 or 6
    proto: int  # TCP or UDP
    src: IPAddress
    dst: IPAddress
    sport: int
    dport: int
    # compared and hashed by numbers, once: a tuple keys every table on the packet path,
    # and an ipaddress object hashes through a hex string on every lookup
    _ints: tuple = field(init=False, repr=False, compare=False)
    _hash: int = field(init=False, repr=False, compare=False)  # of _ints: a master is hashed on every table use

    def __init__(self, l3: int, proto: int, src: IPAddress, dst: IPAddress, sport: int, dport: int) -> None:
        ints = (l3, proto, int(src), int(dst), sport, dport)
        if self.__class__ is not FlowTuple:  # a subclass: its own layout
            set_slots(self, _FLOW_TUPLE, (l3, proto, src, dst, sport, dport, ints, hash(ints)))
            return
        retype(self, _OpenFlowTuple)
        o: Any = self  # (its class open for the stores below)
        o.l3 = l3
        o.proto = proto
        o.src = src
        o.dst = dst
        o.sport = sport
        o.dport = dport
        o._ints = ints
        o._hash = hash(ints)
        o.__class__ = FlowTuple

    def __eq__(self, other: object) -> bool:
        return self is other or (isinstance(other, FlowTuple) and self._ints == other._ints)

    def __hash__(self) -> int:
        return self._hash

    def reversed(self) -> "FlowTuple":
        return FlowTuple(self.l3, self.proto, self.dst, self.src, self.dport, self.sport)

    def __str__(self) -> str:
        return f"{PROTO_NAMES.get(self.proto, self.proto)} {self.src}:{self.sport} -> {self.dst}:{self.dport}"


_FLOW_TUPLE, _OpenFlowTuple = slot_setters(FlowTuple), unfrozen(FlowTuple)


@dataclass(frozen=True, slots=True, init=False)
class Segment:
    """What a helper is shown: bytes from one direction of one master flow."""

    data: bytes
    direction: Direction
    flow: FlowTuple  # the master, original direction
    now: float  # seconds; capture time in replay, monotonic time live
    # this flow was created by an expectation of this same helper (the
    # kernel's master/RELATED): a helper that reads a protocol only on the
    # connections it admitted itself (SSDP's LOCATION fetch) refuses others
    expected: bool = False
    nat: "NatMap | None" = None  # the master is NATed (and the helper's policy rewrites): what to rewrite

    def __init__(self, data: bytes, direction: Direction, flow: FlowTuple, now: float, expected: bool = False,
                 nat: "NatMap | None" = None) -> None:
        if self.__class__ is not Segment:
            set_slots(self, _SEGMENT, (data, direction, flow, now, expected, nat))
            return
        retype(self, _OpenSegment)
        o: Any = self
        o.data = data
        o.direction = direction
        o.flow = flow
        o.now = now
        o.expected = expected
        o.nat = nat
        o.__class__ = Segment

    @property
    def sender(self) -> IPAddress:
        return self.flow.src if self.direction is _ORIGINAL else self.flow.dst

    @property
    def receiver(self) -> IPAddress:
        return self.flow.dst if self.direction is _ORIGINAL else self.flow.src

    @property
    def sender_port(self) -> int:
        return self.flow.sport if self.direction is _ORIGINAL else self.flow.dport

    @property
    def receiver_port(self) -> int:
        return self.flow.dport if self.direction is _ORIGINAL else self.flow.sport


_SEGMENT, _OpenSegment = slot_setters(Segment), unfrozen(Segment)


# ---------------------------------------------------------------- actions
@dataclass(frozen=True, slots=True, init=False)
class Expect:
    """Ask for an expectation: the flow `src:sport -> dst:dport` over `proto`
    will be RELATED to the master. `None` is a wildcard (mask 0).

    `where` is (offset, length) of the advertised address and port in the
    bytes given to the helper, for a later NAT rewrite step.
    """

    cls: str
    proto: int
    src: IPAddress | None
    dst: IPAddress
    sport: int | None
    dport: int
    flags: int = 0
    tag: str | None = None  # groups expectations for Unexpect (a SIP Call-ID, say)
    where: tuple[tuple[int, int], ...] = ()
    src_prefix: int | None = None  # with `src`: leading bits that must match (None: all)
    # the expected flow is inspected by this same helper (the kernel's
    # CTA_EXPECT_HELP_NAME): how conntrackd's SSDP helper reads the unicast
    # answers to a multicast search and the HTTP connections they lead to
    assign_helper: bool = False

    def __init__(self, cls: str, proto: int, src: IPAddress | None, dst: IPAddress, sport: int | None, dport: int,
                 flags: int = 0, tag: str | None = None, where: tuple[tuple[int, int], ...] = (),
                 src_prefix: int | None = None, assign_helper: bool = False) -> None:
        if self.__class__ is not Expect:
            set_slots(self, _EXPECT, (cls, proto, src, dst, sport, dport, flags, tag, where, src_prefix,
                                     assign_helper))
            return
        retype(self, _OpenExpect)
        o: Any = self
        o.cls = cls
        o.proto = proto
        o.src = src
        o.dst = dst
        o.sport = sport
        o.dport = dport
        o.flags = flags
        o.tag = tag
        o.where = where
        o.src_prefix = src_prefix
        o.assign_helper = assign_helper
        o.__class__ = Expect


@dataclass(frozen=True, slots=True, init=False)
class Unexpect:
    """Withdraw this master's expectations of a class and/or tag (None = any)."""

    cls: str | None = None
    tag: str | None = None

    def __init__(self, cls: str | None = None, tag: str | None = None) -> None:
        set_cls, set_tag = _UNEXPECT  # (few fields: retype's two class changes would cost more)
        set_cls(self, cls)
        set_tag(self, tag)


@dataclass(frozen=True, slots=True, init=False)
class Notice:
    """A counted event that is not a protocol error (e.g. 'hostname-in-sdp')."""

    code: str
    detail: str = ""

    def __init__(self, code: str, detail: str = "") -> None:
        set_code, set_detail = _NOTICE
        set_code(self, code)
        set_detail(self, detail)


class Form(str, enum.Enum):
    """How a `Rewrite` or `Length` span is written."""

    ADDR = "addr"  # 192.0.2.1, 2001:db8::1 (SDP c=/o=, TNS HOST=)
    PORT = "port"  # 5060, decimal
    HOST_PORT = "host:port"  # 192.0.2.1:5060, [2001:db8::1]:5060 (SIP sent-by and URI hosts, URLs)
    FTP = "ftp"  # 192,0,2,1,19,137 (PORT, 227)
    DECIMAL = "decimal"  # a length as decimal digits (Content-Length)
    BE16 = "be16"  # a length as two bytes, big-endian (TNS)


@dataclass(frozen=True, slots=True, init=False)
class Rewrite:
    """Under NAT: bytes [offset, offset+length) of the message (offsets into
    `segment.data`) name the endpoint `addr`:`port` (`port` None: the span is
    an address alone). The core writes there, in `form`, what the far side
    must use instead; an endpoint the NAT does not concern stays as it is."""

    offset: int
    length: int
    addr: IPAddress
    port: int | None
    form: Form

    def __init__(self, offset: int, length: int, addr: IPAddress, port: int | None, form: Form) -> None:
        set_offset, set_length, set_addr, set_port, set_form = _REWRITE
        set_offset(self, offset)
        set_length(self, length)
        set_addr(self, addr)
        set_port(self, port)
        set_form(self, form)


@dataclass(frozen=True, slots=True, init=False)
class Length:
    """Under NAT: bytes [offset, offset+length) hold the length of the region
    [start, end) of the message; rewritten when edits inside it change it."""

    offset: int
    length: int
    start: int
    end: int
    form: Form = Form.DECIMAL

    def __init__(self, offset: int, length: int, start: int, end: int, form: Form = Form.DECIMAL) -> None:
        set_offset, set_length, set_start, set_end, set_form = _LENGTH
        set_offset(self, offset)
        set_length(self, length)
        set_start(self, start)
        set_end(self, end)
        set_form(self, form)


@dataclass(frozen=True, slots=True)
class NatMap:
    """How the kernel translates a master flow: its conntrack's two tuples
    (each as the packets of that direction look on the wire outside the
    translation: `original` as its sender sent it, `reply` as the answers come)."""

    original: FlowTuple
    reply: FlowTuple

    def map(self, direction: "Direction", addr: IPAddress, port: int | None) -> tuple[IPAddress, int | None] | None:
        """The endpoint the receiver of a `direction` message must use for what the
        message names as `addr`:`port`, or None when the NAT does not concern it (as
        the kernel's nf_nat_sip decides: the sender's own endpoint becomes the one the
        receiver sends to; the receiver's, the one it is reached at by the sender).
        `port` None compares and maps the address alone."""
        here, there = (self.original, self.reply) if direction == 0 else (self.reply, self.original)
        # the ports first: comparing two ipaddress objects costs more
        if (port is None or port == here.sport) and addr == here.src:
            return there.dst, None if port is None else there.dport
        if (port is None or port == here.dport) and addr == here.dst:
            return there.src, None if port is None else there.sport
        return None

    def outside(self, direction: "Direction") -> IPAddress:
        """The address the receiver of a `direction` message sees its sender at."""
        return (self.reply if direction == 0 else self.original).dst


Action = Union[Expect, Unexpect, Notice, Rewrite, Length]
_EXPECT, _UNEXPECT, _NOTICE, _REWRITE, _LENGTH = map(slot_setters, (Expect, Unexpect, Notice, Rewrite, Length))
_OpenExpect = unfrozen(Expect)


@dataclass(frozen=True, slots=True, init=False)
class Parsed:
    consumed: int
    actions: tuple[Action, ...] = ()

    def __init__(self, consumed: int, actions: tuple[Action, ...] = ()) -> None:
        set_consumed, set_actions = _PARSED
        set_consumed(self, consumed)
        set_actions(self, actions)


_PARSED = slot_setters(Parsed)


class _NeedData:
    """More bytes are needed before anything can be said (a value, not an error)."""

    __slots__ = ()
    _instance: "_NeedData | None" = None

    def __new__(cls) -> "_NeedData":
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = _NeedData()
Outcome = Union[Parsed, _NeedData]
Resync = Union[int, _NeedData, None]  # what Helper.resync returns


# ---------------------------------------------------------------- descriptors
@dataclass(frozen=True, slots=True)
class ExpectClass:
    """An expectation class: the kernel's helper policy entry (name, max, timeout)."""

    name: str
    max_expected: int
    timeout: int  # seconds


@dataclass(frozen=True, slots=True)
class Option:
    """A helper-specific policy knob (goes in the `[options]` table).

    What a value may be is declared here, so that every policy file (and a
    plugin's) is checked when it is loaded, by every command: `type`, for
    numbers `min`/`max`, for lists the type of their `items`, and `check`,
    a function that raises ValueError on a value the others cannot describe
    (a CIDR that does not parse, say).
    """

    default: Any
    doc: str
    type: type | None = None  # defaults to type(default)
    min: float | None = None
    max: float | None = None
    items: builtins.type | None = None  # a list's element type
    check: Callable[[Any], Any] | None = None

    @property
    def kind(self) -> builtins.type:
        return self.type or builtins.type(self.default)

    def problem(self, value: Any) -> str | None:
        """Why `value` is not acceptable, or None."""
        kind = self.kind
        if not _is(value, kind):
            return f"must be {kind.__name__}, not {builtins.type(value).__name__} {value!r:.60}"
        if self.min is not None and value < self.min or self.max is not None and value > self.max:
            return f"must be between {self.min} and {self.max}, not {value!r}"
        if self.items is not None:
            for item in value:
                if not _is(item, self.items):
                    return f"items must be {self.items.__name__}, not {builtins.type(item).__name__} {item!r:.60}"
        if self.check is not None:
            try:
                self.check(value)
            except (TypeError, ValueError) as exc:
                return str(exc)
        return None


def _is(value: Any, kind: builtins.type) -> bool:
    """isinstance, where a bool is no int and an int is a float (TOML writes 10 for 10.0)."""
    if isinstance(value, bool) and kind is not bool:
        return False
    return isinstance(value, kind) or (kind is float and isinstance(value, int))


@dataclass(frozen=True, slots=True)
class HelperSpec:
    """What a helper is, as the kernel and the policy files see it."""

    name: str  # default kernel helper name, at most 15 characters
    protocols: tuple[int, ...]  # TCP and/or UDP
    ports: tuple[int, ...]
    classes: tuple[ExpectClass, ...]
    families: tuple[int, ...] = (4, 6)
    options: Mapping[str, Option] = field(default_factory=dict)
    priv_data_len: int = 0  # kernel per-conntrack private area; 0 = none needed
    max_buffer: int = 65536  # bytes buffered per flow direction on TCP
    doc: str = ""
    # After a lost TCP segment: RESYNC_LINE resumes after the next line end
    # (text protocols: FTP, SMTP-like); None gives the direction up unless
    # the helper overrides `Helper.resync`.
    resync: str | None = None
    # Protocols read only on flows this helper's own expectations admitted
    # (Segment.expected): no port rule assigns the helper to them, and it
    # refuses the ones it is handed anyway (SSDP's TCP: the LOCATION fetch)
    expected_only: tuple[int, ...] = ()
    # NFQUEUE number this helper uses unless a policy file says otherwise.
    # None: derived from the name (alg.policy.default_queue), stable whichever
    # other plugins are installed. A plugin declaring one that another helper
    # already uses is refused at load.
    queue: int | None = None
    # Notice code -> the policy setting that decides it ("options.loose"),
    # named by `alg replay --explain` next to each refusal
    knobs: Mapping[str, str] = field(default_factory=dict)

    def class_id(self, name: str) -> int:
        for i, c in enumerate(self.classes):
            if c.name == name:
                return i
        raise KeyError(name)


class Helper:
    """Base class for helpers. Subclasses set `spec` and implement `inspect`.

    An instance is made per configured helper with its resolved options; the
    per-flow state comes from `new_state()` and is handed back on every call.
    """

    spec: ClassVar[HelperSpec]

    def __init__(self, options: Mapping[str, Any] | None = None):
        merged = {k: o.default for k, o in self.spec.options.items()}
        merged.update(options or {})
        self.options: Mapping[str, Any] = merged

    def new_state(self) -> Any:
        return None

    def state_size(self, state: Any) -> int:
        """Bytes `state` holds, for the process's memory budget (`[core] memory_budget_mb`).
        Counted every few packets of a flow; 0 (the default) for a state of fixed,
        small size. A helper whose state grows with what peers send says how much."""
        return 0

    def inspect(self, segment: Segment, state: Any) -> Outcome:  # pragma: no cover - abstract
        raise NotImplementedError

    @staticmethod
    def looks_like(payload: bytes) -> bool:
        """A cheap guess that `payload` (a flow's first) is this helper's protocol,
        for traffic on ports the policy does not list (`alg replay` names them
        in its summary). Never used to decide anything; the default: no guess."""
        return False

    def resync(self, segment: Segment, state: Any) -> Resync:
        """TCP only: bytes were lost before `segment.data` (a hole skipped by the core).

        Return how many leading bytes to drop to reach a message boundary (0:
        the data starts at one), `NEED_DATA` (no boundary yet: called again with
        more bytes), or None (cannot resynchronise: this direction is no longer
        inspected). Raising `ProtocolViolation` stops the whole flow. Reset any
        per-direction parse state here; `inspect` is called next from the
        boundary. The default follows `spec.resync`.
        """
        if self.spec.resync == RESYNC_LINE:
            end = segment.data.find(b"\n")
            return NEED_DATA if end < 0 else end + 1
        return None


HelperFactory = Callable[..., Helper]


def ip(text: str | bytes) -> IPAddress:
    """Address from text or packed bytes (4 or 16)."""
    return ipaddress.ip_address(text)


def same_family(addr: IPAddress, l3: int) -> bool:
    return addr.version == l3


def parse_networks(values: Any, option: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """A helper option listing networks (CIDR strings), e.g. where a peer may point besides itself."""
    from .errors import ConfigError

    try:
        return tuple(ipaddress.ip_network(n, strict=False) for n in values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{option}: {exc}") from None


def check_networks(values: Any) -> None:
    """Option.check for a list of CIDR strings (raises ValueError naming the bad one)."""
    for n in values:
        if not isinstance(n, str):
            raise ValueError(f"networks are CIDR strings such as \"10.0.2.0/24\", not {n!r:.60}")
        try:
            ipaddress.ip_network(n, strict=False)
        except ValueError as exc:
            raise ValueError(f"not a network: {exc}") from None


def ports_ok(*ports: int | None) -> bool:
    for p in ports:  # (a loop: checked for every expectation asked for)
        if p is not None and not 0 < p < 65536:
            return False
    return True


def invalid_expect(classes: Sequence[str], a: Expect, l3: int) -> str | None:
    """Why an `Expect` is not valid on a flow of address family `l3` (None: it is).

    The engine and the test harness both say it this way, naming what is valid."""
    if a.cls not in classes:
        return f"class {a.cls!r} is not one of this helper's classes {list(classes)}"
    if a.proto == GRE:
        if a.sport is not None or not 0 <= a.dport <= GRE_KEY_MAX:
            return f"GRE keys {a.sport!r}, {a.dport!r}: sport None (the source key is masked out), dport 0-65535"
    elif a.proto not in PROTO_NAMES:
        return f"proto {a.proto!r} is neither alg.TCP ({TCP}), alg.UDP ({UDP}) nor alg.GRE ({GRE})"
    elif not ports_ok(a.sport, a.dport):
        return f"ports {a.sport!r}, {a.dport!r}: each 1-65535, or None (any) for sport"
    if a.dst.version != l3 or (a.src is not None and a.src.version != l3):
        return f"addresses {a.src} -> {a.dst}: IPv{l3} like the master flow"
    return None


__all__: Sequence[str] = [
    "Action", "Direction", "EXPECT_F_INACTIVE", "EXPECT_F_PERMANENT", "EXPECT_F_USERSPACE", "Expect",
    "EXPECT_PROTO_NAMES", "GRE",
    "ExpectClass", "EXPECT_CLASSES_MAX", "EXPECT_MAX_MAX", "FlowTuple", "Form", "Length", "NatMap", "Rewrite",
    "HELPER_NAME_MAX", "RESYNC_LINE", "Helper",
    "HelperSpec", "IPAddress", "NEED_DATA", "Notice", "Option", "Outcome", "Parsed", "Resync", "PROTO_NAMES",
    "Segment", "TCP", "UDP", "Unexpect", "check_networks", "invalid_expect", "ip", "parse_networks",
]
