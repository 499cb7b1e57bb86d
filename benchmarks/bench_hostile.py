"""Cost of hostile input per helper: prints numbers, asserts nothing.

    .venv/bin/python benchmarks/bench_hostile.py [--budget SECONDS] [HELPER...]

Every helper (the built-in ones, SIP included) is fed, through the engine
(replay's path: decode skipped, flow table, TCP streams, helper, policy gate),
a normal message and pathological ones: long whitespace runs inside a value,
continuation lines, many headers, maximum-size messages, `<` or `(` runs,
and 1-byte TCP segments. For each case it prints the worst time one packet
took, the time per KB of input and how many times a normal message's per-KB
cost of the same helper (measured in the same run) that is, and how many
times the normal message's cost per packet the worst packet is (the normal
case is the median of NORMAL_RUNS runs). A case that
exceeds its time budget (default 3 s) is cut short and marked `cut`: its
figures are then a lower bound.
"""

from __future__ import annotations

import argparse
import ipaddress
import struct
import time
from dataclasses import dataclass
from typing import Callable

from alg.decode import TCP_ACK, TCP_SYN, Packet
from alg.engine import Engine, make_slots
from alg.model import TCP, UDP
from alg.plugins import load_plugins
from alg.policy import default_policy

HOST = load_plugins()
POLICY = default_policy({n: c.spec for n, c in HOST.helpers.items()})
ip = ipaddress.ip_address
MAX_UDP = 65507  # largest UDP payload over IPv4
NORMAL_RUNS = 21


class Conn:
    """Packets of one TCP connection (the handshake first)."""

    def __init__(self, src: str, dst: str, sport: int, dport: int):
        self.ends = [(ip(src), sport), (ip(dst), dport)]
        self.seq = [1000, 9000]

    def pkt(self, side: int, payload: bytes = b"", flags: int = TCP_ACK) -> Packet:
        (a, ap), (b, bp) = self.ends[side], self.ends[1 - side]
        p = Packet(a.version, TCP, a.packed, b.packed, ap, bp, payload, self.seq[side], flags)
        self.seq[side] += len(payload) + (1 if flags & TCP_SYN else 0)
        return p

    def handshake(self) -> list[Packet]:
        return [self.pkt(0, flags=TCP_SYN), self.pkt(1, flags=TCP_SYN | TCP_ACK)]

    def segments(self, side: int, data: bytes, size: int) -> list[Packet]:
        return [self.pkt(side, data[i:i + size]) for i in range(0, len(data), size)]


def udp(src: str, dst: str, sport: int, dport: int, payload: bytes) -> Packet:
    return Packet(ip(src).version, UDP, ip(src).packed, ip(dst).packed, sport, dport, payload)


@dataclass
class Case:
    name: str
    setup: list[Packet]  # fed first, not timed (a search before its answers, a handshake)
    timed: list[Packet]


@dataclass
class Result:
    packets: int
    nbytes: int
    worst: float
    total: float
    cut: bool


def run(helper: str, case: Case, budget: float) -> Result:
    engine = Engine(make_slots([POLICY.helpers[helper]], HOST.helpers), POLICY.core, track_related=True)
    for i, p in enumerate(case.setup):
        engine.process(p, 0.001 * i)
    worst = total = 0.0
    nbytes = n = 0
    cut = False
    for p in case.timed:
        t = time.perf_counter()
        engine.process(p, 1.0)
        dt = time.perf_counter() - t
        worst, total, nbytes, n = max(worst, dt), total + dt, nbytes + len(p.payload), n + 1
        if total > budget:
            cut = n < len(case.timed)
            break
    return Result(n, nbytes, worst, total, cut)


# ---------------------------------------------------------------- cases per helper
def ftp_cases() -> list[Case]:
    c = Conn("10.0.1.2", "10.0.2.2", 40000, 21)
    session = b"USER anonymous\r\nPASS x@y\r\nTYPE I\r\nPORT 10,0,1,2,39,16\r\nRETR f\r\n"
    normal = Case("normal session (5 commands, 1 segment each)", c.handshake(),
                  [c.pkt(0, line + b"\n") for line in session.split(b"\n") if line])
    c2 = Conn("10.0.1.2", "10.0.2.2", 40001, 21)
    long_line = Case("8 KB line without end, 1-byte segments", c2.handshake(),
                     c2.segments(0, b"PORT " + b" " * 8000, 1))
    c3 = Conn("10.0.1.2", "10.0.2.2", 40002, 21)
    digits = Case("227 reply of 8 KB digits and commas", c3.handshake(),
                  [c3.pkt(1, b"227 " + b"1," * 4000 + b"\r\n")])
    c4 = Conn("10.0.1.2", "10.0.2.2", 40003, 21)
    many = Case("3,000 PORT lines in one 64 KB stream", c4.handshake(),
                c4.segments(0, b"PORT 10,0,1,2,39,16\r\n" * 3000, 1400))
    return [normal, long_line, digits, many]


SSDP_ANSWER = (b"HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=1800\r\nEXT:\r\n"
               b"LOCATION: http://192.168.1.30:49152/desc.xml\r\nSERVER: Linux UPnP/1.0\r\nST: ssdp:all\r\n\r\n")
MSEARCH = b'M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nMAN: "ssdp:discover"\r\nMX: 1\r\nST: ssdp:all\r\n\r\n'


def ssdp_cases() -> list[Case]:
    search = [udp("192.168.1.20", "239.255.255.250", 50000, 1900, MSEARCH)]

    def answer(payload: bytes) -> list[Packet]:
        return [udp("192.168.1.30", "192.168.1.20", 1900, 50000, payload)]

    ws = b"X-A: a" + b" " * (MAX_UDP - 200) + b"b\r\n"
    loc_ws = b"LOCATION: " + b" \t" * ((MAX_UDP - 200) // 2) + b"http://192.168.1.30:1/\r\n"
    many = b"".join(b"X-%d: v\r\n" % i for i in range((MAX_UDP - 100) // 12))
    cases = [
        Case("answer 200 OK (normal)", search, answer(SSDP_ANSWER)),
        Case("answer, 64 KB whitespace run in a value", search, answer(SSDP_ANSWER[:-2] + ws + b"\r\n")),
        Case("answer, 64 KB whitespace before LOCATION's URL", search,
             answer(b"HTTP/1.1 200 OK\r\n" + loc_ws + b"\r\n")),
        Case("answer, 5,000 headers in 64 KB", search, answer(b"HTTP/1.1 200 OK\r\n" + many + SSDP_ANSWER[17:])),
    ]

    def tcp_case(name: str, request: bytes, size: int) -> Case:
        c = Conn("192.168.1.20", "192.168.1.30", 40000, 49152)  # admitted by the LOCATION expectation
        setup = search + answer(SSDP_ANSWER) + c.handshake()
        return Case(name, setup, c.segments(0, request, size))

    sub = (b"SUBSCRIBE /evt HTTP/1.1\r\nHOST: 192.168.1.30:49152\r\nCALLBACK: <http://192.168.1.20:49200/cb>\r\n"
           b"NT: upnp:event\r\nTIMEOUT: Second-1800\r\n\r\n")
    cases += [
        tcp_case("SUBSCRIBE (normal)", sub, 1400),
        tcp_case("SUBSCRIBE, 16 KB whitespace run in a value", sub[:-2] + b"X-A: a" + b" " * 16000 + b"b\r\n\r\n",
                 1400),
        tcp_case("SUBSCRIBE, CALLBACK of 16 KB '<'", sub.replace(b"<http", b"<" * 16000 + b"http"), 1400),
        tcp_case("SUBSCRIBE 16 KB head, 1-byte segments", sub[:-2] + b"X-A: " + b"a" * 15900 + b"\r\n\r\n", 1),
    ]
    return cases


def tns_packet(ptype: int, body: bytes) -> bytes:
    return struct.pack(">HHBBH", 8 + len(body), 0, ptype, 0, 0) + body


def tns_cases() -> list[Case]:
    def redirect(text: bytes, size: int = 1 << 16) -> Case:
        c = Conn("10.0.1.2", "10.0.2.2", 40000, 1521)
        wire = tns_packet(5, struct.pack(">H", len(text)) + text)
        return Case("", c.handshake(), c.segments(1, wire, size))

    addr = b"(ADDRESS=(PROTOCOL=TCP)(HOST=10.0.2.2)(PORT=1522))"
    tail = b"\0(DESCRIPTION=(CONNECT_DATA=(SERVICE_NAME=XE)))"
    big = 8000
    cases = [
        ("REDIRECT (normal)", redirect(addr + tail)),
        ("REDIRECT, 8 KB whitespace inside HOST's value",
         redirect(b"(ADDRESS=(PROTOCOL=TCP)(HOST=10.0.2.2" + b" " * big + b"x)(PORT=1522))")),
        ("REDIRECT, 8 KB of '(' without '='", redirect(b"(" * big + addr)),
        ("REDIRECT, 8 KB of '(A=' parameters", redirect(b"(ADDRESS=" + b"(A= )" * (big // 5) + b")")),
        ("REDIRECT, 8 KB whitespace between keywords", redirect(b"(" + b" " * big + b"ADDRESS" + b" " * 10 + b"=x")),
        ("REDIRECT, 1-byte segments", redirect(addr + b" " * 2000 + tail, 1)),
    ]
    out = []
    for name, case in cases:
        case.name = name
        out.append(case)
    return out


def rpc_cases() -> list[Case]:
    call = struct.pack(">10I", 7, 0, 2, 100000, 2, 3, 0, 0, 0, 0) + struct.pack(">4I", 100003, 3, 6, 0)
    reply = struct.pack(">6I", 7, 1, 0, 0, 0, 0) + struct.pack(">I", 2049)
    normal = Case("GETPORT call and reply (UDP)", [],
                  [udp("10.0.1.2", "10.0.2.2", 800, 111, call), udp("10.0.2.2", "10.0.1.2", 111, 800, reply)])
    junk = Case("64 KB datagram of junk", [], [udp("10.0.1.2", "10.0.2.2", 801, 111, b"\xff" * MAX_UDP)])
    c = Conn("10.0.1.2", "10.0.2.2", 40000, 111)
    frags = b"".join(struct.pack(">I", 1) + bytes([b]) for b in call[:-1]) + struct.pack(">I", 0x80000001) + call[-1:]
    frags = b"".join(struct.pack(">I", 1) + b"\0" for _ in range(8000)) + frags
    record = Case("8 KB record in 1-byte record fragments", c.handshake(), c.segments(0, frags, 1400))
    c2 = Conn("10.0.1.2", "10.0.2.2", 40001, 111)
    bytewise = Case("GETPORT over TCP, 1-byte segments", c2.handshake(),
                    c2.segments(0, struct.pack(">I", 0x80000000 | len(call)) + call, 1))
    return [normal, junk, record, bytewise]


def discovery_cases(helper: str) -> list[Case]:
    if helper == "dhcpv6":
        msg = bytes([1]) + b"\x12\x34\x56" + b"\x00\x01\x00\x0e" + b"\x00\x01" * 7
        return [Case("Solicit (normal)", [], [udp("fe80::20", "ff02::1:2", 546, 547, msg)]),
                Case("64 KB Solicit of options", [], [udp("fe80::20", "ff02::1:2", 546, 547,
                                                            msg + b"\x00\x08\x00\x00" * ((MAX_UDP - 30) // 4))])]
    if helper == "mdns":
        q = struct.pack("!HHHHHH", 0, 0, 1, 0, 0, 0) + b"\x04host\x05local\x00\x00\x01\x00\x01"
        return [Case("legacy query (normal)", [], [udp("192.168.1.20", "224.0.0.251", 40000, 5353, q)]),
                Case("64 KB query of compression pointers", [],
                     [udp("192.168.1.20", "224.0.0.251", 40000, 5353, q[:12] + b"\xc0\x0c" * ((MAX_UDP - 12) // 2))])]
    hdr = struct.pack("!BBHBBHBHH", 2, 1, 0, 0, 0, 0, 0, 1, 2) + b"en"
    return [Case("SrvRqst (normal)", [], [udp("192.168.1.20", "239.255.255.253", 40000, 427, hdr + b"\0" * 10)]),
            Case("64 KB SrvRqst", [], [udp("192.168.1.20", "239.255.255.253", 40000, 427, hdr + b"a" * (MAX_UDP - 20))])]


SDP = (b"v=0\r\no=u 1 1 IN IP4 10.0.1.2\r\ns=-\r\nc=IN IP4 10.0.1.2\r\nt=0 0\r\n"
       b"m=audio 16000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n")


def sip_message(extra: bytes = b"", sdp: bytes = SDP, method: bytes = b"INVITE", i: int = 0) -> bytes:
    head = (b"%s sip:bob@10.0.2.2 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.1.2:5061;branch=z9hG4bK-%d\r\n"
            b"From: <sip:alice@10.0.1.2>;tag=%d\r\nTo: <sip:bob@10.0.2.2>\r\nCall-ID: %d@10.0.1.2\r\n"
            b"CSeq: 1 %s\r\nContact: <sip:alice@10.0.1.2:5061>\r\nMax-Forwards: 70\r\n" % (method, i, i, i, method))
    return head + extra + b"Content-Type: application/sdp\r\nContent-Length: %d\r\n\r\n" % len(sdp) + sdp


def sip_cases() -> list[Case]:
    def datagram(payload: bytes) -> list[Packet]:
        return [udp("10.0.1.2", "10.0.2.2", 5061, 5060, payload)]

    room = MAX_UDP - len(sip_message()) - 100
    cont = b"Subject: x\r\n" + b" y\r\n" * (room // 4 - 4)
    many_m = SDP + b"".join(b"m=audio %d/4 RTP/AVP 0\r\n" % (20000 + 8 * i) for i in range(room // 26))
    contacts = b"".join(b"Contact: <sip:a%d@10.0.1.2:5061>\r\n" % i for i in range(2500))
    c = Conn("10.0.1.2", "10.0.2.2", 40000, 5060)
    return [
        Case("INVITE with SDP (normal)", [], datagram(sip_message())),
        Case("INVITE, 64 KB of continuation lines", [], datagram(sip_message(cont))),
        Case("INVITE, 64 KB whitespace run in a header", [],
             datagram(sip_message(b"Subject: a" + b" " * room + b"b\r\n"))),
        Case("INVITE, 64 KB SDP of m= lines with port counts", [], datagram(sip_message(sdp=many_m))),
        Case("REGISTER with 2,500 Contacts", [], datagram(sip_message(contacts, b"", b"REGISTER"))),
        Case("INVITE over TCP, 1-byte segments", c.handshake(),
             c.segments(0, sip_message(b"Subject: " + b"z" * 1000 + b"\r\n"), 1)),
    ]


DCC = b"PRIVMSG bob :\x01DCC SEND f 167772418 5000 1\x01\r\n"  # 10.0.1.2, the sender


def irc_cases() -> list[Case]:
    c = Conn("10.0.1.2", "10.0.2.2", 40000, 6667)
    normal = Case("DCC SEND offer (normal)", c.handshake(), [c.pkt(0, DCC)])
    c2 = Conn("10.0.1.2", "10.0.2.2", 40001, 6667)
    long_line = Case("8.5 KB line without end, 1-byte segments", c2.handshake(),
                     c2.segments(0, b"PRIVMSG bob :" + b"x" * 8690, 1))
    c3 = Conn("10.0.1.2", "10.0.2.2", 40002, 6667)
    many = Case("1,500 DCC offers in one 64 KB stream", c3.handshake(), c3.segments(0, DCC * 1500, 1400))
    c4 = Conn("10.0.1.2", "10.0.2.2", 40003, 6667)
    quotes = Case("8 KB quoted name and 1,000 arguments", c4.handshake(),
                  [c4.pkt(0, b'PRIVMSG b :\x01DCC SEND "' + b"a " * 3000 + b'" ' + b"1 " * 1000 + b"\x01\r\n")])
    return [normal, long_line, many, quotes]


def sane_cases() -> list[Case]:
    def start(port: int) -> tuple[Conn, list[Packet]]:
        c = Conn("10.0.1.2", "10.0.2.2", port, 6566)
        return c, c.handshake()
    c, setup = start(40000)
    normal = Case("NET_START and its reply (normal)", setup,
                  [c.pkt(0, struct.pack("!II", 7, 0)), c.pkt(1, struct.pack("!IHHII", 0, 0, 40123, 0x1234, 0))])
    c2, setup2 = start(40001)
    big = Case("64 KB reply after NET_START", setup2 + [c2.pkt(0, struct.pack("!II", 7, 0))],
               c2.segments(1, b"\0" * 65536, 65536))
    c3, setup3 = start(40002)
    bytewise = Case("NET_START and its reply in 1-byte segments", setup3,
                    c3.segments(0, struct.pack("!II", 7, 0), 1) + c3.segments(1, struct.pack("!IHHI", 0, 0, 40123, 0), 1))
    return [normal, big, bytewise]


def tftp_cases() -> list[Case]:
    return [Case("RRQ with options (normal)", [], [udp("10.0.1.2", "10.0.2.2", 40000, 69,
                                                       b"\0\1pxelinux.0\0octet\0tsize\x000\0blksize\x001468\0")]),
            Case("64 KB RRQ of option pairs", [], [udp("10.0.1.2", "10.0.2.2", 40001, 69,
                                                     b"\0\1f\0octet\0" + b"a\0b\0" * ((MAX_UDP - 10) // 4))])]


AMANDA_HEAD = b"Amanda 3.5 REP HANDLE 000-00000001 SEQ 1\n"


def amanda_cases() -> list[Case]:
    def rep(port: int, body: bytes) -> list[Packet]:
        return [udp("10.0.2.2", "10.0.1.2", 10080, port, AMANDA_HEAD + body)]
    req = [udp("10.0.1.2", "10.0.2.2", p, 10080, b"Amanda 3.5 REQ HANDLE 000-00000001 SEQ 0\n") for p in (850, 851, 852)]
    return [Case("REP with CONNECT DATA/MESG/INDEX (normal)", req[:1],
                 rep(850, b"CONNECT DATA 50001 MESG 50002 INDEX 50003\nOPTIONS features=ff;\n")),
            Case("64 KB CONNECT line of 5,000 stream pairs", req[1:2],
                 rep(851, b"CONNECT " + b"DATA 50001 " * 5900 + b"\n")),
            Case("64 KB of body lines before CONNECT", req[2:3],
                 rep(852, b"x\n" * 32000 + b"CONNECT DATA 50001\n"))]


def netbios_cases() -> list[Case]:
    q = struct.pack("!HHHHHH", 1, 0x0110, 1, 0, 0, 0) + b"\x20" + b"A" * 32 + b"\0\0\x20\0\1"
    return [Case("broadcast name query (normal)", [], [udp("10.0.2.1", "10.0.2.255", 40000, 137, q)]),
            Case("64 KB broadcast query", [], [udp("10.0.2.1", "10.0.2.255", 40001, 137, q + b"\0" * (MAX_UDP - len(q)))])]


def snmp_cases() -> list[Case]:
    get = bytes.fromhex("302602010104067075626c6963a019020142020100020100300e300c06082b060102010101000500")
    pdu, community = get[13:], MAX_UDP - 40  # a 64 KB community, 3-octet long-form lengths
    body = get[2:5] + b"\x04\x83" + community.to_bytes(3, "big") + b"c" * community + pdu
    huge = b"\x30\x83" + len(body).to_bytes(3, "big") + body
    return [Case("broadcast GetRequest (normal)", [], [udp("10.0.2.1", "10.0.2.255", 40000, 161, get)]),
            Case("64 KB broadcast GetRequest community", [], [udp("10.0.2.1", "10.0.2.255", 40001, 161,
                                                                   huge)])]


def pptp_msg(ctrl: int, size: int, body: bytes = b"") -> bytes:
    """A PPTP control message (RFC 2637 §2): header, body padded to the type's length."""
    return struct.pack("!HHIHH", size, 1, 0x1A2B3C4D, ctrl, 0) + body.ljust(size - 12, b"\0")


def pptp_cases() -> list[Case]:
    def session(port: int) -> tuple[Conn, list[Packet]]:
        c = Conn("10.0.1.2", "10.0.2.2", port, 1723)
        return c, c.handshake() + [c.pkt(0, pptp_msg(1, 156, b"\1\0")), c.pkt(1, pptp_msg(2, 156, b"\1\0\1"))]
    c, setup = session(40000)
    normal = Case("Outgoing-Call-Request and its Reply (normal)", setup,
                  [c.pkt(0, pptp_msg(7, 168, struct.pack("!HH", 1, 1))),
                   c.pkt(1, pptp_msg(8, 32, struct.pack("!HHB", 2, 1, 1)))])
    c2, setup2 = session(40001)
    many = Case("390 Outgoing-Call-Requests in one 64 KB stream", setup2,
                c2.segments(0, b"".join(pptp_msg(7, 168, struct.pack("!HH", i, 1)) for i in range(390)), 1400))
    c3, setup3 = session(40002)
    bytewise = Case("a call in 1-byte segments", setup3,
                    c3.segments(0, pptp_msg(7, 168, struct.pack("!HH", 1, 1)), 1)
                    + c3.segments(1, pptp_msg(8, 32, struct.pack("!HHB", 2, 1, 1)), 1))
    return [normal, many, bytewise]


def h323_cases() -> list[Case]:
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    import h323_build as b  # the tests' PER builders

    def call(port: int) -> Conn:
        return Conn("10.0.1.2", "10.0.2.2", port, 1720)
    c = call(40000)
    normal = Case("Setup with h245Address and fastStart, Connect (normal)", c.handshake(),
                  [c.pkt(0, b.q931(b.setup(h245=("10.0.1.2", 4000), fast=[b.olc(control=("10.0.1.2", 5001))]))),
                   c.pkt(1, b.q931(b.connect(h245=("10.0.2.2", 4001)), 0x07))])
    c2 = call(40001)
    w = b.head(0).put(0, 1).put(0b01, 2).put(0, 5).length(len(b.H225_OID)).octets(b.H225_OID).length(15000)
    for _ in range(15000):  # h323-ID "a": the step budget ends the walk, not the count
        w.put(0, 1).put(1, 1).octets(b"\0\0a")
    aliases = Case("a 60 KB Setup of 15,000 aliases (past the step budget)", c2.handshake(),
                   c2.segments(0, b.q931(b.uuie(w)), 1400))
    q, c3 = call(40002), Conn("10.0.1.2", "10.0.2.2", 40012, 4000)  # the H.245 connection a Connect names
    olcs = b"".join(b.tpkt(b.request_olc(control=("10.0.1.2", 10001 + 2 * i))) for i in range(1800))
    many = Case("1,800 OpenLogicalChannels in 64 KB of H.245 (each creates and evicts)",
                q.handshake() + [q.pkt(1, b.q931(b.connect(h245=("10.0.2.2", 4000)), 0x07))] + c3.handshake(),
                c3.segments(0, olcs, 1400))
    c4 = call(40003)
    setup = b.q931(b.setup(h245=("10.0.1.2", 4000), fast=[b.olc(control=("10.0.1.2", 5001))]))
    bytewise = Case("a Setup with fastStart in 1-byte segments", c4.handshake(), c4.segments(0, setup, 1))
    rrq = Case("a 64 KB RRQ of 9,000 callSignalAddresses, none the sender's", [],
               [udp("10.0.1.2", "10.0.2.2", 1719, 1719, b.rrq([("10.0.3.3", 1720)] * 9000))])
    return [normal, aliases, many, bytewise, rrq]


CASES: dict[str, Callable[[], list[Case]]] = {
    "ftp": ftp_cases, "ssdp": ssdp_cases, "tns": tns_cases, "rpc": rpc_cases, "sip": sip_cases,
    "dhcpv6": lambda: discovery_cases("dhcpv6"), "mdns": lambda: discovery_cases("mdns"),
    "slp": lambda: discovery_cases("slp"), "irc": irc_cases, "sane": sane_cases, "tftp": tftp_cases,
    "amanda": amanda_cases, "netbios-ns": netbios_cases, "snmp": snmp_cases, "pptp": pptp_cases,
    "h323": h323_cases,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", type=float, default=3.0, help="seconds per case before it is cut short")
    ap.add_argument("helpers", nargs="*", default=list(CASES))
    args = ap.parse_args()
    print(f"{'helper':<10} {'case':<48} {'pkts':>6} {'KB':>6} {'worst/pkt':>11} {'x normal':>9} {'per KB':>10} "
          f"{'x normal':>9}")
    for helper in args.helpers:
        cases = CASES[helper]()
        runs = sorted((run(helper, cases[0], args.budget) for _ in range(NORMAL_RUNS)), key=lambda r: r.total)
        normal = runs[len(runs) // 2]
        base_kb = normal.total / max(normal.nbytes / 1024, 1e-9)
        base_pkt = normal.total / normal.packets
        for i, case in enumerate(cases):
            r = normal if i == 0 else run(helper, case, args.budget)
            per_kb = r.total / max(r.nbytes / 1024, 1e-9)
            worst = r.total / r.packets if i == 0 else r.worst
            print(f"{helper:<10} {case.name:<48} {r.packets:>6} {r.nbytes / 1024:>6.1f} {worst * 1e3:>8.3f} ms "
                  f"{worst / base_pkt:>8.1f}x {per_kb * 1e6:>7.0f} us {per_kb / base_kb:>8.1f}x{' cut' if r.cut else ''}")


if __name__ == "__main__":
    main()
