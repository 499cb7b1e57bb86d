# The helper as it was before issue 14's speed work (commit fd711bd), kept verbatim as the
# oracle tests/test_helpers_fast.py compares the rewritten one with. Not loaded as a plugin.
"""RPC portmapper: opens the connection to the port rpcbind names for a program.

An ONC RPC client (an NFSv3 mount, `rpcinfo`, NIS, ...) asks the server's
portmapper on port 111 where a program listens, then connects there. The
helper reads the question and the answer on the port-111 flow and lets the
client open `proto client:* -> server:port` (the protocol the call asked for).

Messages read (ONC RPC v2, RFC 5531 §9; XDR, RFC 4506):

* portmapper version 2 `PMAPPROC_GETPORT` (RFC 1833 §3.2): the call names
  program, version and protocol (6/17), the reply carries the port;
* rpcbind versions 3 and 4 `RPCBPROC_GETADDR` and version 4
  `RPCBPROC_GETVERSADDR` (RFC 1833 §2.2): the call names program, version
  and a netid (`tcp`, `udp`, `tcp6`, `udp6`, RFC 5665 §5.1), the reply a
  universal address, `h1.h2.h3.h4.p1.p2` for IPv4 (RFC 5665 §5.2.3.3) and
  `x:x::x.p1.p2` for IPv6 (§5.2.3.4), port = p1 * 256 + p2.

A reply is matched to its call by xid from a per-flow table of pending calls
(at most `max_pending`, oldest forgotten first; a call older than
`call_timeout` seconds no longer counts). Calls must come from the flow's
originator and replies from its responder (RFC 5531 §9 directions).

Transports: UDP, one message per datagram; TCP with record marking
(RFC 5531 §11): a 4-byte mark (last-fragment bit, 31-bit length) before each
fragment; fragments are joined into a message, several records may share a
segment and a record may be split over segments. A message longer than 8 KiB
(a DUMP reply, say) is skipped without being buffered.

Security:
* a reply without a pending call of the same xid gives nothing (counted as
  `unmatched-reply`), and so does an unsuccessful one (`not-registered` for
  port 0 / an empty address);
* the universal address of a GETADDR reply must be the replying server's own
  address (the unspecified address counts as the server's), unless `loose`
  is set or it lies in one of `allowed_networks`; otherwise no expectation
  (`address-mismatch`). A netid of the other address family, or an unknown
  one, gives none (`family-mismatch`, `unknown-netid`);
* the expected flow's source is the client's own address.

conntrackd parity (src/helpers/rpc.c): the same question and answer for
v2 GETPORT, class `rpc` with 1 expectation / 300 s, the expectation flagged
PERMANENT (it survives its first use: the client may connect several times,
an NFS client reconnects) with client address, any source port, server
address and the port; `priv_data_len` 16 so alg can take over a helper that
`nfct add helper rpc inet udp` registered. Beyond conntrackd: several
pending calls per flow with expiry, TCP records split or batched,
rpcbind v3/v4 and IPv6. conntrackd needs the call and the reply exactly
sized; trailing bytes are tolerated here. NAT rewriting: not yet (the offset
of the port / address is reported).
"""

from __future__ import annotations

import ipaddress
import struct
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Mapping

import alg
from alg import EXPECT_F_PERMANENT, TCP, UDP, Direction, Expect, ExpectClass, HelperSpec, Notice, Option, Parsed

# RFC 5531 §9
CALL, REPLY = 0, 1
RPC_VERSION = 2
MSG_ACCEPTED = 0
SUCCESS = 0
MAX_AUTH_BYTES = 400  # RFC 5531 §8.2: opaque_auth body<400>
LAST_FRAGMENT = 0x80000000  # RFC 5531 §11 record mark

PMAP_PROGRAM = 100000  # RFC 1833
PMAPPROC_GETPORT = 3  # version 2
RPCBPROC_GETADDR = 3  # versions 3 and 4
RPCBPROC_GETVERSADDR = 9  # version 4
# (version, procedure) -> what the reply carries
_PROCEDURES = {(2, PMAPPROC_GETPORT): "port", (3, RPCBPROC_GETADDR): "uaddr", (4, RPCBPROC_GETADDR): "uaddr",
               (4, RPCBPROC_GETVERSADDR): "uaddr"}
# RFC 5665 §5.1 netids of IP transports: netid -> (protocol, address family)
NETIDS = {b"tcp": (TCP, 4), b"udp": (UDP, 4), b"tcp6": (TCP, 6), b"udp6": (UDP, 6)}

MAX_MESSAGE = 8192  # bytes of one RPC message kept (portmapper calls and answers are far smaller)
MAX_STRING = 1024  # netid, universal address, owner

_U32 = struct.Struct("!I")
_HEAD = struct.Struct("!II")  # xid, message type
_CALL = struct.Struct("!IIII")  # rpcvers, prog, vers, proc
_MAPPING = struct.Struct("!IIII")  # RFC 1833 §3.1: prog, vers, prot, port


class _Short(Exception):
    pass


class _Xdr:
    """Reads XDR items (RFC 4506 §4) from a message; `_Short` past its end."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes, pos: int = 0):
        self.data, self.pos = data, pos

    def u32(self) -> int:
        if self.pos + 4 > len(self.data):
            raise _Short
        (v,) = _U32.unpack_from(self.data, self.pos)
        self.pos += 4
        return v

    def unpack(self, s: struct.Struct) -> tuple:
        if self.pos + s.size > len(self.data):
            raise _Short
        v = s.unpack_from(self.data, self.pos)
        self.pos += s.size
        return v

    def opaque(self, limit: int) -> bytes:
        """Variable-length opaque or string: length, bytes, padding to 4."""
        n = self.u32()
        if n > limit:
            raise alg.ProtocolViolation(f"opaque of {n} bytes (limit {limit})")
        end = self.pos + n
        if end > len(self.data):
            raise _Short
        v = self.data[self.pos:end]
        self.pos = end + (-n % 4)
        return v


@dataclass(slots=True)
class PendingCall:
    proto: int | None  # None: unknown (the expectation is then not made)
    family: int | None  # address family the netid names (None: that of the flow)
    result: str  # "port" | "uaddr"
    what: str  # for notices: "prog 100003 v3 tcp"
    when: float


class RpcState:
    __slots__ = ("pending", "partial", "skip", "discard", "frag_start")

    def __init__(self) -> None:
        self.pending: OrderedDict[int, PendingCall] = OrderedDict()
        # TCP record marking, per direction
        # fragments of the message being assembled; a bytearray grows in place (bytes += would
        # copy the whole message for every one-byte fragment)
        self.partial = [bytearray(), bytearray()]
        self.skip = [0, 0]  # bytes of an oversized message's fragment still to skip
        self.discard = [False, False]  # the current message is being skipped
        self.frag_start = [0, 0]


_PORTMAPPER_CALL = struct.pack("!III", 0, 2, 100000)  # msg_type CALL, rpcvers 2, PMAP_PROG


class RpcHelper(alg.Helper):
    spec = HelperSpec(
        name="rpc",
        protocols=(UDP, TCP),
        ports=(111,),
        classes=(ExpectClass("rpc", 1, 300),),  # conntrackd's policy name, so nfct-registered helpers match
        options={
            "loose": Option(False, "accept a GETADDR address that is not the replying server's (unsafe)"),
            "allowed_networks": Option([], "networks (CIDR) a GETADDR reply may name besides the server", list,
                                       items=str, check=alg.check_networks),
            "permanent": Option(True, "PERMANENT expectations, as conntrackd: they survive their first use"),
            "max_pending": Option(32, "calls per flow awaiting their reply (oldest forgotten)", min=1, max=4096),
            "call_timeout": Option(60, "seconds a call waits for its reply", min=1, max=86400),
        },
        priv_data_len=16,  # conntrackd's struct rpc_info; lets alg take over an `nfct add`-ed helper
        max_buffer=16384,
        knobs={"address-mismatch": "options.loose, options.allowed_networks", "pending-full": "options.max_pending",
               "call-expired": "options.call_timeout"},
    )

    @staticmethod
    def looks_like(payload: bytes) -> bool:
        """A call to the portmapper (RFC 5531 9: msg_type CALL, rpcvers 2, program
        100000), over UDP or after a TCP record mark."""
        return any(payload[off + 4:off + 16] == _PORTMAPPER_CALL for off in (0, 4))

    def __init__(self, options: Mapping[str, Any] | None = None):
        super().__init__(options)
        self.allowed = alg.parse_networks(self.options["allowed_networks"], "rpc: options.allowed_networks")
        self.flags = EXPECT_F_PERMANENT if self.options["permanent"] else 0

    def new_state(self) -> RpcState:
        return RpcState()

    def inspect(self, segment: alg.Segment, state: RpcState) -> alg.Outcome:
        if segment.flow.proto == UDP:
            return Parsed(len(segment.data), self._message(segment.data, 0, segment, state))
        return self._record(segment, state)

    # ------------------------------------------------------------ TCP record marking (RFC 5531 §11)
    def _record(self, seg: alg.Segment, st: RpcState) -> alg.Outcome:
        data, d = seg.data, seg.direction
        if st.skip[d]:
            n = min(st.skip[d], len(data))
            st.skip[d] -= n
            return Parsed(n)
        if len(data) < 4:
            return alg.NEED_DATA
        (mark,) = _U32.unpack_from(data, 0)
        last, length = bool(mark & LAST_FRAGMENT), mark & ~LAST_FRAGMENT
        if st.discard[d] or len(st.partial[d]) + length > MAX_MESSAGE:
            # too long for a portmapper message we read: skip it, fragment by fragment
            st.partial[d] = bytearray()
            st.discard[d] = not last
            st.skip[d] = length
            return Parsed(4)
        if len(data) < 4 + length:
            return alg.NEED_DATA
        if not last:
            st.partial[d] += data[4:4 + length]
            return Parsed(4 + length)
        if st.partial[d]:  # offsets only mean something when the message is in one fragment
            msg, st.partial[d] = bytes(st.partial[d] + data[4:4 + length]), bytearray()
            return Parsed(4 + length, self._message(msg, None, seg, st))
        return Parsed(4 + length, self._message(data[:4 + length], 4, seg, st))

    # ------------------------------------------------------------ one RPC message
    def _message(self, data: bytes, base: int | None, seg: alg.Segment, st: RpcState) -> tuple:
        """`data[base or 0:]` is one RPC message; `base` is its offset in the segment (None: unknown)."""
        x = _Xdr(data, base or 0)
        try:
            xid, mtype = x.unpack(_HEAD)
            if mtype == CALL:
                if seg.direction is not Direction.ORIGINAL:
                    return ()  # a call from the responder (a callback): not a portmapper question
                return self._call(xid, x, seg, st)
            if mtype == REPLY:
                if seg.direction is not Direction.REPLY:
                    return (Notice("reply-from-originator"),)
                return self._reply(xid, x, base is not None, seg, st)
        except _Short:
            raise alg.ProtocolViolation("truncated RPC message") from None
        raise alg.ProtocolViolation(f"RPC message type {mtype} (neither CALL nor REPLY)")

    def _call(self, xid: int, x: _Xdr, seg: alg.Segment, st: RpcState) -> tuple:
        rpcvers, prog, vers, proc = x.unpack(_CALL)
        result = _PROCEDURES.get((vers, proc))
        if rpcvers != RPC_VERSION or prog != PMAP_PROGRAM or result is None:
            return ()
        for _ in ("credential", "verifier"):  # opaque_auth: flavor, body<400>
            x.u32()
            x.opaque(MAX_AUTH_BYTES)
        return self._remember(xid, self._question(x, result, seg), seg, st)

    def _question(self, x: _Xdr, result: str, seg: alg.Segment) -> PendingCall:
        if result == "port":
            prog, vers, prot, _port = x.unpack(_MAPPING)  # RFC 1833 §3.2: the port argument is ignored
            name = alg.PROTO_NAMES.get(prot)
            return PendingCall(prot if name else None, None, result, f"prog {prog} v{vers} {name or prot}", seg.now)
        prog, vers = x.u32(), x.u32()
        netid = x.opaque(MAX_STRING)
        x.opaque(MAX_STRING), x.opaque(MAX_STRING)  # r_addr, r_owner
        proto, family = NETIDS.get(netid, (None, None))
        return PendingCall(proto, family, result, f"prog {prog} v{vers} {netid.decode('latin-1')}", seg.now)

    def _remember(self, xid: int, call: PendingCall, seg: alg.Segment, st: RpcState) -> tuple:
        out: tuple = ()
        pending = st.pending
        timeout = self.options["call_timeout"]
        while pending and seg.now - next(iter(pending.values())).when > timeout:
            pending.popitem(last=False)
        pending.pop(xid, None)  # a retransmission renews its call
        if len(pending) >= self.options["max_pending"]:
            pending.popitem(last=False)
            out = (Notice("pending-full", "oldest call forgotten"),)
        pending[xid] = call
        return out

    def _reply(self, xid: int, x: _Xdr, offsets: bool, seg: alg.Segment, st: RpcState) -> tuple:
        call = st.pending.pop(xid, None)
        if call is None:
            return (Notice("unmatched-reply", f"xid {xid:#x}"),)
        if seg.now - call.when > self.options["call_timeout"]:
            return (Notice("call-expired", f"xid {xid:#x} {call.what}"),)
        if x.u32() != MSG_ACCEPTED:
            return (Notice("denied", call.what),)
        x.u32()  # verifier flavor
        x.opaque(MAX_AUTH_BYTES)
        if x.u32() != SUCCESS:
            return (Notice("not-accepted", call.what),)
        start = x.pos
        if call.result == "port":
            port = x.u32()
            where = (start, 4)
            addr: alg.IPAddress = seg.sender
        else:
            uaddr = x.opaque(MAX_STRING)
            where = (start + 4, len(uaddr))
            if not uaddr:
                return (Notice("not-registered", call.what),)
            parsed = parse_uaddr(uaddr)
            if parsed is None:
                return (Notice("malformed", f"universal address {uaddr[:64]!r}"),)
            addr, port = parsed
        if port == 0:
            return (Notice("not-registered", call.what),)
        if call.proto is None:
            return (Notice("unknown-netid", call.what),)
        if not 0 < port < 65536:
            return (Notice("bad-port", f"{port} for {call.what}"),)
        if addr.version != seg.flow.l3 or (call.family is not None and call.family != seg.flow.l3):
            return (Notice("family-mismatch", f"{addr} for {call.what} on an IPv{seg.flow.l3} flow"),)
        if addr.is_unspecified:
            addr = seg.sender
        if addr != seg.sender and not self.options["loose"] and not any(addr in n for n in self.allowed):
            return (Notice("address-mismatch", f"{addr} named by {seg.sender} for {call.what}"),)
        return (Expect("rpc", call.proto, seg.receiver, addr, None, port, flags=self.flags,
                       where=(where,) if offsets else ()),)


def parse_uaddr(uaddr: bytes) -> tuple[alg.IPAddress, int] | None:
    """Universal address (RFC 5665 §5.2.3.3, §5.2.3.4) to (address, port); None if malformed."""
    try:
        text = uaddr.decode("ascii")
        host, p1, p2 = text.rsplit(".", 2)
        if not (p1.isdigit() and p2.isdigit() and len(p1) <= 3 and len(p2) <= 3):
            return None
        hi, lo = int(p1), int(p2)
        if hi > 255 or lo > 255:
            return None
        return ipaddress.ip_address(host), hi * 256 + lo
    except (UnicodeDecodeError, ValueError):
        return None


@alg.hookimpl
def alg_register_helpers(register):
    register(RpcHelper)
