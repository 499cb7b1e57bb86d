# The helper as it was before issue 14's speed work (commit fd711bd), kept verbatim as the
# oracle tests/test_helpers_fast.py compares the rewritten one with. Not loaded as a plugin.
"""DHCPv6: lets the server's unicast answers to a multicast client message in.

RFC 8415 §7.1/§7.2: a client sends from UDP port 546 to
All_DHCP_Relay_Agents_and_Servers (ff02::1:2) port 547, from its link-local
address (§13.1); servers and relay agents answer by unicast from port 547 to
the client's address, port 546. For each client message (Solicit, Request,
Confirm, Renew, Rebind, Release, Decline, Information-request: §7.3) the
helper opens `udp *:547 -> client:546`, PERMANENT since several servers may
answer one Solicit.

Checks: the destination must be ff02::1:2 port 547 and the first byte a
client message type; server messages (Advertise, Reply, Reconfigure) and
relay messages give no expectation. conntrackd's dhcpv6 helper accepts any
sport for the answer (alg requires 547, the port RFC 8415 §7.2 names) and
asks for per-message timeouts (Solicit 120 s, Request 30 s, Renew 600 s...),
which the kernel overrides with the class policy anyway.

Subnet: `subnet_only` is on by default: clients and on-link servers/relays
use link-local addresses, so answers must come from the client's /64
(fe80::/64 for a link-local client). Turn it off for a server that answers
from a global address.

Policy: class `default`, 1 expectation per client flow, 300 s (conntrackd's).
NAT: not applicable (IPv6, link-local). Limits: IPv6 only (DHCPv4 is not
helped: clients broadcast and servers answer to the broadcast or the offered
address, which no expectation can name).
"""

from __future__ import annotations

import ipaddress

import alg
from alg import UDP, Direction, ExpectClass, HelperSpec, Notice, Parsed

from ._discovery import answers, subnet_only_option

CLIENT_PORT, SERVER_PORT = 546, 547
ALL_DHCP_RELAY_AGENTS_AND_SERVERS = ipaddress.ip_address("ff02::1:2")
# RFC 8415 §7.3 message types sent by clients
CLIENT_MESSAGES = {1: "Solicit", 3: "Request", 4: "Confirm", 5: "Renew", 6: "Rebind", 8: "Release",
                   9: "Decline", 11: "Information-request"}


class Dhcpv6Helper(alg.Helper):
    spec = HelperSpec(
        name="dhcpv6",
        protocols=(UDP,),
        ports=(SERVER_PORT,),
        classes=(ExpectClass("default", 1, 300),),
        families=(6,),
        options=subnet_only_option(True, "clients and on-link servers talk link-local, RFC 8415 §13.1"),
        max_buffer=9000,
        doc="client message to ff02::1:2 -> udp *:547 -> client:546",
    )

    def inspect(self, segment: alg.Segment, state: None) -> alg.Outcome:
        data = segment.data
        if segment.direction is not Direction.ORIGINAL:
            return Parsed(len(data))
        if segment.flow.dst != ALL_DHCP_RELAY_AGENTS_AND_SERVERS or segment.flow.dport != SERVER_PORT:
            return Parsed(len(data), (Notice("not-multicast", str(segment.flow.dst)),))
        if segment.sender_port != CLIENT_PORT:
            return Parsed(len(data), (Notice("not-client-port", str(segment.sender_port)),))
        if len(data) < 4:  # msg-type + transaction-id (RFC 8415 §8)
            return Parsed(len(data), (Notice("malformed", f"{len(data)} bytes"),))
        if data[0] not in CLIENT_MESSAGES:
            return Parsed(len(data), (Notice("not-client-message", str(data[0])),))
        return Parsed(len(data), (answers(segment, "default", SERVER_PORT, self.options),))


@alg.hookimpl
def alg_register_helpers(register):
    register(Dhcpv6Helper)
