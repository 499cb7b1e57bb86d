"""SSDP (UPnP discovery and eventing): the answers to a search, the
description fetch they lead to, and the event callbacks a subscriber asks for.

Three flows, three classes (UPnP Device Architecture 1.1/2.0, §1.3, §4):

* `search`: an M-SEARCH (§1.3.2) to 239.255.255.250, [ff02::c] or
  [ff05::c] port 1900 is answered by every matching device with a unicast
  `HTTP/1.1 200 OK` from its port 1900 to the searcher's address and port.
  Expectation `udp *:* -> client:sport`, PERMANENT (many devices answer),
  as conntrackd's. The answer flow is inspected by this helper too
  (`assign_helper`, the kernel's expectation helper name), to read its
  LOCATION.
* `location`: the answer's `LOCATION: http://addr:port/...` names the
  device description the control point fetches next (§2.1). Expectation
  `tcp client:* -> responder:port`, PERMANENT within its timeout (a control
  point opens several connections: description, service descriptions,
  SOAP control), and only when `addr` is the responder's own address.
  conntrackd opens `tcp *:* -> <whatever LOCATION names>` instead: any host
  may then connect to any address:port an answer names, which lets a forged
  answer punch a pinhole towards a third host. alg does not (a Notice
  `location-not-sender` is counted).
* `callback`: a SUBSCRIBE (§4.1.2) on that TCP connection carries
  `CALLBACK: <http://addr:port/path>`; the device will connect there to
  send its NOTIFY events. Expectation `tcp device:* -> addr:port`, only
  when `addr` is the subscriber's own address (as conntrackd checks too).
  A NOTIFY arriving on such a callback connection renews it
  (`tcp device:* -> subscriber:port` again), as conntrackd does.

Whose traffic is read: a `200 OK` only on a flow our `search` expectation
admitted (Segment.expected) or as the reply on the very flow an M-SEARCH
went out on; an unsolicited answer opens nothing (`unsolicited-answer`).
TCP only on connections our own `location` or `callback` expectation
admitted (`expected_only`): no rule assigns the helper to tcp/1900, and a
connection handed over anyway is not read (`not-expected`), so a web page
that makes a browser SUBSCRIBE to port 1900 opens nothing. conntrackd
behaves alike: it reads UDP answers only past a flow's first packet and TCP
only on connections its expectations gave the helper (its rules assign UDP
only).

Checks: the M-SEARCH must go to an SSDP group (a unicast M-SEARCH is answered
on its own flow); addresses in LOCATION/CALLBACK must be literals of the
flow's family (a hostname gives none: `hostname-in-url`); ports 1-65535.
HTTP requests on TCP are read head by head, bodies skipped by
Content-Length; a chunked request body stops inspection of that direction.

Subnet: `subnet_only` is off by default (UPnP lets multicast cross one router,
UDA §1.1.2 TTL 2, and ff05::c is site-scoped); with it the `search`
expectation admits answers only from the client's subnet.

Policy: classes search, location, callback: 8 expectations per master, 300 s
each (conntrackd's one class `ssdp`, 8 / 300 s). Live use needs the kernel helper
registered for UDP and TCP under the same name, as conntrackd's: the LOCATION
connection (TCP) inherits the answer's helper, and a CALLBACK expectation on
it names `ssdp` for the master's protocol, TCP.

NAT: where the flow is translated, the `host[:port]` of a LOCATION (a
device behind the gateway answering a control point outside) and of each
CALLBACK URL (a control point behind masquerade subscribing to a device
outside) is rewritten to the gateway's outside endpoint, where the
expectation then waits (CTA_EXPECT_NAT sends the connection on to the inside
endpoint); a URL without a port gets the outside one written out. A URL that
names another host, or a hostname, is left as it is (and opens nothing).
The HTTP head carries no length, and SUBSCRIBE has no body: nothing else
changes. conntrackd rewrites only the CALLBACK (IPv4 only; it expects the
LOCATION connection without rewriting, for a control point inside). An
M-SEARCH from a control point behind masquerade is expected on the outside
port the NAT gave its source port (the core's rule for a sender's own
port). Kernel caveat (nf_nat_helper.c, read, not measured): the expectfn
`nat-follow-master` also rewrites an answer's source to where the master
was sent, the SSDP group, as it does for conntrackd's helper. Not done
under NAT: a NOTIFY's renewal of a callback that the NAT translated (the
core moves only expectations of the sender's own address outside, and this
one names the receiver's).

Kernel limit (measured in the lab, Debian 6.1.0-56 and -57): an expected
conntrack gets a helper only from an expectation attached to the NFQUEUE
verdict (NFQA_EXP carrying CTA_EXPECT_HELP_NAME); one made with a separate
ctnetlink EXP_NEW gives none, name or not. So the daemon attaches a packet's
first `assign_helper` expectation to its verdict (a verdict carries one), also
where the master is confirmed: a unicast M-SEARCH's answer arrives on its own, confirmed flow, and
the description connection its LOCATION expectation admits must get the
helper for its SUBSCRIBE to be read (the lab's nat-tns-ssdp.sh). conntrackd
1.4.7, on the same unicast exchange there, expected the description
connection but gave it no helper, and never read its SUBSCRIBE.
"""

from __future__ import annotations

import ipaddress
import re

import alg
from alg import EXPECT_F_PERMANENT, TCP, UDP, Direction, Expect, ExpectClass, Form, HelperSpec, Notice, Parsed, Rewrite

from ._addr import ip_from_text
from ._discovery import prefix_for, subnet_only_option

SSDP_PORT = 1900
GROUPS = frozenset(ipaddress.ip_address(a) for a in ("239.255.255.250", "ff02::c", "ff05::c"))
# the same as numbers by family (an ipaddress object hashes through a hex string)
_GROUP_NUMBERS = {4: frozenset(int(a) for a in GROUPS if a.version == 4),
                  6: frozenset(int(a) for a in GROUPS if a.version == 6)}
# RFC 9112 §3: request-line; UDA §1.3.2 M-SEARCH * HTTP/1.1 (matched on the first line only)
_REQUEST_LINE = re.compile(rb"([A-Z-]+) (\S+) HTTP/1\.[01]\r?")
_STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3})")
# RFC 9112 §5.1: field-name = token
_FIELD_NAME = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_OWS = b" \t"
# RFC 3986 §3.2: http://host[:port]; host an IPv4 literal or [IPv6]
_URL = re.compile(rb"http://(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^/:\s>]+))(?::(?P<port>\d{1,5}))?",
                  re.I)
_BLANK_LINE = (b"\r\n\r\n", b"\n\n", b"\n\r\n", b"\r\n\n")


class SsdpState:
    __slots__ = ("skip", "opaque", "searched", "scanned")

    def __init__(self) -> None:
        self.skip = [0, 0]  # body bytes still to skip, per direction (TCP)
        self.opaque = [False, False]  # direction no longer readable (chunked body, not ours)
        self.searched = False  # an M-SEARCH went out on this flow: an answer may come back on it
        self.scanned = [0, 0]  # bytes of the unfinished head already searched for its end (TCP)


def _head_end(data: bytes, start: int) -> tuple[int, int] | None:
    """(end of the head, start of what follows) at the first blank line (RFC 9112 §2.2: a bare LF
    ends a line too), searching from `start`; one pass over the bytes."""
    best: tuple[int, int] | None = None
    for sep in _BLANK_LINE:
        i = data.find(sep, start, len(data) if best is None else best[0] + len(sep))
        if i >= 0 and (best is None or i < best[0]):
            best = (i, i + len(sep))
    return best


def _fields(head: bytes) -> dict[bytes, tuple[bytes, int]]:
    """Header fields by lower-case name: (value, offset of the value). Split on line ends and the
    first colon, then stripped: linear in the head, whatever whitespace runs it holds (the
    regular expression this replaces backtracked over them)."""
    out: dict[bytes, tuple[bytes, int]] = {}
    pos = head.find(b"\n") + 1  # the request or status line names no field
    size = len(head)
    while 0 < pos < size:
        end = head.find(b"\n", pos)
        end = size if end < 0 else end
        colon_at = head.find(b":", pos, end)
        if colon_at > pos and _FIELD_NAME.fullmatch(head, pos, colon_at):
            raw = head[colon_at + 1:end]
            value = raw.lstrip(_OWS)
            start = colon_at + 1 + len(raw) - len(value)
            out.setdefault(head[pos:colon_at].lower(), (value.rstrip(_OWS + b"\r"), start))
        pos = end + 1
    return out


class SsdpHelper(alg.Helper):
    spec = HelperSpec(
        name="ssdp",
        protocols=(UDP, TCP),
        ports=(SSDP_PORT,),
        classes=(ExpectClass("search", 8, 300), ExpectClass("location", 8, 300), ExpectClass("callback", 8, 300)),
        options=subnet_only_option(False, "off: UPnP allows a router hop and site scope"),
        max_buffer=16384,
        expected_only=(TCP,),  # the LOCATION fetch and the callbacks: only what our expectations admitted
        doc="M-SEARCH -> udp *:* -> client:sport; LOCATION -> tcp client -> responder; CALLBACK -> tcp device -> cb",
        knobs={"location-not-sender": "none: a responder names its own address (UPnP 1.1 1.3.3)",
               "callback-not-sender": "none: a subscriber names its own address"},
    )

    @staticmethod
    def looks_like(payload: bytes) -> bool:
        """An SSDP search or announcement (UPnP Device Architecture 1.1 section 1)."""
        return payload.startswith((b"M-SEARCH * HTTP/1.1", b"NOTIFY * HTTP/1.1"))

    def new_state(self) -> SsdpState:
        return SsdpState()

    def inspect(self, segment: alg.Segment, state: SsdpState) -> alg.Outcome:
        if segment.flow.proto == UDP:
            return Parsed(len(segment.data), self._datagram(segment, state))
        return self._stream(segment, state)

    # ------------------------------------------------------------ UDP
    def _datagram(self, seg: alg.Segment, state: SsdpState) -> tuple:
        data = seg.data
        if data.startswith(b"M-SEARCH "):
            if seg.direction is not Direction.ORIGINAL:
                return ()
            state.searched = True
            flow = seg.flow  # from the searcher (ORIGINAL): the sender is flow.src, flow.sport
            if int(flow.dst) not in _GROUP_NUMBERS[flow.dst.version]:
                return (Notice("unicast-search"),)
            prefix = prefix_for(self.options, flow.l3)
            return (Expect("search", UDP, flow.src if prefix is not None else None, flow.src, None,
                           flow.sport, flags=EXPECT_F_PERMANENT, assign_helper=True, src_prefix=prefix),)
        m = _STATUS_LINE.match(data)
        if m is None or m[1] != b"200":
            return ()
        if not seg.expected and not (seg.direction is Direction.REPLY and state.searched):
            # an answer nobody asked for: a flow our search expectation did
            # not admit, and no M-SEARCH went out on this one (conntrackd
            # reads answers only on flows past their first packet, too)
            return (Notice("unsolicited-answer", str(seg.sender)),)
        end = _head_end(data, 0)
        head = data if end is None else data[:end[0]]
        location = _fields(head).get(b"location")
        if location is None:
            return (Notice("no-location"),)
        return self._location(seg, *location)

    def _location(self, seg: alg.Segment, value: bytes, offset: int) -> tuple:
        parsed = self._url(value, seg.flow.l3)
        if isinstance(parsed, Notice):
            return (parsed,)
        addr, port, span = parsed
        if addr != seg.sender:
            return (Notice("location-not-sender", f"{addr} named by {seg.sender}"),)
        where = (offset + span[0], span[1])
        return (Expect("location", TCP, seg.receiver, addr, None, port, flags=EXPECT_F_PERMANENT,
                       assign_helper=True, where=(where,)), *_rewrite(seg, where, addr, port))

    @staticmethod
    def _url(value: bytes, l3: int) -> tuple[alg.IPAddress, int, tuple[int, int]] | Notice:
        m = _URL.match(value)
        if m is None:
            return Notice("malformed", "url")
        text = m["v6"] or m["host"]
        try:
            addr = ip_from_text(text.decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            return Notice("hostname-in-url", text[:64].decode("ascii", "replace"))
        if addr.version != l3:
            return Notice("family-mismatch", str(addr))
        port = int(m["port"]) if m["port"] else 80
        if not 0 < port < 65536:
            return Notice("bad-port", str(port))
        start = m.start("v6") - 1 if m["v6"] else m.start("host")
        return addr, port, (start, m.end() - start)

    # ------------------------------------------------------------ TCP
    def _stream(self, seg: alg.Segment, state: SsdpState) -> alg.Outcome:
        data, d = seg.data, seg.direction
        if not seg.expected and not state.opaque[Direction.ORIGINAL]:
            # a TCP connection our LOCATION (or CALLBACK) expectation did not
            # admit: any web page can make a browser SUBSCRIBE to port 1900
            # with a CALLBACK naming the browser's host; conntrackd reads TCP
            # only on connections its expectations gave the helper
            state.opaque = [True, True]
            return Parsed(len(data), (Notice("not-expected", str(seg.flow)),))
        if d is Direction.REPLY or state.opaque[d]:
            return Parsed(len(data))  # responses (descriptions, SOAP) carry nothing we need
        if state.skip[d]:
            n = min(state.skip[d], len(data))
            state.skip[d] -= n
            return Parsed(n)
        found = _head_end(data, max(0, state.scanned[d] - 3))
        if found is None:
            if len(data) > self.spec.max_buffer:
                raise alg.ProtocolViolation("HTTP request head longer than the buffer")
            state.scanned[d] = len(data)  # the next call searches only what came since
            return alg.NEED_DATA
        state.scanned[d] = 0
        head_end, body = found
        head = data[:head_end]
        fields = _fields(head)
        te = fields.get(b"transfer-encoding", (b"", 0))[0]
        length = fields.get(b"content-length", (b"0", 0))[0]
        if te and te.lower() != b"identity":
            state.opaque[d] = True
        elif length.isdigit():
            state.skip[d] = int(length)
        else:
            raise alg.ProtocolViolation("bad Content-Length")
        line = _REQUEST_LINE.fullmatch(head, 0, len(head) if (eol := head.find(b"\n")) < 0 else eol)
        actions: tuple = ()
        if line is None:
            actions = (Notice("malformed", "request line"),)
        elif line[1] == b"SUBSCRIBE":
            callback = fields.get(b"callback")
            if callback is not None:
                actions = self._callbacks(seg, *callback)
        elif line[1] == b"NOTIFY":
            # an event on a callback connection: keep the next one possible
            actions = (Expect("callback", TCP, seg.sender, seg.receiver, None, seg.receiver_port,
                              assign_helper=True),)
        return Parsed(body, actions)

    def _callbacks(self, seg: alg.Segment, value: bytes, offset: int) -> tuple:
        out: list = []
        for start, url in _angle_brackets(value):
            parsed = self._url(url, seg.flow.l3)
            if isinstance(parsed, Notice):
                out.append(parsed)
                continue
            addr, port, span = parsed
            if addr != seg.sender:
                out.append(Notice("callback-not-sender", f"{addr} named by {seg.sender}"))
                continue
            where = (offset + start + span[0], span[1])
            out.append(Expect("callback", TCP, seg.receiver, addr, None, port, assign_helper=True, where=(where,)))
            out += _rewrite(seg, where, addr, port)
        return tuple(out) or (Notice("malformed", "CALLBACK"),)


def _rewrite(seg: alg.Segment, where: tuple[int, int], addr: alg.IPAddress, port: int) -> tuple:
    """Under NAT: the URL's `host[:port]` names the sender's endpoint (the core writes the outside
    one there; a URL without a port gets one, as the outside port may differ from 80)."""
    return (Rewrite(*where, addr, port, Form.HOST_PORT),) if seg.nat is not None else ()


def _angle_brackets(value: bytes):
    """(offset, text) of each `<...>` in a CALLBACK value (UDA §4.1.2), scanning once: a value of
    many `<` and no `>` costs one pass, not one per `<`."""
    pos = 0
    while (open_at := value.find(b"<", pos)) >= 0:
        close_at = value.find(b">", open_at + 1)
        if close_at < 0:
            return
        inner = value.rfind(b"<", open_at, close_at) + 1  # `<<url>`: the innermost opening
        yield inner, value[inner:close_at]
        pos = close_at + 1


@alg.hookimpl
def alg_register_helpers(register):
    register(SsdpHelper)
