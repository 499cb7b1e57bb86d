"""SIP/SDP: opens the media (RTP/RTCP, T.38) a call negotiates and the
incoming signalling a registration asks for.

What it opens and why
---------------------
* Media. A SIP request or response that carries SDP (RFC 3261 §13, RFC 3264
  offer/answer) says where its sender wants to *receive* each stream: `c=`
  (session or media level, IPv4 or IPv6) and `m=<media> <port>`. The other end
  will send there, so the helper expects `udp <other end>:* -> <addr>:<port>`
  and, for RTP profiles, RTCP on the next port (RFC 3550 §11) or on the port
  of `a=rtcp:` (RFC 3605). `m=audio 49170/2 RTP/AVP` announces two RTP/RTCP
  pairs (RFC 8866 §5.14): 49170/49171 and 49172/49173. `m=image ... udptl`
  (T.38) is one port, no RTCP. Port 0 (a stream refused or removed,
  RFC 3264 §6) gives nothing; so does `c=0.0.0.0` (hold, RFC 3264 §8.4).
* Signalling. A 2xx to a REGISTER confirms the Contact binding (RFC 3261
  §10.2); calls to the phone then arrive from the registrar as new flows to
  the Contact's address and port. The helper expects `<transport>
  <registrar>:* -> <contact>:<port>` (PERMANENT: one registration serves
  many calls). REGISTER with expiry 0 (Expires header or `;expires=0`, or
  `Contact: *`) removes it again.

Which side, which tuple: the expected flow is the master's other end sending
to the advertised address. Classes and defaults as the kernel's
nf_conntrack_sip: signalling 1 / 180 s, audio 4 / 180 s, video 4 / 180 s,
image 2 / 180 s (per master; the oldest is evicted past the maximum).

Dialog lifecycle (theory of operation)
--------------------------------------
Every expectation carries the Call-ID as its tag. Per flow the helper keeps
the recent transactions, keyed by (Call-ID, CSeq number, CSeq method) and the
direction the request went; a response is only believed when it answers such
a request from the other direction (RFC 3261 §8.1.3.3, §17.1.3), otherwise
it is counted (`unmatched-response`) and ignored.

    INVITE / UPDATE request   withdraw the Call-ID's media, expect the offer's
    ACK / PRACK request       expect the SDP they carry (late offer/answer)
    1xx / 2xx to INVITE,      expect the answer's media; a 2xx to INVITE
      UPDATE, PRACK             confirms the dialog
    3xx-6xx to INVITE         withdraw the Call-ID's media unless the dialog
                                was confirmed (a failed re-INVITE leaves the
                                session as it was, RFC 3261 §14.1)
    BYE, CANCEL               withdraw the Call-ID's media
    REGISTER (expiry > 0)     remember its Contacts (sender's own only)
    2xx to REGISTER           expect each binding the registrar granted
    REGISTER expiry 0 / 2xx
      granting expiry 0       withdraw the Call-ID's signalling expectation

Security checks
---------------
* `direct_media` (default true, the kernel's `sip_direct_media`): an SDP
  address must be the sender's own, and the media may only come from the
  master's other end. Otherwise any address is accepted and the source is a
  wildcard. A third-party `c=` is counted (`media-address-mismatch`).
* `direct_signalling` (default true): incoming calls are expected from the
  registrar only; false: from anywhere.
* A REGISTER Contact must name its sender (`contact-not-sender`): no
  third-party registrations, as the kernel.
* Media ports below `min_media_port` (1024) are refused (`low-port`); the
  kernel drops such packets, alg accepts them and opens nothing.
* A host name in `c=` or Contact gives no expectation (`hostname-in-sdp`,
  `hostname-in-contact`): resolving names on the packet path is not safe.
* TCP: messages are framed by Content-Length (mandatory on streams, RFC 3261
  §18.3), several per segment or one over several. Parsing only starts at
  the beginning of the stream and at message boundaries: a stream that does
  not begin with a SIP start line is not SIP (the NAT Slipstreaming attack
  hides a REGISTER inside an HTTP body), and a Content-Length that could not
  arrive within the per-flow bound (`max_buffer`, 64 KiB) or is absurd
  (>= 2^32, the kernel's CVE-2026-23457) stops inspection of the flow
  (ProtocolViolation) without an expectation. After bytes the firewall
  never saw (a hole the core gives up on), the direction is not read again:
  searching the rest for a start line would let a body (an HTTP POST, a
  MESSAGE) choose where parsing resumes, which is what Slipstreaming needs.
* UDP: a datagram is one message (RFC 3261 §18.3: shorter than its
  Content-Length means discarded); a malformed datagram is counted
  (`malformed`) and the flow goes on.

Options
-------
direct_media, direct_signalling, external_media (kernel names and defaults),
min_media_port (1024), max_transactions (remembered per flow, 512).
`external_media` (the kernel's `sip_external_media`: skip media that routes
back out of the interface it came in on) needs the routing table, which a
sans-IO helper does not have: setting it only counts `external-media-unsupported`.

Deliberate differences from the kernel helper
---------------------------------------------
* RTCP follows `a=rtcp:` (the kernel ignores it and uses RTP port + 1).
* An odd RTP port is taken as sent (the kernel rounds it down to even).
* T.38 `udptl` media is one expectation (the kernel makes an RTP/RTCP pair
  for it too) and a port count `/n` gives n streams (the kernel reads one).
* Media expectations are withdrawn per dialog (Call-ID), not per master.
* The signalling expectation is created on the registrar's 2xx (the kernel
  creates it INACTIVE on the REGISTER and activates it on the 2xx).
* Under expectation-table pressure the packet is accepted (the engine's
  `accept_on_pressure`); the kernel drops it.

NAT: not rewritten yet (every address and port is reported with its offset).
Limits: SIP over TLS (5061) and WebSocket are opaque; SDP media over TCP
(RFC 4145) is counted, not expected.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import alg
from alg import TCP, UDP, Direction, Expect, ExpectClass, HelperSpec, Notice, Option, Parsed, Unexpect

from . import grammar, sdp
from .grammar import Contact, Message

MEDIA_CLASSES = {b"audio": "audio", b"video": "video", b"image": "image"}
MEDIA_UNEXPECT = (Unexpect("audio"), Unexpect("video"), Unexpect("image"))
SDP_REQUESTS = {b"INVITE", b"UPDATE", b"ACK", b"PRACK"}
SDP_RESPONSES = {b"INVITE", b"UPDATE", b"PRACK"}
DEFAULT_EXPIRES = 3600  # RFC 3261 §10.2.1.1 suggests an hour when nothing is given
TRANSPORTS = {b"udp": UDP, b"tcp": TCP, b"tls": TCP}
MAX_STREAMS = 8  # streams of one m= line with a port count


class Transaction:
    __slots__ = ("direction", "contacts", "final", "statuses")

    def __init__(self, direction: Direction):
        self.direction = direction
        self.contacts: list[Contact] = []  # REGISTER: bindings asked for
        self.final = False
        self.statuses: set[int] = set()  # responses seen (a repeat is a retransmission)


class SipState:
    __slots__ = ("transactions", "confirmed")

    def __init__(self) -> None:
        self.transactions: OrderedDict[tuple[str, int, bytes], Transaction] = OrderedDict()
        self.confirmed: OrderedDict[str, bool] = OrderedDict()  # Call-IDs with a 2xx to INVITE


def _named(conn: sdp.Connection | None, seg: alg.Segment) -> str:
    """A notice's detail: the media address an SDP named, and who sent it."""
    return f"{'no address' if conn is None else conn.addr or 'a hostname'} in SDP from {seg.sender}"


class SipHelper(alg.Helper):
    spec = HelperSpec(
        name="sip",
        protocols=(UDP, TCP),
        ports=(5060,),
        classes=(
            ExpectClass("signalling", 1, 180),
            ExpectClass("audio", 4, 180),
            ExpectClass("video", 4, 180),
            ExpectClass("image", 2, 180),
        ),
        options={
            "direct_media": Option(True, "media only from the signalling peer, to the SDP sender's own address"),
            "direct_signalling": Option(True, "incoming calls for a registered phone only from its registrar"),
            "external_media": Option(False, "kernel sip_external_media; needs routing, unsupported (counted)"),
            "min_media_port": Option(1024, "lowest media port that may be opened"),
            "max_transactions": Option(512, "SIP transactions remembered per flow (oldest forgotten)"),
        },
        max_buffer=65536,
        knobs={
            "media-address-mismatch": "options.direct_media",
            "external-media-unsupported": "options.external_media",
            "low-port": "options.min_media_port",
            "contact-not-sender": "none: a phone registers its own address (RFC 3261 10.2.1)",
            "port-count-capped": f"none: at most {MAX_STREAMS} streams per m= line",
            "unmatched-response": "options.max_transactions",
        },
    )

    @staticmethod
    def looks_like(payload: bytes) -> bool:
        """A SIP request or status line (RFC 3261 7.1, 7.2)."""
        line = payload[:200].split(b"\n", 1)[0].rstrip(b"\r")
        return line.startswith(b"SIP/2.0 ") or (line.endswith(b" SIP/2.0") and b" sip" in line.lower())

    def new_state(self) -> SipState:
        return SipState()

    # ------------------------------------------------------------ framing
    def inspect(self, segment: alg.Segment, state: SipState) -> alg.Outcome:
        data = segment.data
        skip = grammar.skip_keepalive(data)
        if segment.flow.proto == TCP:
            if skip:
                return Parsed(skip)
            if not grammar.could_be_start(data):
                raise alg.ProtocolViolation(f"stream does not carry SIP here: {data[:40]!r}")
            try:
                msg = grammar.parse(data, True, self.spec.max_buffer)
            except grammar.Incomplete:
                return alg.NEED_DATA
            return Parsed(msg.length, self._message(msg, segment, state, 0))
        if skip == len(data):
            return Parsed(len(data))
        try:
            msg = grammar.parse(data[skip:], False, len(data))
        except alg.ProtocolViolation as exc:
            return Parsed(len(data), (Notice("malformed", str(exc)),))
        return Parsed(len(data), self._message(msg, segment, state, skip))

    # ------------------------------------------------------------ messages
    def _message(self, msg: Message, seg: alg.Segment, state: SipState, base: int) -> tuple:
        callid = msg.value(b"call-id")
        cseq = grammar.parse_cseq(msg.value(b"cseq"))
        if not callid or cseq is None:
            return (Notice("malformed", "no Call-ID or CSeq"),)
        tag = callid.decode("latin-1")[:256]
        key = (tag, cseq[0], cseq[1])
        if msg.method is not None:
            method = msg.method.upper()
            if cseq[1] != method:  # RFC 3261 §8.1.1.5: CSeq method matches the request's
                return (Notice("malformed", "CSeq method differs from the request's"),)
            tr = state.transactions.get(key)
            if tr is not None and tr.direction == seg.direction:
                # RFC 3261 §17.1.1.2: a retransmission; it was acted on already
                return (Notice("retransmission", method.decode("latin-1")),)
            if tr is None or tr.direction != seg.direction:
                tr = Transaction(seg.direction)
                state.transactions[key] = tr
                while len(state.transactions) > self.options["max_transactions"]:
                    state.transactions.popitem(last=False)
            return self._request(method, msg, seg, state, tag, tr, base)
        tr = state.transactions.get(key)
        if tr is None or tr.direction == seg.direction:
            return (Notice("unmatched-response", f"{msg.status} to {cseq[1].decode('latin-1')}"),)
        if msg.status in tr.statuses:
            return (Notice("retransmission", str(msg.status)),)
        tr.statuses.add(msg.status or 0)
        return self._response(cseq[1], msg, seg, state, tag, tr, base)

    def _request(self, method: bytes, msg: Message, seg: alg.Segment, state: SipState, tag: str,
                 tr: Transaction, base: int) -> tuple:
        actions: list = []
        if method in (b"INVITE", b"UPDATE"):
            # a new offer replaces what the dialog expected (the kernel flushes too)
            actions += [Unexpect(u.cls, tag) for u in MEDIA_UNEXPECT]
        elif method in (b"BYE", b"CANCEL"):
            state.confirmed.pop(tag, None)
            return tuple(Unexpect(u.cls, tag) for u in MEDIA_UNEXPECT)
        elif method == b"REGISTER":
            return self._register(msg, seg, tag, tr, base)
        if method in SDP_REQUESTS:
            actions += self._sdp(msg, seg, tag, base)
        return tuple(actions)

    def _response(self, method: bytes, msg: Message, seg: alg.Segment, state: SipState, tag: str,
                  tr: Transaction, base: int) -> tuple:
        status = msg.status or 0
        if status >= 200:
            tr.final = True
        if method == b"REGISTER":
            return self._registered(msg, seg, tag, tr) if 200 <= status < 300 else ()
        if method not in SDP_RESPONSES:
            return ()
        if status >= 300:
            if method == b"INVITE" and not state.confirmed.get(tag):
                return tuple(Unexpect(u.cls, tag) for u in MEDIA_UNEXPECT)
            return (Notice("reinvite-failed", str(status)),) if method == b"INVITE" else ()
        if method == b"INVITE" and status >= 200:
            state.confirmed[tag] = True
            state.confirmed.move_to_end(tag)
            while len(state.confirmed) > self.options["max_transactions"]:
                state.confirmed.popitem(last=False)
        return tuple(self._sdp(msg, seg, tag, base)) if status > 100 else ()

    # ------------------------------------------------------------ SDP -> media
    def _sdp(self, msg: Message, seg: alg.Segment, tag: str, base: int) -> list:
        out: list = []
        for body, off in sdp.sdp_bodies(msg.value(b"content-type"), msg.body, msg.body_offset):
            session = sdp.parse(body, base + off)
            out += [Notice("malformed-sdp", m) for m in session.malformed]
            for media in session.media:
                out += self._media(media, session, seg, tag)
        return out

    def _media(self, media: sdp.Media, session: sdp.Session, seg: alg.Segment, tag: str) -> list:
        cls = MEDIA_CLASSES.get(media.kind)
        if cls is None:
            return [Notice("media-not-tracked", media.kind.decode("latin-1"))]
        if media.port == 0:
            return []
        if media.over_tcp:
            return [Notice("tcp-media", media.proto.decode("latin-1"))]
        conn = media.connection or session.connection
        addr, why = self._media_addr(conn, seg)
        if addr is None:
            return [Notice(why, _named(conn, seg))] if why else []
        count = media.count
        out: list = [Notice(why, _named(conn, seg))] if why else []
        if count > MAX_STREAMS:
            out.append(Notice("port-count-capped", str(count)))
            count = MAX_STREAMS
        ports: list[tuple[int, alg.IPAddress, tuple]] = []
        where = (conn.where, media.where) if conn else (media.where,)
        for i in range(count):
            if media.is_rtp:
                rtp = media.port + 2 * i
                ports.append((rtp, addr, where))
                if i == 0 and media.rtcp_port is not None:
                    raddr, rwhy = addr, ""
                    if media.rtcp_connection is not None:
                        raddr, rwhy = self._media_addr(media.rtcp_connection, seg)
                    if raddr is None:
                        out += [Notice(rwhy, _named(media.rtcp_connection, seg))] if rwhy else []
                    else:
                        ports.append((media.rtcp_port, raddr, (media.rtcp_where or media.where,)))
                else:
                    ports.append((rtp + 1, addr, where))
            else:
                ports.append((media.port + i, addr, where))
        src = seg.receiver if self.options["direct_media"] else None
        for port, a, w in ports:
            if port < self.options["min_media_port"]:
                out.append(Notice("low-port", str(port)))
            elif port > 65535:
                out.append(Notice("bad-port", str(port)))
            else:
                out.append(Expect(cls, UDP, src, a, None, port, tag=tag, where=w))
        return out

    def _media_addr(self, conn: sdp.Connection | None, seg: alg.Segment) -> tuple[Any, str]:
        if conn is None:
            return None, "no-connection-address"
        addr = conn.addr
        if addr is None:
            return None, "hostname-in-sdp"
        if addr.version != seg.flow.l3:
            return None, "family-mismatch"
        if addr.is_unspecified:
            return None, ""  # c=0.0.0.0: on hold (RFC 3264 §8.4)
        if addr.is_multicast:
            return None, "multicast-media"
        if self.options["direct_media"]:
            if addr != seg.sender:
                return None, "media-address-mismatch"
        elif self.options["external_media"]:
            return addr, "external-media-unsupported"
        return addr, ""

    # ------------------------------------------------------------ REGISTER
    def _register(self, msg: Message, seg: alg.Segment, tag: str, tr: Transaction, base: int) -> tuple:
        default = self._expires(msg.value(b"expires"))
        out: list = []
        tr.contacts = []
        for h in msg.all(b"contact"):
            for elem, off in grammar.split_list(h.value):
                if elem == b"*":
                    # RFC 3261 §10.2.2: Contact: * with Expires: 0 removes every binding
                    if default == 0:
                        out.append(Unexpect("signalling"))
                    continue
                c = grammar.parse_contact(elem, base + h.offset + off)
                if c is None:
                    out.append(Notice("malformed-contact"))
                    continue
                expires = c.expires if c.expires is not None else default
                if expires == 0:
                    out.append(Unexpect("signalling", tag))
                    continue
                if c.addr is None:
                    out.append(Notice("hostname-in-contact"))
                elif c.addr != seg.sender:
                    out.append(Notice("contact-not-sender", f"{c.addr} registered by {seg.sender}"))
                elif c.transport not in TRANSPORTS:
                    out.append(Notice("transport-not-tracked", c.transport.decode("latin-1")))
                elif len(tr.contacts) < 8:
                    tr.contacts.append(c)
        return tuple(out)

    def _registered(self, msg: Message, seg: alg.Segment, tag: str, tr: Transaction) -> tuple:
        if not tr.contacts:
            return ()
        granted: dict[tuple, int | None] = {}
        for h in msg.all(b"contact"):
            for elem, _ in grammar.split_list(h.value):
                c = grammar.parse_contact(elem, 0)
                if c is not None and c.addr is not None:
                    granted[(c.addr, c.port)] = c.expires
        header = self._expires(msg.value(b"expires"))
        out: list = []
        for c in tr.contacts:
            assert c.addr is not None  # only address literals are kept (_register)
            g = granted.get((c.addr, c.port))
            expires = g if g is not None else header
            if expires == 0:
                out.append(Unexpect("signalling", tag))
                continue
            proto = TRANSPORTS[c.transport]
            port = c.port or (5061 if c.transport == b"tls" else 5060)
            src = seg.sender if self.options["direct_signalling"] else None
            out.append(Expect("signalling", proto, src, c.addr, None, port, flags=alg.EXPECT_F_PERMANENT,
                              tag=tag, where=(c.where,)))
        tr.contacts = []
        return tuple(out)

    @staticmethod
    def _expires(value: bytes | None) -> int | None:
        if value is None:
            return None
        v = value.strip()
        return int(v) if grammar.DELTA.match(v) else None


@alg.hookimpl
def alg_register_helpers(register):
    register(SipHelper)
