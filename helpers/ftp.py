"""FTP: opens the data connection announced on the control connection.

Active mode: the client's `PORT h1,h2,h3,h4,p1,p2` (RFC 959 §4.1.2, IPv4)
or `EPRT |af|addr|port|` (RFC 2428 §2) names where the server must connect,
so the server may open `tcp server:* -> client:port`.
Passive mode: the server's `227 ... (h1,h2,h3,h4,p1,p2)` (RFC 959, RFC 1123
§4.1.2.6) or `229 ... (|||port|)` (RFC 2428 §3) names where the client must
connect, so the client may open `tcp client:* -> server:port`.

Security, as the kernel's nf_conntrack_ftp: an advertised address that is
not the sender's own gives no expectation unless the `loose` option is set
(the PORT-bounce / FTP-bounce defence); port 0, out-of-range numbers and an
EPRT family that does not match the connection give none. After `AUTH TLS`
is accepted (234) the channel carries TLS records, which are skipped; a
client that later sends `CCC` (RFC 4217 §12.3) goes back to clear text,
and those commands are read again, as the kernel's helper would.

Stricter than nf_conntrack_ftp, on purpose (tests/test_kernel_ftp_differential.py
measures both): the kernel reads each PORT/227 number without a range check, so
`PORT 266,0,1,2,4,1` is 10.0.1.2 port 1025 to it (266 keeps its low byte) and
`PORT 10,0,1,2,0,0` expects port 0; alg refuses both (a number above 255 is
malformed, port 0 no data connection). A PORT argument must be exactly six
numbers and the line end (RFC 959 §4.1.1).

An HTTP request on the control port stops inspection of the flow: a web page
can make a browser POST to port 21 with a body whose lines read as FTP
commands (NAT Slipstreaming), and a PORT among them would open the browser's
host to the page's server. Browsers refuse port 21 today; this does not
depend on it.

Policy: one class `ftp` (the kernel's and conntrackd's policy name, so alg
can take over a helper that `nfct add helper ftp` created), 1 expectation per
control connection, 300 s
(the kernel's defaults). NAT rewriting: not yet (offsets are reported).
Limits: commands are read line by line; a line longer than `max_buffer`
(8 KiB) stops inspection of the flow. A TCP segment the firewall never sees
(lost in a capture, asymmetric routing) costs the commands it held: once the
core gives up on the hole, reading resumes at the first line that starts
like a command (client) or a reply (server), else after the next line end,
only in a direction where an FTP command (reply) was read before the hole;
otherwise, and in a TLS-protected direction, that direction is given up.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Callable

import alg
from alg import TCP, Direction, Expect, ExpectClass, Form, HelperSpec, Notice, Option, Parsed, Rewrite

# RFC 959 §4.1.2 host-port: six comma-separated numbers; in the 227 reply
# they may sit anywhere in the text (the kernel scans for the first digit; so
# do we), but never inside a longer run of digits and commas
_SIX = rb"(\d{1,3}),(\d{1,3}),(\d{1,3}),(\d{1,3}),(\d{1,3}),(\d{1,3})"
_SIX_NUMBERS = re.compile(rb"(?<![\d,])" + _SIX + rb"(?![\d,])")
# RFC 959 §4.1.1: PORT <SP> <host-port> <CRLF>, nothing else on the line
_PORT_ARG = re.compile(rb" *" + _SIX + rb" *\r?\n")
# after lost bytes (RFC 959 §4.1: commands are 3-4 letters; §4.2: replies
# start with three digits): does the data start a line?
_LINE_START = {Direction.ORIGINAL: re.compile(rb"[A-Za-z]{3,4}(?: |\r?\n)"),
               Direction.REPLY: re.compile(rb"\d{3}[ -]")}
# RFC 9112 §3: method SP request-target SP HTTP-version: an HTTP client, not an FTP one
_HTTP_REQUEST = re.compile(rb"[A-Z]+ \S+ HTTP/\d\.\d\r?\n")
# RFC 2428 §2: EPRT<space><d><net-prt><d><net-addr><d><tcp-port><d>, d any of ASCII 33-126
_EPRT = re.compile(rb"(?P<d>[!-~])(?P<af>[12])(?P=d)(?P<addr>[0-9A-Fa-f:.]+)(?P=d)(?P<port>\d{1,5})(?P=d)")
# RFC 2428 §3: 229 Entering Extended Passive Mode (<d><d><d><tcp-port><d>)
_EPSV = re.compile(rb"\((?P<d>[!-~])(?P=d)(?P=d)(?P<port>\d{1,5})(?P=d)\)")


# RFC 959 §4.1, RFC 2228, RFC 2389, RFC 2428, RFC 3659, RFC 4217 (and the X* forms of RFC 775):
# the commands that make a line "FTP" before a lost segment (see FtpHelper.resync)
_COMMANDS = frozenset(b"""USER PASS ACCT CWD CDUP SMNT QUIT REIN PORT PASV TYPE STRU MODE RETR STOR STOU APPE ALLO
    REST RNFR RNTO ABOR DELE RMD MKD PWD LIST NLST SITE SYST STAT HELP NOOP AUTH ADAT PROT PBSZ CCC MIC CONF ENC
    FEAT OPTS LANG EPRT EPSV LPRT LPSV MDTM SIZE MLST MLSD HOST CLNT XCUP XCWD XMKD XPWD XRMD""".split())
# RFC 959 §4.2: a reply is three digits, the first 1-5, then SP or "-"
_REPLY = re.compile(rb"[1-5]\d\d[ -]")
_VERB = re.compile(rb"([A-Za-z]{3,4})(?: |\r?\n)")


# TLS record content types (RFC 8446 §5.1): change_cipher_spec .. application_data
_TLS_RECORD_TYPES = frozenset(range(20, 24))


class FtpState:
    __slots__ = ("auth_requested", "encrypted", "tls_skip", "known", "scanned")

    def __init__(self) -> None:
        self.auth_requested = False
        self.encrypted = False
        self.tls_skip = [0, 0]  # bytes of a TLS record still to skip, per direction
        self.known = [False, False]  # an FTP command (reply) seen in this direction: it is FTP
        self.scanned = [0, 0]  # bytes of the unfinished line already searched for its end


_ORIGINAL = Direction.ORIGINAL
_FIRST_COMMANDS = (b"USER ", b"AUTH TLS", b"AUTH SSL", b"FEAT\r\n")  # what clients send first (RFC 959, 4217, 2389)


class FtpHelper(alg.Helper):
    spec = HelperSpec(
        name="ftp",
        protocols=(TCP,),
        ports=(21,),
        classes=(ExpectClass("ftp", 1, 300),),
        options={"loose": Option(False, "accept an advertised address that is not the sender's (unsafe)")},
        priv_data_len=24,  # conntrackd's ftp helper uses 24; lets alg take over an `nfct add`-ed helper
        max_buffer=8192,
        resync=alg.RESYNC_LINE,
        knobs={"address-mismatch": "options.loose"},
    )

    @staticmethod
    def looks_like(payload: bytes) -> bool:
        """A client's first command or a server greeting that names FTP."""
        head = payload[:80]
        return head.startswith(_FIRST_COMMANDS) or (head.startswith((b"220 ", b"220-"))
                                                    and b"FTP" in head.split(b"\n", 1)[0].upper())

    def new_state(self) -> FtpState:
        return FtpState()

    def resync(self, segment: alg.Segment, state: FtpState) -> alg.Resync:
        """After lost bytes: resume at a line that starts like a command (or
        reply), else after the next line end, but only in a direction already
        known to carry FTP (a command or reply read before the hole). A
        stream whose first bytes were lost may be anything: an HTTP POST to
        port 21 whose head was in the lost segment and whose body holds
        `PORT` lines would otherwise be read as commands. Inside TLS the
        record framing is gone: that direction is given up too."""
        state.scanned[segment.direction] = 0
        if state.encrypted or not state.known[segment.direction]:
            return None
        if _LINE_START[segment.direction].match(segment.data):
            return 0
        return super().resync(segment, state)

    def inspect(self, segment: alg.Segment, state: FtpState) -> alg.Outcome:
        data = segment.data
        if state.encrypted:
            direction = segment.direction
            if not state.tls_skip[direction] and data[0] in _TLS_RECORD_TYPES:
                if len(data) < 5:
                    return alg.NEED_DATA
                state.tls_skip[direction] = 5 + int.from_bytes(data[3:5], "big")
            if state.tls_skip[direction]:
                n = min(state.tls_skip[direction], len(data))
                state.tls_skip[direction] -= n
                return Parsed(n)
        d = segment.direction
        scanned = state.scanned
        end = data.find(b"\n", scanned[d])  # a line in 1-byte segments is searched once, not per byte
        if end < 0:
            scanned[d] = len(data)
            return alg.NEED_DATA
        scanned[d] = 0
        line = data[:end + 1]
        known = state.known
        if d is _ORIGINAL:
            actions = self._command(line, segment, state)
            if not known[d]:
                verb = _VERB.match(line)
                known[d] = verb is not None and verb[1].upper() in _COMMANDS
        else:
            actions = self._reply(line, segment, state)
            if not known[d]:
                known[d] = _REPLY.match(line) is not None
        return Parsed(end + 1, actions)

    # ------------------------------------------------------------ client -> server
    def _command(self, line: bytes, seg: alg.Segment, state: FtpState) -> tuple:
        if b"HTTP/" in line and _HTTP_REQUEST.fullmatch(line):
            raise alg.ProtocolViolation("an HTTP request on the FTP control port (NAT Slipstreaming?)")
        verb = line[:5].upper()
        if verb == b"PORT " and seg.flow.l3 == 4:
            m = _PORT_ARG.fullmatch(line, 5)
            return self._six(m, seg) if m else (Notice("malformed", "PORT"),)
        if verb == b"EPRT ":
            m = _EPRT.match(line, 5)
            if not m:
                return (Notice("malformed", "EPRT"),)
            if int(m["af"]) != {4: 1, 6: 2}[seg.flow.l3]:
                return (Notice("family-mismatch", "EPRT"),)
            try:
                addr = ipaddress.ip_address(m["addr"].decode())
            except ValueError:
                return (Notice("malformed", "EPRT address"),)
            port = int(m["port"])
            return self._expect(addr, port, seg, (m.start("addr"), m.end("port") - m.start("addr")),
                                lambda: (Rewrite(m.start("addr"), len(m["addr"]), addr, None, Form.ADDR),
                                         Rewrite(m.start("port"), len(m["port"]), addr, port, Form.PORT)))
        if verb == b"AUTH " and line[:8].upper() in (b"AUTH TLS", b"AUTH SSL"):
            state.auth_requested = True
        return ()

    # ------------------------------------------------------------ server -> client
    def _reply(self, line: bytes, seg: alg.Segment, state: FtpState) -> tuple:
        code = line[:4]
        if code == b"227 " and seg.flow.l3 == 4:
            m = _SIX_NUMBERS.search(line, 4)
            return self._six(m, seg) if m else (Notice("malformed", "227"),)
        if code == b"229 ":
            m = _EPSV.search(line, 4)
            if not m:
                return (Notice("malformed", "229"),)
            port = int(m["port"])
            return self._expect(seg.sender, port, seg, (m.start("port"), len(m["port"])),
                                lambda: (Rewrite(m.start("port"), len(m["port"]), seg.sender, port, Form.PORT),))
        if state.auth_requested and code[:3] in (b"234",):
            state.encrypted = True
            return (Notice("tls", "control channel encrypted, no longer inspected"),)
        if state.auth_requested and code[:1] in (b"4", b"5"):
            state.auth_requested = False
        return ()

    def _six(self, m: re.Match, seg: alg.Segment) -> tuple:
        h1, h2, h3, h4, p1, p2 = map(int, m.groups())
        if max(h1, h2, h3, h4, p1, p2) > 255:
            return (Notice("malformed", "number above 255"),)
        value, port = h1 << 24 | h2 << 16 | h3 << 8 | h4, p1 * 256 + p2
        sender = seg.sender
        # the sender's own address (as it must be, unless `loose`): its object, not a new one
        addr = sender if sender.version == 4 and int(sender) == value else ipaddress.IPv4Address(value)
        start, end = m.span()
        # (the six numbers' span, PORT's match taking the line's end too: only under NAT)
        return self._expect(addr, port, seg, (start, end - start),
                            lambda: (Rewrite(m.start(1), m.end(6) - m.start(1), addr, port, Form.FTP),))

    def _expect(self, addr: alg.IPAddress, port: int, seg: alg.Segment, where: tuple[int, int],
                rewrites: Callable[[], tuple]) -> tuple:
        """The data connection's expectation; under NAT, the spans that name it (the
        core writes the outside endpoint there, as the kernel's nf_nat_ftp): `rewrites`
        makes them, only then."""
        if not 0 < port < 65536:
            return (Notice("bad-port", str(port)),)
        if addr.version != seg.flow.l3:
            return (Notice("family-mismatch", str(addr)),)
        sender = seg.sender
        if addr is not sender and addr != sender:  # (_six passes the sender's own object: no comparison)
            if not self.options["loose"]:
                return (Notice("address-mismatch", f"{addr} advertised by {sender}"),)
        expect = Expect("ftp", TCP, seg.receiver, addr, None, port, where=(where,))
        return (expect, *rewrites()) if seg.nat is not None else (expect,)


@alg.hookimpl
def alg_register_helpers(register):
    register(FtpHelper)
