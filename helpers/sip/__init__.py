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
  §18.3), several per segment or one over several (scanned incrementally). Parsing only starts at
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

Cost and bounds (hostile input)
-------------------------------
Parsing follows the kernel's grammar (nf_conntrack_sip.c): the start line,
then each header the helper needs found by one search of the head when it is
first asked for (full or compact name, any case, whitespace around the
colon: ct_sip_get_header), the other lines only checked, once, to be header
or continuation lines. No pattern has adjacent or nested unbounded
repetition over peer bytes; a folded value is joined in one C-level pass and
read up to 4 KiB. Over TCP the scan of an unfinished message resumes where
it stopped (`grammar.StartScan`): per segment the new bytes and the 3 before
them are searched, the head is parsed once the empty line is there and once
more when the body is; `SipState.scanned` counts it. Per message at most:
16 Contact headers and 16 Contact elements read (`contacts-skipped`), 8
distinct Contacts kept for the registrar's answer, 32 m= lines and 128 m=,
c=, a=rtcp lines read over all SDP bodies (`media-capped`, `sdp-truncated`),
`max_media_expects` media expectations asked for (10, the sum of the media
classes' maxima; the rest are refused, not created and then evicted, and
counted once as `media-capped`), 8 streams per m= line. A method token is
at most 32 bytes (RFC 3261 §25.1 sets no bound; the registered methods have
at most 9): longer is a ProtocolViolation (TCP) or `malformed` (UDP). A
Call-ID is kept to its first 128 bytes. benchmarks/bench_sip_hostile.py
prints the cost of each hostile case beside a normal INVITE's.

State per flow (`SipState.size()` measures it, in constant time): 464 bytes empty; each
transaction remembered (at most `max_transactions`) holds its key (Call-ID
<= 128 bytes, CSeq number, method <= 32 bytes) and at most 8 response codes,
<= 600 bytes; each confirmed dialog (at most `max_transactions`) its Call-ID,
<= 220 bytes; REGISTERs awaiting their answer at most 4 x 8 Contacts,
<= 9 KiB; per TCP direction a few integers and 16 bytes (no copy of an
unfinished message: the engine's buffer holds it). Worst case at the
defaults, 512 transactions of maximal keys and 512 dialogs: about 420 KB;
a phone's flow with a handful of transactions: 2 to 5 KB. Lower
`max_transactions` where many flows must fit (each step of 64 is about 52 KB
of worst case per flow).

Options
-------
direct_media, direct_signalling, external_media (kernel names and defaults),
min_media_port (1024), max_transactions (remembered per flow, 512),
max_media_expects (media expectations one message may ask for, 10).
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

NAT (nf_nat_sip)
----------------
When the kernel translates the signalling flow (masquerade, SNAT, a DNAT
port forward) and the policy keeps `nat = true`, every message the grammar
accepts (retransmissions too) also names, for the core to rewrite
(`nat.spans`, the kernel's map_addr rule in `alg.NatMap`): the Request-URI
host, the topmost Via's sent-by when it is the sender's endpoint (request)
or the receiver's (response) and then its `maddr=`, `received=`, `rport=`;
every Contact, From and To; the SDP `o=`, session and media `c=`, `m=`
ports, `a=rtcp:` port and address; Content-Length. A phone's INVITE from
behind a masquerade thus leaves with the gateway's public address:port,
its media expected there (CTA_EXPECT_NAT back to the phone, on the next
free port pair if another call holds them: the m= and a=rtcp ports then
say so); the answers come back naming the phone again. A REGISTER's Contact
names the public endpoint, so that a call from the registrar to it
arrives in the REGISTER conntrack's reply direction; that INVITE's
Request-URI and To are mapped back to the phone. Over TCP several messages
per segment are each rewritten; a message whose spans lie in an earlier
segment is forwarded untouched and counted (`nat_failed`), as is any
message whose rewrite cannot be made (the packet past 65,535 bytes).
Without NAT nothing of this is computed (bench_sip.py measures both).
On SIPp calls recorded through the kernel's nf_nat_sip (tests/nat/: UDP
and TCP over IPv4, UDP over IPv6) alg writes what the kernel wrote, byte
for byte, and expects the same media (tests/test_sip_nat.py).

Deliberate differences from nf_nat_sip:
* Record-Route and Route elements are mapped by the same rule (the kernel
  leaves them: a proxy behind a port forward would be unreachable).
* SDP `o=` and `c=` are mapped only when they name a translated endpoint of
  the conntrack (`c=0.0.0.0` on hold, a host name, a third host stay); the
  kernel writes the last stream's media address into the session `o=` and
  `c=` whatever they held, and drops the packet when `o=` does not parse
  (SIPp's bracketed IPv6 `o=` address is accepted here).
* `a=rtcp:` port and address are rewritten (the kernel ignores a=rtcp).
* Every application/sdp body, multipart parts included, in any message
  (the kernel: the messages it reads SDP in, first body only).
* `sips:` URIs are mapped too (the kernel searches for `sip:` only).
* A message that cannot be rewritten (spans over two TCP segments, the
  packet past 65,535 bytes) is forwarded as it was and counted; the kernel
  drops it ("cannot mangle ..."). A header folded over continuation lines
  is left (`nat-folded-header`); the kernel follows continuation lines.
* Not done: the kernel's `forced_dport` (Cisco phones sending from a high
  port but listening on the Via port: the kernel rewrites the UDP
  destination port of the answers; spans cover the payload only). A
  media address that is another inside host (`direct_media = false`) is
  not moved outside (the core moves the sender's own endpoints only).
  The signalling expectation of a REGISTER stays the phone's inside
  endpoint: the kernel expects the public endpoint with CTA_EXPECT_NAT
  (nf_nat_sip_expect), which serves calls after the REGISTER conntrack has
  expired; here they rely on that conntrack (phones re-register and send
  keep-alives well within its timeout).
* A retransmission's media are expected again under NAT (the same master
  asking again replaces them), so that the copy names the outside ports;
  without NAT it is only counted (the kernel reads every copy anew).

Limits: SIP over TLS (5061) and WebSocket are opaque; SDP media over TCP
(RFC 4145) is counted, not expected.
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from typing import Any

import alg
from alg import TCP, UDP, Direction, Expect, ExpectClass, HelperSpec, Notice, Option, Parsed, Unexpect

from . import grammar, nat, sdp
from .build import settable
from .grammar import Contact, Message

MEDIA_CLASSES = {b"audio": "audio", b"video": "video", b"image": "image"}
_MEDIA = tuple(MEDIA_CLASSES.values())
OFFERS = {b"INVITE", b"UPDATE"}  # requests whose SDP replaces what the dialog expected
SDP_REQUESTS = OFFERS | {b"ACK", b"PRACK"}
SDP_RESPONSES = {b"INVITE", b"UPDATE", b"PRACK"}
DEFAULT_EXPIRES = 3600  # RFC 3261 §10.2.1.1 suggests an hour when nothing is given
TRANSPORTS = {b"udp": UDP, b"tcp": TCP, b"tls": TCP}
MAX_STREAMS = 8  # streams of one m= line with a port count
MAX_CALL_ID = 128  # bytes of a Call-ID kept (tag and key); RFC 3261 sets no bound, real ones are < 100
MAX_STATUSES = 8  # distinct responses remembered per transaction (100, 180, 183, 200 ... )
MAX_BINDINGS = 8  # Contacts of one REGISTER kept until the registrar answers
MAX_PENDING_REGISTERS = 4  # REGISTER transactions per flow holding Contacts (oldest dropped)
KEEPALIVE = (b"\r", b"\n")  # the bytes a CRLF keep-alive (RFC 5626 §3.5.1) starts with
PREFIX_CHECK = 16  # first bytes of a TCP buffer compared to tell it is the one scanned before
MAX_MEDIA_LINES = 32  # m= lines read per message (all SDP bodies together)
_ORIGINAL = Direction.ORIGINAL  # (looked up through its class, an enum member costs 60 ns more)


class Transaction:
    __slots__ = ("direction", "final", "statuses", "held")

    def __init__(self, direction: Direction, held: int = 0):
        self.direction = direction
        self.final = False
        self.statuses: tuple[int, ...] = ()  # responses seen (a repeat is a retransmission)
        self.held = held  # bytes of its key, itself and its statuses (SipState.size, without a walk)


class SipState:
    """Per flow: recent transactions, confirmed dialogs, REGISTER bindings
    awaiting their answer, and per TCP direction where the scan of an
    unfinished message stopped. Every part has a count bound (see the module
    docstring for the bytes); `size()` measures it.

    The three tables change only through the methods below, which keep
    `held`, the bytes of their entries, up to date: the engine asks for
    `size()` every few packets of a flow, and walking up to 512
    transactions each time cost more than the packets (issue 14)."""

    __slots__ = ("transactions", "confirmed", "bindings", "scans", "scanned", "held")

    def __init__(self) -> None:
        self.transactions: OrderedDict[tuple[str, int, bytes], Transaction] = OrderedDict()
        self.confirmed: OrderedDict[str, bool] = OrderedDict()  # Call-IDs with a 2xx to INVITE
        self.bindings: OrderedDict[tuple[str, int, bytes], tuple[Contact, ...]] = OrderedDict()
        self.scans: tuple[grammar.StartScan, grammar.StartScan] | None = None  # TCP only
        self.scanned = 0  # TCP: bytes searched by the framing, all directions (work done, for tests)
        self.held = 0  # bytes of the tables' entries (keys and values), kept as they change

    def size(self) -> int:
        """Bytes held by this state (containers, keys, values; shared
        constants such as small ints and interned enums excluded), in
        constant time."""
        n = sys.getsizeof(self) + sys.getsizeof(self.transactions) + sys.getsizeof(self.confirmed) \
            + sys.getsizeof(self.bindings) + self.held
        for sc in self.scans or ():
            n += sys.getsizeof(sc) + sys.getsizeof(sc.prefix)
        return n

    def begin(self, key: tuple[str, int, bytes], direction: Direction, limit: int,
              old: Transaction | None) -> None:
        """A new transaction (in place of `old`, the one of the same key, whose request
        went the other way); the oldest are forgotten past `limit`."""
        tag, number, method = key
        size = sys.getsizeof
        held = _ENTRY + size(tag) + size(number) + _BYTES + len(method)  # (the method's size without a call)
        table = self.transactions
        table[key] = Transaction(direction, held)
        self.held += held if old is None else held - old.held
        while len(table) > limit:
            self.held -= table.popitem(last=False)[1].held

    def answered(self, tr: Transaction, status: int) -> None:
        before = sys.getsizeof(tr.statuses)
        tr.statuses += (status,)
        grown = sys.getsizeof(tr.statuses) - before
        tr.held += grown
        self.held += grown

    def confirm(self, tag: str, limit: int) -> None:
        """The dialog `tag` got a 2xx to INVITE; the oldest are forgotten past `limit`."""
        if tag not in self.confirmed:
            self.held += sys.getsizeof(tag)
        self.confirmed[tag] = True
        self.confirmed.move_to_end(tag)
        while len(self.confirmed) > limit:
            self.held -= sys.getsizeof(self.confirmed.popitem(last=False)[0])

    def ended(self, tag: str) -> None:
        if self.confirmed.pop(tag, None) is not None:
            self.held -= sys.getsizeof(tag)

    def hold(self, key: tuple[str, int, bytes], contacts: tuple[Contact, ...]) -> None:
        """A REGISTER's Contacts until the registrar answers (in place of what the
        same transaction held; none: nothing is kept)."""
        self.take(key)
        if contacts:
            self.bindings[key] = contacts
            self.held += _bindings_size(key, contacts)
            while len(self.bindings) > MAX_PENDING_REGISTERS:
                self.held -= _bindings_size(*self.bindings.popitem(last=False))

    def take(self, key: tuple[str, int, bytes]) -> tuple[Contact, ...]:
        """The Contacts a REGISTER transaction held (forgotten now), () if none."""
        contacts = self.bindings.pop(key, ())
        if contacts:
            self.held -= _bindings_size(key, contacts)
        return contacts


def _key_size(key: tuple) -> int:
    return sys.getsizeof(key) + sum(sys.getsizeof(k) for k in key)


# a transaction's key tuple, the Transaction and its empty statuses: what every one holds besides its
# key's Call-ID, CSeq number and method
_ENTRY = sys.getsizeof(("", 0, b"")) + sys.getsizeof(Transaction(Direction.ORIGINAL)) + sys.getsizeof(())


_BYTES = sys.getsizeof(b"")  # a bytes object's size without its bytes: sys.getsizeof(b) == _BYTES + len(b)


def _bindings_size(key: tuple, contacts: tuple[Contact, ...]) -> int:
    return _key_size(key) + sys.getsizeof(contacts) + sum(
        sys.getsizeof(c) + sys.getsizeof(c.host) + sys.getsizeof(c.transport) + sys.getsizeof(c.where)
        for c in contacts)


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
            "min_media_port": Option(1024, "lowest media port that may be opened", min=1, max=65535),
            "max_transactions": Option(512, "SIP transactions remembered per flow (oldest forgotten)", min=1,
                                       max=65536),
            "max_media_expects": Option(10, "media expectations one message may ask for (the rest refused, counted)",
                                        min=0, max=1024),
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

    def state_size(self, state: SipState) -> int:
        return state.size()

    # ------------------------------------------------------------ framing
    def inspect(self, segment: alg.Segment, state: SipState) -> alg.Outcome:
        data = segment.data
        if segment.flow.proto == TCP:
            return self._stream(data, segment, state)
        skip = grammar.skip_keepalive(data) if data[:1] in KEEPALIVE else 0  # (a call fewer on a message)
        if skip == len(data):
            return Parsed(len(data))
        try:
            msg = grammar.parse(data[skip:] if skip else data, False, len(data))
        except alg.ProtocolViolation as exc:
            return Parsed(len(data), (Notice("malformed", str(exc)),))
        if segment.nat is None:  # _message without NAT, a call fewer
            return _parsed(len(data), self._actions(msg, segment, state, skip))
        return _parsed(len(data), self._message(msg, segment, state, skip))

    def _stream(self, data: bytes, segment: alg.Segment, state: SipState) -> alg.Outcome:
        """One message from the front of a TCP direction's unconsumed bytes.

        The engine hands over the same bytes again, longer, until a message
        is consumed; the scan of this direction (`grammar.StartScan`)
        remembers how far the start line and the search for the empty line
        got, and the parsed head while the body is awaited, so each byte is
        searched once however the message is cut into segments."""
        if state.scans is None:
            state.scans = (grammar.StartScan(), grammar.StartScan())
        sc = state.scans[segment.direction]
        if sc.pos and (len(data) < sc.pos or not data.startswith(sc.prefix)):
            sc.reset()  # not the bytes scanned before (a caller that does not keep the stream)
        if sc.length < 0:
            if not sc.pos:
                skip = grammar.skip_keepalive(data)
                if skip:
                    return Parsed(skip)
            if len(sc.prefix) < PREFIX_CHECK:
                sc.prefix = data[:PREFIX_CHECK]
            line_end = -1
            if not sc.line_done:
                state.scanned += len(data) - sc.pos
                line_end = data.find(b"\n", sc.pos)
                if line_end < 0:
                    if not grammar.prefix_ok(data, sc):
                        sc.reset()
                        raise alg.ProtocolViolation(f"stream does not carry SIP here: {data[:40]!r}")
                    sc.pos = len(data)
                    return alg.NEED_DATA
                sc.line_done, sc.pos = True, line_end
            state.scanned += len(data) - max(0, sc.pos - 3)
            end, sep = grammar.head_end(data, sc.pos)
            if end < 0:
                # the start line just completed is checked now; with the headers
                # complete, parse_head checks it (once)
                if line_end >= 0 and not grammar.start_line_ok(data[:line_end]):
                    sc.reset()
                    raise alg.ProtocolViolation(f"stream does not carry SIP here: {data[:40]!r}")
                sc.pos = len(data)
                if len(data) > self.spec.max_buffer:
                    raise alg.ProtocolViolation(f"no end of SIP headers within {self.spec.max_buffer} bytes")
                return alg.NEED_DATA
            msg = self._head(data, end, sep, state, sc)
            if msg.length > len(data):
                sc.end, sc.sep, sc.length, sc.pos = end, sep, msg.length, len(data)
                return alg.NEED_DATA
        else:
            if sc.length > len(data):
                sc.pos = len(data)
                return alg.NEED_DATA
            msg = self._head(data, sc.end, sc.sep, state, sc)  # the second and last time
        sc.reset()
        grammar.take_body(msg, data)
        return _parsed(msg.length, self._message(msg, segment, state, 0))

    def _head(self, data: bytes, end: int, sep: int, state: SipState, sc: grammar.StartScan) -> Message:
        state.scanned += end
        try:
            return grammar.parse_head(data, end, sep, True, self.spec.max_buffer)
        except alg.ProtocolViolation:
            sc.reset()
            raise

    # ------------------------------------------------------------ messages
    def _message(self, msg: Message, seg: alg.Segment, state: SipState, base: int) -> tuple:
        """The message's actions and, under NAT, its spans (every message the
        grammar accepts, retransmissions too: each copy goes out rewritten)."""
        actions = self._actions(msg, seg, state, base)
        if seg.nat is None:
            return actions
        return actions + tuple(nat.spans(msg, seg, base))

    def _actions(self, msg: Message, seg: alg.Segment, state: SipState, base: int) -> tuple:
        callid = msg.first(grammar.CALL_ID_HEADER)
        cseq = msg.cseq()
        if not callid or cseq is None:
            return (Notice("malformed", "no Call-ID or CSeq"),)
        tag = callid[:MAX_CALL_ID].decode("latin-1")
        key = (tag, *cseq)
        if msg.method is not None:
            method = msg.method.upper()
            if cseq[1] != method:  # RFC 3261 §8.1.1.5: CSeq method matches the request's
                return (Notice("malformed", "CSeq method differs from the request's"),)
            tr = state.transactions.get(key)
            if tr is not None and tr.direction == seg.direction:
                # RFC 3261 §17.1.1.2: a retransmission; it was acted on already
                return (Notice("retransmission", method.decode("latin-1")),
                        *self._again(msg, seg, tag, base, method in SDP_REQUESTS))
            state.begin(key, seg.direction, self.options["max_transactions"], tr)
            return self._request(method, msg, seg, state, tag, key, base)
        tr = state.transactions.get(key)
        if tr is None or tr.direction == seg.direction:
            return (Notice("unmatched-response", f"{msg.status} to {cseq[1].decode('latin-1')}"),)
        status = msg.status or 0
        if status in tr.statuses:
            return (Notice("retransmission", str(status)),
                    *self._again(msg, seg, tag, base, cseq[1] in SDP_RESPONSES and 100 < status < 300))
        if len(tr.statuses) >= MAX_STATUSES:
            return (Notice("responses-capped", str(status)),)
        state.answered(tr, status)
        if status >= 200:
            tr.final = True
        return self._response(cseq[1], msg, seg, state, tag, key, base)

    def _request(self, method: bytes, msg: Message, seg: alg.Segment, state: SipState, tag: str,
                 key: tuple, base: int) -> tuple:
        if method in OFFERS:
            # a new offer replaces what the dialog expected (the kernel flushes too)
            out = _withdraw_media(tag)
            self._sdp(msg, seg, tag, base, out)
            return tuple(out)
        if method in (b"BYE", b"CANCEL"):
            state.ended(tag)
            return tuple(_withdraw_media(tag))
        if method == b"REGISTER":
            return self._register(msg, seg, state, tag, key, base)
        return tuple(self._sdp(msg, seg, tag, base, [])) if method in SDP_REQUESTS else ()

    def _response(self, method: bytes, msg: Message, seg: alg.Segment, state: SipState, tag: str,
                  key: tuple, base: int) -> tuple:
        status = msg.status or 0
        if method == b"REGISTER":
            return self._registered(msg, seg, state, tag, key) if 200 <= status < 300 else ()
        if method not in SDP_RESPONSES:
            return ()
        if status >= 300:
            if method == b"INVITE" and not state.confirmed.get(tag):
                return tuple(_withdraw_media(tag))
            return (Notice("reinvite-failed", str(status)),) if method == b"INVITE" else ()
        if method == b"INVITE" and status >= 200:
            state.confirm(tag, self.options["max_transactions"])
        return tuple(self._sdp(msg, seg, tag, base, [])) if status > 100 else ()

    def _again(self, msg: Message, seg: alg.Segment, tag: str, base: int, sdp_message: bool) -> list:
        """A retransmission's media, expected again under NAT only: the same master
        asking again replaces its expectations, and the copy names the outside
        ports they have (moved, if another call holds the inside ones)."""
        return self._sdp(msg, seg, tag, base, []) if seg.nat is not None and sdp_message else []

    # ------------------------------------------------------------ SDP -> media
    def _sdp(self, msg: Message, seg: alg.Segment, tag: str, base: int, out: list) -> list:
        """Appends to `out` (and returns it) the media expectations of the
        message's SDP bodies, at most `max_media_expects` of them and
        MAX_MEDIA_LINES m= lines read: past either, the rest is refused (not
        expected and then evicted) and counted once per message (`media-capped`)."""
        body = msg.body
        if not body:  # no SDP (Content-Type is not even looked up)
            return out
        ctype = msg.first(grammar.CONTENT_TYPE_HEADER)
        bodies = ((body, msg.body_offset),) if ctype == b"application/sdp" else \
            sdp.sdp_bodies(ctype, body, msg.body_offset)  # the usual type as sent: no need to take it apart
        opts = self.options
        room = opts["max_media_expects"]
        lines, media_lines, capped = sdp.MAX_LINES * 2, MAX_MEDIA_LINES, 0
        # what every stream of the message is checked against, read once
        flow, under_nat = seg.flow, seg.nat is not None
        sender, receiver = (flow.src, flow.dst) if seg.direction == _ORIGINAL else (flow.dst, flow.src)
        src = receiver if opts["direct_media"] else None
        for body, off in bodies:
            session = sdp.parse(body, base + off, media_lines, lines)
            if under_nat:  # its spans are named from the same reading
                msg.sdp = (msg.sdp or []) + [(body, base + off, session)]
            found = session.media
            media_lines -= len(found)
            lines -= session.lines
            capped += session.skipped
            if session.malformed:
                out += [Notice("malformed-sdp", m) for m in session.malformed]
            if session.truncated:
                out.append(Notice("sdp-truncated", f"more than {sdp.MAX_LINES * 2} m=, c=, a=rtcp lines"))
            for media in found:
                if room <= 0:
                    capped += 1
                else:
                    room, refused = self._media(media, session, seg, sender, src, tag, room, out)
                    capped += refused
            if lines <= 0 or media_lines <= 0:
                break
        if capped:
            out.append(Notice("media-capped", f"{capped} m= lines or streams not expected"))
        return out

    def _media(self, media: sdp.Media, session: sdp.Session, seg: alg.Segment, sender: Any, src: Any, tag: str,
               room: int, out: list) -> tuple[int, int]:
        """Appends to `out` the actions for one m= line, at most `room` of them
        Expects; returns the room left and how many streams were left out for
        want of it. `src`: where the media may come from (None: anywhere)."""
        cls = MEDIA_CLASSES.get(media.kind)
        if cls is None:
            out.append(Notice("media-not-tracked", media.kind.decode("latin-1")))
            return room, 0
        port = media.port
        if port == 0:
            return room, 0
        proto = media.proto.upper()
        if proto.startswith(b"TCP"):
            out.append(Notice("tcp-media", media.proto.decode("latin-1")))
            return room, 0
        conn = media.connection or session.connection
        if conn is not None and conn.unusable is None and src is not None and conn.addr == sender \
                and conn.family == seg.flow.l3:
            addr = conn.addr  # the usual case, as _media_addr finds it (src set: direct_media)
        else:
            addr, why = self._media_addr(conn, seg.flow.l3, sender)
            if why:
                out.append(Notice(why, _named(conn, seg)))
            if addr is None:
                return room, 0
            assert conn is not None  # it gave the address
        count = media.count
        if count > MAX_STREAMS:
            out.append(Notice("port-count-capped", str(count)))
            count = MAX_STREAMS
        where: tuple[tuple[int, int], ...] = (conn.where, media.where)
        rtp = b"RTP/" in proto
        if rtp and media.rtcp_port is not None:
            # RTP profiles (RFC 3551, 3711, 4585, 5124): RTP on even ports, RTCP on the
            # next one, except the first stream's where a=rtcp says (RFC 3605)
            ports = [(port + i, addr, where) for i in range(2 * count)]
            raddr, rwhy = addr, ""
            if media.rtcp_connection is not None:
                raddr, rwhy = self._media_addr(media.rtcp_connection, seg.flow.l3, sender)
            if raddr is None:
                del ports[1]
                if rwhy:
                    out.append(Notice(rwhy, _named(media.rtcp_connection, seg)))
            else:
                ports[1] = (media.rtcp_port, raddr, (media.rtcp_where or media.where,))
        elif count == 1 and rtp and room >= 2 and self.options["min_media_port"] <= port < 65535:
            # the usual stream, RTP and RTCP both expected (what the loop below does, in fewer steps)
            out.append(_media_expect(cls, src, addr, port, tag, where))
            out.append(_media_expect(cls, src, addr, port + 1, tag, where))
            return room - 2, 0
        else:  # each stream's ports in a row: RTP and RTCP, or one (T.38 udptl, ...)
            ports = [(p, addr, where) for p in range(port, port + (2 * count if rtp else count))]
        low = self.options["min_media_port"]
        refused = 0
        for port, a, w in ports:
            if low <= port <= 65535:
                if room > 0:
                    out.append(_media_expect(cls, src, a, port, tag, w))
                    room -= 1
                else:
                    refused += 1
            else:
                out.append(Notice("low-port" if port < low else "bad-port", str(port)))
        return room, refused

    def _media_addr(self, conn: sdp.Connection | None, l3: int, sender: Any) -> tuple[Any, str]:
        """The address media may be expected at, or None; and the notice to count ("": none)."""
        if conn is None:
            return None, "no-connection-address"
        addr = conn.addr
        if addr is None:
            return None, "hostname-in-sdp"
        if conn.family != l3:  # an address literal is of the family its line says (sdp._literal)
            return None, "family-mismatch"
        if conn.unusable is not None:
            return None, conn.unusable
        if self.options["direct_media"]:
            if addr != sender:
                return None, "media-address-mismatch"
        elif self.options["external_media"]:
            return addr, "external-media-unsupported"
        return addr, ""

    # ------------------------------------------------------------ REGISTER
    def _contacts(self, msg: Message, out: list) -> list[tuple[bytes, int]]:
        """(element, offset in the message) of the Contacts, MAX_LIST at most
        over all Contact headers; more is counted once (`contacts-skipped`)."""
        elems: list[tuple[bytes, int]] = []
        headers = msg.all(b"contact")
        more = msg.skipped > 0
        for h in headers:
            room = grammar.MAX_LIST - len(elems)
            if room <= 0:
                more = True
                break
            got, rest = grammar.split_elements(h.value, room)
            elems += [(e, h.offset + off) for e, off in got]
            more = more or rest
        if more:
            out.append(Notice("contacts-skipped", f"more than {grammar.MAX_LIST} Contacts in one message"))
        return elems

    def _register(self, msg: Message, seg: alg.Segment, state: SipState, tag: str, key: tuple,
                  base: int) -> tuple:
        default = self._expires(msg.value(b"expires"))
        out: list = []
        keep: list[Contact] = []
        for elem, off in self._contacts(msg, out):
            if elem == b"*":
                # RFC 3261 §10.2.2: Contact: * with Expires: 0 removes every binding
                if default == 0:
                    out.append(Unexpect("signalling"))
                continue
            c = grammar.parse_contact(elem, base + off)
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
            elif len(keep) < MAX_BINDINGS and all(
                    (k.addr, k.port, k.transport) != (c.addr, c.port, c.transport) for k in keep):
                keep.append(c)
        state.hold(key, tuple(keep))
        return tuple(out)

    def _registered(self, msg: Message, seg: alg.Segment, state: SipState, tag: str, key: tuple) -> tuple:
        asked = state.take(key)
        if not asked:
            return ()
        out: list = []
        granted: dict[tuple, int | None] = {}
        for elem, _ in self._contacts(msg, out):
            c = grammar.parse_contact(elem, 0)
            if c is not None and c.addr is not None:
                granted[(c.addr, c.port)] = c.expires
                inside = seg.nat.map(seg.direction, c.addr, c.port or nat.SIP_PORT) if seg.nat else None
                if inside is not None:  # the binding as the gateway wrote it: the phone's own, as asked
                    granted[inside] = c.expires
        header = self._expires(msg.value(b"expires"))
        for c in asked:
            assert c.addr is not None  # only address literals are kept (_register)
            g = granted.get((c.addr, c.port))
            if g is None and seg.nat is not None:
                g = granted.get((c.addr, c.port or nat.SIP_PORT))
            expires = g if g is not None else header
            if expires == 0:
                out.append(Unexpect("signalling", tag))
                continue
            proto = TRANSPORTS[c.transport]
            port = c.port or (5061 if c.transport == b"tls" else 5060)
            src = seg.sender if self.options["direct_signalling"] else None
            out.append(Expect("signalling", proto, src, c.addr, None, port, flags=alg.EXPECT_F_PERMANENT,
                              tag=tag, where=(c.where,)))
        return tuple(out)

    @staticmethod
    def _expires(value: bytes | None) -> int | None:
        if value is None:
            return None
        v = value.strip()
        return int(v) if grammar.DELTA.match(v) else None


# the few actions every INVITE yields (tests/test_sip_build.py compares them with the constructors')
_SettableExpect, _SettableUnexpect, _SettableParsed = settable(Expect), settable(Unexpect), settable(Parsed)


def _media_expect(cls: str, src: Any, dst: Any, port: int, tag: str, where: tuple) -> Expect:
    """Expect(cls, UDP, src, dst, None, port, 0, tag, where)."""
    e = _SettableExpect()
    e.cls = cls
    e.proto = UDP
    e.src = src
    e.dst = dst
    e.sport = None
    e.dport = port
    e.flags = 0
    e.tag = tag
    e.where = where
    e.src_prefix = None
    e.assign_helper = False
    e.__class__ = Expect
    return e


def _parsed(consumed: int, actions: tuple) -> Parsed:
    """Parsed(consumed, actions)."""
    p = _SettableParsed()
    p.consumed = consumed
    p.actions = actions
    p.__class__ = Parsed
    return p


def _withdraw_media(tag: str) -> list[Unexpect]:
    """Unexpect(cls, tag) for each media class."""
    audio, video, image = _SettableUnexpect(), _SettableUnexpect(), _SettableUnexpect()
    audio.cls, video.cls, image.cls = _MEDIA
    audio.tag = video.tag = image.tag = tag
    audio.__class__ = video.__class__ = image.__class__ = Unexpect
    return [audio, video, image]


@alg.hookimpl
def alg_register_helpers(register):
    register(SipHelper)
