"""systemd's notification protocol (sd_notify(3)), without libsystemd.

Under `Type=notify` the service manager waits for READY=1 before it calls
the daemon started: alg sends it once every helper is registered and its
queue bound. With `WatchdogSec=` it expects WATCHDOG=1 at least that often
and restarts a daemon that stops sending: alg sends it from its packet loop,
so a loop that hangs (a netlink call that never returns, a helper stuck in
a parse) is restarted, with `alg cleanup` before the new start.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Callable, Mapping


class Notifier:
    def __init__(self, env: Mapping[str, str] | None = None, clock: Callable[[], float] = time.monotonic):
        env = os.environ if env is None else env
        self.address = env.get("NOTIFY_SOCKET") or None
        if self.address and self.address.startswith("@"):  # an abstract socket name
            self.address = "\0" + self.address[1:]
        self.clock = clock
        self.interval: float | None = None  # seconds between watchdog pings (half systemd's)
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.interval = int(usec) / 2e6
        self._last_ping = 0.0

    def send(self, *fields: str) -> bool:
        """Send KEY=VALUE fields; False when not under systemd (or the socket is gone)."""
        if not self.address:
            return False
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            s.sendto("\n".join(fields).encode(), self.address)
            return True
        except OSError:
            return False
        finally:
            s.close()

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def reloading(self) -> None:
        self.send("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def watchdog(self) -> None:
        """Ping the watchdog if half its interval has passed since the last ping."""
        if self.interval is None:
            return
        now = self.clock()
        if now - self._last_ping >= self.interval:
            self._last_ping = now
            self.send("WATCHDOG=1")
