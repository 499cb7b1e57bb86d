"""SIP message grammar (RFC 3261 §7, §18.3, §20, §25): start line, headers
(full and compact names, case-insensitive, folded lines), message framing.

Pure functions over bytes. Every value returned keeps its offset in the
message so a later NAT step can rewrite it in place.

Cost: the message is read at bytes level, without decoding and without
splitting it into lines. The empty line that ends the headers is found by
two C-level searches (resumable: `head_end(data, start)`; for a whole
message, `parse`, one search for CRLF CRLF and the check of the lines below,
which also finds an LF LF before it), the start line by one match in place,
each header the helper needs by one search of the head when it is asked for
(the kernel's ct_sip_get_header; Content-Length's is kept from the framing),
and every other line is checked once by one search for a line that is
neither a header nor a continuation.
No pattern here has adjacent or nested unbounded repetition over peer bytes.
Lists are bounded: MAX_LIST headers of one name, MAX_LIST elements of a
comma list, MAX_FOLDED bytes of a folded value. `StartScan` keeps where an
unfinished TCP message's scan stopped.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass

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
# Request-Line = Method SP Request-URI SP SIP-Version CRLF (§25.1) and
# Status-Line = SIP-Version SP Status-Code SP Reason-Phrase CRLF, matched up to the
# first line end (within the head: no copy of the line); any CRs before that line end
# belong to it. The runs side by side are possessive over disjoint classes: nothing is
# ever given back (linear)
REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") ([^ \r\n]+) SIP/2\.0\r*+\Z")
STATUS_LINE = re.compile(rb"SIP/2\.0 ([1-6][0-9][0-9])(?: [^\r\n]*+)?\r*+\Z")
_TOKEN_ONLY = re.compile(_TOKEN + rb"$")
_STATUS_PREFIX = re.compile(rb"[1-6]?[0-9]{0,2}$")
# a line that is neither a header (token, colon) nor a continuation (§7.3.1); the
# name and the blanks after it are possessive (taken whole, never given back: a
# shorter name cannot be followed by a colon either, and this is a third cheaper)
_BAD_LINE = re.compile(rb"\n(?!" + _TOKEN + rb"+[ \t]*+:|[ \t]|\r\n|\r?\Z)")
# the end of a header: a line end not followed by a continuation line
_HEADER_END = re.compile(rb"\n(?![ \t])")
_FOLD = (b" ", b"\t")  # a line starting with either continues the header before it
_FOLDING = re.compile(rb"\r?\n[ \t]+")  # a line break and the whitespace starting a continuation line
_TRAILING = b" \t\r"  # stripped from the end of a value (§7.3.1; CR: a line ends in CRLF)
MAX_METHOD = 32  # bytes of a method token (§25.1 sets no bound; the registered methods have <= 9)
MAX_START_LINE = 4096  # bytes of an unfinished start line before a stream is refused
_LIST_SPECIAL = re.compile(rb'[\\",<>]')
SPECIALS_PER_ELEMENT = 8  # < > " " , and a few escapes: a normal element has 2 to 5
MAX_FOLDED = 4096  # bytes of a header value spread over continuation lines that are read
_SEARCH: dict[bytes, re.Pattern[bytes]] = {}  # filled below for the headers the helper reads
MAX_LIST = 16  # Contact header lines (and elements of one) read per message; the rest are counted
# CSeq = "CSeq" HCOLON 1*DIGIT LWS Method (§20.16; the number is < 2^31)
CSEQ = re.compile(rb"([0-9]{1,10})[ \t]+(" + _TOKEN + rb")[ \t]*$")
# Expires / expires= : delta-seconds (§20.19, §10.2.1.1); kept to 10 digits
DELTA = re.compile(rb"[0-9]{1,10}$")
CONTENT_LENGTH = re.compile(rb"[0-9]+$")

# A Contact / URI host part (§19.1.1, §25.1): IPv6reference, IPv4 or a name,
# with an optional port. Group 1: the host, 2: the port.
_HOSTPORT = re.compile(rb"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::([0-9]{1,5}))?")
_SIP_URI = re.compile(rb"sips?:(?:[^@;>\s]*@)?", re.IGNORECASE)
# the two in one match (the userinfo atomic: taken whenever it is there, as _SIP_URI.match takes
# it, never given back to let a host match without it); the host classes hold both cases already
_SIP_URI_HOSTPORT = re.compile(rb"sips?:(?>(?:[^@;>\s]*@)?)" + _HOSTPORT.pattern, re.IGNORECASE)

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
    head: bytes = b""  # start line and header lines, without the empty line
    body: bytes = b""
    body_offset: int = 0
    length: int = 0  # bytes of the whole message (start line to end of body)
    skipped: int = 0  # header lines past MAX_LIST of one name, not read
    sdp: list | None = None  # under NAT: the SDP bodies the helper read, (body, offset, sdp.Session)
    content_length: tuple[bytes, int] | None = None  # the Content-Length value framing read, and its offset

    def all(self, name: bytes) -> list[Header]:
        """The headers called `name` (lower case, full name), MAX_LIST at
        most; `skipped` counts that there were more."""
        head = self.head
        out: list[Header] = []
        search = (_SEARCH.get(name) or _compile(name)).search
        m = search(head)
        while m is not None:  # (one search per header, from the end of the last: finditer's scanner costs more)
            if len(out) == MAX_LIST:
                self.skipped += 1
                break
            out.append(_header(name, head, m))
            m = search(head, m.end())
        return out

    def get(self, name: bytes) -> Header | None:
        m = (_SEARCH.get(name) or _compile(name)).search(self.head)  # (a call fewer than a function for it)
        return None if m is None else _header(name, self.head, m)

    def value(self, name: bytes) -> bytes | None:
        """The first value of header `name` (lower case, full name), found
        by one search of the head (the kernel's ct_sip_get_header), which
        also takes its line (one C-level step; a folded one is joined by
        `_value`). The helper asks for each header once or twice per message."""
        return self.first(_SEARCH.get(name) or _compile(name))

    def first(self, search: re.Pattern[bytes]) -> bytes | None:
        """`value` of the header a `_compile` pattern finds (the hot ones are
        module constants: CALL_ID_HEADER ...)."""
        m = search.search(self.head)
        if m is None:
            return None
        v, folded = m.groups()  # (as _header does, without building one)
        return v.rstrip(_TRAILING) if folded is None else _value(self.head, m.start(1))

    def cseq(self) -> tuple[int, bytes] | None:
        """`parse_cseq(self.value(b"cseq"))`, the usual one-line form read by the search
        that finds the header (`CSEQ_FIELDS`), any other by that path."""
        m = CSEQ_FIELDS.search(self.head)
        if m is None:
            return None
        num, method = m.groups()
        if num is None:
            return parse_cseq(self.first(CSEQ_HEADER))
        return int(num), method.upper()


class Incomplete(Exception):
    """The message is not complete yet (stream transports)."""


class StartScan:
    """Where the scan of a message not yet complete stopped (one per TCP
    direction), so that bytes already read are never read again when a
    segment adds more (`pos`), and what the first line was found to be."""

    __slots__ = ("pos", "line_done", "sp1", "sp2", "prefix", "end", "sep", "length")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.pos = 0  # bytes of the buffer already searched
        self.line_done = False  # the start line is complete (checked when the head is parsed)
        self.sp1 = self.sp2 = -1  # the spaces of an unfinished Request-Line, once seen
        self.prefix = b""  # the buffer's first bytes: a different buffer restarts the scan
        # while the body is awaited: where the head ends and the message's length (the
        # head is parsed again once, when the body is complete: numbers kept, not a copy)
        self.end = self.sep = self.length = -1


def could_be_start(data: bytes) -> bool:
    """True if `data` can still begin a SIP message: its first line is a
    Request-Line or Status-Line, or an unfinished prefix of one. An HTTP
    request on the SIP port fails here, whatever its body holds."""
    nl = data.find(b"\n")
    if nl >= 0:
        return start_line_ok(data[:nl])
    return prefix_ok(data, StartScan())


def start_line_ok(line: bytes) -> bool:
    m = REQUEST_LINE.match(line)
    if m:
        return len(m.group(1)) <= MAX_METHOD
    return STATUS_LINE.match(line) is not None


def prefix_ok(data: bytes, sc: StartScan) -> bool:
    """`data` (no LF yet) can still become a start line. Reads only what
    `sc` has not seen: a Request-Line's method is at most MAX_METHOD bytes,
    its URI is searched for the next space from where the last call stopped,
    what follows that space is at most 7 bytes."""
    n = len(data) - (1 if data.endswith(b"\r") else 0)
    if n > MAX_START_LINE:
        return False
    if data.startswith(b"SIP/2.0 "):
        return bool(_STATUS_PREFIX.match(data[8:min(n, 11)])) and (n <= 11 or data[11:12] == b" ")
    if n <= 8 and b"SIP/2.0 ".startswith(data[:n]):
        return True
    if sc.sp1 < 0:
        sp1 = data.find(b" ", 0, min(n, MAX_METHOD + 1))
        if sp1 < 0:
            return n <= MAX_METHOD and _TOKEN_ONLY.match(data[:n]) is not None
        if sp1 == 0 or not _TOKEN_ONLY.match(data[:sp1]):
            return False
        sc.sp1 = sp1
    if sc.sp2 < 0:
        sp2 = data.find(b" ", max(sc.sp1 + 1, sc.pos), n)
        if sp2 < 0:
            return True
        sc.sp2 = sp2
    tail = data[sc.sp2 + 1:n]
    return len(tail) <= 7 and b"SIP/2.0".startswith(tail)


def skip_keepalive(data: bytes) -> int:
    """Bytes of CRLF keep-alives (RFC 5626 §3.5.1) at the front of `data`
    (the helper calls it only when `data` starts with CR or LF)."""
    if data[:1] not in (b"\r", b"\n"):
        return 0
    return len(data) - len(data.lstrip(b"\r\n"))


def head_end(data: bytes, start: int = 0) -> tuple[int, int]:
    """(offset, length) of the empty line that ends the headers (CRLF CRLF,
    or LF LF, whichever comes first), searching from `start` (bytes before
    it were searched already; the 3 before it again, for an empty line cut
    by the segment boundary), or (-1, 0). Two C-level searches: an LF LF
    only counts before the first CRLF CRLF."""
    s = start - 3 if start > 3 else 0  # (max() costs a call)
    crlf = data.find(b"\r\n\r\n", s - 1 if s else 0)
    lf = data.find(b"\n\n", s, len(data) if crlf < 0 else crlf + 2)
    if lf >= 0:
        return lf, 2
    return (crlf, 4) if crlf >= 0 else (-1, 0)


def parse(data: bytes, stream: bool, max_message: int) -> Message:
    """Parse one message at the start of `data`.

    stream=True (TCP): Content-Length is mandatory (§18.3, §20.14) and frames
    the message; raises Incomplete until all of it is there. stream=False
    (UDP): the datagram is one message; without Content-Length the body runs
    to its end. A Content-Length that cannot fit `max_message` (or 2^32)
    raises ProtocolViolation: nothing after it can be framed.
    """
    # head_end(data), inline, the LF LF search folded into the check of the lines: an
    # empty line ending in LF alone ("\n\n") is neither a header nor a continuation, so
    # the search for the first bad line before a CRLF CRLF also finds where an LF LF
    # ends the head first (the lines before it are the same lines either way)
    crlf = data.find(b"\r\n\r\n")
    bad: re.Match[bytes] | None = None
    if crlf >= 0:
        first_nl = data.find(b"\n", 0, crlf)
        if first_nl >= 0:
            bad = _BAD_LINE.search(data, first_nl, crlf)
        if bad is not None and data[bad.end()] == 0x0A:  # "\n\n": the head ends there
            end, sep, bad = bad.start(), 2, None
        else:
            end, sep = crlf, 4
    else:
        end = data.find(b"\n\n")
        if end >= 0:
            sep = 2
        elif stream:
            if len(data) > max_message:
                raise alg.ProtocolViolation(f"no end of SIP headers within {max_message} bytes")
            raise Incomplete
        else:
            end, sep = len(data.rstrip(b"\r\n")), 0  # a datagram without the empty line: all headers
    msg = parse_head(data, end, sep, stream, max_message, bad if crlf >= 0 else True)  # True: lines not checked yet
    if msg.length > len(data):
        if stream:
            raise Incomplete
        # §18.3: a datagram shorter than its Content-Length is discarded
        raise alg.ProtocolViolation("datagram shorter than its Content-Length")
    msg.body = data[msg.body_offset:msg.length]  # take_body
    return msg


def take_body(msg: Message, data: bytes) -> None:
    msg.body = data[msg.body_offset:msg.length]


def parse_head(data: bytes, end: int, sep: int, stream: bool, max_message: int,
               bad: re.Match[bytes] | None | bool = True) -> Message:
    """Start line and headers of the message whose headers end at `end`
    (an empty line of `sep` bytes; 0: a datagram without one). Sets
    `length` from Content-Length; the body is taken by `take_body` once all
    of it is there. Each header line is read once: the headers the helper
    needs are found by one search of the head each, the others are only
    checked to be header or continuation lines (`bad`: what that check's
    search found, when the caller searched already; True: not searched yet)."""
    head = data[:end]
    first_nl = head.find(b"\n")
    line_end = end if first_nl < 0 else first_nl
    m = REQUEST_LINE.match(head, 0, line_end)
    if m:
        method, uri = m.groups()
        if len(method) > MAX_METHOD:
            raise alg.ProtocolViolation(f"method longer than {MAX_METHOD} bytes")
        msg = Message(method, None, uri, head)
    else:
        s = STATUS_LINE.match(head, 0, line_end)
        if not s:
            first = head[:line_end].rstrip(b"\r")
            raise alg.ProtocolViolation(f"not a SIP start line: {first[:60]!r}")
        msg = Message(None, int(s.group(1)), b"", head)
    if first_nl >= 0:
        if head.startswith(_FOLD, first_nl + 1):
            raise alg.ProtocolViolation("continuation line before any header")
        if bad is True:
            bad = _BAD_LINE.search(head, first_nl)
        if bad:
            _bad_line(head, bad.end())
    body_start = end + sep if sep and end + sep <= len(data) else len(data)
    cl = CONTENT_LENGTH_HEADER.search(head)  # msg.value(b"content-length"), inline
    if cl is None:
        clen = None
    else:
        clen, folded = cl.groups()
        clen = clen.rstrip(_TRAILING) if folded is None else _value(head, cl.start(1))
        msg.content_length = (clen, cl.start(1))  # (NAT rewrites it)
    if clen is None:
        if stream:
            raise alg.ProtocolViolation("SIP over a stream without Content-Length (RFC 3261 §18.3)")
        n = len(data) - body_start
    else:
        if not (clen.isdigit() or CONTENT_LENGTH.match(clen)):  # isdigit: ASCII digits only, the common case
            raise alg.ProtocolViolation(f"bad Content-Length {clen[:20]!r}")
        n = int(clen) if len(clen) <= 12 else MAX_CONTENT_LENGTH + 1
        if n > MAX_CONTENT_LENGTH or body_start + n > max_message:
            raise alg.ProtocolViolation(
                f"Content-Length {clen[:20].decode('latin-1')} beyond the {max_message}-byte bound")
    msg.body_offset = body_start
    msg.length = body_start + n
    return msg


def _bad_line(head: bytes, at: int) -> None:
    """The line at `at` is neither a header nor a continuation (§7.3.1)."""
    line = head[at:head.find(b"\n", at) % (len(head) + 1)]
    raise alg.ProtocolViolation(f"bad header line {line[:40]!r}")


def _compile(name: bytes) -> re.Pattern[bytes]:
    """Header `name` (full or compact form, §7.3.3, any case) at the start
    of a line, whitespace around the colon (§7.3.1); group 1: the rest of
    its line, group 2: set when a continuation line follows (folded). The
    runs are possessive, each stopping where the next cannot start
    (blanks, then anything up to the line end): nothing is given back."""
    forms = [re.escape(name)] + [re.escape(c) for c, full in COMPACT.items() if full == name]
    return re.compile(rb"\n(?:" + b"|".join(forms) + rb")[ \t]*+:[ \t]*+([^\n]*+)(\n[ \t])?", re.IGNORECASE)


def _header(name: bytes, head: bytes, m: re.Match[bytes]) -> Header:
    """The header a `_compile` pattern matched in `head`."""
    v, folded = m.groups()
    at = m.start(1)
    return Header(name, v.rstrip(_TRAILING) if folded is None else _value(head, at), at)


def _value(head: bytes, start: int) -> bytes:
    """The value from `start` to the end of its line and of the continuation
    lines after it (§7.3.1: joined by one space)."""
    nl = head.find(b"\n", start)
    if nl < 0:
        return head[start:].rstrip(b" \t\r")
    if not head.startswith(_FOLD, nl + 1):
        return head[start:nl].rstrip(b" \t\r")
    # a folded value is read up to MAX_FOLDED bytes (no header the helper
    # reads needs more) in one C-level pass (whitespace before a break is kept)
    limit = min(len(head), start + MAX_FOLDED)
    end = _HEADER_END.search(head, nl, limit)
    return _FOLDING.sub(b" ", head[start:end.start() if end else limit]).rstrip(b" \t\r")


def split_list(value: bytes) -> list[tuple[bytes, int]]:
    """Split a comma-separated header value (§7.3.1), minding quotes and <...>.
    Returns (element, offset in value), at most MAX_LIST of them."""
    return split_elements(value, MAX_LIST)[0]


def split_elements(value: bytes, limit: int) -> tuple[list[tuple[bytes, int]], bool]:
    """Up to `limit` elements of a comma-separated value and whether more
    were left unread. Only quote, bracket, backslash and comma bytes are
    visited (found by one pattern; the rest is a C-level scan), at most
    SPECIALS_PER_ELEMENT per element asked for."""
    out: list[tuple[bytes, int]] = []
    if b"," not in value and b'"' not in value and b"\\" not in value and (
            len(value) <= limit * SPECIALS_PER_ELEMENT  # (too short to hold more brackets: not counted)
            or value.count(b"<") + value.count(b">") <= limit * SPECIALS_PER_ELEMENT):
        # one element and nothing quoted (a Contact, From, To as phones send them): what
        # the loop below finds, without visiting its brackets
        _element(out, value, 0)
        return out, False
    depth, quoted, start, escaped = 0, False, 0, -1
    for k, m in enumerate(_LIST_SPECIAL.finditer(value)):
        if k >= limit * SPECIALS_PER_ELEMENT:
            return out, True
        i = m.start()
        if i == escaped:
            continue
        c = value[i]
        if quoted:
            if c == 0x5C:  # backslash: quoted-pair, the next byte is literal
                escaped = i + 1
            elif c == 0x22:
                quoted = False
        elif c == 0x22:
            quoted = True
        elif c == 0x3C:
            depth += 1
        elif c == 0x3E:
            depth = max(0, depth - 1)
        elif c == 0x2C and depth == 0:
            _element(out, value[start:i], start)
            start = i + 1
            if len(out) >= limit:
                return out, bool(value[start:].strip())
    _element(out, value[start:], start)
    return out, False


def _element(out: list[tuple[bytes, int]], v: bytes, off: int) -> None:
    e = v.strip()
    if e:
        out.append((e, off + len(v) - len(v.lstrip())))


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


def uri_host(elem: bytes) -> tuple[int, int, bytes, int | None] | None:
    """Where the host[:port] of a SIP URI or name-addr is (offset, length in
    `elem`), the host and the port; the lean part of `parse_contact` (no
    parameters read) that NAT rewriting needs for every URI of a message."""
    hp = _SIP_URI_HOSTPORT.match(elem, elem.find(b"<") + 1)
    if not hp:
        return None
    host, port = hp.groups()
    at = hp.start(1)
    return at, hp.end() - at, host, int(port) if port else None


def _params(text: bytes) -> dict[bytes, bytes]:
    out = {}
    for p in text.split(b";")[1:] if text.startswith(b";") else text.split(b";"):
        k, _, v = p.partition(b"=")
        k = k.strip().lower()
        if k:
            out[k] = v.strip().strip(b'"')
    return out


MAX_LITERAL = 64  # bytes of a host that may be an address literal ("[" 45 characters of IPv6 "]")


def ip_literal(host: bytes) -> alg.IPAddress | None:
    """An IPv4 address or a bracketed IPv6 reference; None for a name."""
    return _literal(host) if len(host) <= MAX_LITERAL else None


@functools.lru_cache(maxsize=4096)
def _literal(host: bytes) -> alg.IPAddress | None:
    """ip_literal, cached (a gateway sees the same few hosts over and over;
    the keys are short, so the cache is bounded in bytes too)."""
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
    num, method = m.groups()
    return (int(num), method.upper()) if len(method) <= MAX_METHOD else None


_SEARCH.update((n, _compile(n)) for n in (b"call-id", b"cseq", b"content-length", b"content-type", b"contact",
                                          b"expires", b"via", b"from", b"to", b"route", b"record-route"))
CALL_ID_HEADER, CSEQ_HEADER, CONTENT_TYPE_HEADER, CONTENT_LENGTH_HEADER = (
    _SEARCH[n] for n in (b"call-id", b"cseq", b"content-type", b"content-length"))
# the first CSeq header (as CSEQ_HEADER finds it: CSeq has no compact form) and, when its
# value is the usual one line that CSEQ matches (number, blanks, a method of at most
# MAX_METHOD bytes, then the line ends: neither more bytes nor a continuation line), the
# number and method (groups 1, 2; else None: Message.cseq reads it the general way, which
# refuses a longer method). The runs are possessive over disjoint classes and bounded:
# nothing is given back, and a long method costs no more than a short one
CSEQ_FIELDS = re.compile(
    rb"\ncseq[ \t]*+:[ \t]*+(?:([0-9]{1,10})[ \t]++(" + _TOKEN[:-1] + rb"{1,%d}+)[ \t\r]*+(?![^\n]|\n[ \t]))?"
    % MAX_METHOD, re.IGNORECASE)


# Via = sent-protocol LWS sent-by *( SEMI via-params ) (§20.42, §25.1); the
# transport (group 1) and where sent-by starts
_VIA = re.compile(rb"SIP/2\.0/([A-Za-z]+)[ \t]+", re.IGNORECASE)


# a via-param the NAT reads (RFC 3261 §18.2.1, RFC 3581), within a sent-by's `;`-separated
# parameters: `;`, the name (blanks around it, any case: §7.3.1), `=`; group 2: the value up
# to the next `;` (bounded by the caller to the first element). The other parameters (a
# branch= on every Via) are passed over by this one C-level search, not split in Python.
_VIA_PARAM = re.compile(rb";\s*+(maddr|received|rport)\s*+=([^;]*+)", re.IGNORECASE)


@dataclass(slots=True)  # not frozen: read once per message under NAT, where construction cost shows
class Via:
    """The first (topmost) element of a Via value: where its sent-by is, and
    the received= / rport= / maddr= parameters (RFC 3261 §18.2.1, RFC 3581)."""

    transport: bytes  # upper case: UDP, TCP, ...
    host: bytes
    port: int | None
    where: tuple[int, int]  # (offset, length) of host[:port] within the value
    params: tuple[tuple[bytes, bytes, int], ...]  # maddr/received/rport: (name lower case, value, offset of the value)


def parse_via(value: bytes) -> Via | None:
    """The topmost sent-by of a Via value, None when it is not one."""
    m = _VIA.match(value)
    if not m:
        return None
    hp = _HOSTPORT.match(value, m.end())
    if not hp:
        return None
    params = []
    at = hp.end()
    if value.startswith(b";", at):  # parameters follow sent-by directly, up to the next element
        end = value.find(b",", at)
        end = len(value) if end < 0 else end
        p = _VIA_PARAM.search(value, at, end)  # (searches, not finditer's scanner: usually none is there)
        while p is not None:
            v = p[2]
            params.append((p[1].lower(), v.strip(), p.start(2) + len(v) - len(v.lstrip())))
            p = _VIA_PARAM.search(value, p.end(), end)
    port = int(hp.group(2)) if hp.group(2) else None
    return Via(m.group(1).upper(), hp.group(1), port, (hp.start(), hp.end() - hp.start()), tuple(params))
