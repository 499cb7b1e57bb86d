"""Under NAT: the spans of a SIP message that name an endpoint the NAT
translates, for the core to rewrite (the kernel's nf_nat_sip, as a list of
`Rewrite` / `Length` actions instead of in-place edits).

Which spans, and when (nf_nat_sip.c; "here" is the conntrack tuple of the
message's direction, "there" the other one, as `alg.NatMap` names them):

* Request-URI host[:port] (requests): the NatMap rule (map_addr);
* the topmost Via's sent-by, only when it is the sender's endpoint (a
  request: here's source) or the receiver's (a response: here's
  destination); then its `maddr=` when it is here's source, `received=` when
  it is here's destination (address only), `rport=` when it is here's
  destination port;
* every Contact (all headers, all elements), From and To: the NatMap rule;
* Record-Route and Route elements: the NatMap rule (the kernel leaves them);
* SDP (every application/sdp body, multipart parts included): the session
  `o=` and `c=` addresses, each media-level `c=`, an `a=rtcp:` address:
  address only, the NatMap rule; each `m=` port and `a=rtcp:` port name the
  media endpoint the helper's `Expect` asked for (address, port), so the
  core writes there the port the expectation got outside;
* Content-Length, when the body changes length.

A URI without a port means 5060 (the kernel's SIP_PORT): when mapped it is
written with the port. Only address literals of the flow's family are
named; a host name is left alone. Header spans whose mapping changes
nothing are not named (the kernel leaves them byte for byte). A header
value folded over continuation lines is not rewritten (counted,
`nat-folded-header`). Bounds: MAX_LIST (16) URIs per header name over
all its headers, the SDP lines the helper reads. The differences from the
kernel are listed in the package docstring.
"""

from __future__ import annotations

import re
from typing import Any

import alg
from alg import Direction, Form, Length, Notice, Rewrite

from . import grammar, sdp
from .build import settable

# a Record-Route or Route header (full names: neither has a compact form, RFC 3261 §7.3.3)
_ROUTE = re.compile(rb"\n(?:record-)?route[ \t]*+:", re.IGNORECASE)
SIP_PORT = 5060  # what a SIP URI without a port means (the kernel's SIP_PORT)
VIA_TRANSPORT = {alg.UDP: b"UDP", alg.TCP: b"TCP"}  # the Via transport the kernel reads per flow protocol
MAX_BODY_LINES = 128  # SDP m=, c=, a=rtcp lines read over all bodies (as many as the helper reads)
MAX_MEDIA = 32  # m= lines read per body (the helper reads as many per message)
# what the NAT does to an endpoint a header names: not of the flow's family (or a name), left, moved
_FOREIGN, _KEPT, _MOVED = 0, 1, 2
# the enum members a message's spans name, looked up once: through their class each lookup costs
# 60 ns more (Python 3.11's EnumType), and a message under NAT names a dozen
_HOST_PORT, _ADDR, _PORT, _ORIGINAL = Form.HOST_PORT, Form.ADDR, Form.PORT, Direction.ORIGINAL


class _Spans:
    """Collects one message's spans (offsets in the segment: `base` + the message's)."""

    __slots__ = ("nat", "direction", "l3", "head", "base", "out", "mapped", "moved")

    def __init__(self, seg: alg.Segment, head: bytes, base: int):
        self.nat: alg.NatMap = seg.nat  # type: ignore[assignment]  # only called under NAT
        self.direction: Direction = seg.direction
        self.l3 = seg.flow.l3
        self.head, self.base = head, base
        self.out: list[Any] = []
        # what host_port() found for each host[:port] text and port of this message: what the
        # NAT does to it (_FOREIGN, _KEPT or _MOVED) and its address
        self.mapped: dict[tuple[bytes, int], tuple[int, Any]] = {}
        # what address() found for each SDP address text (o= and c= usually name the same one)
        self.moved: dict[bytes, bool] = {}

    def endpoint(self, at: int, text: bytes, addr: Any, port: int | None, form: Form) -> None:
        """The header bytes `text` at offset `at` of the message name addr:port:
        named when the NAT maps it to something else (map_addr)."""
        self._name(at, text, addr, port, form, self._how(addr, port))

    def host_port(self, at: int, text: bytes, host: bytes, port: int) -> None:
        """`endpoint(at, text, ip_literal(host), port, Form.HOST_PORT)` of a URI's or Via's
        host[:port] `text` (whose host part is `host`): a phone names its own in the Via,
        From and Contact, so its address and what the NAT does to it are worked out once
        per message for each (text, port) (the key holds no Form: an enum's hash is a
        Python-level call)."""
        key = (text, port)
        known = self.mapped.get(key)
        if known is None:
            addr = grammar.ip_literal(host)
            known = self.mapped[key] = (self._how(addr, port), addr)
        self._name(at, text, known[1], port, _HOST_PORT, known[0])

    def _how(self, addr: Any, port: int | None) -> int:
        """What the NAT does to addr:port: _FOREIGN, _KEPT or _MOVED."""
        if addr is None or addr.version != self.l3:
            return _FOREIGN
        to = self.nat.map(self.direction, addr, port)
        # (the ports compared first: comparing addresses costs more)
        return _MOVED if to is not None and (to[1] != port or to[0] != addr) else _KEPT

    def _name(self, at: int, text: bytes, addr: Any, port: int | None, form: Form, how: int) -> None:
        if how == _FOREIGN:
            return
        if not self.head.startswith(text, at):  # the value was unfolded: offsets past the first line differ
            self.out.append(Notice("nat-folded-header", text[:40].decode("latin-1")))
            return
        if how == _MOVED:
            self.out.append(_rewrite(self.base + at, len(text), addr, port, form))

    def uri(self, elem: bytes, at: int) -> None:
        """A SIP URI or name-addr (Contact, From, To, Route...) at offset `at`."""
        u = grammar.uri_host(elem)
        if u is not None:
            off, n, host, port = u
            self.host_port(at + off, elem[off:off + n], host, port or SIP_PORT)

    def elements(self, msg: grammar.Message, name: bytes) -> None:
        """The URIs of every header `name`, MAX_LIST of them at most over all its
        headers (as the helper reads Contacts): a message full of them costs no more."""
        room = grammar.MAX_LIST
        for h in msg.all(name):
            got = grammar.split_elements(h.value, room)[0]
            for elem, off in got:
                self.uri(elem, h.offset + off)
            room -= len(got)
            if room <= 0:
                break

    def address(self, conn: sdp.Connection | None) -> None:
        """An SDP address (c=, o=, a=rtcp; offsets in the segment): named when the NAT
        maps it (0.0.0.0 never is)."""
        if conn is None or conn.addr is None or conn.family != self.l3:  # (an address is of its line's family)
            return
        moved = self.moved.get(conn.text)  # (within a family the address follows from the text)
        if moved is None:
            to = self.nat.map(self.direction, conn.addr, None)
            moved = self.moved[conn.text] = to is not None and to[0] != conn.addr
        if moved:
            self.out.append(_rewrite(conn.where[0], conn.where[1], conn.addr, None, _ADDR))

    def port(self, where: tuple[int, int], conn: sdp.Connection | None, port: int) -> None:
        """An SDP port (offsets in the segment): the media endpoint an Expect names (the
        core knows where it went)."""
        if conn is not None and conn.addr is not None and conn.family == self.l3:
            self.out.append(_rewrite(where[0], where[1], conn.addr, port, _PORT))


# a message under NAT names several
_SettableRewrite = settable(Rewrite)


def _rewrite(offset: int, length: int, addr: Any, port: int | None, form: Form) -> Rewrite:
    """Rewrite(offset, length, addr, port, form)."""
    r = _SettableRewrite()
    r.offset, r.length, r.addr, r.port, r.form = offset, length, addr, port, form
    r.__class__ = Rewrite
    return r  # type: ignore[return-value]


def spans(msg: grammar.Message, seg: alg.Segment, base: int) -> list:
    """The Rewrite and Length actions of one message under `seg.nat`."""
    s = _Spans(seg, msg.head, base)
    nat = s.nat
    here, there = (nat.original, nat.reply) if seg.direction is _ORIGINAL else (nat.reply, nat.original)
    if msg.method is not None:
        s.uri(msg.uri, len(msg.method) + 1)
    _via(s, msg, seg, here, there)
    s.elements(msg, b"contact")
    for name in (b"from", b"to"):
        h = msg.get(name)
        if h is not None:
            s.uri(h.value, h.offset)
    if _ROUTE.search(msg.head):  # most messages have neither (one search instead of two)
        s.elements(msg, b"record-route")
        s.elements(msg, b"route")
    before = len(s.out)
    _sdp(s, msg)
    if len(s.out) > before:
        if msg.content_length is not None:
            value, at = msg.content_length
            if msg.head.startswith(value, at):
                s.out.append(Length(base + at, len(value), base + msg.body_offset, base + msg.length))
    return s.out


def _via(s: _Spans, msg: grammar.Message, seg: alg.Segment, here: alg.FlowTuple, there: alg.FlowTuple) -> None:
    """The topmost Via, when it names this connection's endpoint on the message's side."""
    h = msg.get(b"via")
    if h is None:
        return
    v = grammar.parse_via(h.value)
    if v is None or v.transport != VIA_TRANSPORT.get(seg.flow.proto):
        return
    addr, port = grammar.ip_literal(v.host), v.port or SIP_PORT
    mine = (here.src, here.sport) if msg.method is not None else (here.dst, here.dport)
    if addr is None or (addr, port) != mine:
        return
    off, n = v.where
    s.host_port(h.offset + off, h.value[off:off + n], v.host, port)
    for name, value, at in v.params:
        if name == b"maddr":  # RFC 3261 §18.2.1: where to send the response; written bracketed
            a = grammar.ip_literal(value) or _literal(value)
            if a == here.src and a != there.dst:
                s.endpoint(h.offset + at, value, a, None, _HOST_PORT)
        elif name == b"received":  # the address the request came from
            a = _literal(value)
            if a == here.dst and a != there.src:
                s.endpoint(h.offset + at, value, a, None, _ADDR)
        elif name == b"rport" and value.isdigit() and len(value) <= 5:  # RFC 3581: the port it came from
            if int(value) == here.dport != there.sport:
                s.endpoint(h.offset + at, value, here.dst, int(value), _PORT)


def _literal(text: bytes) -> Any:
    """An unbracketed address (received= carries IPv6 without brackets)."""
    if b":" in text:
        return grammar.ip_literal(b"[" + text + b"]")
    return grammar.ip_literal(text)


def _sdp(s: _Spans, msg: grammar.Message) -> None:
    """The SDP spans, from the bodies the helper read (or, in a message it
    read none in, from a reading of its own)."""
    bodies = msg.sdp
    if bodies is None:
        bodies, lines = [], MAX_BODY_LINES
        for body, off in sdp.sdp_bodies(msg.value(b"content-type"), msg.body, msg.body_offset):
            bodies.append((body, s.base + off, sdp.parse(body, s.base + off, MAX_MEDIA, lines)))
            lines -= bodies[-1][2].lines
            if lines <= 0:
                break
    for body, off, session in bodies:
        s.address(sdp.owner(body, off))
        s.address(session.connection)
        for media in session.media:
            s.address(media.connection)
            conn = media.connection or session.connection
            if media.port:
                s.port(media.where, conn, media.port)
            if media.rtcp_where is not None and media.rtcp_port is not None:
                s.address(media.rtcp_connection)
                s.port(media.rtcp_where, media.rtcp_connection or conn, media.rtcp_port)
