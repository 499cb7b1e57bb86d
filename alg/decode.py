"""Packet decoding: IPv4/IPv6 (with extension headers), TCP and UDP.

Struct-based and allocation-light: this runs once per queued packet, so no
scapy here. `decode_ip` takes an L3 packet as NFQUEUE delivers it;
`decode_link` strips the link layers a capture may carry first.
Addresses stay packed bytes; `FlowTuple`s with `ipaddress` objects are made
once per flow, not per packet.
"""

from __future__ import annotations

import bisect
import struct
from dataclasses import dataclass

from .model import TCP, UDP

_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_IPV6 = struct.Struct("!IHBB16s16s")
_TCP = struct.Struct("!HHIIBB")
_UDP = struct.Struct("!HHHH")
_FRAG6 = struct.Struct("!BBHI")

# IPv6 extension headers that carry (next header, length) in their first two bytes
_EXT_GENERIC = {0, 43, 60, 135, 139, 140}  # hop-by-hop, routing, dest opts, mobility, HIP, shim6
_EXT_AH, _EXT_FRAG, _EXT_NONE = 51, 44, 59

TCP_FIN, TCP_SYN, TCP_RST, TCP_ACK = 0x01, 0x02, 0x04, 0x10


class DecodeError(ValueError):
    """The bytes are not a packet we can read (truncated, bad header)."""


@dataclass(slots=True)
class Packet:
    """One decoded IP packet. Fragments have `proto` set but `frag` not None."""

    l3: int
    proto: int
    src: bytes
    dst: bytes
    sport: int = 0
    dport: int = 0
    payload: bytes = b""
    seq: int = 0  # TCP only
    tcp_flags: int = 0
    frag: tuple[int, int, bool, bytes] | None = None  # (id, offset, more, data) for a fragment


def _l4(pkt: Packet, data: bytes, off: int) -> Packet:
    if pkt.proto == TCP:
        if len(data) - off < 20:
            raise DecodeError("truncated TCP header")
        pkt.sport, pkt.dport, pkt.seq, _ack, hl, pkt.tcp_flags = _TCP.unpack_from(data, off)
        hlen = (hl >> 4) * 4
        if hlen < 20 or off + hlen > len(data):
            raise DecodeError("bad TCP header length")
        pkt.payload = data[off + hlen :]
    elif pkt.proto == UDP:
        if len(data) - off < 8:
            raise DecodeError("truncated UDP header")
        pkt.sport, pkt.dport, ulen, _ = _UDP.unpack_from(data, off)
        end = off + ulen if 8 <= ulen <= len(data) - off else len(data)
        pkt.payload = data[off + 8 : end]
    else:
        pkt.payload = data[off:]
    return pkt


def decode_ip(data: bytes) -> Packet:
    """Decode an IP packet (version from the first nibble)."""
    if not data:
        raise DecodeError("empty packet")
    version = data[0] >> 4
    if version == 4:
        if len(data) < 20:
            raise DecodeError("truncated IPv4 header")
        vihl, _tos, total, ident, frag, _ttl, proto, _sum, src, dst = _IPV4.unpack_from(data)
        ihl = (vihl & 0xF) * 4
        if ihl < 20 or ihl > len(data):
            raise DecodeError("bad IPv4 header length")
        if total >= ihl and total < len(data):
            data = data[:total]  # Ethernet padding
        pkt = Packet(4, proto, src, dst)
        offset, more = (frag & 0x1FFF) * 8, bool(frag & 0x2000)
        if offset or more:
            pkt.frag = (ident, offset, more, data[ihl:])
            return pkt
        return _l4(pkt, data, ihl)
    if version == 6:
        if len(data) < 40:
            raise DecodeError("truncated IPv6 header")
        _vtf, plen, nxt, _hop, src, dst = _IPV6.unpack_from(data)
        if 40 + plen < len(data):
            data = data[: 40 + plen]
        off = 40
        frag = None
        while True:
            if nxt in _EXT_GENERIC or nxt == _EXT_AH:
                if off + 2 > len(data):
                    raise DecodeError("truncated IPv6 extension header")
                size = (data[off + 1] + 2) * 4 if nxt == _EXT_AH else (data[off + 1] + 1) * 8
                nxt = data[off]
                off += size
            elif nxt == _EXT_FRAG:
                if off + 8 > len(data):
                    raise DecodeError("truncated IPv6 fragment header")
                n, _r, offm, ident = _FRAG6.unpack_from(data, off)
                frag = (ident, offm & 0xFFF8, bool(offm & 1))
                nxt = n
                off += 8
            else:
                break
            if off > len(data):
                raise DecodeError("IPv6 extension headers overrun the packet")
        pkt = Packet(6, nxt, src, dst)
        if frag is not None and (frag[1] or frag[2]):
            pkt.frag = (frag[0], frag[1], frag[2], data[off:])
            return pkt
        if nxt == _EXT_NONE:
            return pkt
        return _l4(pkt, data, off)
    raise DecodeError(f"not IP (version {version})")


# ---------------------------------------------------------------- link layers
LINKTYPE_NULL, LINKTYPE_ETHERNET, LINKTYPE_RAW, LINKTYPE_LOOP = 0, 1, 101, 108
LINKTYPE_RAW_ALT, LINKTYPE_SLL, LINKTYPE_IPV4, LINKTYPE_IPV6, LINKTYPE_SLL2 = 14, 113, 228, 229, 276
_ETH_IP = {0x0800, 0x86DD}
_ETH_VLAN = {0x8100, 0x88A8, 0x9100}


def decode_link(linktype: int, frame: bytes) -> bytes | None:
    """Strip the link layer; the L3 bytes, or None when the frame is not IP."""
    if linktype == LINKTYPE_ETHERNET:
        off, etype = 14, int.from_bytes(frame[12:14], "big")
        while etype in _ETH_VLAN and len(frame) >= off + 4:
            etype = int.from_bytes(frame[off + 2 : off + 4], "big")
            off += 4
        return frame[off:] if etype in _ETH_IP else None
    if linktype in (LINKTYPE_RAW, LINKTYPE_RAW_ALT, LINKTYPE_IPV4, LINKTYPE_IPV6, 12):
        return frame
    if linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
        return frame[4:]
    if linktype == LINKTYPE_SLL:
        return frame[16:] if int.from_bytes(frame[14:16], "big") in _ETH_IP else None
    if linktype == LINKTYPE_SLL2:
        return frame[20:] if int.from_bytes(frame[0:2], "big") in _ETH_IP else None
    return None


IP_MAXPACKET = 65535
DEFRAG_MAX_BYTES = 4 << 20  # the kernel's net.ipv4.ipfrag_high_thresh default (4 MB)


class _Datagram:
    __slots__ = ("parts", "offsets", "held", "end")

    def __init__(self) -> None:
        self.parts: dict[int, bytes] = {}  # offset -> fragment data
        self.offsets: list[int] = []  # sorted: an overlap is found by bisection, not by a scan
        self.held = 0  # bytes in parts
        self.end: int | None = None  # known once the last fragment came

    def overlaps(self, start: int, stop: int) -> bool:
        i = bisect.bisect_left(self.offsets, start)
        before = i > 0 and self.offsets[i - 1] + len(self.parts[self.offsets[i - 1]]) > start
        return before or (i < len(self.offsets) and self.offsets[i] < stop)

    def last_stop(self) -> int:
        return self.offsets[-1] + len(self.parts[self.offsets[-1]]) if self.offsets else 0


class Defragmenter:
    """Reassembles IP fragments, as the kernel's nf_defrag does before conntrack.

    Bounded in bytes: a datagram holds at most 65,535 bytes, since an
    overlapping fragment discards the whole datagram and an exact duplicate
    is dropped, as the kernel does for both families (RFC 5722 §4 with
    erratum 3089; Linux applies it to IPv4 too since 4.19): overlapping
    fragments once held 45 MB in four datagrams. All datagrams in flight
    hold at most `max_bytes` and number at most `max_datagrams`; past
    either, the oldest incomplete datagram is dropped (counted in `dropped`).
    """

    def __init__(self, max_datagrams: int = 256, max_bytes: int = DEFRAG_MAX_BYTES):
        self.max = max_datagrams
        self.max_bytes = max_bytes
        self.held = 0
        self.dropped = 0  # datagrams discarded: overlap, oversize or evicted
        self.pending: dict[tuple, _Datagram] = {}

    def _drop(self, key: tuple) -> None:
        self.held -= self.pending.pop(key).held
        self.dropped += 1

    def feed(self, pkt: Packet) -> Packet | None:
        assert pkt.frag is not None
        ident, offset, more, data = pkt.frag
        key = (pkt.l3, pkt.src, pkt.dst, pkt.proto, ident)
        dg = self.pending.get(key)
        if dg is None:
            dg = self.pending[key] = _Datagram()
        stop = offset + len(data)
        if stop > IP_MAXPACKET or (dg.end is not None and (stop > dg.end or not more and stop != dg.end)) \
                or (not more and dg.last_stop() > stop):
            self._drop(key)  # beyond the largest datagram, or past (or moving) the end: the kernel discards it
            return None
        same = dg.parts.get(offset)
        if same is not None and len(same) == len(data):
            return None  # an exact duplicate: ignored, the datagram kept
        if same is not None or dg.overlaps(offset, stop):
            self._drop(key)
            return None
        dg.parts[offset] = data
        bisect.insort(dg.offsets, offset)
        dg.held += len(data)
        self.held += len(data)
        if not more:
            dg.end = stop
        while self.pending and (len(self.pending) > self.max or self.held > self.max_bytes):
            self._drop(next(iter(self.pending)))  # the oldest first
        if key not in self.pending or dg.end is None or dg.held != dg.end:
            return None  # evicted, or a hole remains (no overlaps: held == end means complete)
        del self.pending[key]
        self.held -= dg.held
        buf = b"".join(dg.parts[off] for off in dg.offsets)
        end = dg.end
        whole = Packet(pkt.l3, pkt.proto, pkt.src, pkt.dst)
        return _l4(whole, buf[:end], 0)

