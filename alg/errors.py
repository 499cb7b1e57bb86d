"""Errors, typed by who is at fault.

The type decides what happens next: a peer's bad bytes cost that flow its
helper state, a bad policy file stops start-up, a broken plugin is blocked,
a kernel refusal is counted per operation. A queued packet gets its verdict
whatever is raised.
"""

from __future__ import annotations


class AlgError(Exception):
    """Root of every error alg raises on purpose."""


class ProtocolViolation(AlgError):
    """The peer's bytes do not follow the protocol (or break a bound).

    The flow's helper state goes to error, the packet still gets its verdict
    and no expectation is created from it.
    """


class ConfigError(AlgError):
    """A policy file is wrong. Start-up stops with exit status 2."""

    def __init__(self, message: str, file: str | None = None, line: int | None = None, key: str | None = None):
        self.file, self.line, self.key, self.reason = file, line, key, message
        where = ":".join(str(x) for x in (file, line) if x is not None)
        parts = [p for p in (where, f"key '{key}'" if key else None, message) if p]
        super().__init__(": ".join(parts))


class PluginError(AlgError):
    """A plugin is broken (bad descriptor, name clash, crash at load).

    That plugin is blocked; the daemon goes on with the others.
    """


class KernelError(AlgError):
    """The kernel refused a netlink request; `errno` says why."""

    def __init__(self, errno: int, operation: str, detail: str = ""):
        import os

        self.errno, self.operation = errno, operation
        # errno 0: the kernel refused without saying why
        text = f"{operation}: {os.strerror(errno)} (errno {errno})" if errno else f"{operation}: refused"
        super().__init__(f"{text}: {detail}" if detail else text)

    @property
    def full(self) -> bool:
        """The expectation table (or the helper's max_expected) is full."""
        import errno as _e

        return self.errno in (_e.ENOSPC, _e.EMFILE)
