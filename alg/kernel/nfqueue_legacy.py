"""NFQUEUE through NetfilterQueue: kept only for alg/daemon.py until the queue
workers move to alg.kernel.nfqueue.QueueBinding (then this module goes).

One `NetfilterQueue` per helper queue, all served from one select() loop:
`service(fd)` reads what is ready without blocking and calls the queue's
callback once per packet, which must give the verdict. NetfilterQueue cannot
attach an expectation to a verdict; `verdict()` writes that NFQNL_MSG_VERDICT
itself on the queue's own socket (the kernel takes verdicts only from the
socket bound to the queue).
"""

from __future__ import annotations

import os
from typing import Any, Callable

from netfilterqueue import NetfilterQueue

from ..errors import KernelError
from .nfqueue import pack_verdict

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
