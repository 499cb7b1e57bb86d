"""alg: userspace Netfilter connection-tracking helpers (Application Layer Gateways).

The public API for helper authors is re-exported here; see `alg.hookspecs`
for the plugin contract and `alg.testing` for the harness to test a helper.
"""

from .errors import AlgError, ConfigError, KernelError, PluginError, ProtocolViolation
from .engine import ExpectationEvent
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
