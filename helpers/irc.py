"""IRC DCC: opens the connection a client offers another user through an IRC server.

DCC (Direct Client-to-Client, the CTCP extension every IRC client has) is a
PRIVMSG whose text is a CTCP message, `\\1DCC SEND <file> <ip> <port> [<size>]\\1`
or `\\1DCC CHAT chat <ip> <port>\\1`: the sender listens on `<ip>:<port>` and the
addressee, somewhere else on the Internet, connects there. `<ip>` is the
IPv4 address as one decimal 32-bit number (`167772418` = 10.0.1.2); clients
that speak IPv6 write an IPv6 literal. The helper reads what the client sends
to its IRC server (port 6667) and opens `tcp *:* -> client:port` (anyone may
connect: the peer's address is not known).

DCC types read: SEND, CHAT, MOVE, TSEND, SCHAT (the kernel's table). The
file name may be quoted (`"my file.txt"`, mIRC and irssi quote names with
spaces). Message tags (`@...`, IRCv3) and a `:prefix` before PRIVMSG are
skipped; every line is read, whatever the segments.

Security, as nf_conntrack_irc and stricter:
* the offered address must be the sender's own: a DCC naming another host
  gives nothing (`address-mismatch`; the kernel calls it "Forged DCC
  command"). The kernel also accepts the client's NATed address (the
  master's reply destination); alg, which does not rewrite DCC yet, only
  the client's own;
* port 0 (passive or reverse DCC, the addressee listens instead) opens
  nothing, as in the kernel (`passive`);
* stricter: a port below `min_port` (default 1024; the kernel opens any
  non-zero port) gives nothing (`low-port`), nor does a number the kernel
  would truncate (an address of 2^32 or more, a port above 65535:
  `malformed`, `bad-port`);
* only the client's side is read (the server relays other users' offers
  to the client; they open nothing here, as in the kernel);
* a connection whose first line is an HTTP request is no IRC client (a web
  page making a browser POST lines to port 6667, NAT Slipstreaming): the
  flow is no longer read. Browsers block port 6667; this does not depend on it.

Differences from nf_conntrack_irc, on purpose: it reads only the first
message of each TCP segment and only up to 4 KiB of it, and a file name with
spaces defeats its parser; alg reads every line of the stream (8 KiB at
most). IPv6: the kernel's helper is IPv4 only; alg takes an IPv6 literal on
an IPv6 connection.

Policy: class `dcc` (the kernel's class 0), 8 expectations per IRC
connection (`max_dcc_channels`), 300 s (`dcc_timeout`). NAT rewriting: not
yet (offsets of the address and port are reported).
"""

from __future__ import annotations

import ipaddress
import re

import alg
from alg import TCP, Direction, Expect, ExpectClass, HelperSpec, Notice, Parsed

from ._ports import min_port_option, port_refusal

IRC_PORT = 6667
DCC_TYPES = frozenset((b"SEND", b"CHAT", b"MOVE", b"TSEND", b"SCHAT"))  # nf_conntrack_irc.c dccprotos[]
CTCP = b"\x01"
_DCC = CTCP + b"DCC "
MAX_LINE = 8192 + 512  # IRCv3 message tags (8191 bytes) + RFC 1459 §2.3's 512-byte message
IPV4_MAX = (1 << 32) - 1
_DIGITS = re.compile(rb"[0-9]{1,20}")
# RFC 9112 §3: method SP request-target SP HTTP-version
_HTTP_REQUEST = re.compile(rb"[A-Z]+ [^ ]+ HTTP/[0-9]\.[0-9]\r?\n")


class IrcState:
    __slots__ = ("first", "scanned")

    def __init__(self) -> None:
        self.first = True  # no line read yet from the client
        self.scanned = 0  # bytes of the unfinished line already searched for its end


class IrcHelper(alg.Helper):
    spec = HelperSpec(
        name="irc",
        protocols=(TCP,),
        ports=(IRC_PORT,),
        classes=(ExpectClass("dcc", 8, 300),),
        options=min_port_option("DCC"),
        max_buffer=65536,  # bounds a whole segment before it is read: servers send MOTDs and NAMES in bursts
        resync=alg.RESYNC_LINE,
        queue=29,
        doc="client's PRIVMSG :\\1DCC SEND|CHAT ... ip port\\1 -> tcp *:* -> client:port",
        knobs={"low-port": "options.min_port"},
    )

    @staticmethod
    def looks_like(payload: bytes) -> bool:
        """A client's registration: NICK or USER (or CAP LS, IRCv3) first."""
        return payload[:5].upper() in (b"NICK ", b"USER ", b"PASS ") or payload[:7].upper() == b"CAP LS "

    def new_state(self) -> IrcState:
        return IrcState()

    def inspect(self, segment: alg.Segment, state: IrcState) -> alg.Outcome:
        data = segment.data
        if segment.direction is not Direction.ORIGINAL:
            return Parsed(len(data))  # offers relayed from other users open nothing on this side
        end = data.find(b"\n", state.scanned)  # a line in 1-byte segments is searched once, not per byte
        if end < 0:
            if len(data) > MAX_LINE:
                raise alg.ProtocolViolation(f"a client line longer than {MAX_LINE} bytes")
            state.scanned = len(data)
            return alg.NEED_DATA
        state.scanned = 0
        line = data[:end + 1]
        if state.first:
            state.first = False
            if _HTTP_REQUEST.fullmatch(line):
                raise alg.ProtocolViolation("an HTTP request on the IRC port (NAT Slipstreaming?)")
        return Parsed(end + 1, _privmsg(line, segment, self.options))


def _privmsg(line: bytes, seg: alg.Segment, options) -> tuple:
    """The actions for one client line: a DCC offer's expectation or why there is none."""
    at = _skip_prefixes(line)
    if line[at:at + 8].upper() != b"PRIVMSG ":
        return ()
    text = line.find(b" :", at + 7)  # RFC 1459 §2.3.1: the trailing parameter
    if text < 0 or not line.startswith(_DCC, text + 2):
        return ()
    start = text + 2 + len(_DCC)
    close = line.find(CTCP, start)
    body_end = close if close >= 0 else len(line.rstrip(b"\r\n"))
    kind, _, rest = line[start:body_end].partition(b" ")
    if kind not in DCC_TYPES:
        return ()
    fields = _fields(rest, start + len(kind) + 1)
    if fields is None or len(fields) < 3:
        return (Notice("malformed", f"DCC {kind.decode()}: {rest[:60]!r}"),)
    (addr_text, addr_at), (port_text, port_at) = fields[1], fields[2]
    addr = _address(addr_text, seg.flow.l3)
    if isinstance(addr, Notice):
        return (addr,)
    if not _DIGITS.fullmatch(port_text):
        return (Notice("malformed", f"DCC port {port_text[:20]!r}"),)
    port = int(port_text)
    if port == 0:
        return (Notice("passive", f"DCC {kind.decode()} with port 0: the addressee listens"),)
    refused = port_refusal(port, options, "DCC")
    if refused:
        return (refused,)
    if addr != seg.sender:
        return (Notice("address-mismatch", f"DCC {kind.decode()} offers {addr}, sent by {seg.sender}"),)
    where = ((addr_at, len(addr_text)), (port_at, len(port_text)))
    return (Expect("dcc", TCP, None, addr, None, port, where=where),)


def _skip_prefixes(line: bytes) -> int:
    """Where the command starts: after leading blanks, IRCv3 `@tags` and a `:prefix` (RFC 1459 §2.3.1)."""
    at = len(line) - len(line.lstrip(b" \r\n"))
    for mark in (b"@", b":"):
        if line.startswith(mark, at):
            space = line.find(b" ", at)
            if space < 0:
                return len(line)
            at = space + 1
            while line.startswith(b" ", at):
                at += 1
    return at


def _fields(rest: bytes, base: int) -> list[tuple[bytes, int]] | None:
    """The DCC arguments with their offsets (`base`: offset of `rest` in the line); the first,
    the file name, may be quoted and hold spaces. None when a quote does not close."""
    out: list[tuple[bytes, int]] = []
    at = 0
    if rest.startswith(b'"'):
        close = rest.find(b'"', 1)
        if close < 0:
            return None
        out.append((rest[1:close], base + 1))
        at = close + 1
    for token in rest[at:].split(b" "):
        if token:
            out.append((token, base + rest.index(token, at)))
            at = rest.index(token, at) + len(token)
    return out


def _address(text: bytes, family: int) -> alg.IPAddress | Notice:
    """A DCC address: a decimal 32-bit number (IPv4) or an IPv6 literal."""
    if _DIGITS.fullmatch(text):
        number = int(text)
        if not 0 < number <= IPV4_MAX:
            return Notice("malformed", f"DCC address {text[:20]!r} is no 32-bit number")
        addr: alg.IPAddress = ipaddress.IPv4Address(number)
    else:
        try:
            addr = ipaddress.IPv6Address(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            return Notice("malformed", f"DCC address {text[:40]!r}")
    if addr.version != family:
        return Notice("family-mismatch", f"DCC address {addr} on an IPv{family} connection")
    return addr


@alg.hookimpl
def alg_register_helpers(register):
    register(IrcHelper)
