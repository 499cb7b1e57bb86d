"""H.323: the connections and media a call's signalling names (RAS udp/1719, Q.931 tcp/1720, H.245).

An H.323 call (ITU-T H.323, H.225.0, H.245) uses up to three control protocols,
each naming in ASN.1 PER (aligned) the address:port of the next:

* RAS (udp/1719, endpoint <-> gatekeeper): a RegistrationRequest names the
  endpoint's call signalling address (calls will come there), an
  AdmissionConfirm or LocationConfirm the address a call is to be set up to,
  a GatekeeperConfirm the gatekeeper's RAS address;
* Q.931 call signalling (tcp/1720 or the port RAS named; TPKT framing, RFC
  1006): Setup, CallProceeding, Alerting, Connect, Facility and Progress carry,
  in the User-user IE's H323-UserInformation, the h245Address where the sender
  listens for the H.245 connection, fastStart OpenLogicalChannel proposals, and
  H.245 messages tunnelled in h245Control; a Facility with reason callForwarded
  names in alternativeAddress where the call is to go instead;
* H.245 (tcp, the port h245Address named, or tunnelled): OpenLogicalChannel and
  OpenLogicalChannelAck name, in their H2250LogicalChannelParameters, the
  mediaChannel (RTP) and mediaControlChannel (RTCP) where the sender receives,
  and for T.120 data a separateStack localAreaAddress.

What the helper opens, as nf_conntrack_h323 (no NAT) does:

| message | class | expectation |
| --- | --- | --- |
| Q.931 h245Address | h245 | `tcp receiver -> sender:port`, read by this helper (H.245) |
| OLC/OLCA/fastStart media(Control)Channel | media | `udp receiver -> sender:port&~1` (RTP) and `:port|1` (RTCP) |
| OLC/OLCA separateStack (T.120) | t120 | `tcp receiver -> sender:port`, PERMANENT |
| Facility callForwarded alternativeAddress | signalling | `tcp receiver -> address:port`, read by this helper (Q.931) |
| RRQ callSignalAddress (sender's own) | signalling | `tcp gatekeeper -> endpoint:port`, PERMANENT, Q.931 (a) |
| ACF destCallSignalAddress / LCF callSignalAddress | signalling | `tcp receiver -> address:port`, PERMANENT, Q.931 |
| GCF rasAddress (gatekeeper's other port) | signalling | `udp receiver -> gatekeeper:port`, read by this helper (RAS) |
| URQ | | withdraws this RAS flow's expectations |

(a) `tcp *:* -> endpoint:port` with `gkrouted_only = false`.

Which protocol a flow speaks: UDP is RAS; a TCP flow assigned by port (1720) is
Q.931; a TCP flow this helper's own expectation admitted (`assign_helper`) is
Q.931 when its first message is a Q.931 message carrying a User-user IE (an
ACF/LCF/Facility call leg), else H.245 (the kernel knows it from the
expectation's helper; alg's expectations carry one helper name, so the first
message decides, once per flow).

Live: a conntrack created by an expectation gets a helper only when the
expectation rides on an NFQUEUE verdict (CTA_EXPECT_HELP_NAME is ignored on
ctnetlink's EXP_NEW; helpers/ssdp.py, "Kernel limit"). The daemon attaches the
first `assign_helper` expectation of a packet to its verdict, so the H.245
connection a Connect names is read (the lab's h323.sh: a channel opened on it
passes); a second one named by the same packet is made over ctnetlink, passes
as RELATED and is not read. Replay reads all.

Checks, stricter than the kernel where it opens more than it must (each refusal
is a Notice, counted): an h245Address, a media or T.120 address, an RRQ
callSignalAddress must be the sender's own (as in the kernel) and a GCF's
rasAddress too (the kernel opens any); a port 0 opens nothing (the kernel
opens ACF/LCF/callForwarded addresses with port 0) and a port below `min_port`
(default 1024) neither; an address of the other family is ignored (as in the
kernel). ACF, LCF and callForwarded name a third party by design (the called
endpoint, the forwarded-to party): their expectation is from the message's
receiver only, to that address:port. The kernel skips call forwarding between
two parties its routing table puts on one side (`callforward_filter`); a
sans-IO helper has no routing table: `call_forwarding = false` turns it off.

Decoding (helpers/h323/per.py, h225.py, h245.py): only the fields above, the
rest walked by PER's own lengths and extension bits, every read bounded by the
message, at most `per.MAX_STEPS` nodes a message. A message that does not
decode opens nothing (`malformed`, counted) and the flow goes on, as in the
kernel ("we don't drop when decoding error"); a stream that is not TPKT is no
longer inspected (ProtocolViolation).

Not done (the kernel does): NAT (nf_nat_h323's rewriting of every address
above): on a NATed flow the helper opens nothing (`nat`), as the PPTP helper;
RRQ/RCF timeToLive (the kernel stretches the RAS conntrack and the Q.931
expectation's timeout to it: a sans-IO helper has no timers); an h245Control
tunnelled in an Information or ReleaseComplete message; a Progress's fastStart
after H.235 tokens. Differences on purpose: every TPKT of the stream is read
whatever the segments (the kernel reads whole TPKTs within one segment, plus
Netmeeting's header-then-data); Q.931 single-octet IEs are skipped wherever
they are (the kernel skips one, after the message type).

Policy: classes h245 4, media 16, t120 2, signalling 32, each 240 s (the
kernel: one class per helper, Q.931 20 = H323_RTP_CHANNEL_MAX * 4 + 4, H.245 18,
RAS 32, all 240 s). Pair with `CT --helper h323` on tcp/1720 and udp/1719.
"""

from __future__ import annotations

from typing import Any, Iterable

import alg
from alg import EXPECT_F_PERMANENT, TCP, UDP, Expect, ExpectClass, HelperSpec, Notice, Option, Parsed, Unexpect

from .._ports import min_port_option, port_refusal
from . import h225, h245
from .per import Malformed, decode

Q931_PORT, RAS_PORT = 1720, 1719
TPKT_VERSION = 3  # RFC 1006 §6: version 3, reserved 0, 16-bit length of the whole packet
TPKT_HEADER = 4
Q931, H245 = "q931", "h245"
# the UUIEs whose h245Address and fastStart are read (nf_conntrack_h323_main.c process_q931)
_H245_BODIES = frozenset(("setup", "callProceeding", "connect", "alerting", "facility", "progress"))


class H323State:
    __slots__ = ("kind",)

    def __init__(self) -> None:
        self.kind: str | None = None  # Q931 or H245, decided by a TCP flow's first message


class H323Helper(alg.Helper):
    spec = HelperSpec(
        name="h323",
        protocols=(TCP, UDP),
        ports=(Q931_PORT, RAS_PORT),
        classes=(ExpectClass("h245", 4, 240), ExpectClass("media", 16, 240), ExpectClass("t120", 2, 240),
                 ExpectClass("signalling", 32, 240)),
        options={**min_port_option("H.323"),
                 "gkrouted_only": Option(True, "an RRQ's call signalling expectation admits the gatekeeper only "
                                               "(nf_conntrack_h323 gkrouted_only)"),
                 "call_forwarding": Option(True, "a Facility callForwarded opens the forwarded call's leg")},
        max_buffer=65536,  # a whole TPKT (at most 65,535 bytes) is read at once
        queue=35,
        doc="Q.931 h245Address/fastStart, H.245 OLC/OLCA, RAS RRQ/ACF/LCF/GCF -> H.245, RTP/RTCP, Q.931",
        knobs={"low-port": "options.min_port", "forwarding-off": "options.call_forwarding"},
    )

    @staticmethod
    def looks_like(payload: bytes) -> bool:
        """A TPKT holding a Q.931 message."""
        return payload[:2] == b"\x03\x00" and payload[4:5] == b"\x08"

    def new_state(self) -> H323State:
        return H323State()

    def inspect(self, segment: alg.Segment, state: H323State) -> alg.Outcome:
        data = segment.data
        if segment.flow.proto == UDP:
            return Parsed(len(data), _guard(segment, lambda: self._ras(data, segment)))
        if len(data) < TPKT_HEADER:
            return alg.NEED_DATA
        if data[0] != TPKT_VERSION or data[1] != 0:
            raise alg.ProtocolViolation(f"not a TPKT: {bytes(data[:2]).hex()}")
        length = int.from_bytes(data[2:4], "big")
        if length < TPKT_HEADER:
            raise alg.ProtocolViolation(f"TPKT length {length}")
        if len(data) < length:
            return alg.NEED_DATA
        if length == TPKT_HEADER:
            return Parsed(length)
        tpkt = bytes(data[:length])  # offsets in it are offsets in segment.data (Expect.where)
        if state.kind is None:
            state.kind = Q931 if not segment.expected or _is_q931(tpkt) else H245
        read = self._q931 if state.kind == Q931 else self._h245
        return Parsed(length, _guard(segment, lambda: read(tpkt, segment)))

    # ------------------------------------------------------------ Q.931 / H.225.0
    def _q931(self, tpkt: bytes, seg: alg.Segment) -> Iterable:
        span = h225.user_user(tpkt, TPKT_HEADER)
        if span is None:
            return ()
        info = decode(h225.H323_USER_INFORMATION, tpkt, *span) or {}
        pdu = info.get("h323-uu-pdu") or {}
        out: list = []
        body = pdu.get("h323-message-body")
        if body is not None and isinstance(body[1], dict):
            name, uuie = body
            if name == "facility" and (uuie.get("reason") or ("",))[0] == h225.CALL_FORWARDED:
                out += self._forwarded(uuie.get("alternativeAddress"), seg)
            elif name in _H245_BODIES:
                if "h245Address" in uuie:
                    out += self._h245_address(uuie["h245Address"], seg)
                for olc in uuie.get("fastStart") or ():
                    out += _olc(olc, seg, self.options)
        for mscm in pdu.get("h245Control") or ():
            out += _mscm(mscm, seg, self.options)
        return out

    def _h245_address(self, ta: Any, seg: alg.Segment) -> list:
        found = _own(_h225_address(ta, seg), seg, self.options, "h245Address")
        if isinstance(found, Notice):
            return [found]
        return [Expect("h245", TCP, seg.receiver, found[0], None, found[1], assign_helper=True, where=found[2])]

    def _forwarded(self, ta: Any, seg: alg.Segment) -> list:
        if not self.options["call_forwarding"]:
            return [Notice("forwarding-off", "Facility callForwarded")]
        found = _usable(_h225_address(ta, seg), self.options, "alternativeAddress")
        if isinstance(found, Notice):
            return [found]
        return [Expect("signalling", TCP, seg.receiver, found[0], None, found[1], assign_helper=True,
                       where=found[2])]

    def _h245(self, tpkt: bytes, seg: alg.Segment) -> Iterable:
        return _mscm(decode(h245.MULTIMEDIA_SYSTEM_CONTROL_MESSAGE, tpkt, TPKT_HEADER), seg, self.options)

    # ------------------------------------------------------------ RAS
    def _ras(self, data: bytes, seg: alg.Segment) -> Iterable:
        message = decode(h225.RAS_MESSAGE, data)
        if not message:
            return ()
        name, body = message
        if name == "unregistrationRequest":
            return (Unexpect(),)
        handler = _RAS.get(name)
        return handler(self, body, seg) if handler is not None and isinstance(body, dict) else ()

    def _registration(self, rrq: dict, seg: alg.Segment) -> tuple:
        """The first callSignalAddress that is the sender's own (the kernel's expect_q931)."""
        refused: Notice | None = None
        for ta in rrq.get("callSignalAddress") or ():
            found = _own(_h225_address(ta, seg), seg, self.options, "callSignalAddress")
            if isinstance(found, Notice):
                refused = refused or found
                continue
            src = seg.receiver if self.options["gkrouted_only"] else None
            return (_call_leg(src, *found),)
        return (refused,) if refused else ()

    def _admission(self, acf: dict, seg: alg.Segment) -> tuple:
        addr = _h225_address(acf.get("destCallSignalAddress"), seg)
        if addr is not None and addr[0] == seg.receiver:
            return ()  # the called endpoint's own address: it is answering a call (kernel: "Answering ACF")
        return self._located(addr, seg, "destCallSignalAddress")

    def _location(self, lcf: dict, seg: alg.Segment) -> tuple:
        return self._located(_h225_address(lcf.get("callSignalAddress"), seg), seg, "callSignalAddress")

    def _located(self, addr: tuple | None, seg: alg.Segment, what: str) -> tuple:
        """The call leg to a party RAS named (a third party by design: from the receiver only)."""
        found = _usable(addr, self.options, what)
        return (found,) if isinstance(found, Notice) else (_call_leg(seg.receiver, *found),)

    def _gatekeeper(self, gcf: dict, seg: alg.Segment) -> tuple:
        addr = _h225_address(gcf.get("rasAddress"), seg)
        if addr is None or (addr[0] == seg.sender and addr[1] == seg.sender_port):
            return ()  # registration goes on on this flow
        if seg.expected:
            return ()  # a GCF on a RAS flow we admitted: no expectation loops (as the kernel)
        found = _own(addr, seg, self.options, "rasAddress")
        if isinstance(found, Notice):
            return (found,)
        return (Expect("signalling", UDP, seg.receiver, found[0], None, found[1], assign_helper=True,
                       where=found[2]),)


# RAS messages read (nf_conntrack_h323_main.c process_ras, without its NAT-only ones)
_RAS = {"registrationRequest": H323Helper._registration, "admissionConfirm": H323Helper._admission,
        "locationConfirm": H323Helper._location, "gatekeeperConfirm": H323Helper._gatekeeper}


def _call_leg(src: alg.IPAddress | None, dst: alg.IPAddress, port: int, where: tuple) -> Expect:
    """A call signalling connection RAS announced: PERMANENT (several calls), read by this helper (Q.931)."""
    return Expect("signalling", TCP, src, dst, None, port, flags=EXPECT_F_PERMANENT, assign_helper=True, where=where)


def _guard(seg: alg.Segment, read) -> tuple:
    """The actions of one message; one that does not decode gives a Notice, never an exception."""
    if seg.nat is not None:
        return (Notice("nat", "H.323 behind NAT needs nf_nat_h323's rewriting: nothing opened"),)
    try:
        return _unique(read())
    except Malformed as exc:
        return (Notice("malformed", str(exc)[:120]),)


def _unique(actions: Iterable) -> tuple:
    """Drop repeated expectations (an OLC's mediaChannel and mediaControlChannel name one RTP/RTCP pair)."""
    out, seen = [], set()
    for a in actions:
        key = (a.cls, a.proto, a.src, a.dst, a.dport) if isinstance(a, Expect) else id(a)
        if key not in seen:
            seen.add(key)
            out.append(a)
    return tuple(out)


def _is_q931(tpkt: bytes) -> bool:
    try:
        return h225.user_user(tpkt, TPKT_HEADER) is not None
    except Malformed:
        return False


def _address(raw: tuple | None, port: Any, seg: alg.Segment) -> tuple | None:
    """(address, port, where) from an address's (offset, octets) and its port, which follows it."""
    if raw is None or not isinstance(port, int):
        return None
    at, packed = raw
    addr = alg.ip(packed)
    return (addr, port, ((at, len(packed)), (at + len(packed), 2))) if addr.version == seg.flow.l3 else None


def _h225_address(ta: Any, seg: alg.Segment) -> tuple | None:
    """(address, port, where) of an H.225.0 TransportAddress of the flow's family, else None."""
    if not ta or ta[0] not in ("ipAddress", "ip6Address") or not isinstance(ta[1], dict):
        return None
    return _address(ta[1].get("ip"), ta[1].get("port"), seg)


def _h245_address(ta: Any, seg: alg.Segment) -> tuple | None:
    """(address, port, where) of an H.245 unicast TransportAddress of the flow's family, else None."""
    if not ta or ta[0] != "unicastAddress" or not ta[1] or ta[1][0] not in ("iPAddress", "iP6Address"):
        return None
    value = ta[1][1]
    return _address(value.get("network"), value.get("tsapIdentifier"), seg) if isinstance(value, dict) else None


def _usable(found: tuple | None, options, what: str) -> tuple | Notice:
    if found is None:
        return Notice("no-address", f"{what}: not an address of the flow's family")
    return port_refusal(found[1], options, what) or found


def _own(found: tuple | None, seg: alg.Segment, options, what: str) -> tuple | Notice:
    """`found` when it is the sender's own address and its port may be opened."""
    usable = _usable(found, options, what)
    if not isinstance(usable, Notice) and usable[0] != seg.sender:
        return Notice("address-mismatch", f"{what} {usable[0]} sent by {seg.sender}")
    return usable


# ------------------------------------------------------------ H.245 (own connection, tunnelled, fastStart)
def _mscm(mscm: Any, seg: alg.Segment, options) -> list:
    if not mscm or not isinstance(mscm[1], tuple):
        return []
    kind, (name, body) = mscm
    if not isinstance(body, dict):
        return []
    if kind == "request" and name == h245.OLC:
        return _olc(body, seg, options)
    if kind == "response" and name == h245.OLCA:
        return _olca(body, seg, options)
    return []


def _h2250(mux: Any, seg: alg.Segment, options) -> list:
    if not mux or mux[0] not in (h245.H2250, "h2250LogicalChannelAckParameters") or not isinstance(mux[1], dict):
        return []
    out: list = []
    for field in ("mediaChannel", "mediaControlChannel"):
        if field in mux[1]:
            found = _own(_h245_address(mux[1][field], seg), seg, options, field)
            if isinstance(found, Notice):
                out.append(found)
                continue
            addr, port, where = found
            out += [Expect("media", UDP, seg.receiver, addr, None, p, where=where) for p in (port & ~1, port | 1)
                    if not port_refusal(p, options, field)]
    return out


def _t120(stack: Any, seg: alg.Segment, options) -> list:
    network = stack.get("networkAddress") if isinstance(stack, dict) else None
    if not network or network[0] != h245.LOCAL_AREA_ADDRESS:
        return []
    found = _own(_h245_address(network[1], seg), seg, options, "T.120 localAreaAddress")
    if isinstance(found, Notice):
        return [found]
    return [Expect("t120", TCP, seg.receiver, found[0], None, found[1], flags=EXPECT_F_PERMANENT, where=found[2])]


def _olc(olc: Any, seg: alg.Segment, options) -> list:
    if not isinstance(olc, dict):
        return []
    forward = olc.get("forwardLogicalChannelParameters") or {}
    out = _h2250(forward.get("multiplexParameters"), seg, options)
    reverse = olc.get("reverseLogicalChannelParameters")
    if isinstance(reverse, dict):
        out += _h2250(reverse.get("multiplexParameters"), seg, options)
    data = forward.get("dataType")
    if "separateStack" in olc and data and data[0] == "data" and isinstance(data[1], dict):
        application = data[1].get("application")
        if application and application[0] == "t120" and (application[1] or ("",))[0] == h245.SEPARATE_LAN_STACK:
            out += _t120(olc["separateStack"], seg, options)
    return out


def _olca(olca: dict, seg: alg.Segment, options) -> list:
    out: list = []
    reverse = olca.get("reverseLogicalChannelParameters")
    if isinstance(reverse, dict):
        out += _h2250(reverse.get("multiplexParameters"), seg, options)
    out += _h2250(olca.get("forwardMultiplexAckParameters"), seg, options)
    if "separateStack" in olca:
        out += _t120(olca["separateStack"], seg, options)
    return out


@alg.hookimpl
def alg_register_helpers(register):
    register(H323Helper)
