"""SIP message grammar (RFC 3261 §7, §18.3, §20, §25): start line, headers
(full and compact names, case-insensitive, folded lines), message framing.

Pure functions over bytes. Every value returned keeps its offset in the
message so a later NAT step can rewrite it in place.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

import alg

# RFC 3261 §7.3.3 and the registries that extend it: compact form -> full name.
# Only the headers the helper reads matter, the rest are listed so that a
# compact header is never mistaken for an unknown one.
COMPACT = {
    b"i": b"call-id", b"m": b"contact", b"e": b"content-encoding", b"l": b"content-length",
    b"c": b"content-type", b"f": b"from", b"s": b"subject", b"k": b"supported", b"t": b"to",
    b"v": b"via", b"o": b"event", b"r": b"refer-to", b"u": b"allow-events", b"a": b"accept-contact",
    b"b": b"referred-by", b"j": b"reject-contact", b"d": b"request-disposition", b"x": b"session-expires",
    b"y": b"identity", b"n": b"identity-info",
}

# RFC 3261 §25.1: token characters; a method is a token.
_TOKEN = rb"[A-Za-z0-9.!%*_+`'~-]+"
# Request-Line = Method SP Request-URI SP SIP-Version CRLF (§25.1)
REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") ([^ \r\n]+) SIP/2\.0\r?\n?$")
# Status-Line = SIP-Version SP Status-Code SP Reason-Phrase CRLF (§25.1)
STATUS_LINE = re.compile(rb"SIP/2\.0 ([1-6][0-9][0-9])(?: [^\r\n]*)?\r?\n?$")
_TOKEN_ONLY = re.compile(_TOKEN + rb"$")
_STATUS_PREFIX = re.compile(rb"[1-6]?[0-9]{0,2}$")
# header-name ":" (§7.3.1: any amount of whitespace around the colon)
_HEADER = re.compile(rb"(" + _TOKEN + rb")[ \t]*:[ \t]*")
# CSeq = "CSeq" HCOLON 1*DIGIT LWS Method (§20.16; the number is < 2^31)
CSEQ = re.compile(rb"([0-9]{1,10})[ \t]+(" + _TOKEN + rb")[ \t]*$")
# Expires / expires= : delta-seconds (§20.19, §10.2.1.1); kept to 10 digits
DELTA = re.compile(rb"[0-9]{1,10}$")
CONTENT_LENGTH = re.compile(rb"[0-9]+$")

# A Contact / URI host part (§19.1.1, §25.1): IPv6reference, IPv4 or a name,
# with an optional port. Group 1: the host, 2: the port.
_HOSTPORT = re.compile(rb"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::([0-9]{1,5}))?")
_SIP_URI = re.compile(rb"sips?:(?:[^@;>\s]*@)?", re.IGNORECASE)

MAX_CONTENT_LENGTH = (1 << 32) - 1  # the kernel's CVE-2026-23457 case: >= 2^32 overflows 32 bits


@dataclass(slots=True)
class Header:
    name: bytes  # full name, lower case
    value: bytes  # unfolded value (continuation lines joined by one space)
    offset: int  # offset of the value in the message (first line)


@dataclass(slots=True)
class Message:
    method: bytes | None  # request method, upper case as sent; None for a response
    status: int | None
    uri: bytes
    headers: list[Header] = field(default_factory=list)
    body: bytes = b""
    body_offset: int = 0
    length: int = 0  # bytes of the whole message (start line to end of body)

    def get(self, name: bytes) -> Header | None:
        for h in self.headers:
            if h.name == name:
                return h
        return None

    def all(self, name: bytes) -> list[Header]:
        return [h for h in self.headers if h.name == name]

    def value(self, name: bytes) -> bytes | None:
        h = self.get(name)
        return None if h is None else h.value


class Incomplete(Exception):
    """The message is not complete yet (stream transports)."""


def could_be_start(data: bytes) -> bool:
    """True if `data` can still begin a SIP message: its first line is a
    Request-Line or Status-Line, or an unfinished prefix of one. An HTTP
    request on the SIP port fails here, whatever its body holds."""
    nl = data.find(b"\n")
    if nl >= 0:
        line = data[:nl].rstrip(b"\r")
        return bool(REQUEST_LINE.match(line) or STATUS_LINE.match(line))
    line = data.rstrip(b"\r")
    if len(line) > 4096:
        return False
    if line.startswith(b"SIP/2.0 "):
        return bool(_STATUS_PREFIX.match(line[8:11])) and (len(line) <= 11 or line[11:12] == b" ")
    if b"SIP/2.0 ".startswith(line):
        return True
    parts = line.split(b" ")
    if len(parts) > 3 or (not parts[0] and len(parts) > 1) or (parts[0] and not _TOKEN_ONLY.match(parts[0])):
        return False
    return len(parts) < 3 or b"SIP/2.0".startswith(parts[2])


def skip_keepalive(data: bytes) -> int:
    """Bytes of CRLF keep-alives (RFC 5626 §3.5.1) at the front of `data`."""
    n = 0
    while n < len(data) and data[n] in b"\r\n":
        n += 1
    return n


def parse(data: bytes, stream: bool, max_message: int) -> Message:
    """Parse one message at the start of `data`.

    stream=True (TCP): Content-Length is mandatory (§18.3, §20.14) and frames
    the message; raises Incomplete until all of it is there. stream=False
    (UDP): the datagram is one message; without Content-Length the body runs
    to its end. A Content-Length that cannot fit `max_message` (or 2^32)
    raises ProtocolViolation: nothing after it can be framed.
    """
    end = data.find(b"\r\n\r\n")
    sep = 4
    lf = data.find(b"\n\n")
    if lf >= 0 and (end < 0 or lf < end):
        end, sep = lf, 2
    if end < 0 and not stream:
        end, sep = len(data.rstrip(b"\r\n")), 0  # a datagram without the empty line: all headers
    if end < 0:
        if len(data) > max_message:
            raise alg.ProtocolViolation(f"no end of SIP headers within {max_message} bytes")
        raise Incomplete
    head = data[:end]
    first_nl = head.find(b"\n")
    first = head if first_nl < 0 else head[:first_nl]
    first = first.rstrip(b"\r")
    m = REQUEST_LINE.match(first)
    if m:
        msg = Message(m.group(1), None, m.group(2))
    else:
        s = STATUS_LINE.match(first)
        if not s:
            raise alg.ProtocolViolation(f"not a SIP start line: {first[:60]!r}")
        msg = Message(None, int(s.group(1)), b"")
    if first_nl >= 0:
        _headers(head, first_nl + 1, msg)
    body_start = min(end + sep, len(data)) if sep else len(data)
    clen = msg.value(b"content-length")
    if clen is None:
        if stream:
            raise alg.ProtocolViolation("SIP over a stream without Content-Length (RFC 3261 §18.3)")
        n = len(data) - body_start
    else:
        if not CONTENT_LENGTH.match(clen):
            raise alg.ProtocolViolation(f"bad Content-Length {clen[:20]!r}")
        n = int(clen) if len(clen) <= 12 else MAX_CONTENT_LENGTH + 1
        if n > MAX_CONTENT_LENGTH or body_start + n > max_message:
            raise alg.ProtocolViolation(
                f"Content-Length {clen[:20].decode('latin-1')} beyond the {max_message}-byte bound")
        if body_start + n > len(data):
            if stream:
                raise Incomplete
            # §18.3: a datagram shorter than its Content-Length is discarded
            raise alg.ProtocolViolation("datagram shorter than its Content-Length")
    msg.body = data[body_start:body_start + n]
    msg.body_offset = body_start
    msg.length = body_start + n
    return msg


def _headers(head: bytes, pos: int, msg: Message) -> None:
    lines = head[pos:].split(b"\n")
    off = pos
    for raw in lines:
        line = raw.rstrip(b"\r")
        if line[:1] in (b" ", b"\t"):
            # §7.3.1: a line starting with whitespace continues the previous header
            if not msg.headers:
                raise alg.ProtocolViolation("continuation line before any header")
            h = msg.headers[-1]
            h.value = h.value + b" " + line.strip(b" \t")
        elif line:
            m = _HEADER.match(line)
            if not m:
                raise alg.ProtocolViolation(f"bad header line {line[:40]!r}")
            name = m.group(1).lower()
            name = COMPACT.get(name, name)
            msg.headers.append(Header(name, line[m.end():].rstrip(b" \t"), off + m.end()))
        off += len(raw) + 1


def split_list(value: bytes) -> list[tuple[bytes, int]]:
    """Split a comma-separated header value (§7.3.1), minding quotes and <...>.
    Returns (element, offset in value)."""
    out, depth, quoted, start, i = [], 0, False, 0, 0
    while i < len(value):
        c = value[i]
        if quoted:
            if c == 0x5C:  # backslash: quoted-pair
                i += 1
            elif c == 0x22:
                quoted = False
        elif c == 0x22:
            quoted = True
        elif c == 0x3C:
            depth += 1
        elif c == 0x3E:
            depth = max(0, depth - 1)
        elif c == 0x2C and depth == 0:
            out.append((value[start:i], start))
            start = i + 1
        i += 1
    out.append((value[start:], start))
    return [(v.strip(), o + len(v) - len(v.lstrip())) for v, o in out if v.strip()]


@dataclass(frozen=True, slots=True)
class Contact:
    host: bytes
    addr: alg.IPAddress | None  # None: a host name
    port: int | None
    transport: bytes  # b"udp", b"tcp", ... lower case
    expires: int | None  # the ;expires= parameter (§10.2.1.1)
    where: tuple[int, int]  # (offset, length) of host[:port] within the value


def parse_contact(elem: bytes, offset: int) -> Contact | None:
    """One Contact element: `"name" <sip:user@host:port;uri-params>;params` or
    `sip:user@host:port;params` (§20.10). None when it is not a SIP URI."""
    lt = elem.find(b"<")
    if lt >= 0:
        gt = elem.find(b">", lt)
        if gt < 0:
            return None
        uri, uri_off, params = elem[lt + 1:gt], lt + 1, elem[gt + 1:]
    else:
        # without <>, parameters after the URI belong to the header (§20.10)
        semi = elem.find(b";")
        uri, uri_off, params = (elem, 0, b"") if semi < 0 else (elem[:semi], 0, elem[semi:])
    m = _SIP_URI.match(uri)
    if not m:
        return None
    hp = _HOSTPORT.match(uri, m.end())
    if not hp:
        return None
    host = hp.group(1)
    port = int(hp.group(2)) if hp.group(2) else None
    uri_params = _params(uri[hp.end():])
    hdr_params = _params(params)
    transport = uri_params.get(b"transport", b"udp").lower()
    exp = hdr_params.get(b"expires")
    expires = int(exp) if exp is not None and DELTA.match(exp) else None
    return Contact(host, ip_literal(host), port, transport, expires,
                   (offset + uri_off + hp.start(), hp.end() - hp.start()))


def _params(text: bytes) -> dict[bytes, bytes]:
    out = {}
    for p in text.split(b";")[1:] if text.startswith(b";") else text.split(b";"):
        k, _, v = p.partition(b"=")
        k = k.strip().lower()
        if k:
            out[k] = v.strip().strip(b'"')
    return out


def ip_literal(host: bytes) -> alg.IPAddress | None:
    """An IPv4 address or a bracketed IPv6 reference; None for a name."""
    try:
        text = host.decode("ascii")
        if text.startswith("["):
            if not text.endswith("]"):
                return None
            return ipaddress.IPv6Address(text[1:-1])
        return ipaddress.IPv4Address(text)
    except (UnicodeDecodeError, ValueError):
        return None


def parse_cseq(value: bytes | None) -> tuple[int, bytes] | None:
    if value is None:
        return None
    m = CSEQ.match(value)
    if not m:
        return None
    return int(m.group(1)), m.group(2).upper()
