"""The daemon (`alg run`), split along the packet's path:

* `supervisor`  namespace claim, helper registration, state file, signals, reload, the loop;
* `worker`      one queue: packet -> engine -> kernel work -> verdict;
* `sink`        expectations created and deleted in the kernel, retries on a timer heap;
* `reconciler`  the kernel's expectation events; adoption of what the kernel holds;
* `status`      the status socket `alg status` reads.
"""

from .status import read_status
from .supervisor import (STATE_DIR, Daemon, DaemonStats, KernelPorts, refusal_fix, remove_helpers, resolve,
                         shared_entries, state_file)

__all__ = ["STATE_DIR", "Daemon", "DaemonStats", "KernelPorts", "read_status", "refusal_fix", "remove_helpers",
           "resolve", "shared_entries", "state_file"]
