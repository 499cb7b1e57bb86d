# The helper as it was before issue 14's speed work (commit fd711bd), kept verbatim as the
# oracle tests/test_helpers_fast.py compares the rewritten one with. Not loaded as a plugin.
"""mDNS: lets the unicast answer to a legacy-unicast mDNS query back in.

RFC 6762 §6.7: a query to 224.0.0.251:5353 or [ff02::fb]:5353 whose source
port is not 5353 comes from a "legacy" resolver (e.g. `dig -p 5353
@224.0.0.251 host.local`); responders answer it by unicast, from port 5353,
to the querier's address and port. The helper opens
`udp *:5353 -> client:sport` (PERMANENT: every responder's answer is a new
flow) for each such query.

Checks: the destination must be the mDNS group of the flow's family, the
datagram a DNS query (RFC 1035 §4.1.1: QR = 0, opcode 0, at least one
question); a query from port 5353 (a full mDNS querier, answered on the group
or, for QU questions, at port 5353 which a host running a responder accepts
anyway) gets no expectation. conntrackd's mdns helper expects `*:5353 ->
client:sport` for any packet of the flow, whatever its destination or content.

Subnet: mDNS is link-local (RFC 6762 §11: answers must come from the local
link), so `subnet_only` is on by default: the expected source is the
client's subnet (`subnet_prefix_v4`/`_v6`, see helpers/_discovery.py).

Policy: class `default`, 8 expectations per query flow, 30 s (conntrackd's).
NAT: not needed (no address in the payload). Limits: the legacy-unicast
answer only; QU answers to port 5353 are not expected.
"""

from __future__ import annotations

import ipaddress
import struct

import alg
from alg import UDP, Direction, ExpectClass, HelperSpec, Notice, Parsed

from ._discovery import answers, subnet_only_option

MDNS_PORT = 5353
GROUPS = {4: ipaddress.ip_address("224.0.0.251"), 6: ipaddress.ip_address("ff02::fb")}
_DNS_HEADER = struct.Struct("!HHHHHH")  # RFC 1035 §4.1.1: id, flags, qd, an, ns, ar counts
_QR, _OPCODE = 0x8000, 0x7800


class MdnsHelper(alg.Helper):
    spec = HelperSpec(
        name="mdns",
        protocols=(UDP,),
        ports=(MDNS_PORT,),
        classes=(ExpectClass("default", 8, 30),),
        options=subnet_only_option(True, "mDNS is link-local, RFC 6762 §11"),
        max_buffer=9000,
        doc="legacy-unicast mDNS query -> udp *:5353 -> client:sport",
    )

    def inspect(self, segment: alg.Segment, state: None) -> alg.Outcome:
        data = segment.data
        if segment.direction is not Direction.ORIGINAL:
            return Parsed(len(data))
        if segment.flow.dst != GROUPS[segment.flow.l3] or segment.flow.dport != MDNS_PORT:
            return Parsed(len(data), (Notice("not-multicast", str(segment.flow.dst)),))
        if segment.sender_port == MDNS_PORT:
            return Parsed(len(data), (Notice("not-legacy-unicast"),))
        if len(data) < _DNS_HEADER.size:
            return Parsed(len(data), (Notice("malformed", f"{len(data)} bytes"),))
        _id, flags, qdcount, *_ = _DNS_HEADER.unpack_from(data)
        if flags & _QR or flags & _OPCODE or qdcount == 0:
            return Parsed(len(data), (Notice("not-a-query"),))
        return Parsed(len(data), (answers(segment, "default", MDNS_PORT, self.options),))


@alg.hookimpl
def alg_register_helpers(register):
    register(MdnsHelper)
