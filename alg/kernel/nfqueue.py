"""NFQUEUE through NetfilterQueue: the only module that imports it.

One `NetfilterQueue` per helper queue, all served from one select() loop:
`service(fd)` reads what is ready without blocking and calls the queue's
callback once per packet, which must give the verdict.
"""

from __future__ import annotations

from typing import Any, Callable

from netfilterqueue import NetfilterQueue

from ..errors import KernelError

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
            q.bind(num, lambda pkt, n=num: self._callbacks[n](pkt), max_len=max_len)
        except OSError as exc:
            raise KernelError(exc.errno or 0, f"bind queue {num}",
                              "is another program bound to it, or nfnetlink_queue missing?") from None
        self._by_num[num] = q
        self._by_fd[q.get_fd()] = q

    def rebind(self, num: int, callback: Callback) -> None:
        self._callbacks[num] = callback

    def fds(self) -> list[int]:
        return list(self._by_fd)

    def service(self, fd: int) -> None:
        self._by_fd[fd].run(block=False)

    def unbind(self, num: int) -> None:
        q = self._by_num.pop(num, None)
        if q is None:
            return
        self._by_fd.pop(q.get_fd(), None)
        self._callbacks.pop(num, None)
        q.unbind()

    def unbind_all(self) -> None:
        for num in list(self._by_num):
            self.unbind(num)
