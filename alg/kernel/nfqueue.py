"""NFQUEUE spoken directly: nfnetlink_queue on a plain AF_NETLINK socket.

Theory of operation. A `QueueBinding` owns one NETLINK_NETFILTER socket bound
to one queue (the kernel takes verdicts only from the socket that bound it).
The kernel sends one NFQNL_MSG_PACKET per queued packet, one per datagram, in
packet-id order; `receive()` reads up to `max_packets` of them with one
recvmmsg(2) and decodes each into a `QueuedPacket`: id, payload, and, when the
queue was bound with NFQA_CFG_F_CONNTRACK and the kernel has the conntrack glue
(CONFIG_NETFILTER_NETLINK_GLUE_CT), the packet's conntrack (NFQA_CT) and how
the packet relates to it (NFQA_CT_INFO). `verdict()` only queues a verdict;
`flush()` sends all queued verdicts in one send(2) (nfnetlink processes every
message of the datagram in turn), folding a run of plain accepts into one
NFQNL_MSG_VERDICT_BATCH where that means exactly the same thing.

Kernel behaviour relied on (net/netfilter/nfnetlink_queue.c,
nf_conntrack_netlink.c, nfnetlink_cthelper.c):

* nfqnl_recv_config checks NFQA_CFG_FLAGS before anything else: asking for
  NFQA_CFG_F_CONNTRACK without the glue is EOPNOTSUPP and binds nothing (EAGAIN
  when the request just loaded nf_conntrack_netlink: ask again). A queue bound
  by another socket is EBUSY (bind) or EPERM.
* A packet's id is given under the queue lock right before it is unicast, so
  ids reach the socket in increasing order; a packet the socket cannot take
  (receive buffer full) is not queued at all and counted as user_dropped.
* NFQNL_MSG_VERDICT_BATCH gives its verdict to every queued packet whose id is
  not after the given one (nfqnl_recv_verdict_batch); an NFQA_PAYLOAD of
  another length than the packet's is applied (nfqnl_mangle) and, with an
  NFQA_CT beside it, TCP sequence numbers are adjusted when the conntrack is
  NATed (ctnetlink_glue_seqadj). NFQA_EXP is read only beside an NFQA_CT, and
  a failed NFQA_CT or NFQA_EXP is not reported: the verdict is applied anyway.
* Without NLM_F_ACK the kernel still answers a failed message with an
  NLMSG_ERROR (unknown id: ENOENT); `receive()` counts those in `errors`.

`proc_queues()` reads the kernel's per-queue counters (bound by whom, waiting,
dropped) for `alg doctor` and `alg status`; `conntrack_glue()` asks the kernel
whether verdicts can carry conntrack information at all.
"""

from __future__ import annotations

import ctypes
import ipaddress
import errno as E
import mmap
import os
import select
import socket
import struct
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from typing import NamedTuple

from ..decode import tcp_without_data
from ..errors import KernelError
from ..model import FlowTuple
from . import nlmsg as L

# include/uapi/linux/netfilter/nfnetlink_queue.h
NFNL_SUBSYS_QUEUE = L.NFNL_SUBSYS_QUEUE
NFQNL_MSG_PACKET, NFQNL_MSG_VERDICT, NFQNL_MSG_CONFIG, NFQNL_MSG_VERDICT_BATCH = 0, 1, 2, 3
(NFQA_PACKET_HDR, NFQA_VERDICT_HDR, NFQA_MARK, NFQA_TIMESTAMP, NFQA_IFINDEX_INDEV, NFQA_IFINDEX_OUTDEV,
 NFQA_IFINDEX_PHYSINDEV, NFQA_IFINDEX_PHYSOUTDEV, NFQA_HWADDR, NFQA_PAYLOAD, NFQA_CT, NFQA_CT_INFO,
 NFQA_CAP_LEN, NFQA_SKB_INFO, NFQA_EXP) = range(1, 16)
NFQNL_CFG_CMD_NONE, NFQNL_CFG_CMD_BIND, NFQNL_CFG_CMD_UNBIND = 0, 1, 2
NFQNL_COPY_NONE, NFQNL_COPY_META, NFQNL_COPY_PACKET = 0, 1, 2
NFQA_CFG_CMD, NFQA_CFG_PARAMS, NFQA_CFG_QUEUE_MAXLEN, NFQA_CFG_MASK, NFQA_CFG_FLAGS = 1, 2, 3, 4, 5
NFQA_CFG_F_FAIL_OPEN, NFQA_CFG_F_CONNTRACK, NFQA_CFG_F_GSO = 1 << 0, 1 << 1, 1 << 2
# include/uapi/linux/netfilter.h
NF_DROP, NF_ACCEPT = 0, 1
# include/uapi/linux/netfilter/nfnetlink_conntrack.h
CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_STATUS, CTA_HELP, CTA_MARK, CTA_ID, CTA_TUPLE_MASTER, CTA_ZONE = (
    1, 2, 3, 5, 8, 12, 14, 18)
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_IP_V4_SRC, CTA_IP_V4_DST, CTA_IP_V6_SRC, CTA_IP_V6_DST = 1, 2, 3, 4
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
CTA_HELP_NAME, CTA_HELP_INFO = 1, 2
# include/uapi/linux/netfilter/nf_conntrack_common.h, enum ip_conntrack_info
IP_CT_ESTABLISHED, IP_CT_RELATED, IP_CT_NEW, IP_CT_ESTABLISHED_REPLY, IP_CT_RELATED_REPLY = 0, 1, 2, 3, 4
IP_CT_IS_REPLY = IP_CT_ESTABLISHED_REPLY
# a packet of a flow the kernel has seen both ways (either direction), neither opening nor related
ESTABLISHED_CTINFO = frozenset((IP_CT_ESTABLISHED, IP_CT_ESTABLISHED_REPLY))
# include/net/netfilter/nf_conntrack_helper.h: NF_CT_HELPER_NAME_LEN (with its NUL) and the size of
# struct nf_conn_help's data[] (nfnl_cthelper_create refuses a larger NFCTH_PRIV_DATA_LEN)
NF_CT_HELPER_NAME_LEN = 16
NF_CT_HELPER_DATA_MAX = 32
# net/netfilter/nfnetlink_queue.c: an attribute's length is 16 bits, header included
NFQNL_MAX_COPY_RANGE = 0xFFFF - 4
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33  # asm-generic/socket.h; Python names neither

_QUEUE = NFNL_SUBSYS_QUEUE << 8
_NLH = struct.Struct("=IHHII")
_NFGEN = struct.Struct("!BBH")
_NLA = L.NLA_HEADER  # (module names: read for every attribute)
_PKT_HDR = struct.Struct("!IHB")  # struct nfqnl_msg_packet_hdr (packed)
_VERDICT_HDR = struct.Struct("!II")  # struct nfqnl_msg_verdict_hdr
_BE32 = struct.Struct("!I")
_BE16 = struct.Struct("!H")
_NLA_TYPE_MASK = L.NLA_TYPE_MASK

# Socket buffer accounting (sk_rmem_alloc counts each message's skb truesize): a message is its
# packet plus at most this much metadata (headers, interfaces, conntrack with labels and seqadj);
# its buffer is allocated rounded up to a power of two, the packet's bytes may come as a page
# fragment, plus struct sk_buff and skb_shared_info. Measured on this host kernel: about 4.6 KB per
# message of a 742-byte packet forwarded through a veth; the bound below gives it 9 KB.
_META_MAX = 1024
_SKB_OVERHEAD = 4096 + 1024
_RCVBUF_MAX = (1 << 31) // 2 - 1  # sk_rcvbuf is an int; the kernel doubles what it is given
_SNDBUF = 1 << 22  # verdicts carrying payloads: one send holds up to this (netlink_sendmsg: EMSGSIZE)
_RECV_MEMORY = 16 << 20  # address space for one recvmmsg's buffers (mmap: pages are touched on use)


# ---------------------------------------------------------------- what the kernel hands us

@dataclass(frozen=True, slots=True)
class CtTuple:
    """A conntrack tuple as the kernel reports it (CTA_TUPLE_ORIG/REPLY/MASTER).

    l3 is 4 or 6 (as alg.model.FlowTuple); addresses packed (4 or 16 bytes);
    ports 0 for protocols without them."""

    l3: int
    proto: int
    src: bytes
    dst: bytes
    sport: int
    dport: int
    # hashed once: a conntrack's tuple keys the engine's flow table, looked up on every packet
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash((self.l3, self.proto, self.src, self.dst, self.sport, self.dport)))

    def __hash__(self) -> int:
        return self._hash

    def __reduce__(self) -> tuple:
        # built anew where unpickled: a hash of bytes differs between processes (PYTHONHASHSEED)
        return CtTuple, (self.l3, self.proto, self.src, self.dst, self.sport, self.dport)

    def flow(self) -> FlowTuple:
        return _flow_of(self)

    def reversed(self) -> "CtTuple":
        return CtTuple(self.l3, self.proto, self.dst, self.src, self.dport, self.sport)


# CtTuples kept with their FlowTuple (both frozen): without the conntrack glue every queued
# packet's tuple is turned into one to look its conntrack up, two ipaddress objects each time
_FLOWS_MAX = 1024


@lru_cache(maxsize=_FLOWS_MAX)
def _flow_of(t: CtTuple) -> FlowTuple:
    return FlowTuple(t.l3, t.proto, ipaddress.ip_address(t.src), ipaddress.ip_address(t.dst), t.sport, t.dport)


class Conntrack(NamedTuple):
    """Decoded NFQA_CT (ctnetlink attributes, nested: ctnetlink_glue_build). A named tuple, as
    QueuedPacket: most queued packets of a TCP flow bring one decoded anew."""

    orig: CtTuple
    reply: CtTuple
    status: int  # IPS_* bits (nf_conntrack_common.h), NAT bits included
    id: int | None
    helper: str | None  # CTA_HELP/CTA_HELP_NAME
    helper_info: bytes | None  # CTA_HELP/CTA_HELP_INFO: the helper's private data (NFCTH_PRIV_DATA_LEN bytes)
    master: CtTuple | None  # CTA_TUPLE_MASTER: set when this conntrack was created by an expectation
    mark: int = 0
    zone: int = 0


class QueuedPacket(NamedTuple):
    """One packet as the queue handed it over. A named tuple (immutable, as a frozen dataclass,
    but made in a fifth of the time): there is one per queued packet."""

    queue: int
    id: int
    hook: int  # NF_INET_* hook the packet was queued from
    hw_protocol: int  # ETH_P_IP / ETH_P_IPV6
    payload: bytes  # from the IP header on, at most copy_range bytes
    ctinfo: int | None  # NFQA_CT_INFO (IP_CT_*); None without conntrack glue
    ct: Conntrack | None
    mark: int = 0
    cap_len: int = 0  # NFQA_CAP_LEN: the packet's length when payload was cut to copy_range, else 0


def _attrs(b, off: int, end: int) -> dict[int, tuple[int, int]]:
    """One level of attributes: type -> (start, end) of its payload. Raises ValueError on an
    attribute that runs past ``end``."""
    out: dict[int, tuple[int, int]] = {}
    while off + 4 <= end:
        n, t = _NLA.unpack_from(b, off)
        if n < 4 or off + n > end:
            raise ValueError(f"bad attribute length {n} at {off}")
        out[t & _NLA_TYPE_MASK] = (off + 4, off + n)
        off += (n + 3) & ~3
    return out


_TUPLES_MAX = 8192  # raw CTA_TUPLE_* nests kept decoded: every packet of a flow repeats its own


def _tuple(b, span: tuple[int, int]) -> CtTuple:
    return _tuple_of(bytes(b[span[0]:span[1]]))


@lru_cache(maxsize=_TUPLES_MAX)
def _tuple_of(raw: bytes) -> CtTuple:
    return _decode_tuple(raw, (0, len(raw)))


def _decode_tuple(b, span: tuple[int, int]) -> CtTuple:
    a = _attrs(b, *span)
    if CTA_TUPLE_IP not in a or CTA_TUPLE_PROTO not in a:
        raise ValueError("conntrack tuple without CTA_TUPLE_IP/CTA_TUPLE_PROTO")
    ip = _attrs(b, *a[CTA_TUPLE_IP])
    if CTA_IP_V4_SRC in ip:
        l3, s, d, size = 4, ip[CTA_IP_V4_SRC], ip.get(CTA_IP_V4_DST), 4
    elif CTA_IP_V6_SRC in ip:
        l3, s, d, size = 6, ip[CTA_IP_V6_SRC], ip.get(CTA_IP_V6_DST), 16
    else:
        raise ValueError("conntrack tuple without a source address")
    if d is None or s[1] - s[0] != size or d[1] - d[0] != size:
        raise ValueError("conntrack tuple address of a wrong size")
    pr = _attrs(b, *a[CTA_TUPLE_PROTO])
    num = pr.get(CTA_PROTO_NUM)
    if num is None or num[1] <= num[0]:
        raise ValueError("conntrack tuple without CTA_PROTO_NUM")

    def port(k: int) -> int:
        p = pr.get(k)
        if p is None:
            return 0
        if p[1] - p[0] < 2:
            raise ValueError("short port")
        return _BE16.unpack_from(b, p[0])[0]

    return CtTuple(l3, b[num[0]], bytes(b[s[0]:s[1]]), bytes(b[d[0]:d[1]]),
                   port(CTA_PROTO_SRC_PORT), port(CTA_PROTO_DST_PORT))


def _u32(b, span: tuple[int, int] | None, default):
    if span is None:
        return default
    if span[1] - span[0] < 4:
        raise ValueError("short 32-bit attribute")
    return _BE32.unpack_from(b, span[0])[0]


# the attributes of a conntrack alg reads, in the order decode_conntrack unpacks their spans
_CT_READ = {t: i for i, t in enumerate((CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_STATUS, CTA_ID, CTA_HELP,
                                        CTA_TUPLE_MASTER, CTA_MARK, CTA_ZONE))}


def decode_conntrack(b, span: tuple[int, int]) -> Conntrack:
    """ctnetlink conntrack attributes in b[span] (NFQA_CT, or a CT_NEW answer). Raises ValueError.

    One pass over the attributes (of an attribute given twice the last counts), then the ones
    alg reads are decoded: a TCP flow's NFQA_CT differs from packet to packet (its timeout, its
    protocol state, the helper's private data), so this runs for most of its packets."""
    return _conntrack_at(b, *_conntrack_spans(b, span)[:3])


def _conntrack_spans(b, span: tuple[int, int]) -> tuple[list, tuple | None, tuple | None, list[int]]:
    """Where decode_conntrack finds what it reads in b[span]: the spans of _CT_READ's
    attributes, of CTA_HELP_NAME and of CTA_HELP_INFO, and the offset of every attribute
    header on the way (the conntrack's own and CTA_HELP's). Raises ValueError."""
    off, end = span
    spans: list[tuple[int, int] | None] = [None] * len(_CT_READ)
    heads = []
    while off + 4 <= end:
        n, t = _NLA.unpack_from(b, off)
        if n < 4 or off + n > end:
            raise ValueError(f"bad attribute length {n} at {off}")
        heads.append(off)
        i = _CT_READ.get(t & _NLA_TYPE_MASK)
        if i is not None:
            spans[i] = (off + 4, off + n)
        off += (n + 3) & ~3
    if spans[0] is None or spans[1] is None:
        raise ValueError("NFQA_CT without both tuples")
    name = info = None
    help_ = spans[4]
    if help_ is not None:
        at = help_[0]
        while at + 4 <= help_[1]:  # (of a name or info given twice the last counts)
            n, t = _NLA.unpack_from(b, at)
            if n < 4 or at + n > help_[1]:
                raise ValueError(f"bad attribute length {n} at {at}")
            heads.append(at)
            if t & _NLA_TYPE_MASK == CTA_HELP_NAME:
                name = (at + 4, at + n)
            elif t & _NLA_TYPE_MASK == CTA_HELP_INFO:
                info = (at + 4, at + n)
            at += (n + 3) & ~3
    zone = spans[7]
    if zone is not None and zone[1] - zone[0] < 2:
        raise ValueError("short CTA_ZONE")
    return spans, name, info, heads


def _conntrack_at(b, spans: list, name: tuple | None, info: tuple | None) -> Conntrack:
    orig, reply, status, ct_id, _help, master, mark, zone = spans
    return Conntrack(_tuple(b, orig), _tuple(b, reply), _u32(b, status, 0), _u32(b, ct_id, None),
                     L.c_string(bytes(b[name[0]:name[1]])) if name is not None else None,
                     bytes(b[info[0]:info[1]]) if info is not None else None,
                     _tuple(b, master) if master is not None else None,
                     _u32(b, mark, 0), _BE16.unpack_from(b, zone[0])[0] if zone else 0)


# raw NFQA_CT kept decoded: the packets of a flow within a second (CTA_TIMEOUT counts
# seconds) carry the same bytes (a UDP flow's, mostly; a TCP flow's protocol state changes)
_CONNTRACKS_MAX = 1024
_conntracks: dict[bytes, Conntrack] = {}


def _conntrack(raw: bytes, b, parts: tuple) -> Conntrack:
    """The conntrack of NFQA_CT's body `raw` (copied from b), decoded where `parts` (spans in
    b: _conntrack_spans) say."""
    ct = _conntracks.get(raw)
    if ct is None:
        ct = _conntrack_at(b, *parts)
        if len(_conntracks) >= _CONNTRACKS_MAX:
            del _conntracks[next(iter(_conntracks))]  # the oldest
        _conntracks[raw] = ct
    return ct


_U32_ATTRS = frozenset((NFQA_CT_INFO, NFQA_MARK, NFQA_CAP_LEN))


class _Layout:
    """Where everything parse_packet reads lies in a queued packet's message, for messages
    laid out as one read before: the same attribute headers (types and lengths) at the same
    offsets, the conntrack's and its CTA_HELP's included, up to NFQA_PAYLOAD, the last one.

    The kernel writes a flow's messages alike (nfqnl_build_packet_message: the packet
    header, interfaces, hardware address, conntrack, ctinfo, payload; the values and the
    payload's length change), so one struct call reads every header where the last walk
    found one and compares them with what it found; when all are the same, every value
    lies where it lay, and no attribute is walked. Any difference (another length, another
    attribute, anything after the payload) makes parse_packet walk the message."""

    __slots__ = ("heads", "known", "payload_at", "hdr_at", "u32_at", "ct")

    def __init__(self, b, heads: list[int], payload_at: int, hdr_at: int, u32_at: tuple,
                 ct: tuple[tuple[int, int], tuple] | None):
        fmt, pos = "=", 0
        for at in sorted(heads):
            fmt += f"{at - pos}x4s"
            pos = at + 4
        self.heads = struct.Struct(fmt).unpack_from
        self.known = self.heads(b)
        self.payload_at, self.hdr_at, self.u32_at = payload_at, hdr_at, u32_at
        self.ct = ct  # (NFQA_CT's span, where its parts lie: _conntrack_spans)

    def read(self, b, bare_ack_conntrack: bool) -> QueuedPacket | None:
        """The packet, or None when b is not laid out so."""
        end, at = len(b), self.payload_at
        if end < at + 4 or self.heads(b) != self.known:
            return None
        n, t = _NLA.unpack_from(b, at)
        if t & _NLA_TYPE_MASK != NFQA_PAYLOAD or n < 4 or at + n > end or at + ((n + 3) & ~3) + 4 <= end:
            return None
        payload = bytes(b[at + 4:at + n])
        hdr = _PKT_HDR.unpack_from(b, self.hdr_at)
        ctinfo_at, mark_at, cap_at = self.u32_at
        ctinfo = _BE32.unpack_from(b, ctinfo_at)[0] if ctinfo_at else None
        ct = None
        if self.ct is not None and (bare_ack_conntrack or ctinfo not in ESTABLISHED_CTINFO
                                    or not tcp_without_data(payload)):
            (start, stop), parts = self.ct
            ct = _conntrack(bytes(b[start:stop]), b, parts)
        return QueuedPacket(_NFGEN.unpack_from(b, 0)[2], hdr[0], hdr[2], hdr[1], payload, ctinfo, ct,
                            _BE32.unpack_from(b, mark_at)[0] if mark_at else 0,
                            _BE32.unpack_from(b, cap_at)[0] if cap_at else 0)


_LAYOUTS_MAX = 8  # a queue's messages come in a few layouts (each direction's interfaces, a mark or none)
_layouts: list[_Layout] = []


def parse_packet(msg_payload, bare_ack_conntrack: bool = True) -> QueuedPacket:
    """One NFQNL_MSG_PACKET (what follows its nlmsghdr: nfgenmsg and attributes).

    `bare_ack_conntrack` False: the conntrack of a bare TCP acknowledgement of a flow under way
    (ctinfo in ESTABLISHED_CTINFO, decode.tcp_without_data) is left undecoded and `ct` is None.
    The queue worker gives such a packet its verdict uninspected, and decoding its NFQA_CT (anew
    for most packets of a TCP flow: its timeout and protocol state change) was a third of its cost.

    A message laid out as a recent one is read where that one's attributes lay (_Layout: 2.4
    us per message of an FTP control channel on the development machine, 3.0 walked); any
    other is walked attribute by attribute, and its layout kept.

    Raises ValueError, and nothing else, on bytes that are not one."""
    for i, layout in enumerate(_layouts):
        p = layout.read(msg_payload, bare_ack_conntrack)
        if p is not None:
            if i:
                _layouts.insert(0, _layouts.pop(i))
            return p
    return _walk(msg_payload, bare_ack_conntrack)


def _walk(b, bare_ack_conntrack: bool) -> QueuedPacket:
    end = len(b)
    if end < 4:
        raise ValueError("short nfgenmsg")
    queue = _NFGEN.unpack_from(b, 0)[2]
    off = 4
    hdr = payload = ct = ctinfo = ct_span = None
    mark = cap_len = 0
    heads: list[int] = []
    seen: dict[int, int] = {}  # attribute type -> offset of its last header
    while off + 4 <= end:
        n, t = _NLA.unpack_from(b, off)
        if n < 4 or off + n > end:
            raise ValueError(f"bad attribute length {n} at {off}")
        t &= _NLA_TYPE_MASK
        heads.append(off)
        seen[t] = off
        if t == NFQA_PAYLOAD:
            payload = bytes(b[off + 4:off + n])
        elif t == NFQA_CT:
            ct_span = (off + 4, off + n)
        elif t == NFQA_PACKET_HDR:
            if n < 4 + _PKT_HDR.size:
                raise ValueError("short NFQA_PACKET_HDR")
            hdr = _PKT_HDR.unpack_from(b, off + 4)
        elif t in _U32_ATTRS:
            if n < 8:
                raise ValueError("short 32-bit attribute")
            v = _BE32.unpack_from(b, off + 4)[0]
            if t == NFQA_CT_INFO:
                ctinfo = v
            elif t == NFQA_MARK:
                mark = v
            else:
                cap_len = v
        off += (n + 3) & ~3
    if hdr is None:
        raise ValueError("NFQNL_MSG_PACKET without NFQA_PACKET_HDR")
    payload = payload or b""
    decode = ct_span is not None and (bare_ack_conntrack or ctinfo not in ESTABLISHED_CTINFO
                                      or not tcp_without_data(payload))
    learn = heads[-1] == seen.get(NFQA_PAYLOAD)  # the payload last, as the kernel writes it
    laid: tuple[tuple[int, int], tuple] | None = None  # NFQA_CT's span and where its parts lie
    ct_heads: list[int] = []
    if ct_span is not None and (decode or learn):
        try:
            spans, name, info, ct_heads = _conntrack_spans(b, ct_span)
        except ValueError:
            if decode:
                raise
            learn = False  # (a bare ACK's conntrack is not read: a damaged one costs it nothing)
        else:
            laid = ct_span, (spans, name, info)
            if decode:
                ct = _conntrack(bytes(b[ct_span[0]:ct_span[1]]), b, laid[1])
    p = QueuedPacket(queue, hdr[0], hdr[2], hdr[1], payload, ctinfo, ct, mark, cap_len)
    if learn:  # this layout serves the flow's next messages
        if len(_layouts) >= _LAYOUTS_MAX:
            _layouts.pop()
        u32_at = tuple(seen[k] + 4 if k in seen else 0 for k in (NFQA_CT_INFO, NFQA_MARK, NFQA_CAP_LEN))
        _layouts.insert(0, _Layout(b, heads[:-1] + ct_heads, heads[-1], seen[NFQA_PACKET_HDR] + 4, u32_at, laid))
    return p


def packet_ids(msg_payload) -> tuple[int, int] | None:
    """(queue, packet id) of an NFQNL_MSG_PACKET parse_packet refused, if its NFQA_PACKET_HDR
    reads: so that it still gets a verdict."""
    b, off = msg_payload, 4
    if len(b) < 4:
        return None
    while off + 4 <= len(b):
        n, t = _NLA.unpack_from(b, off)
        if n < 4:
            return None
        if t & _NLA_TYPE_MASK == NFQA_PACKET_HDR and n >= 4 + _PKT_HDR.size and off + n <= len(b):
            return _NFGEN.unpack_from(b, 0)[2], _PKT_HDR.unpack_from(b, off + 4)[0]
        off += (n + 3) & ~3
    return None


# ---------------------------------------------------------------- messages we send

def pack_config(queue: int, *, command: int | None = None, copy_mode: int | None = None, copy_range: int = 0,
                max_len: int | None = None, flags: int | None = None, mask: int | None = None,
                seq: int = 0, pid: int = 0, ack: bool = True) -> bytes:
    """NFQNL_MSG_CONFIG for ``queue``: an optional NFQA_CFG_CMD (pf AF_UNSPEC: the kernel
    ignores it since per-family binding went away), NFQA_CFG_PARAMS, NFQA_CFG_QUEUE_MAXLEN
    and NFQA_CFG_MASK + NFQA_CFG_FLAGS, in that order, with ACK unless ``ack`` is false."""
    body = b""
    if command is not None:
        body += L.nla(NFQA_CFG_CMD, struct.pack("!BxH", command, socket.AF_UNSPEC))
    if copy_mode is not None:
        body += L.nla(NFQA_CFG_PARAMS, struct.pack("!IB", copy_range, copy_mode))
    if max_len is not None:
        body += L.nla(NFQA_CFG_QUEUE_MAXLEN, L.be32(max_len))
    if flags is not None:
        body += L.nla(NFQA_CFG_MASK, L.be32(flags if mask is None else mask)) + L.nla(NFQA_CFG_FLAGS, L.be32(flags))
    return L.message(NFNL_SUBSYS_QUEUE, NFQNL_MSG_CONFIG, L.NLM_F_REQUEST | (L.NLM_F_ACK if ack else 0),
                     socket.AF_UNSPEC, body, seq, pid, res_id=queue)


def pack_bind(queue: int, max_len: int, copy_range: int = 0xFFFF, flags: int = 0, seq: int = 0,
              pid: int = 0) -> bytes:
    """Bind ``queue`` copying whole packets (up to ``copy_range`` bytes), at most ``max_len``
    waiting, with ``flags`` (NFQA_CFG_F_*; their mask is the same bits): one message, so the
    kernel refuses all of it (nothing bound) when it cannot honour the flags."""
    return pack_config(queue, command=NFQNL_CFG_CMD_BIND, copy_mode=NFQNL_COPY_PACKET, copy_range=copy_range,
                       max_len=max_len, flags=flags or None, seq=seq, pid=pid)


def pack_unbind(queue: int, seq: int = 0, pid: int = 0) -> bytes:
    return pack_config(queue, command=NFQNL_CFG_CMD_UNBIND, seq=seq, pid=pid)


def pack_params(queue: int, copy_mode: int, copy_range: int, seq: int = 0, pid: int = 0) -> bytes:
    return pack_config(queue, copy_mode=copy_mode, copy_range=copy_range, seq=seq, pid=pid)


def pack_config_flags(queue: int, flags: int, mask: int, seq: int = 0, pid: int = 0) -> bytes:
    """NFQNL_MSG_CONFIG setting queue flags (NFQA_CFG_MASK/NFQA_CFG_FLAGS), no command, with ACK."""
    return pack_config(queue, flags=flags, mask=mask, seq=seq, pid=pid)


def pack_verdict(queue: int, packet_id: int, accept: bool, expectation: bytes = b"", *,
                 payload: bytes | None = None, ct: bytes | None = None, mark: int | None = None) -> bytes:
    """NFQNL_MSG_VERDICT for one packet: NFQA_VERDICT_HDR, then as given NFQA_MARK, NFQA_PAYLOAD
    (the packet's new bytes from the IP header on), NFQA_CT (a nest of ``ct``, ctnetlink
    attributes for the packet's own conntrack, e.g. pack_ct_help) and NFQA_EXP (a nest of
    CTA_EXPECT_* attributes without master: an expectation of the packet's own conntrack).
    The kernel reads NFQA_EXP only beside an NFQA_CT: an empty one is sent when there is none."""
    body = L.nla(NFQA_VERDICT_HDR, _VERDICT_HDR.pack(NF_ACCEPT if accept else NF_DROP, packet_id))
    if mark is not None:
        body += L.nla(NFQA_MARK, L.be32(mark))
    if payload is not None:
        if len(payload) > NFQNL_MAX_COPY_RANGE:
            raise ValueError(f"payload of {len(payload)} bytes does not fit an attribute")
        body += L.nla(NFQA_PAYLOAD, payload)
    if ct is not None or expectation:
        body += L.nest(NFQA_CT, ct or b"")
    if expectation:
        body += L.nest(NFQA_EXP, expectation)
    return L.message(NFNL_SUBSYS_QUEUE, NFQNL_MSG_VERDICT, L.NLM_F_REQUEST, socket.AF_UNSPEC, body, res_id=queue)


def pack_verdict_batch(queue: int, max_id: int, accept: bool = True) -> bytes:
    """NFQNL_MSG_VERDICT_BATCH: the same verdict for every packet of ``queue`` whose id is not after ``max_id``."""
    body = L.nla(NFQA_VERDICT_HDR, _VERDICT_HDR.pack(NF_ACCEPT if accept else NF_DROP, max_id))
    return L.message(NFNL_SUBSYS_QUEUE, NFQNL_MSG_VERDICT_BATCH, L.NLM_F_REQUEST, socket.AF_UNSPEC, body,
                     res_id=queue)


def pack_ct_help(helper_name: str, info: bytes) -> bytes:
    """ctnetlink attributes for NFQA_CT that set the helper's private data:
    CTA_HELP{CTA_HELP_NAME, CTA_HELP_INFO}.

    What the kernel does with them (ctnetlink_glue_parse_ct -> ctnetlink_change_helper
    -> nfnl_cthelper_from_nlattr): the name must be the conntrack's own helper (another
    name: EBUSY; a conntrack without helper: EOPNOTSUPP) and then ``info`` is copied over
    the private data, zero-filled when shorter (nla_memcpy into the 32-byte data[]), of
    which the kernel reports NFCTH_PRIV_DATA_LEN bytes back. A conntrack created by an
    expectation (one with a master) is left alone even under the same name: its private
    data cannot be set this way. Failures are not reported: the verdict still applies.
    """
    if len(info) > NF_CT_HELPER_DATA_MAX:
        raise ValueError(f"helper private data of {len(info)} bytes (at most {NF_CT_HELPER_DATA_MAX})")
    return L.nest(CTA_HELP, _help_name(helper_name), L.nla(CTA_HELP_INFO, bytes(info)))


@lru_cache(maxsize=64)
def _help_name(helper_name: str) -> bytes:
    """CTA_HELP_NAME of a helper (the same few names, one per packet whose record changes)."""
    name = helper_name.encode("ascii")
    if not 0 < len(name) < NF_CT_HELPER_NAME_LEN or b"\0" in name:
        raise ValueError(f"helper name {helper_name!r}: 1 to {NF_CT_HELPER_NAME_LEN - 1} characters")
    return L.nla(CTA_HELP_NAME, name + b"\0")


# ---------------------------------------------------------------- recvmmsg(2)

class _iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _msghdr(ctypes.Structure):
    _fields_ = [("msg_name", ctypes.c_void_p), ("msg_namelen", ctypes.c_uint32),
                ("msg_iov", ctypes.POINTER(_iovec)), ("msg_iovlen", ctypes.c_size_t),
                ("msg_control", ctypes.c_void_p), ("msg_controllen", ctypes.c_size_t),
                ("msg_flags", ctypes.c_int)]


class _mmsghdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _msghdr), ("msg_len", ctypes.c_uint)]


def _libc_recvmmsg():
    try:
        f = ctypes.CDLL(None, use_errno=True).recvmmsg
    except (OSError, AttributeError):
        return None
    f.argtypes = [ctypes.c_int, ctypes.POINTER(_mmsghdr), ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
    f.restype = ctypes.c_int
    return f


_recvmmsg = _libc_recvmmsg()


def rcvbuf_for(max_len: int, copy_range: int) -> int:
    """Receive buffer (as the kernel counts it, skb truesize) that holds ``max_len`` messages
    of the largest packet the queue copies, so the socket never refuses what the queue takes."""
    msg = min(copy_range or NFQNL_MAX_COPY_RANGE, NFQNL_MAX_COPY_RANGE) + _META_MAX
    return max_len * ((1 << (msg - 1).bit_length()) + _SKB_OVERHEAD)


# ---------------------------------------------------------------- the binding

class QueueBinding:
    """One NFQUEUE queue bound on its own netlink socket (see the module docstring)."""

    # a bare TCP acknowledgement of a flow under way comes without its conntrack (parse_packet)
    bare_ack_conntrack = False

    def __init__(self, num: int, max_len: int, *, copy_range: int = 0xFFFF, conntrack: bool = True,
                 rcvbuf: int | None = None, batch: bool = True, max_packets: int = 256):
        self.num = num
        self.max_len = max_len
        self.copy_range = min(copy_range, NFQNL_MAX_COPY_RANGE)
        self.batch = batch  # fold runs of plain accepts into NFQNL_MSG_VERDICT_BATCH
        self.enobufs = 0  # times the socket reported lost messages (its buffer overflowed)
        self.errors: Counter[int] = Counter()  # errno of NLMSG_ERRORs answering our verdicts
        self.bad_messages = 0  # NFQNL_MSG_PACKETs that did not decode (given an empty payload when their id reads)
        self._pending: list[tuple[int, bytes | None]] = []  # (id, message; None: a plain accept)
        self._outstanding: dict[int, None] = {}  # ids received, no verdict sent yet, in id order
        self._stash: list[bytes] = []  # packet messages read while waiting for an ACK
        self._seq = 0
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK,
                                  L.NETLINK_NETFILTER)
        try:
            self.sock.bind((0, 0))
            self.portid = self.sock.getsockname()[0]
            self.rcvbuf = self._size_buffers(rcvbuf if rcvbuf is not None else rcvbuf_for(max_len, self.copy_range))
            self._setup_recv(max_packets)
            self.conntrack = self._bind(conntrack)
        except BaseException:
            self.sock.close()
            raise
        self._bound = True

    # -- set-up ---------------------------------------------------------------
    def _size_buffers(self, want: int) -> int:
        """Set the receive buffer to ``want`` bytes (SO_RCVBUFFORCE passes net.core.rmem_max with
        CAP_NET_ADMIN; SO_RCVBUF is capped by it). Returns what the kernel granted."""
        s = self.sock
        for opt in (SO_RCVBUFFORCE, socket.SO_RCVBUF):
            try:
                s.setsockopt(socket.SOL_SOCKET, opt, min((want + 1) // 2, _RCVBUF_MAX))  # the kernel doubles it
                break
            except OSError:
                continue
        for opt in (SO_SNDBUFFORCE, socket.SO_SNDBUF):
            try:
                s.setsockopt(socket.SOL_SOCKET, opt, _SNDBUF // 2)
                break
            except OSError:
                continue
        self._send_max = s.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) - 32  # netlink_sendmsg's bound
        return s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)

    def _setup_recv(self, max_packets: int) -> None:
        # one slot per datagram: a netlink datagram that does not fit its buffer is cut, the rest lost
        self._slot = min(self.copy_range, NFQNL_MAX_COPY_RANGE) + _META_MAX + 16
        self._slots = max(1, min(max_packets, _RECV_MEMORY // self._slot))
        # anonymous mmap: address space only; the kernel touches the pages a message needs
        self._mem = mmap.mmap(-1, self._slots * self._slot)
        self._view = memoryview(self._mem)
        if _recvmmsg is None:
            self._msgs = None
            return
        base = ctypes.addressof(ctypes.c_char.from_buffer(self._mem))
        self._iov = (_iovec * self._slots)()
        self._msgs = (_mmsghdr * self._slots)()
        for i in range(self._slots):
            self._iov[i].iov_base = base + i * self._slot
            self._iov[i].iov_len = self._slot
            self._msgs[i].msg_hdr.msg_iov = ctypes.pointer(self._iov[i])
            self._msgs[i].msg_hdr.msg_iovlen = 1

    def _bind(self, conntrack: bool) -> bool:
        """Bind with NFQA_CFG_F_CONNTRACK when asked; without it when the kernel lacks the glue."""
        flags = NFQA_CFG_F_CONNTRACK if conntrack else 0
        for _ in range(3):
            try:
                self._transact(lambda seq, flags=flags: pack_bind(self.num, self.max_len, self.copy_range, flags,
                                                                  seq, self.portid), f"bind queue {self.num}")
                return bool(flags)
            except KernelError as exc:
                if exc.errno == E.EAGAIN:  # the request loaded nf_conntrack_netlink: ask again
                    continue
                if exc.errno == E.EOPNOTSUPP and flags:  # no CONFIG_NETFILTER_NETLINK_GLUE_CT
                    flags = 0
                    continue
                if exc.errno in (E.EBUSY, E.EPERM):
                    raise KernelError(exc.errno, exc.operation, "another program holds this queue") from None
                raise
        raise KernelError(E.EAGAIN, f"bind queue {self.num}", "the kernel kept asking to try again")

    def _transact(self, build, operation: str, timeout: float = 2.0) -> None:
        """Send one request with ACK and wait for its answer; packets read meanwhile are kept."""
        self._seq = (self._seq + 1) & 0xFFFFFFFF or 1
        seq = self._seq
        try:
            self.sock.send(build(seq))
        except OSError as exc:
            raise KernelError(exc.errno or E.EIO, operation) from None
        while True:
            if not select.select([self.sock], [], [], timeout)[0]:
                raise KernelError(E.ETIMEDOUT, operation, "no answer from the kernel")
            try:
                data = self.sock.recv(self._slot)
            except BlockingIOError:
                continue
            except OSError as exc:
                if exc.errno == E.ENOBUFS:
                    self.enobufs += 1
                    continue
                raise KernelError(exc.errno or E.EIO, operation) from None
            for t, _f, s, payload in L.iter_messages(data):
                if t == L.NLMSG_ERROR and s == seq:
                    err = L.ack_errno(payload)
                    if err:
                        raise KernelError(err, operation)
                    return
                self._keep(t, payload)

    def _keep(self, t: int, payload: bytes) -> None:
        if t == _QUEUE | NFQNL_MSG_PACKET:
            self._stash.append(payload)
        elif t == L.NLMSG_ERROR and len(payload) >= 4:
            err = L.ack_errno(payload)
            if err:
                self.errors[err] += 1

    # -- the loop -------------------------------------------------------------
    def fileno(self) -> int:
        return self.sock.fileno()

    def receive(self, max_packets: int = 256) -> list[QueuedPacket]:
        """What waits on the socket, up to ``max_packets`` packets, without blocking ([] when nothing)."""
        out: list[QueuedPacket] = []
        if self._stash:
            stash, self._stash = self._stash, []
            for payload in stash:
                self._decode(payload, out)
        want = min(max_packets - len(out), self._slots)
        if want <= 0:
            return out
        if self._msgs is not None:
            n = _recvmmsg(self.sock.fileno(), self._msgs, want, socket.MSG_DONTWAIT, None)
            if n < 0:
                self._recv_error(ctypes.get_errno())
                return out
            view, slot, msgs = self._view, self._slot, self._msgs
            for i in range(n):
                self._datagram(view[i * slot:i * slot + msgs[i].msg_len], out)
            return out
        for _ in range(want):  # no recvmmsg in this libc: one recv per datagram
            try:
                n = self.sock.recv_into(self._view[:self._slot], self._slot, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            except OSError as exc:
                self._recv_error(exc.errno or E.EIO)
                break
            self._datagram(self._view[:n], out)
        return out

    def _recv_error(self, err: int) -> None:
        if err == E.ENOBUFS:  # messages were lost: the kernel counts them as user_dropped
            self.enobufs += 1
        elif err not in (E.EAGAIN, E.EWOULDBLOCK, E.EINTR):
            raise KernelError(err, f"receive on queue {self.num}")

    def _datagram(self, data, out: list[QueuedPacket]) -> None:
        off, end = 0, len(data)
        while off + 16 <= end:
            n, t = _NLH.unpack_from(data, off)[:2]
            if n < 16 or off + n > end:
                break
            if t == _QUEUE | NFQNL_MSG_PACKET:
                self._decode(data[off + 16:off + n], out)
            else:
                self._keep(t, bytes(data[off + 16:off + n]))
            off += (n + 3) & ~3

    def _decode(self, payload, out: list[QueuedPacket]) -> None:
        try:
            p = parse_packet(payload, self.bare_ack_conntrack)
        except ValueError:
            self.bad_messages += 1
            ids = packet_ids(payload)
            if ids is None:
                return  # no id: nothing can give it a verdict (the kernel's queue counts it waiting)
            # the rest of it did not read: the worker takes it for a packet that does not decode
            p = QueuedPacket(ids[0], ids[1], 0, 0, b"", None, None)
        self._outstanding[p.id] = None
        out.append(p)

    def verdict(self, packet_id: int, accept: bool = True, *, payload: bytes | None = None,
                ct: bytes | None = None, expectation: bytes | None = None, mark: int | None = None) -> None:
        """Queue a verdict for ``packet_id`` (sent by flush()); see pack_verdict for the attributes."""
        if accept and payload is None and ct is None and not expectation and mark is None:
            self._pending.append((packet_id, None))
        else:
            self._pending.append((packet_id, pack_verdict(self.num, packet_id, accept, expectation or b"",
                                                          payload=payload, ct=ct, mark=mark)))

    def flush(self) -> None:
        """Send every queued verdict, in as few send(2) calls as the send buffer allows (one, usually).

        A run of plain accepts becomes one NFQNL_MSG_VERDICT_BATCH when it covers, in id order,
        every packet received and still without verdict up to its last id: the batch verdict
        then reaches exactly those packets and no other."""
        pending = self._pending
        if not pending:
            return
        self._pending = []
        out = self._outstanding
        msgs: list[bytes] = []
        covered: set[int] = set()
        if self.batch and len(pending) > 1:
            plain = {i for i, m in pending if m is None}
            last = 0
            for i in out:
                if i not in plain:
                    break
                covered.add(i)
                last = i
            if len(covered) > 1:
                msgs.append(pack_verdict_batch(self.num, last, True))
                for i in covered:
                    del out[i]
            else:
                covered.clear()
        for i, m in pending:
            if i in covered:
                continue
            out.pop(i, None)
            msgs.append(m if m is not None else pack_verdict(self.num, i, True))
        self._send(msgs)

    def _send(self, msgs: list[bytes]) -> None:
        chunk: list[bytes] = []
        size = 0
        for m in msgs:
            if size + len(m) > self._send_max and chunk:
                self._send_one(b"".join(chunk))
                chunk, size = [], 0
            chunk.append(m)
            size += len(m)
        if chunk:
            self._send_one(b"".join(chunk) if len(chunk) > 1 else chunk[0])

    def _send_one(self, data: bytes) -> None:
        try:
            self.sock.send(data)
        except OSError as exc:
            raise KernelError(exc.errno or E.EIO, f"verdict on queue {self.num}") from None

    def close(self) -> None:
        """Unbind and close. What still waits in the queue is dropped by the kernel: drain first."""
        if not getattr(self, "_bound", False):
            return
        self._bound = False
        try:
            self.flush()
            self._transact(lambda seq: pack_unbind(self.num, seq, self.portid), f"unbind queue {self.num}")
        except KernelError:
            pass  # closing the socket unbinds too (nfqnl_rcv_nl_event on NETLINK_URELEASE)
        finally:
            self._view.release()
            self._msgs = None
            self.sock.close()
            self._mem.close()

    def __enter__(self) -> "QueueBinding":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------- probes and counters

def conntrack_glue(queue: int = 65535) -> bool:
    """Whether NFQUEUE can carry conntrack information (CONFIG_NETFILTER_NETLINK_GLUE_CT).

    Without the glue the kernel silently ignores NFQA_CT and NFQA_EXP on a
    verdict, so a verdict cannot tell it anything.  Queue configuration does
    tell: nfqnl_recv_config checks NFQA_CFG_F_CONNTRACK against the glue hook
    (EOPNOTSUPP without it, EAGAIN when it just loaded nf_conntrack_netlink)
    *before* it looks the queue up, and then answers ENODEV for a queue nobody
    has bound: ``queue`` must be one nobody has bound, and nothing changes.
    Raises KernelError for other answers (EPERM: no CAP_NET_ADMIN).
    """
    sock = L.NfnlSocket()
    try:
        seq = sock.next_seq()
        sock.transact(pack_config_flags(queue, NFQA_CFG_F_CONNTRACK, NFQA_CFG_F_CONNTRACK, seq), seq)
        return True  # only if we had bound it ourselves
    except L.NetlinkError as exc:
        if exc.errno == E.EOPNOTSUPP:
            return False
        if exc.errno in (E.ENODEV, E.EAGAIN):
            return True
        raise KernelError(exc.errno or E.EIO, "nfqueue-config") from None
    finally:
        sock.close()


@dataclass(frozen=True, slots=True)
class QueueStats:
    """One line of /proc/net/netfilter/nfnetlink_queue (net/netfilter/nfnetlink_queue.c seq_show)."""

    queue: int
    portid: int  # netlink port id of the socket bound to the queue (the reader)
    total: int  # packets waiting for a verdict now
    copy_mode: int  # 0 none, 1 meta, 2 packet
    copy_range: int
    dropped: int  # dropped because the queue was full (queue_maxlen, alg's queue_len)
    user_dropped: int  # dropped because the reader's socket buffer was full
    id_sequence: int  # packet ids handed out so far


def proc_queues(root: str = "/") -> dict[int, QueueStats]:
    """Bound NFQUEUE queues of this network namespace, by number.

    Raises OSError when the file cannot be read (FileNotFoundError: no
    nfnetlink_queue; PermissionError: it is readable by root only).
    """
    with open(os.path.join(root, "proc/net/netfilter/nfnetlink_queue")) as f:
        text = f.read()
    out: dict[int, QueueStats] = {}
    for line in text.splitlines():
        cols = line.split()
        if len(cols) >= 8 and all(c.isdigit() for c in cols[:8]):
            q = QueueStats(*(int(c) for c in cols[:8]))
            out[q.queue] = q
    return out
