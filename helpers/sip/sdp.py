"""SDP (RFC 8866, formerly RFC 4566): the media streams a session description
announces, with the address and ports each side will receive on.

Read: `c=` at session level and per media (§5.7; the media-level one wins),
`m=<media> <port>[/<count>] <proto> ...` (§5.14), `a=rtcp:<port> [IN IP4|IP6
<addr>]` (RFC 3605 §2.1). Everything else is skipped. Lines end in CRLF or LF
(§5: "parsers SHOULD be tolerant and also accept records terminated with a
single newline").
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass, field

import alg

# only the lines read here: m=, c=, a=rtcp: (RFC 8866 §5: <type>=<value>, CRLF or LF)
_LINE = re.compile(rb"^([mc]|a(?==rtcp:))=([^\r\n]*)", re.MULTILINE)
# c=<nettype> <addrtype> <connection-address> (§5.7); TTL / count suffixes on multicast
_C = re.compile(rb"IN[ ]+IP([46])[ ]+([^ /\r\n]+)(?:/[0-9]+){0,2}[ ]*$")
# m=<media> <port>[/<number of ports>] <proto> <fmt> ... (§5.14)
_M = re.compile(rb"([A-Za-z0-9._-]+)[ ]+([0-9]{1,5})(?:/([0-9]{1,5}))?[ ]+([A-Za-z0-9/._-]+)")
# a=rtcp:<port> [<nettype> <addrtype> <connection-address>] (RFC 3605 §2.1)
_RTCP = re.compile(rb"([0-9]{1,5})(?:[ ]+IN[ ]+IP([46])[ ]+([^ \r\n]+))?[ ]*$")


@dataclass(slots=True)
class Connection:
    family: int
    text: bytes
    addr: alg.IPAddress | None  # None: not an address literal (a host name)
    where: tuple[int, int]


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


@dataclass(slots=True)
class Session:
    connection: Connection | None = None
    media: list[Media] = field(default_factory=list)
    malformed: list[str] = field(default_factory=list)


def _connection(value: bytes, off: int) -> Connection | None:
    m = _C.match(value)
    if not m:
        return None
    return _address(int(m.group(1)), m.group(2), off + m.start(2))


def _address(fam: int, text: bytes, off: int) -> Connection:
    return Connection(fam, text, _literal(fam, text), (off, len(text)))


@functools.lru_cache(maxsize=4096)
def _literal(fam: int, text: bytes) -> alg.IPAddress | None:
    """The address in `text` if it is a literal of family `fam` (cached: a
    gateway sees the same few addresses over and over)."""
    try:
        addr = ipaddress.ip_address(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None
    return addr if addr.version == fam else None


def parse(body: bytes, base: int = 0, max_media: int = 32) -> Session:
    """Parse an SDP body that starts at offset `base` of the message."""
    s = Session()
    current: Media | None = None
    for lm in _LINE.finditer(body):
        kind, value = lm.group(1), lm.group(2)
        start = base + lm.start()
        if kind == b"m":
            mm = _M.match(value)
            if not mm:
                s.malformed.append("m=")
                current = None
                continue
            count = int(mm.group(3)) if mm.group(3) else 1
            current = Media(mm.group(1).lower(), int(mm.group(2)), count, mm.group(4),
                            (start + 2 + mm.start(2), len(mm.group(2))))
            if len(s.media) < max_media:
                s.media.append(current)
        elif kind == b"c":
            c = _connection(value, start + 2)
            if c is None:
                s.malformed.append("c=")
            elif current is None:
                s.connection = s.connection or c
            elif current.connection is None:
                current.connection = c
        elif kind == b"a" and current is not None and value[:5].lower() == b"rtcp:":
            r = _RTCP.match(value, 5)
            if not r:
                s.malformed.append("a=rtcp")
                continue
            current.rtcp_port = int(r.group(1))
            current.rtcp_where = (start + 2 + r.start(1), len(r.group(1)))
            if r.group(3):
                current.rtcp_connection = _address(int(r.group(2)), r.group(3), start + 2 + r.start(3))
    return s


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
