"""SLP: lets the unicast replies to a multicast or broadcast SLP request in.

RFC 2608 §6.3/§11: a User Agent sends SrvRqst, AttrRqst or SrvTypeRqst to
the SLP multicast group 239.255.255.253 (or, without multicast, to a
broadcast address) port 427; Service and Directory Agents reply by unicast
from port 427 to the UA's address and port. RFC 3111 §4 gives the IPv6
groups FF0X::116 (SVRLOC), FF0X::123 (SVRLOC-DA) and FF0X::1:1000-13FF
(per service type). For each request the helper opens
`udp *:427 -> client:sport` (PERMANENT: several agents may answer).

Checks: the destination must be an SLP group, 255.255.255.255 or the
directed broadcast of the client's subnet (`subnet_prefix_v4`), the datagram
an SLPv2 (RFC 2608 §8) or SLPv1 (RFC 2165 §7) header with a request
function (1 SrvRqst, 6 AttrRqst, 9 SrvTypeRqst). Unicast requests get none:
their replies come back on the request's own flow. conntrackd's slp helper
expects `*:427 -> client:sport` for any packet of the flow.

Subnet: on by default, as the kernel's broadcast helper restricts answers to
a broadcast to the interface's subnet (nf_conntrack_broadcast.c); the
subnet is the client's address / `subnet_prefix_v4` or `_v6`. A DA in
another subnet reached by routed multicast needs `subnet_only = false`.

Policy: class `default`, 8 expectations per request flow, 16 s (conntrackd's).
NAT: not needed. Limits: SLP over TCP (large replies) is not helped.
"""

from __future__ import annotations

import ipaddress

import alg
from alg import UDP, Direction, ExpectClass, HelperSpec, Notice, Parsed

from ._discovery import AnswersHelper, answers, is_broadcast_for, subnet_only_option

SLP_PORT = 427
SLP_GROUP_V4 = ipaddress.ip_address("239.255.255.253")
REQUESTS = {1: "SrvRqst", 6: "AttrRqst", 9: "SrvTypeRqst"}
_HEADER_MIN = {2: 14, 1: 12}  # RFC 2608 §8 (without the language tag), RFC 2165 §7


def is_slp_group(addr: alg.IPAddress) -> bool:
    if addr.version == 4:
        return addr == SLP_GROUP_V4
    if not addr.is_multicast:
        return False
    group = int(addr) & ((1 << 112) - 1)  # RFC 4291 §2.7: the 112-bit group id under ff0X::
    return group in (0x116, 0x123) or 0x11000 <= group <= 0x113FF


class SlpHelper(AnswersHelper):
    spec = HelperSpec(
        name="slp",
        protocols=(UDP,),
        ports=(SLP_PORT,),
        classes=(ExpectClass("default", 8, 16),),
        options=subnet_only_option(True, "as the kernel's broadcast helper"),
        max_buffer=9000,
        doc="SLP request to 239.255.255.253 or a broadcast -> udp *:427 -> client:sport",
    )

    def inspect(self, segment: alg.Segment, state: None) -> alg.Outcome:
        data = segment.data
        if segment.direction is not Direction.ORIGINAL:
            return Parsed(len(data))
        flow = segment.flow  # from the client (ORIGINAL): the sender is flow.src
        dst = flow.dst
        if not (is_slp_group(dst) or is_broadcast_for(dst, flow.src, self.options)):
            return Parsed(len(data), (Notice("not-multicast", str(dst)),))
        if len(data) < 2 or data[0] not in _HEADER_MIN or len(data) < _HEADER_MIN[data[0]]:
            return Parsed(len(data), (Notice("malformed", data[:2].hex()),))
        if data[1] not in REQUESTS:
            return Parsed(len(data), (Notice("not-a-request", str(data[1])),))
        return Parsed(len(data), (answers(segment, "default", SLP_PORT, self.options, self.prefixes),))


@alg.hookimpl
def alg_register_helpers(register):
    register(SlpHelper)
