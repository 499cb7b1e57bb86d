"""NetBIOS name service: lets the unicast answers to a broadcast name query in.

RFC 1002 §4.2.12 / §5.1.1: a B-node (nmblookup, Samba's nmbd, Windows
without WINS) asks for a name with a NAME QUERY REQUEST broadcast to udp/137
of its subnet; the owner of the name answers by unicast from its port 137 to
the asker's address and port. The answer is a new flow (the query went to
the broadcast address, not to the answering host), so the helper opens
`udp <asker's subnet>:137 -> asker:sport`, PERMANENT (several hosts may
answer, and a host may answer late). This is the kernel's "broadcast helper"
(nf_conntrack_broadcast.c, used by nf_conntrack_netbios_ns), which only
helps packets the firewall itself sends: pair it with an OUTPUT rule.

How alg learns the subnet: the kernel takes the netmask of the interface
whose broadcast address the query went to; a sans-IO helper knows no
interfaces, so the subnet is the asker's address / `subnet_prefix_v4`
(policy, default 24: set it to the interface's prefix), and the query must
go to that subnet's broadcast address or 255.255.255.255 (the kernel helps
only the former). See helpers/_discovery.py.

Checks: the datagram must be a NetBIOS name service request (RFC 1002
§4.2.1: a 12-byte header with R = 0, an opcode of query, registration,
release or refresh, and at least one question); a unicast query opens
nothing (its answer comes back on the query's own flow). The kernel
helps any datagram to the broadcast address.

Policy: class `netbios-ns`, 1 expectation per query flow, 3 s (the kernel's
`timeout` parameter); the kernel also stretches the query's own conntrack
to that timeout, which a sans-IO helper cannot (nor needs to: answers come
on the expectation). IPv4 only (NetBIOS over TCP/IP has no IPv6 form).
"""

from __future__ import annotations

import struct

import alg
from alg import UDP, ExpectClass, HelperSpec, Notice

from ._discovery import broadcast_request, subnet_only_option

NBNS_PORT = 137
_HEADER = struct.Struct("!HHHHHH")  # RFC 1002 §4.2.1.1: id, flags, qd, an, ns, ar counts
RESPONSE = 0x8000  # R bit
OPCODE_SHIFT, OPCODE_MASK = 11, 0xF
# RFC 1002 §4.2.1.1 OPCODE: query, registration, release, (WACK: a response), refresh (and its alias 9)
REQUESTS = {0: "query", 5: "registration", 6: "release", 8: "refresh", 9: "refresh"}


class NetbiosNsHelper(alg.Helper):
    spec = HelperSpec(
        name="netbios-ns",
        protocols=(UDP,),
        ports=(NBNS_PORT,),
        families=(4,),
        classes=(ExpectClass("netbios-ns", 1, 3),),
        options=subnet_only_option(True, "as the kernel's broadcast helper, with the interface's netmask"),
        max_buffer=576,
        queue=32,
        doc="name query broadcast to udp/137 -> udp <asker's subnet>:137 -> asker:sport",
    )

    def inspect(self, segment: alg.Segment, state: None) -> alg.Outcome:
        return broadcast_request(segment, self.options, "netbios-ns", NBNS_PORT, _refusal)


def _refusal(data: bytes) -> Notice | None:
    if len(data) < _HEADER.size:
        return Notice("malformed", "short header")
    _id, flags, questions, *_ = _HEADER.unpack_from(data)
    opcode = flags >> OPCODE_SHIFT & OPCODE_MASK
    if flags & RESPONSE or opcode not in REQUESTS or not questions:
        return Notice("not-a-request", f"flags {flags:#06x}, {questions} questions")
    return None


@alg.hookimpl
def alg_register_helpers(register):
    register(NetbiosNsHelper)
