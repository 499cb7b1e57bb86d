"""Lean netlink: precomputed struct layouts and a plain AF_NETLINK socket.

Used on the hot path (while a packet waits for its verdict): building a
message is a handful of ``struct.pack`` calls, sending and reading its ACK is
one ``send``/``recv`` pair.  Every layout here is checked byte for byte
against pyroute2's encoding of the same message (tests/test_netlink_golden.py).
"""

from __future__ import annotations

import errno as _errno
import ipaddress
import select
import socket
import struct
from functools import lru_cache

NETLINK_NETFILTER = 12
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLA_F_NESTED = 0x8000
NFNETLINK_V0 = 0

NFNL_SUBSYS_CTNETLINK = 1
NFNL_SUBSYS_CTNETLINK_EXP = 2
NFNL_SUBSYS_QUEUE = 3
NFNL_SUBSYS_CTHELPER = 9

_NLH = struct.Struct("=IHHII")
_NFGEN = struct.Struct("!BBH")
NLA_HEADER = struct.Struct("=HH")  # struct nlattr: nla_len, nla_type
NLA_TYPE_MASK = 0x3FFF  # an attribute's type without NLA_F_NESTED and NLA_F_NET_BYTEORDER
_NLA_PACK = NLA_HEADER.pack


_PAD = (b"", b"\0\0\0", b"\0\0", b"\0")  # by length % 4: what pads an attribute to 4 bytes


def nla(typ: int, payload: bytes) -> bytes:
    """One attribute, padded to 4 bytes."""
    n = 4 + len(payload)
    return _NLA_PACK(n, typ) + payload + _PAD[n & 3]


def nest(typ: int, *children: bytes) -> bytes:
    body = b"".join(children)
    n = 4 + len(body)
    return _NLA_PACK(n, typ | NLA_F_NESTED) + body + _PAD[n & 3]


def be16(v: int) -> bytes:
    return struct.pack("!H", v)


def be32(v: int) -> bytes:
    return struct.pack("!I", v)


def u8(v: int) -> bytes:
    return struct.pack("B", v)


def asciiz(s: str) -> bytes:
    return s.encode() + b"\0"


@lru_cache(maxsize=64)
def c_string(raw: bytes) -> str:
    """A name as the kernel writes it (nla_put_string: its characters, then a NUL): up to the
    first NUL, ASCII, anything else replaced. Kept: the same few helper names come with
    every queued packet and expectation event."""
    return raw.split(b"\0", 1)[0].decode("ascii", "replace")


def message(subsys: int, msg: int, flags: int, family: int, body: bytes, seq: int = 0, pid: int = 0,
            res_id: int = 0) -> bytes:
    """nlmsghdr + nfgenmsg + attributes (``res_id``: the queue number for nfnetlink_queue)."""
    head = _NLH.pack(16 + 4 + len(body), (subsys << 8) | msg, flags, seq, pid)
    return head + _NFGEN.pack(family, NFNETLINK_V0, res_id) + body


def parse_attrs(data: bytes, off: int = 0, end: int | None = None) -> dict[int, bytes]:
    """Attributes of one level: type (flags stripped) -> payload (last one wins)."""
    out: dict[int, bytes] = {}
    end = len(data) if end is None else end
    while off + 4 <= end:
        n, t = NLA_HEADER.unpack_from(data, off)
        if n < 4:
            break
        out[t & NLA_TYPE_MASK] = data[off + 4 : off + n]
        off += (n + 3) & ~3
    return out


def iter_messages(data: bytes):
    """Yield (type, flags, seq, payload-after-nlmsghdr)."""
    off = 0
    while off + 16 <= len(data):
        n, t, f, seq, _pid = _NLH.unpack_from(data, off)
        if n < 16:
            break
        yield t, f, seq, data[off + 16 : off + n]
        off += (n + 3) & ~3


def ack_errno(payload: bytes) -> int:
    """errno carried by an NLMSG_ERROR payload (0: ACK)."""
    return -struct.unpack_from("=i", payload)[0]


class NetlinkError(OSError):
    pass


class NfnlSocket:
    """NETLINK_NETFILTER socket with sequence numbers: requests and their answers.

    Non-blocking, and read without waiting first: nfnetlink handles a request within the
    sender's send(2), so its answer is queued by the time send returns, and recv finds it.
    A blocking socket with a timeout would cost four system calls a request (CPython polls
    before each send and recv); this costs two, and waits (at most ``timeout`` seconds, None:
    for ever) only for what is not there yet: a dump's next part, or a kernel that never
    answers, which must not hold a queued packet for ever."""

    def __init__(self, groups: int = 0, rcvbuf: int = 1 << 20, timeout: float | None = 2.0):
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK,
                                  NETLINK_NETFILTER)
        self.timeout = timeout
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        except OSError:
            pass
        self.sock.bind((0, groups))
        self.pid = self.sock.getsockname()[0]
        self.seq = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def next_seq(self) -> int:
        self.seq = (self.seq + 1) & 0xFFFFFFFF or 1
        return self.seq

    def _wait(self, write: bool = False) -> None:
        readable, writable, _ = select.select([] if write else [self.sock], [self.sock] if write else [], [],
                                              self.timeout)
        if not readable and not writable:
            raise NetlinkError(_errno.ETIMEDOUT, "no answer from the kernel")

    def transact(self, msg: bytes, seq: int) -> list[tuple[int, bytes]]:
        """Send ``msg`` (already carrying ``seq``), collect replies until ACK/DONE.

        Returns [(type, payload)] of data messages; raises NetlinkError(errno)
        on an error ACK.
        """
        while True:
            try:
                self.sock.send(msg)
                break
            except BlockingIOError:
                self._wait(write=True)
        out: list[tuple[int, bytes]] = []
        while True:
            try:
                data = self.sock.recv(1 << 16)
            except BlockingIOError:
                self._wait()
                continue
            for t, _f, s, payload in iter_messages(data):
                if s != seq:
                    continue  # stale reply of an earlier, abandoned request
                if t == NLMSG_ERROR:
                    e = ack_errno(payload)
                    if e:
                        raise NetlinkError(e, _errno.errorcode.get(e, str(e)))
                    return out
                if t == NLMSG_DONE:
                    return out
                out.append((t, payload))

    def close(self) -> None:
        self.sock.close()


def addr_bytes(a) -> bytes:
    return ipaddress.ip_address(a).packed
