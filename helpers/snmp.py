"""SNMP: lets the unicast answers to a broadcast SNMP request in.

A manager may find the agents of a subnet by sending one request (a GetRequest
for sysDescr.0, say) to udp/161 of the subnet's broadcast address; each agent
answers by unicast from its own address and port 161 to the manager's address
and port (RFC 3417 §2: the response goes to the request's source). The answer
is a new flow (the request went to the broadcast address, not to the answering
host), so the helper opens `udp <manager's subnet>:161 -> manager:sport`,
PERMANENT (several agents may answer). This is the kernel's "broadcast helper"
(nf_conntrack_broadcast.c, used by nf_conntrack_snmp, helper name `snmp`),
which only helps packets the firewall itself sends: pair it with an OUTPUT rule.

How alg learns the subnet: as netbios-ns (helpers/_discovery.py): the
manager's address / `subnet_prefix_v4` (policy, default 24: set it to the
interface's prefix; the kernel reads the interface's netmask), and the request
must go to that subnet's broadcast address or 255.255.255.255 (the kernel helps
only the former).

Checks (the kernel helps any datagram to the broadcast address): the datagram
must be an SNMP request message in BER (RFC 3417 §8: definite lengths only):
a SEQUENCE holding an INTEGER version 0 (v1, RFC 1157), 1 (v2c, RFC 1901) or
3 (v3, RFC 3412 §6), then for v1 and v2c an OCTET STRING community and a
request PDU: GetRequest, GetNextRequest, SetRequest, or (v2c) GetBulkRequest
(RFC 3416 §3). A v3 message is accepted after its version and the header
SEQUENCE that follows it: its PDU may be encrypted (RFC 3414 §1.4.3). Each
length is read in short or long form with at most 4 length octets and must
end inside the datagram; the reader reads four headers at most, skipping
their contents, and stops at the PDU's tag. Responses, traps, informs,
reports and anything else open nothing and are counted as notices; so does a
unicast request (its answer comes back on the request's own flow).

Policy: class `snmp`, 1 expectation per request flow, 30 s (the kernel's
`timeout` parameter); the kernel also stretches the request's own conntrack to
that timeout, which a sans-IO helper cannot (nor needs to: answers come on the
expectation). IPv4 only, as the kernel's (an IPv6 subnet has no broadcast).
NAT: the kernel's nf_nat_snmp_basic rewrites addresses inside SNMP payloads
(trap agent-addr, IpAddress values) on NATed flows; alg does not.
"""

from __future__ import annotations

import alg
from alg import UDP, ExpectClass, HelperSpec, Notice

from ._discovery import broadcast_request, subnet_only_option

SNMP_PORT = 161

# X.690 §8.1.2 identifier octets SNMP uses (universal, and RFC 3416 §3's context-specific PDU tags)
INTEGER, OCTET_STRING, SEQUENCE = 0x02, 0x04, 0x30
GET_REQUEST, GET_NEXT_REQUEST, SET_REQUEST, GET_BULK_REQUEST = 0xA0, 0xA1, 0xA3, 0xA5
V1, V2C, V3 = 0, 1, 3  # msgVersion: RFC 1157, RFC 1901, RFC 3412 §6
VERSION_NAMES = {V1: "v1", V2C: "v2c", V3: "v3"}
REQUESTS = {V1: {GET_REQUEST, GET_NEXT_REQUEST, SET_REQUEST},
            V2C: {GET_REQUEST, GET_NEXT_REQUEST, SET_REQUEST, GET_BULK_REQUEST}}  # GetBulk is v2 only

# X.690 §8.1.3: a short length is one octet below 0x80; a long one is 0x80 | n, then n octets.
LONG_FORM = 0x80  # alone: the indefinite form, which RFC 3417 §8 forbids
MAX_LENGTH_OCTETS = 4  # 2^32 - 1 is far past any datagram


class Malformed(Exception):
    """The bytes are not the BER an SNMP request needs (the peer's fault; counted, not raised out)."""


def tlv(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """(tag, start of contents, end of contents) of the TLV at `pos`, which must end by `end`."""
    if pos + 2 > end:
        raise Malformed(f"truncated at {pos}")
    tag, first = data[pos], data[pos + 1]
    pos += 2
    if first < LONG_FORM:
        length = first
    else:
        n = first - LONG_FORM
        if not 0 < n <= MAX_LENGTH_OCTETS or pos + n > end:
            raise Malformed(f"length form {first:#04x}")
        length = int.from_bytes(data[pos:pos + n], "big")
        pos += n
    if length > end - pos:
        raise Malformed(f"length {length} past the datagram")
    return tag, pos, pos + length


def request_pdu(data: bytes) -> tuple[int, int | None]:
    """(version, PDU tag; None for v3) of an SNMP message, or Malformed."""
    tag, pos, end = tlv(data, 0, len(data))
    if tag != SEQUENCE:
        raise Malformed(f"message tag {tag:#04x}")
    tag, start, pos = tlv(data, pos, end)
    # X.690 §8.3.2: an INTEGER is minimal, so versions 0-3 are one octet
    if tag != INTEGER or pos - start != 1 or data[start] not in VERSION_NAMES:
        raise Malformed("version")
    version = data[start]
    if version == V3:  # RFC 3412 §6: msgGlobalData, a SEQUENCE, follows; the rest may be encrypted
        if tlv(data, pos, end)[0] != SEQUENCE:
            raise Malformed("v3 without msgGlobalData")
        return version, None
    tag, _, pos = tlv(data, pos, end)
    if tag != OCTET_STRING:
        raise Malformed(f"community tag {tag:#04x}")
    tag, _, _ = tlv(data, pos, end)
    return version, tag


class SnmpHelper(alg.Helper):
    spec = HelperSpec(
        name="snmp",
        protocols=(UDP,),
        ports=(SNMP_PORT,),
        families=(4,),
        classes=(ExpectClass("snmp", 1, 30),),
        options=subnet_only_option(True, "as the kernel's broadcast helper, with the interface's netmask"),
        max_buffer=1500,  # TCP only: unused (UDP)
        queue=33,
        doc="request broadcast to udp/161 -> udp <manager's subnet>:161 -> manager:sport",
    )

    def inspect(self, segment: alg.Segment, state: None) -> alg.Outcome:
        return broadcast_request(segment, self.options, "snmp", SNMP_PORT, _refusal)


def _refusal(data: bytes) -> Notice | None:
    try:
        version, pdu = request_pdu(data)
    except Malformed as e:
        return Notice("malformed", str(e))
    if pdu is not None and pdu not in REQUESTS[version]:
        return Notice("not-a-request", f"{VERSION_NAMES[version]} PDU {pdu:#04x}")
    return None


@alg.hookimpl
def alg_register_helpers(register):
    register(SnmpHelper)
