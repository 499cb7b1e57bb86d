"""NFQUEUE through NetfilterQueue: the only module that imports it.

One `NetfilterQueue` per helper queue, all served from one select() loop:
`service(fd)` reads what is ready without blocking and calls the queue's
callback once per packet, which must give the verdict.

NetfilterQueue cannot attach an expectation to a verdict, which is the only
way to expect something of a conntrack that is still unconfirmed (its first
packet is the one in the queue); `verdict()` writes that NFQNL_MSG_VERDICT
itself on the queue's own socket (the kernel takes verdicts only from the
socket bound to the queue).

`proc_queues()` reads the kernel's per-queue counters (bound by whom, waiting,
dropped) for `alg doctor` and `alg status`; `conntrack_glue()` asks the kernel
whether verdicts can carry conntrack information at all.
"""

from __future__ import annotations

import errno as E
import os
import socket
import struct
from dataclasses import dataclass
from typing import Any, Callable

from netfilterqueue import NetfilterQueue

from ..errors import KernelError
from . import nlmsg as L

# include/uapi/linux/netfilter/nfnetlink_queue.h
NFNL_SUBSYS_QUEUE, NFQNL_MSG_VERDICT, NFQNL_MSG_CONFIG = 3, 1, 2
NFQA_VERDICT_HDR, NFQA_CT, NFQA_EXP = 2, 11, 15
NFQA_CFG_MASK, NFQA_CFG_FLAGS = 4, 5
NFQA_CFG_F_CONNTRACK = 1 << 1
NF_DROP, NF_ACCEPT = 0, 1


def pack_verdict(queue: int, packet_id: int, accept: bool, expectation: bytes = b"") -> bytes:
    """NFQNL_MSG_VERDICT for one packet, optionally with an expectation
    (CTA_EXPECT_* attributes, no master) for the packet's own conntrack. The
    kernel reads NFQA_EXP only beside an NFQA_CT; an empty one changes nothing
    of the conntrack. A failed attachment is not reported: check it after."""
    body = L.nla(NFQA_VERDICT_HDR, struct.pack("!II", NF_ACCEPT if accept else NF_DROP, packet_id))
    if expectation:
        body += L.nest(NFQA_CT) + L.nest(NFQA_EXP, expectation)
    head = struct.pack("=IHHII", 16 + 4 + len(body), (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_VERDICT,
                       L.NLM_F_REQUEST, 0, 0)
    return head + struct.pack("!BBH", socket.AF_UNSPEC, L.NFNETLINK_V0, queue) + body



def pack_config_flags(queue: int, flags: int, mask: int, seq: int = 0, pid: int = 0) -> bytes:
    """NFQNL_MSG_CONFIG setting queue flags (NFQA_CFG_MASK/NFQA_CFG_FLAGS), no command, with ACK."""
    body = L.nla(NFQA_CFG_MASK, L.be32(mask)) + L.nla(NFQA_CFG_FLAGS, L.be32(flags))
    head = struct.pack("=IHHII", 16 + 4 + len(body), (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_CONFIG,
                       L.NLM_F_REQUEST | L.NLM_F_ACK, seq, pid)
    return head + struct.pack("!BBH", socket.AF_UNSPEC, L.NFNETLINK_V0, queue) + body


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


Callback = Callable[[Any], None]


class QueueSet:
    def __init__(self) -> None:
        self._by_num: dict[int, NetfilterQueue] = {}
        self._callbacks: dict[int, Callback] = {}
        self._by_fd: dict[int, NetfilterQueue] = {}

    def bind(self, num: int, max_len: int, callback: Callback) -> None:
        if num in self._by_num:
            self.rebind(num, callback)
            return
        q = NetfilterQueue()
        self._callbacks[num] = callback
        try:
            # the callback is looked up per packet so a reload can swap it in place
            q.bind(num, self._dispatcher(num), max_len=max_len)
        except OSError as exc:
            raise KernelError(exc.errno or 0, f"bind queue {num}",
                              "is another program bound to it, or nfnetlink_queue missing?") from None
        self._by_num[num] = q
        self._by_fd[q.get_fd()] = q

    def _dispatcher(self, num: int) -> Callback:
        return lambda pkt: self._callbacks[num](pkt)

    def rebind(self, num: int, callback: Callback) -> None:
        self._callbacks[num] = callback

    def fds(self) -> list[int]:
        return list(self._by_fd)

    def verdict(self, num: int, pkt: Any, accept: bool, expectation: bytes) -> None:
        """Give `pkt` of queue `num` its verdict with `expectation` attached."""
        os.write(self._by_num[num].get_fd(), pack_verdict(num, pkt.id, accept, expectation))

    def service(self, fd: int) -> None:
        self._by_fd[fd].run(block=False)

    def unbind(self, num: int) -> None:
        """Unbind queue `num`; what waits in it is given its verdict first (unbinding drops it)."""
        q = self._by_num.pop(num, None)
        if q is None:
            return
        self._by_fd.pop(q.get_fd(), None)
        try:
            q.run(block=False)
        except Exception:  # the callback gives verdicts whatever happens; this is the socket failing
            pass
        self._callbacks.pop(num, None)
        q.unbind()

    def unbind_all(self) -> None:
        for num in list(self._by_num):
            self.unbind(num)
