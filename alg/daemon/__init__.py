"""The daemon (`alg run`), split along the packet's path:

* `supervisor`  namespace claim, helper registration, state file, signals, reload, the loop;
* `worker`      one queue: packet -> engine -> kernel work -> verdict;
* `sink`        expectations created and deleted in the kernel, retries on a timer heap;
* `reconciler`  the kernel's expectation events; adoption of what the kernel holds;
* `status`      the status socket `alg status` reads.
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> submodule: loaded on first use, so that `alg status` (which needs only the
# status socket) does not import the kernel adapters and pyroute2
_EXPORTS = {"read_status": "status", **dict.fromkeys(
    ("STATE_DIR", "Daemon", "DaemonStats", "KernelPorts", "refusal_fix", "remove_helpers", "resolve",
     "shared_entries", "state_file"), "supervisor")}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
