"""Packet decoding: IPv4/IPv6 (with extension headers), TCP and UDP.

Struct-based and allocation-light: this runs once per queued packet, so no
scapy here. `decode_ip` takes an L3 packet as NFQUEUE delivers it;
`decode_frame` peels what a capture may carry around it first (link
layers, VLAN tags, PPPoE, MPLS, tunnels).
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
    l4: int = 0  # where the TCP/UDP header starts in the bytes decoded
    head: int = 0  # where the payload starts (a NAT rewrite edits the packet from here)


def _l4(l3: int, proto: int, src: bytes, dst: bytes, data: bytes, off: int) -> Packet:
    """The packet whose L4 header starts at `off` of data, built in one call (once per queued packet)."""
    if proto == TCP:
        if len(data) - off < 20:
            raise DecodeError("truncated TCP header")
        sport, dport, seq, _ack, hl, flags = _TCP.unpack_from(data, off)
        hlen = (hl >> 4) * 4
        if hlen < 20 or off + hlen > len(data):
            raise DecodeError("bad TCP header length")
        return Packet(l3, proto, src, dst, sport, dport, data[off + hlen:], seq, flags, None, off, off + hlen)
    if proto == UDP:
        if len(data) - off < 8:
            raise DecodeError("truncated UDP header")
        sport, dport, ulen, _ = _UDP.unpack_from(data, off)
        end = off + ulen if 8 <= ulen <= len(data) - off else len(data)
        return Packet(l3, proto, src, dst, sport, dport, data[off + 8:end], 0, 0, None, off, off + 8)
    return Packet(l3, proto, src, dst, payload=data[off:])


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
        offset, more = (frag & 0x1FFF) * 8, bool(frag & 0x2000)
        if offset or more:
            return Packet(4, proto, src, dst, frag=(ident, offset, more, data[ihl:]))
        return _l4(4, proto, src, dst, data, ihl)
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
        if frag is not None and (frag[1] or frag[2]):
            return Packet(6, nxt, src, dst, frag=(frag[0], frag[1], frag[2], data[off:]))
        if nxt == _EXT_NONE:
            return Packet(6, nxt, src, dst)
        return _l4(6, nxt, src, dst, data, off)
    raise DecodeError(f"not IP (version {version})")


_NO_DATA_FLAGS = TCP_SYN | TCP_FIN | TCP_RST  # each moves a stream or ends it: never "nothing"
_IPV4_OFFSET_MASK = 0x3FFF  # more-fragments bit and fragment offset


def tcp_without_data(data: bytes) -> bool:
    """Whether an IP packet (as NFQUEUE hands it over) is a TCP segment that carries no
    payload and none of SYN, FIN, RST: a bare acknowledgement (or window update), which gives
    a helper no bytes and moves no stream. Read from the headers' fixed fields only, without
    a `Packet`: on a control channel a third of the packets are such ACKs. False for anything
    else or anything unsure (a fragment, IPv6 extension headers, a short or odd header)."""
    n = len(data)
    if n < 40:
        return False
    first = data[0]
    if first >> 4 == 4:
        ihl = (first & 0xF) * 4
        if (data[9] != TCP or ihl < 20 or n < ihl + 20
                or (data[6] << 8 | data[7]) & _IPV4_OFFSET_MASK):
            return False
        length = data[2] << 8 | data[3]  # the packet's end: what lies past it is link padding
    elif first >> 4 == 6:
        ihl = 40
        if data[6] != TCP or n < 60:
            return False
        length = 40 + (data[4] << 8 | data[5])
    else:
        return False
    doff = (data[ihl + 12] >> 4) * 4
    return doff >= 20 and length == ihl + doff <= n and not data[ihl + 13] & _NO_DATA_FLAGS


# ---------------------------------------------------------------- link layers and tunnels
# What a capture may wrap around the IP packet a helper wants: link layers
# (Ethernet with 802.1Q/802.1ad tags, PPPoE, MPLS, Linux cooked, PPP, BSD
# loopback) and tunnels inside IP (IP-in-IP, 6in4, GRE with IP, Ethernet,
# ERSPAN II/III, PPP or MPLS inside, VXLAN). Layers are peeled in a loop of
# at most MAX_ENCAP_DEPTH steps, each a fixed header read with `struct`.
# Numbers: https://www.tcpdump.org/linktypes.html, IEEE 802 ethertypes,
# IANA PPP DLL protocol numbers and IP protocol numbers.
LINKTYPE_NULL, LINKTYPE_ETHERNET, LINKTYPE_PPP, LINKTYPE_RAW, LINKTYPE_LOOP = 0, 1, 9, 101, 108
LINKTYPE_RAW_ALT, LINKTYPE_RAW_OPENBSD, LINKTYPE_PPP_HDLC, LINKTYPE_PPP_ETHER = 14, 12, 50, 51
LINKTYPE_C_HDLC, LINKTYPE_SLL, LINKTYPE_IPV4, LINKTYPE_IPV6, LINKTYPE_SLL2 = 104, 113, 228, 229, 276
MAX_ENCAP_DEPTH = 16  # headers peeled off one frame (tags, labels, tunnels) before it is given up

ETH_IPV4, ETH_IPV6, ETH_ARP, ETH_TEB = 0x0800, 0x86DD, 0x0806, 0x6558  # TEB: Ethernet inside (RFC 1701)
ETH_VLAN = (0x8100, 0x88A8, 0x9100)  # 802.1Q, 802.1ad (QinQ service tag), the pre-standard QinQ tag
ETH_PPPOE_DISC, ETH_PPPOE_SESS, ETH_PPP = 0x8863, 0x8864, 0x880B
ETH_MPLS = (0x8847, 0x8848)  # unicast, multicast
ETH_ERSPAN2, ETH_ERSPAN3 = 0x88BE, 0x22EB
ETH_MAX_LENGTH = 1500  # a smaller type field is an 802.3 length: LLC (STP, IPX...), never IP here
PPP_IPV4, PPP_IPV6, PPP_MPLS = 0x0021, 0x0057, 0x0281
IPPROTO_IPIP, IPPROTO_IPV6, IPPROTO_GRE, IPPROTO_MPLS = 4, 41, 47, 137
VXLAN_PORT = 4789  # RFC 7348
VXLAN_FLAG_I = 0x08  # the VNI is valid (RFC 7348 section 5)
GRE_C, GRE_R, GRE_K, GRE_S, GRE_A = 0x8000, 0x4000, 0x2000, 0x1000, 0x0080  # RFC 2784/2890, RFC 2637 (ack)
GRE_VERSION = 0x0007
ERSPAN3_O = 0x01  # last byte of the ERSPAN type III header: an 8-byte platform sub-header follows
MPLS_BOS = 0x100  # bottom of stack bit in a label stack entry (RFC 3032)

# names of frames that are not IP, for the end-of-replay count
ETH_NAMES = {ETH_ARP: "ARP", 0x8035: "RARP", 0x88CC: "LLDP", 0x888E: "EAPOL", 0x8809: "slow protocols (LACP)",
             0x88F7: "PTP", 0x8902: "CFM", 0x9000: "loopback", 0x88E5: "MACsec", ETH_PPPOE_DISC: "PPPoE discovery",
             0x893A: "IEEE 1905", 0x22F3: "TRILL"}
PPP_NAMES = {0xC021: "PPP LCP", 0x8021: "PPP IPCP", 0x8057: "PPP IPV6CP", 0xC023: "PPP PAP", 0xC223: "PPP CHAP",
             0x80FD: "PPP CCP", 0xC025: "PPP LQR"}
# link types worth naming (https://www.tcpdump.org/linktypes.html)
LINKTYPE_NAMES = {LINKTYPE_ETHERNET: "Ethernet", LINKTYPE_RAW: "raw IP", 105: "802.11", LINKTYPE_SLL: "Linux cooked",
                  127: "802.11 radiotap", 239: "NFLOG", LINKTYPE_SLL2: "Linux cooked v2", LINKTYPE_PPP: "PPP"}
_AF_INET6 = (10, 24, 28, 30)  # AF_INET6 on Linux, NetBSD/OpenBSD, FreeBSD, Darwin (DLT_NULL/DLT_LOOP)

_H16 = struct.Struct("!H")
_GRE = struct.Struct("!HH")


class NotDecoded(DecodeError):
    """The frame carries no IP packet we can read; `kind` names what it carries
    instead ('ARP', 'PPPoE discovery', 'ethertype 0x1234', ...) for the count.

    `unsupported` marks frames that may hide IP we do not read (an unknown
    ethertype, link type or tunnel payload), worth a warning; the others are
    known to be something else."""

    def __init__(self, kind: str, unsupported: bool = False):
        super().__init__(kind)
        self.kind = kind
        self.unsupported = unsupported


def _u16(data: bytes, off: int) -> int:
    if off + 2 > len(data):
        raise DecodeError("truncated link header")
    return _H16.unpack_from(data, off)[0]


def _ip_version(data: bytes, off: int, what: str) -> bytes:
    if off >= len(data):
        raise DecodeError(f"truncated {what}")
    if data[off] >> 4 not in (4, 6):
        raise NotDecoded(f"{what} carrying no IP", unsupported=True)
    return data[off:]


class _Peeler:
    """Peels layers off one frame; each step counts against the depth."""

    __slots__ = ("steps",)

    def __init__(self) -> None:
        self.steps = 0

    def step(self) -> None:
        self.steps += 1
        if self.steps > MAX_ENCAP_DEPTH:
            raise NotDecoded(f"nested deeper than {MAX_ENCAP_DEPTH} headers", unsupported=True)

    def link(self, linktype: int, frame: bytes) -> bytes:
        if linktype == LINKTYPE_ETHERNET:
            return self.ethernet(frame, 0)
        if linktype in (LINKTYPE_RAW, LINKTYPE_RAW_ALT, LINKTYPE_RAW_OPENBSD, LINKTYPE_IPV4, LINKTYPE_IPV6):
            return _ip_version(frame, 0, "raw frame")
        if linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):  # 4-byte address family, host or network order
            if len(frame) < 4:
                raise DecodeError("truncated loopback header")
            family = {int.from_bytes(frame[:4], "little"), int.from_bytes(frame[:4], "big")}
            if 2 in family or family & set(_AF_INET6):
                return _ip_version(frame, 4, "loopback frame")
            raise NotDecoded(f"loopback family {min(family)}")
        if linktype == LINKTYPE_SLL:  # packet type, ARPHRD, address length, address (8), protocol
            return self.ethertype(_u16(frame, 14), frame, 16)
        if linktype == LINKTYPE_SLL2:  # protocol, reserved, ifindex, ARPHRD, packet type, address len, address
            return self.ethertype(_u16(frame, 0), frame, 20)
        if linktype in (LINKTYPE_PPP, LINKTYPE_PPP_HDLC):
            return self.ppp(frame, 0)
        if linktype == LINKTYPE_PPP_ETHER:
            return self.pppoe(frame, 0)
        if linktype == LINKTYPE_C_HDLC:  # address, control, then an ethertype
            return self.ethertype(_u16(frame, 2), frame, 4)
        name = LINKTYPE_NAMES.get(linktype)
        raise NotDecoded(f"link type {linktype}" + (f" ({name})" if name else ""), unsupported=True)

    def ethernet(self, frame: bytes, off: int) -> bytes:
        self.step()
        etype = _u16(frame, off + 12)
        if etype <= ETH_MAX_LENGTH:
            raise NotDecoded("802.3 LLC")
        return self.ethertype(etype, frame, off + 14)

    def ethertype(self, etype: int, data: bytes, off: int) -> bytes:
        while etype in ETH_VLAN:  # each tag: TCI (2), then the next type
            self.step()
            etype = _u16(data, off + 2)
            off += 4
        if etype in (ETH_IPV4, ETH_IPV6):
            return _ip_version(data, off, "IP frame")
        if etype == ETH_PPPOE_SESS:
            return self.pppoe(data, off)
        if etype in ETH_MPLS:
            return self.mpls(data, off)
        if etype == ETH_TEB:
            return self.ethernet(data, off)
        if etype == ETH_PPP:
            return self.ppp(data, off)
        name = ETH_NAMES.get(etype)
        raise NotDecoded(name or f"ethertype {etype:#06x}", unsupported=name is None)

    def pppoe(self, data: bytes, off: int) -> bytes:
        """RFC 2516 session stage: ver/type, code, session id, length (6 bytes), then PPP."""
        self.step()
        if off + 6 > len(data):
            raise DecodeError("truncated PPPoE header")
        return self.ppp(data, off + 6)

    def ppp(self, data: bytes, off: int) -> bytes:
        """PPP (RFC 1661), with or without the HDLC address/control bytes (RFC 1662)
        and with a compressed one-byte protocol field (odd first byte)."""
        self.step()
        if data[off:off + 2] == b"\xff\x03":
            off += 2
        if off >= len(data):
            raise DecodeError("truncated PPP header")
        if data[off] & 1:
            proto, off = data[off], off + 1
        else:
            proto, off = _u16(data, off), off + 2
        if proto in (PPP_IPV4, PPP_IPV6):
            return _ip_version(data, off, "PPP frame")
        if proto == PPP_MPLS:
            return self.mpls(data, off)
        name = PPP_NAMES.get(proto)
        raise NotDecoded(name or f"PPP protocol {proto:#06x}", unsupported=name is None)

    def mpls(self, data: bytes, off: int) -> bytes:
        """A label stack (RFC 3032) down to bottom of stack; below it IP (by its
        version nibble) or, after a zero nibble, a pseudowire control word and
        Ethernet (RFC 4448)."""
        while True:
            self.step()
            if off + 4 > len(data):
                raise DecodeError("truncated MPLS label stack")
            bos = data[off + 2] & (MPLS_BOS >> 8)
            off += 4
            if bos:
                break
        if off >= len(data):
            raise DecodeError("truncated MPLS payload")
        nibble = data[off] >> 4
        if nibble in (4, 6):
            return data[off:]
        if nibble == 0:
            return self.ethernet(data, off + 4)
        raise NotDecoded("MPLS payload neither IP nor Ethernet", unsupported=True)

    def gre(self, data: bytes) -> bytes:
        """GRE (RFC 2784, key and sequence RFC 2890; version 1 is PPTP's, RFC 2637)."""
        self.step()
        if len(data) < 4:
            raise DecodeError("truncated GRE header")
        flags, proto = _GRE.unpack_from(data)
        version = flags & GRE_VERSION
        if version > 1:
            raise NotDecoded(f"GRE version {version}", unsupported=True)
        off = 4 + 4 * (bool(flags & (GRE_C | GRE_R)) + bool(flags & GRE_K) + bool(flags & GRE_S)
                       + bool(version == 1 and flags & GRE_A))
        if version == 1 and off == len(data):  # RFC 2637 §4.1: PPTP acknowledges with no payload at all
            raise NotDecoded("PPTP GRE acknowledgement")
        if proto == ETH_ERSPAN2:  # type I has no header and no sequence number; type II 8 bytes
            return self.ethernet(data, off + (8 if flags & GRE_S else 0))
        if proto == ETH_ERSPAN3:  # 12 bytes, plus an 8-byte platform sub-header when O is set
            if off + 12 > len(data):
                raise DecodeError("truncated ERSPAN header")
            return self.ethernet(data, off + 12 + (8 if data[off + 11] & ERSPAN3_O else 0))
        return self.ethertype(proto, data, off)

    def vxlan(self, data: bytes) -> bytes:
        """VXLAN (RFC 7348): 8 bytes (flags, VNI), then an Ethernet frame."""
        self.step()
        if len(data) < 8:
            raise DecodeError("truncated VXLAN header")
        if not data[0] & VXLAN_FLAG_I:
            raise NotDecoded("VXLAN without a VNI", unsupported=True)
        return self.ethernet(data, 8)

    def inner(self, pkt: Packet) -> bytes | None:
        """The IP packet `pkt` carries as a tunnel, or None when it is no tunnel."""
        if pkt.proto in (IPPROTO_IPIP, IPPROTO_IPV6):
            self.step()
            return _ip_version(pkt.payload, 0, "IP-in-IP packet")
        if pkt.proto == IPPROTO_GRE:
            return self.gre(pkt.payload)
        if pkt.proto == IPPROTO_MPLS:
            return self.mpls(pkt.payload, 0)
        if pkt.proto == UDP and pkt.dport == VXLAN_PORT:
            return self.vxlan(pkt.payload)
        return None


_TUNNEL_PROTOS = frozenset((IPPROTO_IPIP, IPPROTO_IPV6, IPPROTO_GRE, IPPROTO_MPLS))
_ETH_IP_TYPES = (b"\x08\x00", b"\x86\xdd")


def decapsulate(pkt: Packet, peeler: _Peeler | None = None) -> Packet:
    """The innermost packet of a tunnel (IP-in-IP, GRE, VXLAN...); `pkt` itself
    when it is none. A fragment is returned as it is: reassemble, then call again."""
    if pkt.proto not in _TUNNEL_PROTOS and (pkt.proto != UDP or pkt.dport != VXLAN_PORT):
        return pkt  # the common case, kept cheap
    peeler = peeler or _Peeler()
    while pkt.frag is None:
        inner = peeler.inner(pkt)
        if inner is None:
            break
        pkt = decode_ip(inner)
    return pkt


def decode_frame(linktype: int, frame: bytes) -> Packet:
    """A captured frame's innermost IP packet: link layers and tunnels peeled.

    Raises NotDecoded when it carries no IP (its `kind` says what), DecodeError
    when a header is broken. A fragment comes back as it is (see `decapsulate`)."""
    if linktype == LINKTYPE_ETHERNET and frame[12:14] in _ETH_IP_TYPES:  # most frames: no peeler needed
        return decapsulate(decode_ip(frame[14:]))
    peeler = _Peeler()
    return decapsulate(decode_ip(peeler.link(linktype, frame)), peeler)


def decode_link(linktype: int, frame: bytes) -> bytes | None:
    """Strip the link layers; the L3 bytes, or None when the frame is not IP."""
    try:
        return _Peeler().link(linktype, frame)
    except DecodeError:
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
        return _l4(pkt.l3, pkt.proto, pkt.src, pkt.dst, buf[:end], 0)

