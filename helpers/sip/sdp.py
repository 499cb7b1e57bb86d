"""SDP (RFC 8866, formerly RFC 4566): the media streams a session description
announces, with the address and ports each side will receive on.

Read: `c=` at session level and per media (§5.7; the media-level one wins),
`m=<media> <port>[/<count>] <proto> ...` (§5.14), `a=rtcp:<port> [IN IP4|IP6
<addr>]` (RFC 3605 §2.1). Everything else is skipped. Lines end in CRLF or LF
(§5: "parsers SHOULD be tolerant and also accept records terminated with a
single newline"). A body is read up to `max_media` m= lines, MAX_LINES lines
of the three kinds and MAX_MALFORMED malformed ones; the rest is counted,
not read.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass

import alg

# the lines read here (RFC 8866 §5: <type>=<value>, CRLF or LF; a value ends at the first CR
# or LF), each found by one search for the next line start of the three kinds ("\nm=" in
# "\n" + body), which also reads its fields: the type's letter picks the one alternative, whose
# fields are an optional group (not there: the line is malformed). A match call and its groups
# per line fewer than a search and then an anchored match of the fields (issue 14).
# m=<media> <port>[/<number of ports>] <proto> <fmt> ... (§5.14): groups 1-4
_M = rb"([A-Za-z0-9._-]+)[ ]+([0-9]{1,5})(?:/([0-9]{1,5}))?[ ]+([A-Za-z0-9/._-]+)"
# c=<nettype> <addrtype> <connection-address> (§5.7), TTL / count suffixes on multicast: groups 5-6
_C = rb"IN[ ]+IP([46])[ ]+([^ /\r\n]+)(?:/[0-9]+){0,2}[ ]*(?![^\r\n])"
# a=rtcp:<port> [<nettype> <addrtype> <connection-address>] (RFC 3605 §2.1): groups 7-9
_RTCP = rb"([0-9]{1,5})(?:[ ]+IN[ ]+IP([46])[ ]+([^ \r\n]+))?[ ]*(?![^\r\n])"
_LINE = re.compile(rb"\n(?:m=(?:" + _M + rb")?|c=(?:" + _C + rb")?|a=rtcp:(?:" + _RTCP + rb")?)")
MAX_LINES = 64  # m=, c= and a=rtcp lines read per body (a call has a handful)
MAX_MALFORMED = 4  # malformed lines reported per body (the rest only make it stop sooner)


@dataclass(slots=True)
class Connection:
    family: int
    text: bytes
    addr: alg.IPAddress | None  # None: not an address literal (a host name)
    where: tuple[int, int]
    unusable: str | None = None  # why no media may go there: "" on hold, "multicast-media"


@dataclass(slots=True)
class Media:
    kind: bytes  # audio | video | image | application | ...
    port: int
    count: int
    proto: bytes  # RTP/AVP, RTP/SAVP, udptl, TCP/RTP/AVP, ...
    where: tuple[int, int]  # offset, length of the port digits
    connection: Connection | None = None  # media-level c=
    rtcp_port: int | None = None
    rtcp_connection: Connection | None = None
    rtcp_where: tuple[int, int] | None = None

    @property
    def is_rtp(self) -> bool:
        # RTP profiles (RFC 3551, 3711, 4585, 5124): RTCP rides on the next port
        return b"RTP/" in self.proto.upper()

    @property
    def over_tcp(self) -> bool:
        return self.proto.upper().startswith(b"TCP")


@dataclass(slots=True, init=False)
class Session:
    connection: Connection | None
    media: list[Media]
    malformed: list[str]
    skipped: int  # m= lines past max_media, not read
    lines: int  # m=, c= and a=rtcp lines read
    truncated: bool  # max_lines reached: the rest of the body was not read

    def __init__(self) -> None:  # what parse starts from (the generated one costs half as much again)
        self.connection = None
        self.media = []
        self.malformed = []
        self.skipped = self.lines = 0
        self.truncated = False


MAX_CACHED = 64  # bytes of an address text whose reading is cached (the longest IPv6 text, with room)


def _connection(fam: int, text: bytes, off: int) -> Connection:
    """The address `text` of family `fam` (c=, a=rtcp:, o=) at offset `off` of the message, if
    it is a literal of that family, and why media may not go there (its reading cached for
    short texts: a gateway sees the same few addresses over and over; a long one would make
    the cache hold megabytes)."""
    n = len(text)
    addr, unusable = _literal_cached(fam, text) if n <= MAX_CACHED else _literal_read(fam, text)
    return Connection(fam, text, addr, (off, n), unusable)


def _literal_read(fam: int, text: bytes) -> tuple[alg.IPAddress | None, str | None]:
    try:
        addr = ipaddress.ip_address(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None, None
    if addr.version != fam:
        return None, None
    if addr.is_unspecified:
        return addr, ""  # c=0.0.0.0: on hold (RFC 3264 §8.4)
    return addr, "multicast-media" if addr.is_multicast else None


_literal_cached = functools.lru_cache(maxsize=4096)(_literal_read)


def parse(body: bytes, base: int = 0, max_media: int = 32, max_lines: int = MAX_LINES) -> Session:
    """Parse an SDP body that starts at offset `base` of the message.

    At most `max_media` m= lines are read; reading stops at the next one
    (counted in `skipped`, with the m= lines after it), after `max_lines`
    lines of the kinds read (`truncated`) or after MAX_MALFORMED malformed
    lines: a body full of lines costs a bounded number of Python steps,
    the rest is not looked at."""
    s = Session()
    found = s.media
    current: Media | None = None
    n = 0  # lines read (s.lines once done)
    text = b"\n" + body  # "\nm=" at i of it is "m=" at i of the body
    base -= 1  # offsets in text
    search, pos = _LINE.search, 0
    while True:  # one search per line read, from the end of the last (finditer's scanner costs more in a short body)
        lm = search(text, pos)
        if lm is None:
            break
        pos = lm.end()
        if n >= max_lines:
            s.truncated = True
            break
        n += 1
        at = lm.start()
        letter = text[at + 1]
        if letter == 0x6D:  # m=
            if len(found) >= max_media:
                s.skipped = 1 + body.count(b"\nm=", at)
                break
            kind, port, count, proto = lm.group(1, 2, 3, 4)
            if kind is None:
                current = None
                if _malformed(s, "m="):
                    break
                continue
            current = Media(kind.lower(), int(port), int(count) if count else 1, proto, (base + lm.start(2), len(port)))
            found.append(current)
        elif letter == 0x63:  # c=
            fam, addr = lm.group(5, 6)
            if fam is None:
                if _malformed(s, "c="):
                    break
                continue
            c = _connection(4 if fam == b"4" else 6, addr, base + lm.start(6))  # (int() costs more)
            if current is None:
                s.connection = s.connection or c  # the first c= of a level counts
            elif current.connection is None:
                current.connection = c
        else:  # a=rtcp:
            if current is None:
                continue  # an a=rtcp: line before any m= is not read, well formed or not
            port, fam, addr = lm.group(7, 8, 9)
            if port is None:
                if _malformed(s, "a=rtcp"):
                    break
                continue
            current.rtcp_port = int(port)
            current.rtcp_where = (base + lm.start(7), len(port))
            if addr is not None:
                current.rtcp_connection = _connection(4 if fam == b"4" else 6, addr, base + lm.start(9))
    s.lines = n
    return s


def _malformed(s: Session, what: str) -> bool:
    """Note a malformed line; True when enough were seen to stop reading."""
    s.malformed.append(what)
    return len(s.malformed) >= MAX_MALFORMED


def sdp_bodies(content_type: bytes | None, body: bytes, body_offset: int) -> list[tuple[bytes, int]]:
    """The SDP parts of a message body: the body itself for application/sdp,
    the application/sdp parts of a multipart body (RFC 2046 §5.1, as SIP-T
    and SIP-I use), nothing otherwise."""
    if not body:
        return []
    ctype = (content_type or b"").split(b";")[0].strip().lower()
    if ctype == b"application/sdp":
        return [(body, body_offset)]
    if not ctype.startswith(b"multipart/"):
        return []
    m = re.search(rb'boundary="?([^";\r\n]+)"?', content_type or b"", re.IGNORECASE)
    if not m:
        return []
    delim = b"--" + m.group(1)
    out: list[tuple[bytes, int]] = []
    pos = body.find(delim)
    while pos >= 0 and len(out) < 8:
        nxt = body.find(delim, pos + len(delim))
        part_start = pos + len(delim)
        part = body[part_start:nxt if nxt >= 0 else len(body)]
        hdr_end = part.find(b"\r\n\r\n")
        sep = 4
        if hdr_end < 0:
            hdr_end, sep = part.find(b"\n\n"), 2
        if hdr_end >= 0 and re.search(rb"content-type[ \t]*:[ \t]*application/sdp", part[:hdr_end], re.IGNORECASE):
            out.append((part[hdr_end + sep:], body_offset + part_start + hdr_end + sep))
        pos = nxt
    return out


def owner(body: bytes, base: int = 0) -> Connection | None:
    """The address of the session-level `o=` line (§5.2: o=<username> <sess-id>
    <sess-version> <nettype> <addrtype> <unicast-address>), which starts at
    offset `base` of the message; None without one before the first m=."""
    lines = b"\n" + body  # "\no=" at i of it is "o=" at i of the body
    at, media = lines.find(b"\no="), lines.find(b"\nm=")
    if at < 0 or 0 <= media < at:
        return None
    end = body.find(b"\n", at)
    line = body[at + 2:len(body) if end < 0 else end].rstrip(b"\r")
    fields = line.split(b" ")
    if len(fields) != 6 or fields[3] != b"IN" or fields[4] not in (b"IP4", b"IP6"):
        return None
    addr, start = fields[5], base + at + 2 + len(line) - len(fields[5])
    if addr.startswith(b"[") and addr.endswith(b"]"):  # SIPp writes IPv6 bracketed here (§5.2 does not)
        addr, start = addr[1:-1], start + 1
    return _connection(4 if fields[4] == b"IP4" else 6, addr, start)
