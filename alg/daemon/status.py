"""The status server: `alg status` reads one JSON document from a Unix socket."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
from typing import Any, Callable

from ..engine import ClassStats, HelperStats, TableStats
from ..errors import AlgError
from ..metrics import PrometheusText, counter, gauge


class StatusServer:
    def __init__(self, path: str, status: Callable[[], dict[str, Any]]):
        self.path, self.status = path, status
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(8)
        self.sock.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except BlockingIOError:
            return
        with conn:
            conn.settimeout(1.0)
            try:
                conn.sendall(json.dumps(self.status()).encode())
            except OSError:
                pass

    def close(self) -> None:
        self.sock.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass


def read_status(path: str, timeout: float = 2.0) -> dict[str, Any]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
        chunks = []
        while True:
            b = s.recv(65536)
            if not b:
                break
            chunks.append(b)
    except OSError as exc:
        raise AlgError(f"no alg daemon answers on {path}: {exc.strerror or exc}") from None
    finally:
        s.close()
    return json.loads(b"".join(chunks))


def prometheus(status: dict[str, Any]) -> str:
    """A status document (the daemon's `status()`) in the Prometheus text format."""
    from .supervisor import DaemonStats

    text = PrometheusText()
    text.fields("alg_", DaemonStats, status, {})
    text.fields("alg_", TableStats, status, {})
    for name, h in status.get("helpers", {}).items():
        text.fields("alg_helper_", HelperStats, h, {"helper": name})
        for cname, c in h.get("classes", {}).items():
            text.fields("alg_class_", ClassStats, c, {"helper": name, "class": cname})
        q = status.get("queue_kernel", {}).get(name)
        if q:
            text.fields("alg_queue_", QueueCounters, q, {"helper": name})
    return text.render()


@dataclasses.dataclass
class QueueCounters:
    """The kernel's side of a helper's queue (/proc/net/netfilter/nfnetlink_queue)."""

    waiting: int = gauge("packets waiting in the queue for a verdict")
    dropped_full: int = counter("packets the kernel dropped because the queue was full (raise queue_len)")
    dropped_socket: int = counter("packets the kernel dropped because alg's socket buffer was full")
