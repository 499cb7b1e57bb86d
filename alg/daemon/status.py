"""The status server: `alg status` reads one JSON document from a Unix socket."""

from __future__ import annotations

import json
import os
import socket
from typing import Any, Callable

from ..errors import AlgError


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
