"""Oracle TNS: opens the connection a listener redirects its client to.

An Oracle Net client connects to a listener (port 1521) and sends CONNECT.
A listener that hands the session to another endpoint (a dispatcher of a
shared server, a RAC node behind a SCAN listener, a second listener port)
answers REDIRECT with a connect string such as
`(ADDRESS=(PROTOCOL=TCP)(HOST=10.0.2.2)(PORT=1522))`, then the client opens a
new TCP connection there. The helper reads the listener's side of the flow
and lets the client open `tcp client:* -> host:port`.

Wire format (TNS, "SQL*Net version 2"; no public RFC, facts as conntrackd's
tns.c and the python-oracledb thin driver use them): every packet starts with
an 8-byte header, length (2 bytes, big endian, header included), packet
checksum, type, flags, header checksum. Types read here: REDIRECT (5), whose
body starts with the length of the redirect data (2 bytes) followed by the
data itself, or by nothing, the data then coming in the DATA (6) packets that
follow (after their 2-byte data flags); ACCEPT (2) and REFUSE (4) end the
connect phase and with it the inspection of the flow (a later packet may
have a 4-byte length, large SDU, and never redirects). The redirect data is
`<address>\\0<connect data>`; the first `(ADDRESS=...)` of the address part
is used, as the clients do. Keywords and values are matched case-insensitively
and tolerate whitespace; HOST may be an IPv4 or IPv6 literal (brackets
allowed). PROTOCOL must be TCP or TCPS (TLS over TCP).

Security:
* a HOST that is a name, not an address, gives no expectation (the helper
  does no DNS; counted as `hostname`);
* the HOST must be the redirecting listener's own address unless `loose` is
  set or it lies in one of `allowed_networks` (a RAC cluster's node network,
  say); otherwise no expectation (`address-mismatch`). conntrackd does not
  check this: any HOST a listener (or whoever answers from port 1521) names
  opens a pinhole there;
* only the listener's side is read; the client's CONNECT names nothing that
  is opened.

conntrackd parity (src/helpers/tns.c): class `tns`, 1 expectation / 300 s,
expected flow client address, any source port, HOST, PORT, no flags;
`priv_data_len` 1 (its struct tns_info) so alg can take over a helper that
`nfct add helper tns inet tcp` registered. conntrackd reads only IPv4 literals
after a case-sensitive `HOST=`, and only the one DATA packet after a
REDIRECT with no data; here REDIRECT data split over several DATA packets
is joined (up to 8 KiB). NAT rewriting: not yet (offsets of HOST and PORT are
reported when the address came in one packet).
"""

from __future__ import annotations

import ipaddress
import re
import struct
from typing import Any, Mapping

import alg
from alg import TCP, Direction, Expect, ExpectClass, HelperSpec, Notice, Option, Parsed

# packet types (conntrackd tns.c, python-oracledb constants)
CONNECT, ACCEPT, ACK, REFUSE, REDIRECT, DATA = 1, 2, 3, 4, 5, 6
RESEND, MARKER = 11, 12
_END_OF_CONNECT = frozenset((ACCEPT, REFUSE))

_HEADER = struct.Struct("!HHBBH")  # length, packet checksum, type, flags, header checksum
_U16 = struct.Struct("!H")
MAX_REDIRECT = 8192  # bytes of redirect data kept

# (ADDRESS=(PROTOCOL=TCP)(HOST=...)(PORT=...)) with any case and whitespace
_ADDRESS = re.compile(rb"\(\s*ADDRESS\s*=\s*((?:\(\s*[A-Za-z_]+\s*=[^()]*\)\s*)+)\)", re.I)
_PARAM = re.compile(rb"\(\s*([A-Za-z_]+)\s*=\s*([^()]*?)\s*\)")
_HOSTNAME = re.compile(rb"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*\.?")


class TnsState:
    __slots__ = ("done", "skip", "pending", "need", "buf", "buf_at")

    def __init__(self) -> None:
        self.done = False  # connect phase over: nothing more to read
        self.skip = 0  # bytes of a long packet still to pass over (listener side)
        self.pending = False  # a REDIRECT's data is still to come in DATA packets
        self.need = 0  # redirect data length announced (0: the next DATA packet, whatever its length)
        self.buf = b""
        self.buf_at: int | None = None  # offset of buf in the segment it came from (one packet only)


class TnsHelper(alg.Helper):
    spec = HelperSpec(
        name="tns",
        protocols=(TCP,),
        ports=(1521,),
        classes=(ExpectClass("tns", 1, 300),),  # conntrackd's policy name
        options={
            "loose": Option(False, "accept a redirect to an address that is not the listener's (unsafe)"),
            "allowed_networks": Option([], "networks (CIDR) a redirect may name besides the listener", list),
        },
        priv_data_len=1,  # conntrackd's struct tns_info
        max_buffer=16384,
        knobs={"address-mismatch": "options.loose, options.allowed_networks"},
    )

    @staticmethod
    def looks_like(payload: bytes) -> bool:
        """A TNS CONNECT packet (type 1) with a connect descriptor."""
        return len(payload) > 8 and payload[4] == 1 and b"(description=" in payload[:4096].lower()

    def __init__(self, options: Mapping[str, Any] | None = None):
        super().__init__(options)
        self.allowed = alg.parse_networks(self.options["allowed_networks"], "tns: options.allowed_networks")

    def new_state(self) -> TnsState:
        return TnsState()

    def inspect(self, segment: alg.Segment, state: TnsState) -> alg.Outcome:
        data = segment.data
        if segment.direction is Direction.ORIGINAL or state.done:
            return Parsed(len(data))  # the client's side names nothing we open
        if state.skip:
            n = min(state.skip, len(data))
            state.skip -= n
            return Parsed(n)
        if len(data) < _HEADER.size:
            return alg.NEED_DATA
        length, _csum, ptype, _flags, _hcsum = _HEADER.unpack_from(data)
        if length < _HEADER.size:
            raise alg.ProtocolViolation(f"TNS packet length {length}")
        if ptype in _END_OF_CONNECT:
            state.done = True
            return Parsed(len(data))
        if ptype not in (REDIRECT, DATA) or (ptype == DATA and not state.pending) or length > MAX_REDIRECT:
            if ptype in (REDIRECT, DATA) and length > MAX_REDIRECT:
                state.pending = False
                out: tuple = (Notice("oversized", f"type {ptype} packet of {length} bytes not read"),)
            else:
                out = ()
            n = min(length, len(data))
            state.skip = length - n
            return Parsed(n, out)
        if len(data) < length:
            return alg.NEED_DATA
        if ptype == REDIRECT:
            if length < _HEADER.size + 2:
                raise alg.ProtocolViolation("REDIRECT without its data length")
            (state.need,) = _U16.unpack_from(data, _HEADER.size)
            body_at = _HEADER.size + 2
            state.buf, state.buf_at = data[body_at:length], body_at
        else:
            body_at = _HEADER.size + 2  # DATA: 2 bytes of data flags first
            chunk = data[body_at:length]
            state.buf_at = body_at if not state.buf else None
            state.buf += chunk
        if state.need and len(state.buf) < state.need:
            state.pending = True
            if len(state.buf) > MAX_REDIRECT:  # pragma: no cover - bounded by need <= 65535 and MAX_REDIRECT
                state.pending, state.buf = False, b""
            return Parsed(length)
        if not state.buf:  # REDIRECT with no data: the address follows in the next DATA packet
            state.pending = True
            return Parsed(length)
        redirect = state.buf[:state.need] if state.need else state.buf
        base = state.buf_at
        state.pending, state.buf, state.buf_at = False, b"", None
        return Parsed(length, self._redirect(redirect, base, segment))

    def _redirect(self, data: bytes, base: int | None, seg: alg.Segment) -> tuple:
        address = data.split(b"\0", 1)[0]
        m = _ADDRESS.search(address)
        if m is None:
            return (Notice("no-address", repr(address[:80])),)
        params: dict[bytes, re.Match] = {}
        for p in _PARAM.finditer(m.group(1)):
            params.setdefault(p.group(1).upper(), p)
        proto, host, port = (params.get(k) for k in (b"PROTOCOL", b"HOST", b"PORT"))
        if proto is None or proto.group(2).upper() not in (b"TCP", b"TCPS"):
            return (Notice("not-tcp", repr(m.group(0)[:80])),)
        if host is None or port is None:
            return (Notice("no-address", repr(m.group(0)[:80])),)
        text = host.group(2).strip(b"[]")
        try:
            addr = ipaddress.ip_address(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            if _HOSTNAME.fullmatch(text):
                return (Notice("hostname", text.decode("ascii")),)
            return (Notice("malformed", f"HOST {text[:64]!r}"),)
        ptext = port.group(2)
        if not ptext.isdigit() or not 0 < int(ptext) < 65536:
            return (Notice("bad-port", repr(ptext[:16])),)
        if addr.version != seg.flow.l3:
            return (Notice("family-mismatch", f"{addr} on an IPv{seg.flow.l3} flow"),)
        if addr != seg.sender and not self.options["loose"] and not any(addr in n for n in self.allowed):
            return (Notice("address-mismatch", f"redirect to {addr} by {seg.sender}"),)
        where: tuple = ()
        if base is not None:
            off = base + m.start(1)
            where = ((off + host.start(2), len(host.group(2))), (off + port.start(2), len(ptext)))
        return (Expect("tns", TCP, seg.receiver, addr, None, int(ptext), where=where),)


@alg.hookimpl
def alg_register_helpers(register):
    register(TnsHelper)
