"""NAT rewriting: what helpers' `Rewrite` and `Length` spans become, and the packet that carries them.

Sans-IO like the helpers: the engine decides (`message_edits`), the daemon
applies the edits to the queued packet (`mangle`) and hands it back in the
verdict beside the packet's conntrack, so that the kernel adjusts the TCP
sequence numbers after a length change (ctnetlink_glue_seqadj); replay shows
them. The IPv4 header checksum and the TCP/UDP checksum are computed anew
(the kernel hands queued packets over with complete checksums and, once the
payload is replaced, checks none of them again).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field
from functools import lru_cache
from operator import attrgetter
from typing import Any, Iterable

from .frozen import unfrozen
from .model import Form, FlowTuple, IPAddress, Length, NatMap, Rewrite

MAX_IP_PACKET = 65535  # an IPv4 total length / IPv6 payload length field
RENDERED_MAX = 1024  # endpoints kept rendered


class RewriteError(ValueError):
    """A message's rewrite cannot be made; the packet goes unchanged."""


@dataclass(frozen=True, slots=True)
class Edit:
    """Replace bytes [offset, offset+length) with `data`."""

    offset: int
    length: int
    data: bytes


_UnfrozenEdit = unfrozen(Edit)


def edit(offset: int, length: int, data: bytes) -> Edit:
    """Edit(offset, length, data), built at the cost of a plain object (see alg.frozen): a NATed
    message has a few, made for every packet."""
    e: Any = _UnfrozenEdit()
    e.offset, e.length, e.data = offset, length, data
    e.__class__ = Edit
    return e


@lru_cache(maxsize=RENDERED_MAX, typed=True)
def render(form: Form, addr: IPAddress, port: int | None) -> bytes:
    """An endpoint as `form` writes it (kept: a gateway writes its few outside endpoints again and again)."""
    if form is Form.ADDR:
        return str(addr).encode()
    if form is Form.PORT:
        if port is None:
            raise RewriteError("a port span without a port")
        return str(port).encode()
    if form is Form.HOST_PORT:
        host = f"[{addr}]" if addr.version == 6 else str(addr)
        return (host if port is None else f"{host}:{port}").encode()
    if form is Form.FTP:
        if addr.version != 4 or port is None:
            raise RewriteError("PORT/227 carry an IPv4 address and a port")
        return (",".join(str(b) for b in addr.packed) + f",{port >> 8},{port & 0xFF}").encode()
    raise RewriteError(f"{form} is not an endpoint form")


def length_field(form: Form, value: int) -> bytes:
    if form is Form.DECIMAL:
        return str(value).encode()
    if form is Form.BE16:
        if not 0 <= value <= 0xFFFF:
            raise RewriteError(f"length {value} does not fit two bytes")
        return value.to_bytes(2, "big")
    raise RewriteError(f"{form} is not a length form")


def message_edits(message_len: int, rewrites: Iterable[tuple[Rewrite, IPAddress, int | None]],
                  lengths: Iterable[Length], original: bytes | None = None) -> list[Edit]:
    """The edits of one message: each rewrite with the endpoint it must now name,
    then each length field whose region they change. Offsets are the message's.
    Raises RewriteError for a span outside the message or spans that overlap."""
    edits = []
    for r, addr, port in rewrites:
        _inside(r.offset, r.length, message_len)
        data = render(r.form, addr, port)
        if original is None or original[r.offset:r.offset + r.length] != data:
            edits.append(edit(r.offset, r.length, data))
    if edits:
        for f in lengths:
            _inside(f.offset, f.length, message_len)
            _inside(f.start, f.end - f.start, message_len)
            start, end, grown = f.start, f.end, 0
            for e in edits:
                if start <= e.offset and e.offset + e.length <= end:
                    grown += len(e.data) - e.length
            if grown:
                edits.append(edit(f.offset, f.length, length_field(f.form, end - start + grown)))
    edits.sort(key=_OFFSET)
    for a, b in zip(edits, edits[1:], strict=False):
        if a.offset + a.length > b.offset:
            raise RewriteError(f"spans at {a.offset} and {b.offset} overlap")
    return edits


_OFFSET = attrgetter("offset")


def _inside(offset: int, length: int, size: int) -> None:
    if offset < 0 or length < 0 or offset + length > size:
        raise RewriteError(f"span {offset}+{length} outside the {size}-byte message")


def apply(data: bytes, edits: Iterable[Edit], base: int = 0) -> bytes:
    """`data` with the (sorted, disjoint) edits made; their offsets count from `base`."""
    out: list[bytes] = []
    at = 0
    for e in edits:
        start = e.offset - base
        out += (data[at:start], e.data)
        at = start + e.length
    out.append(data[at:])
    return b"".join(out)


# ---------------------------------------------------------------- the packet
_TCP, _UDP = 6, 17


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of `data`: the one's complement sum of its
    16-bit words is the number they spell modulo 0xFFFF (2**16 = 1 mod 0xFFFF),
    which CPython computes in C."""
    if len(data) & 1:
        data += b"\0"
    s = int.from_bytes(data, "big") % 0xFFFF
    return 0xFFFF ^ (s or 0xFFFF)


def mangle(packet: bytes, l4: int, payload: int, edits: Iterable[Edit]) -> bytes:
    """The IP packet with its L4 payload (from byte `payload` on; its L4 header
    at `l4`) edited: IP lengths, IPv4 header checksum, TCP/UDP checksum anew."""
    edits = list(edits)
    body = apply(packet[payload:], edits, 0)
    version = packet[0] >> 4
    head = bytearray(packet[:payload])
    total = len(head) + len(body)
    if total > MAX_IP_PACKET + (40 if version == 6 else 0):
        raise RewriteError(f"the packet would grow to {total} bytes")
    if version == 4:
        struct.pack_into("!H", head, 2, total)
        ihl = (head[0] & 0xF) * 4
        head[10:12] = b"\0\0"
        struct.pack_into("!H", head, 10, checksum(bytes(head[:ihl])))
        proto, pseudo_addrs = head[9], bytes(head[12:20])
    else:
        struct.pack_into("!H", head, 4, total - 40)
        proto, final = _v6_upper(head, l4)
        pseudo_addrs = bytes(head[8:24]) + final
    seg_len = total - l4
    if proto == _UDP:
        struct.pack_into("!H", head, l4 + 4, seg_len)
        csum_at = l4 + 6
    elif proto == _TCP:
        csum_at = l4 + 16
    else:
        raise RewriteError(f"protocol {proto} is neither TCP nor UDP")
    head[csum_at:csum_at + 2] = b"\0\0"
    pseudo = pseudo_addrs + (struct.pack("!BBH", 0, proto, seg_len) if version == 4
                             else struct.pack("!IxxxB", seg_len, proto))
    value = checksum(pseudo + bytes(head[l4:]) + body)
    if proto == _UDP and value == 0:
        value = 0xFFFF  # RFC 768: a computed zero is sent as all ones
    struct.pack_into("!H", head, csum_at, value)
    return bytes(head) + body


# RFC 8200 §4: extension headers whose length counts differently, and the Routing header
_FRAGMENT, _AH, _ROUTING = 44, 51, 43
# routing types whose addresses are a plain list: 0 (RFC 8200 §4.4, deprecated), 2 (RFC 6275 §6.4,
# one address) end with the final destination; 4 (RFC 8754 §2, SRH) starts with it
_ROUTING_LAST_IS_FINAL, _SRH = (0, 2), 4


def _v6_upper(head: bytearray, l4: int) -> tuple[int, bytes]:
    """The upper-layer protocol of an IPv6 packet whose L4 header is at `l4` (the
    next-header byte of the last extension header, or of the fixed header) and the
    destination its pseudo-header names: the final one where a Routing header still
    has segments left (RFC 8200 §8.1), not the next hop in the header's field."""
    nxt, off, final = head[6], 40, bytes(head[24:40])
    while off < l4:
        size = 8 if nxt == _FRAGMENT else (head[off + 1] + 2) * 4 if nxt == _AH else (head[off + 1] + 1) * 8
        if nxt == _ROUTING and head[off + 3]:  # segments left
            kind = head[off + 2]
            if kind in _ROUTING_LAST_IS_FINAL:
                final = bytes(head[off + size - 16:off + size])
            elif kind == _SRH:
                final = bytes(head[off + 8:off + 24])
            else:
                raise RewriteError(f"routing header type {kind}: its final destination is not known here")
        nxt, off = head[off], off + size
    return nxt, final


# ---------------------------------------------------------------- replay: NAT given on the command line
@dataclass
class NatRules:
    """What a gateway's NAT rules would make of a captured flow (`alg replay --snat/--dnat`),
    for a capture taken on the inside: SNAT (MASQUERADE) `network=address`, flows from
    the network leave as the address (ports kept); DNAT `public[:port]=inside[:port]`,
    flows the capture shows going to the inside endpoint came to the public one."""

    snat: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, IPAddress]] = field(default_factory=list)
    dnat: list[tuple[IPAddress, int | None, IPAddress, int | None]] = field(default_factory=list)

    def add_snat(self, text: str) -> None:
        net, _, addr = text.partition("=")
        try:
            self.snat.append((ipaddress.ip_network(net, strict=False), ipaddress.ip_address(addr)))
        except ValueError as exc:
            raise ValueError(f"--snat {text!r}: NETWORK=ADDRESS, e.g. 192.168.1.0/24=198.51.100.1 ({exc})") from None

    def add_dnat(self, text: str) -> None:
        public, _, inside = text.partition("=")
        try:
            self.dnat.append((*_host_port(public), *_host_port(inside)))
        except ValueError as exc:
            raise ValueError(f"--dnat {text!r}: PUBLIC[:PORT]=INSIDE[:PORT], e.g. 198.51.100.1:21=192.168.1.20 "
                             f"({exc})") from None

    def __bool__(self) -> bool:
        return bool(self.snat or self.dnat)

    def __call__(self, t: FlowTuple) -> NatMap | None:
        """The conntrack's tuples for a flow whose endpoints are `t`, if a rule applies."""
        dst, dport = t.dst, t.dport
        for public, pport, inside, iport in self.dnat:
            if t.dst == inside and iport in (None, t.dport):
                dst, dport = public, pport or t.dport
                break
        src = t.src
        for net, addr in self.snat:
            if t.src.version == net.version and t.src in net:
                src = addr
                break
        if (src, dst, dport) == (t.src, t.dst, t.dport):
            return None
        return NatMap(FlowTuple(t.l3, t.proto, t.src, dst, t.sport, dport),
                      FlowTuple(t.l3, t.proto, t.dst, src, t.dport, t.sport))


def _host_port(text: str) -> tuple[IPAddress, int | None]:
    """'192.0.2.1', '192.0.2.1:21', '[2001:db8::1]:21' or '2001:db8::1'."""
    if text.startswith("["):
        host, _, port = text[1:].partition("]:")
        return ipaddress.ip_address(host.rstrip("]")), int(port) if port else None
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return ipaddress.ip_address(host), int(port)
    return ipaddress.ip_address(text), None
