"""TFTP: lets the server's answer to a read or write request in.

RFC 1350 §4: a client sends a read (RRQ) or write (WRQ) request from its
port to the server's port 69; the server answers from a port of its own
choosing (its transfer identifier), so the answer is a new UDP flow, not
the request's reply. For each request the helper opens
`udp server:* -> client:sport` (the kernel's and conntrackd's expectation).

Wire format (RFC 1350 §5, RFC 2347 §2): opcode (2 bytes: 1 RRQ, 2 WRQ),
filename, NUL, mode (netascii, octet or mail, any case), NUL, then optional
option name/value pairs, each NUL-terminated.

Stricter than nf_conntrack_tftp and conntrackd's tftp, on purpose:
* the request must be whole: a filename, a known mode and NUL terminators
  (`malformed` otherwise); the kernel opens on the two opcode bytes alone;
* only the client's side is read: a request sent from the server's side of
  the flow opens nothing (the kernel opens the same pinhole whichever side
  sends it);
* a client port below `min_port` (default 1024) gets no expectation
  (`low-port`): TFTP clients send from an ephemeral port, and a request
  from a service port would let the server reach that service.

The address is never advertised: the expectation names the two ends of
the request flow, so nothing can point it elsewhere.

Policy: class `tftp` (conntrackd's name; the kernel's class 0), 1
expectation per request flow, 300 s (both references). NAT: the kernel
and conntrackd let the expectation follow the master's mapping
(nat-follow-master); alg: not yet.
"""

from __future__ import annotations

import struct

import alg
from alg import UDP, Direction, Expect, ExpectClass, HelperSpec, Notice, Parsed

from ._ports import min_port_option, port_refusal

TFTP_PORT = 69
# RFC 1350 §5 opcodes
RRQ, WRQ, DATA, ACK, ERROR = 1, 2, 3, 4, 5
# RFC 2347 §1 option acknowledgement
OACK = 6
REQUESTS = {RRQ: "RRQ", WRQ: "WRQ"}
MODES = frozenset((b"netascii", b"octet", b"mail"))  # RFC 1350 §1, compared in lower case
_OPCODE = struct.Struct("!H")
MAX_REQUEST = 512  # RFC 1350 §5 / RFC 2347 §2: a request fits in one 512-byte packet


class TftpHelper(alg.Helper):
    spec = HelperSpec(
        name="tftp",
        protocols=(UDP,),
        ports=(TFTP_PORT,),
        classes=(ExpectClass("tftp", 1, 300),),
        options=min_port_option("client (request source)"),
        max_buffer=MAX_REQUEST,
        queue=28,
        doc="RRQ/WRQ to udp/69 -> udp server:* -> client:sport",
        knobs={"low-port": "options.min_port"},
    )

    @staticmethod
    def looks_like(payload: bytes) -> bool:
        """A read or write request: opcode 1 or 2, two NUL-terminated strings."""
        return len(payload) > 4 and payload[:2] in (b"\0\1", b"\0\2") and payload.count(b"\0") >= 3

    def inspect(self, segment: alg.Segment, state: None) -> alg.Outcome:
        data = segment.data
        if segment.direction is not Direction.ORIGINAL:
            return Parsed(len(data))  # the server's side names nothing we open
        if len(data) < _OPCODE.size:
            return Parsed(len(data), (Notice("malformed", "short datagram"),))
        (opcode,) = _OPCODE.unpack_from(data)
        if opcode not in REQUESTS:
            return Parsed(len(data))  # DATA/ACK/ERROR to port 69: a transfer on the request's own flow
        problem = _request_problem(data)
        if problem:
            return Parsed(len(data), (Notice("malformed", f"{REQUESTS[opcode]}: {problem}"),))
        port = segment.sender_port
        refused = port_refusal(port, self.options, f"{REQUESTS[opcode]} source")
        if refused:
            return Parsed(len(data), (refused,))
        return Parsed(len(data), (Expect("tftp", UDP, segment.receiver, segment.sender, None, port),))


def _request_problem(data: bytes) -> str:
    """Why `data` (opcode first) is not an RFC 1350 request, or ''."""
    fields = data[_OPCODE.size:].split(b"\0")
    if len(fields) < 3 or fields[-1] != b"":
        return "fields not NUL-terminated"
    filename, mode, options = fields[0], fields[1], fields[2:-1]
    if not filename:
        return "empty filename"
    if mode.lower() not in MODES:
        return f"mode {mode[:16]!r}"
    if len(options) % 2:
        return "option without a value"  # RFC 2347 §2: name and value in pairs
    return ""


@alg.hookimpl
def alg_register_helpers(register):
    register(TftpHelper)
