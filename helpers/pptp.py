"""PPTP: opens the GRE data flows of a call set up on the control connection (tcp/1723).

PPTP (RFC 2637) runs a control connection from the PNS (the client, `pptp`,
Windows' VPN) to the PAC (the server, `pptpd`) on tcp/1723, and carries each
call's PPP frames in enhanced GRE (IP protocol 47, version 1, §4.1) whose key
field holds the *receiver's* call ID. Once a call is set up the helper opens
two GRE flows between the control connection's two ends, one per direction:

    gre PNS -> PAC, key = the PAC's call ID
    gre PAC -> PNS, key = the PNS's call ID

with the source key masked out: the kernel's GRE tracker takes a packet's
destination key from its call ID but its source key from a keymap that only
the in-kernel nf_conntrack_pptp fills (no netlink interface), so for a
userspace helper's flows the source key is always 0 (README, "PPTP and
H.323"; tools/probe_gre_expect.py). The addresses are the control
connection's own: PPTP messages carry no address, nothing can point a GRE
expectation at a third party.

Messages (RFC 2637 §2): a 12-byte header, length (whole message), PPTP
message type (1: control), magic cookie 0x1A2B3C4D, control message type,
reserved; each is read whole from the TCP stream, however the segments cut
it. What is read, as nf_conntrack_pptp does (the control connection's
originator is the PNS, as the kernel assumes):

* Start-Control-Connection-Request (PNS) and -Reply (PAC, result 1 =
  success): calls are read only on a confirmed session (`no-session`);
* outgoing call: Outgoing-Call-Request (PNS: its call ID), Outgoing-Call-
  Reply (PAC: its call ID, the peer's = the PNS's, result 1 = connected):
  the expectations are made on the reply;
* incoming call: Incoming-Call-Request (PAC: its call ID), Incoming-Call-
  Reply (PNS: its call ID, the peer's = the PAC's, result 1 = accept),
  Incoming-Call-Connected (PAC: the peer's = the PNS's): made on the last;
* Call-Clear-Request (PNS) and Call-Disconnect-Notify (PAC) withdraw the
  call's expectations (the kernel withdraws on the latter); Stop-Control-
  Connection-Request/-Reply withdraw all of the connection's. When the
  control connection's conntrack ends the kernel removes its expectations.

Refused (a Notice, nothing opened): a reply whose peer call ID names no call
this connection requested (`unsolicited`: a PAC cannot open GRE for a call
the PNS never asked for), a call refused by its result code (`refused`), a
message from the wrong side (`wrong-side`), a message shorter than its type
(`short-message`), an unknown control message type (`unknown-type`).
A length below the header or above MAX_MESSAGE, or a wrong magic cookie,
stops the flow (ProtocolViolation: the stream's framing is lost). At most
MAX_CALLS calls are tracked per control connection (`too-many-calls`).

Differences from nf_conntrack_pptp, on purpose: the kernel tracks one call
per control connection and reads only the first message of each segment;
alg reads every message and tracks up to MAX_CALLS calls (the policy's
`expect_max` still bounds the expectations: 2, one call's pair, evicting the
oldest like the kernel). Each GRE direction is its own conntrack here (the
kernel's helper joins both in one through the keymap); they are not deleted
with the call, only the expectations not yet used are.

Policy: class `gre` (the kernel's class 0), 2 expectations per control
connection, 300 s (the kernel's pptp_exp_policy). NAT: not supported.
Behind NAT two inside PNSs' call IDs may collide on one PAC, and translating
them needs the keymap and GRE key rewriting that only nf_nat_pptp does: on
a NATed control connection the helper opens nothing and says so (`nat`).
"""

from __future__ import annotations

import struct

import alg
from alg import GRE, Direction, Expect, ExpectClass, HelperSpec, Notice, Parsed, Unexpect

PPTP_PORT = 1723
PPTP_CONTROL = 1  # PPTP message type: control (2, management, is undefined: RFC 2637 §2.1)
MAGIC_COOKIE = 0x1A2B3C4D
_HEADER = struct.Struct("!HHIHH")  # length, PPTP message type, magic cookie, control message type, reserved0
_MAGIC = struct.pack("!I", MAGIC_COOKIE)
MAX_MESSAGE = 1024  # RFC 2637's largest message is Incoming-Call-Request, 220 bytes
MAX_CALLS = 64  # calls tracked per control connection
RESULT_OK = 1  # §2.2 Connected/success, §2.8 Connected, §2.10 Accept

# control message types (RFC 2637 §2.1), their fixed length (§2.2-§2.16), who sends them
SCCRQ, SCCRP, STOPCCRQ, STOPCCRP = 1, 2, 3, 4
OCRQ, OCRP, ICRQ, ICRP, ICCN, CCRQ, CDN = 7, 8, 9, 10, 11, 12, 13
PNS, PAC, EITHER = Direction.ORIGINAL, Direction.REPLY, None
MESSAGES = {  # control message type -> (name, length, sender)
    SCCRQ: ("Start-Control-Connection-Request", 156, PNS), SCCRP: ("Start-Control-Connection-Reply", 156, PAC),
    STOPCCRQ: ("Stop-Control-Connection-Request", 16, EITHER), STOPCCRP: ("Stop-Control-Connection-Reply", 16, EITHER),
    5: ("Echo-Request", 16, EITHER), 6: ("Echo-Reply", 20, EITHER),
    OCRQ: ("Outgoing-Call-Request", 168, PNS), OCRP: ("Outgoing-Call-Reply", 32, PAC),
    ICRQ: ("Incoming-Call-Request", 220, PAC), ICRP: ("Incoming-Call-Reply", 24, PNS),
    ICCN: ("Incoming-Call-Connected", 28, PAC), CCRQ: ("Call-Clear-Request", 16, PNS),
    CDN: ("Call-Disconnect-Notify", 148, PAC),
    # informational; RFC 2637 has the PNS send Set-Link-Info, Microsoft's PAC sends it too (ndpi_pptp)
    14: ("WAN-Error-Notify", 40, EITHER), 15: ("Set-Link-Info", 24, EITHER),
}
_BODY = _HEADER.size
_U16 = struct.Struct("!H")
_IDS = struct.Struct("!HHB")  # call ID, peer's call ID, result code (OCRP, ICRP)

# a call's state (RFC 2637 §3.2), keyed by the PNS's call ID (outgoing) or the PAC's (incoming, until answered)
OUT_REQUESTED, IN_REQUESTED, IN_ANSWERED, CONNECTED = "out-requested", "in-requested", "in-answered", "connected"


class Call:
    __slots__ = ("state", "pns", "pac")

    def __init__(self, state: str, pns: int | None, pac: int | None) -> None:
        self.state, self.pns, self.pac = state, pns, pac


class PptpState:
    __slots__ = ("session", "calls")

    def __init__(self) -> None:
        self.session = False  # Start-Control-Connection-Reply said success
        self.calls: dict[tuple[str, int | None], Call] = {}  # ("pns"|"pac", call ID) -> call


class PptpHelper(alg.Helper):
    spec = HelperSpec(
        name="pptp",
        protocols=(alg.TCP,),
        ports=(PPTP_PORT,),
        classes=(ExpectClass("gre", 2, 300),),
        max_buffer=65536,
        queue=34,
        doc="Outgoing-Call-Reply / Incoming-Call-Connected -> gre PNS -> PAC key=PAC's call ID, and back",
    )

    @staticmethod
    def looks_like(payload: bytes) -> bool:
        """A Start-Control-Connection-Request: a PNS's first message."""
        return len(payload) >= _BODY and payload[4:8] == _MAGIC and payload[8:10] == b"\0\x01"

    def new_state(self) -> PptpState:
        return PptpState()

    def state_size(self, state: PptpState) -> int:
        return 64 * len(state.calls)

    def resync(self, segment: alg.Segment, state: PptpState) -> alg.Resync:
        """After lost bytes: the next magic cookie starts a message 4 bytes before it."""
        at = segment.data.find(_MAGIC, 4)
        return alg.NEED_DATA if at < 0 else at - 4

    def inspect(self, segment: alg.Segment, state: PptpState) -> alg.Outcome:
        data = segment.data
        if len(data) < _BODY:
            return alg.NEED_DATA
        length, kind, magic, ctrl, _ = _HEADER.unpack_from(data)
        if magic != MAGIC_COOKIE:
            raise alg.ProtocolViolation(f"magic cookie {magic:#010x}, not {MAGIC_COOKIE:#010x}")
        if not _BODY <= length <= MAX_MESSAGE:
            raise alg.ProtocolViolation(f"message length {length}, not {_BODY}-{MAX_MESSAGE}")
        if len(data) < length:
            return alg.NEED_DATA
        if kind != PPTP_CONTROL:
            return Parsed(length)
        return Parsed(length, _control(ctrl, data[:length], segment, state))


def _control(ctrl: int, msg: bytes, seg: alg.Segment, state: PptpState) -> tuple:
    """The actions for one control message."""
    known = MESSAGES.get(ctrl)
    if known is None:
        return (Notice("unknown-type", f"control message type {ctrl}"),)
    name, size, sender = known
    if sender is not None and seg.direction is not sender:
        return (Notice("wrong-side", f"{name} from the {'PNS' if seg.direction is PNS else 'PAC'}"),)
    if len(msg) < size:
        return (Notice("short-message", f"{name} of {len(msg)} bytes, not {size}"),)
    if ctrl in (SCCRQ, STOPCCRQ, STOPCCRP):
        state.session = False
        forgotten, state.calls = state.calls, {}
        return (Unexpect("gre"),) if forgotten else ()
    if ctrl == SCCRP:
        state.session = msg[_BODY + 2] == RESULT_OK  # after the protocol version
        return ()
    handler = _CALLS.get(ctrl)
    if handler is None:
        return ()
    if not state.session:
        return (Notice("no-session", f"{name} before a successful Start-Control-Connection"),)
    return handler(msg, seg, state)


def _out_request(msg: bytes, seg: alg.Segment, state: PptpState) -> tuple:
    (pns,) = _U16.unpack_from(msg, _BODY)
    return _track(state, ("pns", pns), Call(OUT_REQUESTED, pns, None))


def _answered(state: PptpState, key: tuple[str, int], want: str, result: int, what: str) -> Call | tuple:
    """The call a reply answers (taken out of the table when refused), or the notices that say why not."""
    call = state.calls.get(key)
    if call is None or call.state != want:
        return (Notice("unsolicited", f"{what}-Call-Reply for {key[0].upper()} call ID {key[1]}, "
                                      "which it did not request"),)
    if result != RESULT_OK:
        del state.calls[key]
        return (Notice("refused", f"{what.lower()} call {key[1]}: result code {result}"),)
    return call


def _out_reply(msg: bytes, seg: alg.Segment, state: PptpState) -> tuple:
    pac, pns, result = _IDS.unpack_from(msg, _BODY)
    call = _answered(state, ("pns", pns), OUT_REQUESTED, result, "Outgoing")
    if isinstance(call, tuple):
        return call
    call.pac = pac
    return _connected(call, pns, pac, seg)


def _in_request(msg: bytes, seg: alg.Segment, state: PptpState) -> tuple:
    (pac,) = _U16.unpack_from(msg, _BODY)
    return _track(state, ("pac", pac), Call(IN_REQUESTED, None, pac))


def _in_reply(msg: bytes, seg: alg.Segment, state: PptpState) -> tuple:
    pns, pac, result = _IDS.unpack_from(msg, _BODY)
    call = _answered(state, ("pac", pac), IN_REQUESTED, result, "Incoming")
    if isinstance(call, tuple):
        return call
    del state.calls[("pac", pac)]  # from here on known by the PNS's call ID
    call.state, call.pns = IN_ANSWERED, pns
    return _track(state, ("pns", pns), call)


def _in_connected(msg: bytes, seg: alg.Segment, state: PptpState) -> tuple:
    (pns,) = _U16.unpack_from(msg, _BODY)  # the peer's call ID
    call = state.calls.get(("pns", pns))
    if call is None or call.state != IN_ANSWERED or call.pac is None:
        return (Notice("unsolicited", f"Incoming-Call-Connected for PNS call ID {pns}, which did not answer"),)
    return _connected(call, pns, call.pac, seg)


def _clear(msg: bytes, seg: alg.Segment, state: PptpState) -> tuple:
    """Call-Clear-Request names the PNS's call ID, Call-Disconnect-Notify the PAC's (some PACs
    send the PNS's: either is looked up)."""
    (cid,) = _U16.unpack_from(msg, _BODY)
    first = ("pns", cid) if seg.direction is PNS else ("pac", cid)
    call = state.calls.get(first) or next((c for c in state.calls.values() if c.pns == cid or c.pac == cid), None)
    if call is None:
        return ()
    for key in (("pns", call.pns), ("pac", call.pac)):
        state.calls.pop(key, None)
    return (Unexpect("gre", _tag(call)),) if call.state == CONNECTED else ()


def _track(state: PptpState, key: tuple[str, int | None], call: Call) -> tuple:
    if key not in state.calls and len(state.calls) >= MAX_CALLS:
        return (Notice("too-many-calls", f"more than {MAX_CALLS} calls on one control connection"),)
    state.calls[key] = call
    return ()


def _connected(call: Call, pns_id: int, pac_id: int, seg: alg.Segment) -> tuple:
    call.state = CONNECTED
    if seg.nat is not None:
        return (Notice("nat", "PPTP behind NAT needs GRE key translation (nf_nat_pptp): nothing opened"),)
    pns, pac = seg.flow.src, seg.flow.dst  # the control connection's ends: its originator is the PNS
    tag = _tag(call)
    return (Expect("gre", GRE, pns, pac, None, pac_id, tag=tag),
            Expect("gre", GRE, pac, pns, None, pns_id, tag=tag))


def _tag(call: Call) -> str:
    return f"call {call.pns}/{call.pac}"


_CALLS = {OCRQ: _out_request, OCRP: _out_reply, ICRQ: _in_request, ICRP: _in_reply, ICCN: _in_connected,
          CCRQ: _clear, CDN: _clear}


@alg.hookimpl
def alg_register_helpers(register):
    register(PptpHelper)
