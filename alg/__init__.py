"""alg: userspace Netfilter connection-tracking helpers (Application Layer Gateways).

The public API for helper authors is re-exported here; see `alg.hookspecs`
for the plugin contract and `alg.testing` for the harness to test a helper.
"""

from .errors import AlgError, ConfigError, KernelError, PluginError, ProtocolViolation
from .hookspecs import hookimpl
from .model import (
    EXPECT_CLASSES_MAX, EXPECT_F_INACTIVE, EXPECT_F_PERMANENT, EXPECT_F_USERSPACE, EXPECT_MAX_MAX, HELPER_NAME_MAX,
    GRE, NEED_DATA, PROTO_NAMES, RESYNC_LINE, TCP, UDP,
    Action, Direction, Expect, ExpectClass, FlowTuple, Form, Helper, HelperSpec, IPAddress, Length, NatMap, Notice,
    Option, Outcome, Parsed, Resync, Rewrite, Segment, Unexpect, check_networks, ip, parse_networks,
)

__all__ = [
    "AlgError", "ConfigError", "KernelError", "PluginError", "ProtocolViolation", "hookimpl", "ExpectationEvent",
    "EXPECT_CLASSES_MAX", "EXPECT_F_INACTIVE", "EXPECT_F_PERMANENT", "EXPECT_F_USERSPACE", "EXPECT_MAX_MAX",
    "HELPER_NAME_MAX", "NEED_DATA", "PROTO_NAMES", "RESYNC_LINE", "TCP", "UDP", "GRE",
    "Action", "Direction", "Expect", "ExpectClass", "FlowTuple", "Form", "Helper", "Length", "NatMap", "Rewrite",
    "HelperSpec", "IPAddress", "Notice",
    "Option", "Outcome", "Parsed", "Resync", "Segment", "Unexpect", "check_networks", "ip", "parse_networks",
]
__version__ = "0.1.0"


def __getattr__(name: str):
    # ExpectationEvent lives in the engine, which imports decode, flows, expect and nat: loaded on
    # first use, so that the helpers' `import alg` and the CLI's status, rules, doctor do not pay
    # for them (each import costs seconds of start-up in a slow, emulated guest)
    if name == "ExpectationEvent":
        from .engine import ExpectationEvent
        return ExpectationEvent
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
