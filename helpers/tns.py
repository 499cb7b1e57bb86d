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
data itself, or by less, the rest then coming in the DATA (6) packets that
follow (after their 2-byte data flags; a length of 0 with no data: the one
DATA packet that follows); ACCEPT (2) and REFUSE (4) end the
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

NAT (a listener behind a DNAT port forward redirecting its client to
itself, say): the HOST and PORT of the redirect are rewritten to the
endpoint the client reaches from outside (the gateway's address, the port
the expectation got there), and with them the length of every TNS packet
that carries the redirect and the redirect data length of the REDIRECT, as
conntrackd's nf_nat_tns. The REDIRECT and the DATA packets that carry its
data are read as one message once all of them have come, so that the data
length in the REDIRECT can follow the data; when they came in different TCP
segments and the rewrite changes that length, the earlier segment is gone
and the rewrite is refused (counted by the core, the packet untouched).
Not rewritten, counted as `not-rewritten`: redirect data split over
several packets (its length would need the sum over them), and packets
whose TNS checksum fields are set (conntrackd zeroes them; Oracle Net
leaves them zero).

conntrackd parity (src/helpers/tns.c): class `tns`, 1 expectation / 300 s,
expected flow client address, any source port, HOST, PORT, no flags;
`priv_data_len` 1 (its struct tns_info) so alg can take over a helper that
`nfct add helper tns inet tcp` registered. conntrackd reads only IPv4 literals
after a case-sensitive `HOST=`, and only the one DATA packet after a
REDIRECT with no data; here REDIRECT data split over several DATA packets
is joined (up to 8 KiB); a packet of another type among them ends the
redirect data.
"""

from __future__ import annotations

import re
import struct
from typing import Any, Mapping

import alg
from alg import TCP, Direction, Expect, ExpectClass, Form, HelperSpec, Length, Notice, Option, Parsed, Rewrite

from ._addr import ip_from_text

# packet types (conntrackd tns.c, python-oracledb constants)
CONNECT, ACCEPT, ACK, REFUSE, REDIRECT, DATA = 1, 2, 3, 4, 5, 6
RESEND, MARKER = 11, 12
_END_OF_CONNECT = frozenset((ACCEPT, REFUSE))

_HEADER = struct.Struct("!HHBBH")  # length, packet checksum, type, flags, header checksum
_PACKET_CSUM, _HEADER_CSUM = 2, 6  # offsets of the two checksums in the header
_U16 = struct.Struct("!H")
MAX_REDIRECT = 8192  # bytes of redirect data kept

# Oracle Net connect descriptors: (KEYWORD=value) or (KEYWORD=(...)(...)), any case and
# whitespace. Read by one pass over the structural characters (`_NV_TOKEN`), never
# by a pattern that backtracks over the spaces of a value (`\s*([^()]*?)\s*\)` cost
# 166 ms on an 8 KB REDIRECT).
# a structural character, or a whole (keyword=value) without a list inside. Its two runs stop at
# the first character they exclude, are possessive (never given back) and bounded: a longer keyword
# or value is read mark by mark instead (the same result), so a long run after a "(" is not
# scanned once more for a (keyword=value) it cannot be. Each alternative starts with its literal
# (not [()=]): the engine then skips to the next mark with one set test per byte, as `[()=]` alone
_NV_TOKEN = re.compile(rb"\(([^()=]{0,64}+)=([^()=]{0,320}+)\)|\(|\)|=")
_NV_KEYWORD = re.compile(rb"[A-Za-z_]+")
MAX_NV_DEPTH = 16  # nesting kept; deeper descriptors are malformed
_LABEL = re.compile(rb"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")  # RFC 1123 §2.1
_OWS = b" \t\r\n"


class TnsState:
    __slots__ = ("done", "skip", "want")

    def __init__(self) -> None:
        self.done = False  # connect phase over: nothing more to read
        self.skip = 0  # bytes of a long packet still to pass over (listener side)
        self.want = 0  # bytes the buffer must hold before the REDIRECT at its start is read again


class TnsHelper(alg.Helper):
    spec = HelperSpec(
        name="tns",
        protocols=(TCP,),
        ports=(1521,),
        classes=(ExpectClass("tns", 1, 300),),  # conntrackd's policy name
        options={
            "loose": Option(False, "accept a redirect to an address that is not the listener's (unsafe)"),
            "allowed_networks": Option([], "networks (CIDR) a redirect may name besides the listener", list,
                                       items=str, check=alg.check_networks),
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
        if len(data) < max(_HEADER.size, state.want):
            return alg.NEED_DATA  # the REDIRECT (and its DATA packets) not yet whole: read once, when they are
        length, _csum, ptype, _flags, _hcsum = _HEADER.unpack_from(data)
        if length < _HEADER.size:
            raise alg.ProtocolViolation(f"TNS packet length {length}")
        if ptype in _END_OF_CONNECT:
            state.done = True
            return Parsed(len(data))
        if ptype != REDIRECT or length > MAX_REDIRECT:
            out: tuple = (Notice("oversized", f"REDIRECT of {length} bytes not read"),) if ptype == REDIRECT else ()
            n = min(length, len(data))
            state.skip = length - n
            return Parsed(n, out)
        if len(data) < length:
            state.want = length
            return alg.NEED_DATA
        if length < _HEADER.size + 2:
            raise alg.ProtocolViolation("REDIRECT without its data length")
        found = _gather(data, length)
        if isinstance(found, int):
            state.want = found
            return alg.NEED_DATA
        state.want = 0
        end, pieces, fields = found
        (need,) = _U16.unpack_from(data, _HEADER.size)
        if need > MAX_REDIRECT:
            return Parsed(end, (Notice("oversized", f"redirect data of {need} bytes not read"),))
        joined = pieces[0][1] if len(pieces) == 1 else b"".join([chunk for _at, chunk in pieces])
        if need and len(joined) < need:
            return Parsed(end, (Notice("no-address", f"{len(joined)} of the {need} redirect bytes announced"),))
        # where the redirect data starts in the message, if it lies in one packet (else no offsets)
        first = next(((at, chunk) for at, chunk in pieces if chunk), None)
        base = first[0] if first is not None and len(first[1]) >= (need or len(joined)) else None
        actions = self._redirect(joined[:need] if need else joined, base, segment)
        if segment.nat is not None:
            actions += self._nat_spans(actions, data[:end], fields, base, need)
        return Parsed(end, actions)

    @staticmethod
    def _nat_spans(actions: tuple, message: bytes, fields: list, base: int | None, need: int) -> tuple:
        """Under NAT: HOST and PORT of the redirect's expectation as `Rewrite`s, each
        TNS packet's length and the redirect data length as `Length`s (the core
        writes the outside endpoint there, as conntrackd's nf_nat_tns)."""
        expect = next((a for a in actions if isinstance(a, Expect)), None)
        if expect is None:
            return ()
        if base is None or not expect.where:
            return (Notice("not-rewritten", "redirect data split over several packets"),)
        if any(message[at + _PACKET_CSUM:at + _PACKET_CSUM + 2] != b"\0\0"
               or message[at + _HEADER_CSUM:at + _HEADER_CSUM + 2] != b"\0\0" for at, _end in fields):
            # conntrackd zeroes them; here a packet with checksums is left as it is
            return (Notice("not-rewritten", "TNS packet with checksums"),)
        (host, port) = expect.where
        spans: list = [Rewrite(*host, expect.dst, None, Form.ADDR), Rewrite(*port, expect.dst, expect.dport, Form.PORT)]
        spans += [Length(at, _U16.size, at, end, Form.BE16) for at, end in fields]  # each packet's length
        if need:
            spans.append(Length(_HEADER.size, _U16.size, base, base + need, Form.BE16))
        return tuple(spans)

    def _redirect(self, data: bytes, base: int | None, seg: alg.Segment) -> tuple:
        address = data.split(b"\0", 1)[0]
        found = _first_address(address)
        if found is None:
            return (Notice("no-address", repr(address[:80])),)
        span, params = found
        proto, host, port = params.get(b"PROTOCOL"), params.get(b"HOST"), params.get(b"PORT")
        if proto is None or proto[0].upper() not in (b"TCP", b"TCPS"):
            return (Notice("not-tcp", repr(address[span[0]:span[1]][:80])),)
        if host is None or port is None:
            return (Notice("no-address", repr(address[span[0]:span[1]][:80])),)
        text = host[0].strip(b"[]")
        try:
            addr = ip_from_text(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            if _is_hostname(text):
                return (Notice("hostname", text.decode("ascii")),)
            return (Notice("malformed", f"HOST {text[:64]!r}"),)
        ptext = port[0]
        if not ptext.isdigit() or not 0 < int(ptext) < 65536:
            return (Notice("bad-port", repr(ptext[:16])),)
        if addr.version != seg.flow.l3:
            return (Notice("family-mismatch", f"{addr} on an IPv{seg.flow.l3} flow"),)
        if addr != seg.sender and not self.options["loose"] and not any(addr in n for n in self.allowed):
            return (Notice("address-mismatch", f"redirect to {addr} by {seg.sender}"),)
        where: tuple = ()
        if base is not None:
            lead = len(host[0]) - len(host[0].lstrip(b"["))  # the address inside [brackets]
            where = ((base + host[1] + lead, len(text)), (base + port[1], len(ptext)))
        return (Expect("tns", TCP, seg.receiver, addr, None, int(ptext), where=where),)


def _gather(data: bytes, length: int) -> int | tuple[int, list[tuple[int, bytes]], list[tuple[int, int]]]:
    """The REDIRECT at the start of `data` (`length` bytes, all there) and the DATA
    packets that carry its redirect data: (end of the last, [(offset, chunk)] of
    the data, [(start, end)] of each packet), or how many bytes the buffer must
    hold before they can be read (more to come). The DATA packets are read as
    long as the data announced is not all there (length 0: the one next DATA
    packet, as conntrackd reads it); another packet type ends them."""
    (need,) = _U16.unpack_from(data, _HEADER.size)
    body = _HEADER.size + _U16.size
    pieces = [(body, data[body:length])]
    fields = [(0, length)]
    have, end = length - body, length
    while (have < need <= MAX_REDIRECT) if need else len(pieces) == 1 and not have:
        if len(data) < end + _HEADER.size:
            return end + _HEADER.size
        plen, _csum, ptype, _flags, _hcsum = _HEADER.unpack_from(data, end)
        if ptype != DATA or not body <= plen <= MAX_REDIRECT or end - length > MAX_REDIRECT:
            break  # no (more) redirect data: what came is all there is
        if len(data) < end + plen:
            return end + plen
        pieces.append((end + body, data[end + body:end + plen]))  # after the DATA packet's 2-byte flags
        fields.append((end, end + plen))
        have, end = have + plen - body, end + plen
    return end, pieces, fields


def _first_address(text: bytes) -> tuple[tuple[int, int], dict[bytes, tuple[bytes, int]]] | None:
    """The first `(ADDRESS=...)` that closes: its span and its parameters, keyword (upper case) ->
    (value stripped, offset of the value). One pass over the `(`, `=` and `)` of the text, each
    stretch between two of them sliced once: linear in the text. A `(keyword=value)` with no
    list inside is one token, read as its `(`, `=` and `)` would be one by one."""
    stack: list[list] = []  # open lists: [keyword or None, start, value start or None, params or None]
    for m in _NV_TOKEN.finditer(text):
        at = m.start()
        c = text[at]
        if m.lastindex:  # (keyword=value)
            if len(stack) >= MAX_NV_DEPTH:
                return None
            keyword = m[1].strip(_OWS)
            if _NV_KEYWORD.fullmatch(keyword):
                if stack:
                    raw = m[2]
                    value = raw.lstrip(_OWS)
                    outer = stack[-1]
                    if outer[3] is None:
                        outer[3] = {}
                    outer[3].setdefault(keyword.upper(), (value.rstrip(_OWS), m.start(2) + len(raw) - len(value)))
                continue
            # not a keyword: that list is no parameter, and its ")" closes the list around it
            at, c = m.end() - 1, 0x29
        if c == 0x28:  # (
            if len(stack) >= MAX_NV_DEPTH:
                return None
            stack.append([None, at, None, None])
        elif c == 0x3D:  # =
            if stack and stack[-1][0] is None:  # after a keyword
                top = stack[-1]
                keyword = text[top[1] + 1:at].strip(_OWS)
                if not _NV_KEYWORD.fullmatch(keyword):
                    stack.pop()  # not a keyword: this list is no parameter
                    continue
                top[0], top[2] = keyword.upper(), at + 1
        elif stack:  # )
            keyword, start, value_at, params = stack.pop()
            if keyword == b"ADDRESS" and params:
                return (start, at + 1), params
            if keyword is not None and value_at is not None and stack:
                raw = text[value_at:at]
                value = raw.lstrip(_OWS)
                outer = stack[-1]
                if outer[3] is None:
                    outer[3] = {}
                outer[3].setdefault(keyword, (value.rstrip(_OWS), value_at + len(raw) - len(value)))
    return None


def _is_hostname(text: bytes) -> bool:
    """A DNS name (RFC 1123 §2.1 labels, an optional final dot): checked label by label."""
    labels = text[:-1].split(b".") if text.endswith(b".") else text.split(b".")
    return 0 < len(text) <= 255 and all(_LABEL.fullmatch(label) for label in labels)


@alg.hookimpl
def alg_register_helpers(register):
    register(TnsHelper)
