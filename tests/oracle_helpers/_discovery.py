# The helper as it was before issue 14's speed work (commit fd711bd), kept verbatim as the
# oracle tests/test_helpers_fast.py compares the rewritten one with. Not loaded as a plugin.
"""What the four discovery helpers (SSDP, DHCPv6, mDNS, SLP) share.

Each sees a client ask a multicast group (or a broadcast address) and lets
the unicast answers back: an expectation `udp *:<service port> -> client:sport`,
PERMANENT because several responders may answer one question, each answer
being a new flow.

"From anywhere" is what conntrackd's helpers expect. The kernel's broadcast
helper (nf_conntrack_broadcast.c, used by netbios-ns and snmp) is narrower: it
masks the expected source with the netmask of the interface the broadcast
left by, so only hosts of the client's own subnet can answer. A sans-IO
helper does not know interfaces, so the subnet is given by policy:

    [options]
    subnet_only = true        # answers only from the client's subnet
    subnet_prefix_v4 = 24     # that subnet: the client's address / this prefix
    subnet_prefix_v6 = 64

and the expectation carries `src = client`, `src_prefix = N` (the kernel
mask). Link-local IPv6 clients (fe80::/10, as DHCPv6 clients are) get
fe80::/64 with the default: answers from link-local addresses only.
"""

from __future__ import annotations

import ipaddress
from typing import Callable

import alg
from alg import EXPECT_F_PERMANENT, UDP, Direction, Expect, Notice, Option, Parsed

LIMITED_BROADCAST = ipaddress.IPv4Address("255.255.255.255")
SUBNET_OPTIONS = {
    "subnet_prefix_v4": Option(24, "prefix length of the client's IPv4 subnet (with subnet_only)", min=0, max=32),
    "subnet_prefix_v6": Option(64, "prefix length of the client's IPv6 subnet (with subnet_only)", min=0, max=128),
}


def subnet_only_option(default: bool, why: str) -> dict[str, Option]:
    return {"subnet_only": Option(default, f"expect answers only from the client's own subnet ({why})"),
            **SUBNET_OPTIONS}


def prefix_for(options, family: int) -> int | None:
    """The src prefix for answers, or None when any source may answer."""
    if not options["subnet_only"]:
        return None
    key = "subnet_prefix_v4" if family == 4 else "subnet_prefix_v6"
    prefix = int(options[key])
    limit = 32 if family == 4 else 128
    return max(0, min(prefix, limit))


def answers(seg: alg.Segment, cls: str, service_port: int | None, options) -> Expect:
    """`udp *:service_port -> client:sport`, narrowed to the client's subnet if asked."""
    prefix = prefix_for(options, seg.flow.l3)
    src = seg.sender if prefix is not None else None
    return Expect(cls, UDP, src, seg.sender, service_port, seg.sender_port, flags=EXPECT_F_PERMANENT,
                  src_prefix=prefix if prefix is not None else None)


def is_broadcast_for(addr: alg.IPAddress, client: alg.IPAddress, options) -> bool:
    """255.255.255.255, or the directed broadcast of the client's subnet as configured."""
    if addr.version != 4:
        return False
    if addr == LIMITED_BROADCAST:
        return True
    prefix = max(0, min(int(options["subnet_prefix_v4"]), 30))
    # the subnet's broadcast: the client's address with every host bit set (as numbers: an
    # ip_network per message cost most of a discovery helper's time)
    return int(addr) == int(client) | ((1 << (32 - prefix)) - 1)


def broadcast_request(seg: alg.Segment, options, cls: str, service_port: int,
                      refusal: Callable[[bytes], Notice | None]) -> alg.Outcome:
    """The kernel's broadcast helpers (netbios-ns, snmp): a request the client broadcasts to its
    subnet lets the unicast answers in (`answers`); `refusal` names what is wrong with the
    payload (a Notice, nothing opened), or returns None for a request of the protocol."""
    data = seg.data
    if seg.direction is not Direction.ORIGINAL:
        return Parsed(len(data))
    if not is_broadcast_for(seg.flow.dst, seg.sender, options):
        return Parsed(len(data), (Notice("not-broadcast", str(seg.flow.dst)),))
    refused = refusal(data)
    if refused is not None:
        return Parsed(len(data), (refused,))
    return Parsed(len(data), (answers(seg, cls, service_port, options),))

