#!/usr/bin/env python3
"""Scripted peers for the TFTP, IRC, SANE and Amanda helpers' captures and lab scenario (stdlib only).

    tftp-request HOST SPORT rrq|bare          one request datagram from SPORT (probes)
    irc-dcc HOST NICK PEER SPORT LINE...      register NICK on an IRC server (port 6667), then send
                                              each LINE (`{ip}` = our address as a 32-bit number) to PEER
    irc-listen HOST NICK SECONDS              register NICK and stay SECONDS (the DCC offers' addressee)
    sane-start HOST SPORT                     the 8-byte SANE_NET_START request to HOST:6566 from SPORT (probes)
    sane-server HOST TABLE                    answers each SANE_NET_START with the STATUS/ZERO/PORT that
                                              TABLE (SPORT=STATUS/ZERO/PORT,...) gives the request's source
                                              port (probes; saned is the real server)
    amanda-server HOST SPORT CLIENT           an Amanda server's REQ to CLIENT:10080, from SPORT; waits
                                              for the REP, ACKs it, connects to the ports it names
    amanda-client HOST [BODIES.json]          an amandad stand-in on HOST:10080: ACK, then a REP whose
                                              body is CONNECT DATA/MESG/INDEX on three listening ports
                                              (or what BODIES gives the server's source port), accepts
    nbns-responder HOST NAME SECONDS          answer broadcast NetBIOS name queries for NAME from HOST:137
    nbns-send HOST SPORT query|response       one name service datagram to HOST:137 from SPORT (probes)
    snmp-send HOST SPORT get|v3|response|huge  one SNMP datagram to HOST:161 from SPORT (probes): a v2c
                                              GetRequest, a v3 discovery request, a v2c GetResponse, or a
                                              message whose outer length claims 2 GB
    dcc-listen HOST PORT SECONDS              accept TCP connections on PORT (the DCC sender's side)
    connect HOST PORT [TIMEOUT]               exit 0 if a TCP connection to HOST:PORT is established

Amanda's own packages need a configured backup set and run their UDP
protocol only through `amandad` started by inetd; the Amanda exchange here
is scripted from the protocol as amanda 3.5 speaks it ("Amanda 3.5 REQ
HANDLE ... SEQ ...", ACK, REP with `CONNECT DATA n MESG n INDEX n`).
"""

from __future__ import annotations

import json
import socket
import struct
import sys
import time
from pathlib import Path


def family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def any_addr(host: str) -> str:
    return "::" if ":" in host else "0.0.0.0"


# ---------------------------------------------------------------- TFTP
def tftp_request(host: str, sport: str, kind: str) -> None:
    s = socket.socket(family(host), socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((any_addr(host), int(sport)))
    body = {"rrq": b"\0\1boot.bin\0octet\0", "bare": b"\0\1"}[kind]
    s.sendto(body, (host, 69))
    s.settimeout(1)
    try:
        s.recvfrom(2048)  # the server's answer (DATA or ERROR) from its new port
    except OSError:
        pass


# ---------------------------------------------------------------- IRC
def irc_session(host: str, nick: str, sport: int = 0) -> tuple[socket.socket, "socket.SocketIO"]:
    s = socket.socket(family(host), socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if sport:
        s.bind((any_addr(host), sport))
    s.settimeout(10)
    s.connect((host, 6667))
    f = s.makefile("rb")
    s.sendall(f"NICK {nick}\r\nUSER {nick} 0 * :{nick}\r\n".encode())
    while True:  # until the welcome (001) or the end of the MOTD
        line = f.readline()
        if not line:
            raise SystemExit("irc: server closed")
        parts = line.split()
        if len(parts) > 1 and parts[1] == b"PING":
            s.sendall(b"PONG " + parts[2] + b"\r\n")
        if len(parts) > 1 and parts[1] in (b"376", b"422"):  # end of MOTD / no MOTD
            return s, f


def irc_dcc(host: str, nick: str, to: str, sport: str, *lines: str) -> None:
    s, _f = irc_session(host, nick, int(sport))
    me = s.getsockname()[0]
    as_number = str(int.from_bytes(socket.inet_aton(me), "big")) if "." in me else me
    for line in lines:
        text = line.replace("{ip}", as_number).replace("{to}", to).replace("\\1", "\x01")
        s.sendall(text.encode() + b"\r\n")  # one message, one segment
        time.sleep(0.2)
    s.sendall(b"QUIT :bye\r\n")
    time.sleep(0.2)
    s.close()


def irc_listen(host: str, nick: str, seconds: str) -> None:
    s, _f = irc_session(host, nick)
    time.sleep(float(seconds))
    s.close()


# ---------------------------------------------------------------- SANE (probes only)
SANE_NET_START = 7


def sane_start(host: str, sport: str) -> None:
    s = socket.socket(family(host), socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((any_addr(host), int(sport)))
    s.settimeout(5)
    s.connect((host, 6566))
    s.sendall(struct.pack("!II", SANE_NET_START, 0))
    try:
        s.recv(64)
    except OSError:
        pass
    time.sleep(0.2)
    s.close()


def sane_server(host: str, table: str) -> None:
    """`table`: SPORT=STATUS/ZERO/PORT,...: what NET_START from each client port is answered with."""
    answers = {}
    for item in table.split(","):
        k, v = item.split("=")
        answers[int(k)] = tuple(int(x) for x in v.split("/"))
    s = socket.socket(family(host), socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, 6566))
    s.listen(16)
    while True:
        c, (_addr, cport, *_rest) = s.accept()
        c.settimeout(5)
        try:
            req = c.recv(64)
            if req[:4] == struct.pack("!I", SANE_NET_START):
                status, zero, port = answers.get(cport, (0, 0, 0))
                c.sendall(struct.pack("!IHHI", status, zero, port, 0x1234) + struct.pack("!I", 0))
            time.sleep(0.3)
        except OSError:
            pass
        c.close()


# ---------------------------------------------------------------- Amanda
AMANDA_PORT = 10080


def amanda_server(host: str, sport: str, client: str) -> None:
    s = socket.socket(family(client), socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, int(sport)))
    s.settimeout(5)
    handle, seq = "000-00000001", 1700000001
    req = (f"Amanda 3.5 REQ HANDLE {handle} SEQ {seq}\nSECURITY USER amandabackup\n"
           "SERVICE sendbackup\nOPTIONS features=9ffeffffffffffffffffffffffffffffffffffff7f;"
           "hostname=client;config=daily;\n<dle>\n  <program>GNUTAR</program>\n  <disk>/etc</disk>\n"
           "  <level>0</level>\n  <auth>BSD</auth>\n</dle>\n")
    s.sendto(req.encode(), (client, AMANDA_PORT))
    ports: list[int] = []
    while True:
        try:
            data, peer_addr = s.recvfrom(65535)
        except OSError:
            break
        head = data.split(b"\n", 1)[0].split()
        if len(head) > 2 and head[2] == b"REP":
            s.sendto(f"Amanda 3.5 ACK HANDLE {handle} SEQ {head[6].decode()}\n\n".encode(), peer_addr)
            for line in data.split(b"\n"):
                words = line.split()
                if words[:1] == [b"CONNECT"]:
                    ports = [int(w) for w in words[2::2] if w.isdigit()]
            break
    ok = 0
    for port in ports:
        try:
            socket.create_connection((client, port), timeout=3).close()
            ok += 1
        except OSError:
            pass
    print(f"amanda-server: REP named {ports}, {ok} connected")


def amanda_client(host: str, bodies: str = "") -> None:
    """`bodies`: a JSON file mapping a server's source port to the REP body it gets (probes)."""
    table = json.loads(Path(bodies).read_text()) if bodies else {}
    s = socket.socket(family(host), socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, AMANDA_PORT))
    listeners = []
    for _ in range(3):
        ls = socket.socket(family(host), socket.SOCK_STREAM)
        ls.bind((host, 0))
        ls.listen(4)
        ls.settimeout(0.2)
        listeners.append(ls)
    ports = [ls.getsockname()[1] for ls in listeners]
    while True:
        data, peer_addr = s.recvfrom(65535)
        head = data.split(b"\n", 1)[0].split()
        if len(head) < 7 or head[2] != b"REQ":
            continue
        handle, seq = head[4].decode(), int(head[6])
        s.sendto(f"Amanda 3.5 ACK HANDLE {handle} SEQ {seq}\n\n".encode(), peer_addr)
        text = table.get(str(peer_addr[1])) or (
            f"CONNECT DATA {ports[0]} MESG {ports[1]} INDEX {ports[2]}\n"
            "OPTIONS features=9ffeffffffffffffffffffffffffffffffffffff7f;\n")
        s.sendto(f"Amanda 3.5 REP HANDLE {handle} SEQ {seq + 1}\n{text}".encode(), peer_addr)
        end = time.monotonic() + 3
        while time.monotonic() < end:
            for ls in listeners:
                try:
                    ls.accept()[0].close()
                except OSError:
                    pass


# ---------------------------------------------------------------- NetBIOS name service
def _nb_name(name: str) -> bytes:
    """RFC 1002 §4.1: first-level encoding (each half byte + 'A'), one label of 32 bytes."""
    raw = name.upper().ljust(15)[:15].encode() + b"\x00"
    return b"\x20" + bytes(c for b in raw for c in (0x41 + (b >> 4), 0x41 + (b & 0xF))) + b"\x00"


def nbns_responder(host: str, name: str, seconds: str) -> None:
    """Answer NAME QUERY REQUESTs for `name` (broadcast to udp/137) by unicast from `host`:137."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # the broadcasts come to the wildcard address
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", 137))
    out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # answers leave from HOST:137, as nmbd's do
    out.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    out.bind((host, 137))
    s.settimeout(float(seconds))
    want = _nb_name(name)
    try:
        while True:
            data, asker = s.recvfrom(2048)
            if len(data) < 12 + len(want) or data[2] & 0x80 or data[12:12 + len(want)] != want:
                continue
            # RFC 1002 §4.2.13 POSITIVE NAME QUERY RESPONSE: R, opcode 0, AA, RD; one answer, NB, our address
            rr = want + struct.pack("!HHIHH", 0x20, 1, 300, 6, 0) + socket.inet_aton(host)
            out.sendto(data[:2] + struct.pack("!HHHHH", 0x8500, 0, 1, 0, 0) + rr, asker)
    except OSError:
        pass


def nbns_send(host: str, sport: str, kind: str, name: str = "ALGTEST") -> None:
    """One datagram to HOST:137 from SPORT: a broadcast name `query`, or a `response`-flagged one (probes)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    s.bind(("0.0.0.0", int(sport)))
    flags = {"query": 0x0110, "response": 0x8500}[kind]  # RD+B / R+AA+RD
    s.sendto(struct.pack("!HHHHHH", 0x4242, flags, 1, 0, 0, 0) + _nb_name(name) + struct.pack("!HH", 0x20, 1),
             (host, 137))
    s.settimeout(1)
    try:
        s.recvfrom(2048)
    except OSError:
        pass


# ---------------------------------------------------------------- SNMP (snmpget and snmpd are the real peers)
def _ber(tag: int, body: bytes) -> bytes:
    """X.690 definite length: short form below 128, else 0x80 | n and n octets."""
    if len(body) < 0x80:
        return bytes((tag, len(body))) + body
    n = (len(body).bit_length() + 7) // 8
    return bytes((tag, 0x80 | n)) + len(body).to_bytes(n, "big") + body


def _pdu(tag: int, varbinds: bytes) -> bytes:
    """RFC 3416 §3 PDU: request-id, error-status, error-index, variable-bindings."""
    return _ber(tag, _ber(2, b"\x42") + _ber(2, b"\0") + _ber(2, b"\0") + _ber(0x30, varbinds))


SYS_DESCR = _ber(0x30, _ber(6, bytes((0x2B, 6, 1, 2, 1, 1, 1, 0))) + b"\x05\x00")  # sysDescr.0 = NULL


def snmp_message(kind: str) -> bytes:
    if kind == "v3":  # RFC 3414 §4 discovery: noAuthNoPriv, reportable, empty USM parameters and context
        header = _ber(0x30, _ber(2, b"\x42") + _ber(2, b"\x00\xff\xe3") + _ber(4, b"\x04") + _ber(2, b"\x03"))
        usm = _ber(4, _ber(0x30, _ber(4, b"") + _ber(2, b"\0") * 2 + _ber(4, b"") * 3))
        return _ber(0x30, _ber(2, b"\x03") + header + usm + _ber(0x30, _ber(4, b"") * 2 + _pdu(0xA0, b"")))
    if kind == "huge":  # an outer SEQUENCE that claims 2 GB
        return b"\x30\x84\x7f\xff\xff\xff" + _ber(2, b"\x01")
    tag = {"get": 0xA0, "response": 0xA2}[kind]
    return _ber(0x30, _ber(2, b"\x01") + _ber(4, b"public") + _pdu(tag, SYS_DESCR))


def snmp_send(host: str, sport: str, kind: str) -> None:
    """One SNMP datagram to HOST:161 from SPORT (probes)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    s.bind(("0.0.0.0", int(sport)))
    s.sendto(snmp_message(kind), (host, 161))
    s.settimeout(1)
    try:
        s.recvfrom(2048)
    except OSError:
        pass


# ---------------------------------------------------------------- generic
def dcc_listen(host: str, port: str, seconds: str) -> None:
    s = socket.socket(family(host), socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, int(port)))
    s.listen(4)
    s.settimeout(float(seconds))
    try:
        while True:
            s.accept()[0].close()
    except OSError:
        pass


def connect(host: str, port: str, timeout: str = "3") -> None:
    try:
        socket.create_connection((host, int(port)), timeout=float(timeout)).close()
    except OSError as e:
        raise SystemExit(f"connect {host}:{port}: {e}") from None


COMMANDS = {"tftp-request": tftp_request, "irc-dcc": irc_dcc, "irc-listen": irc_listen, "sane-start": sane_start,
            "sane-server": sane_server, "amanda-server": amanda_server, "amanda-client": amanda_client,
            "dcc-listen": dcc_listen, "connect": connect, "nbns-responder": nbns_responder,
            "nbns-send": nbns_send, "snmp-send": snmp_send}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        sys.exit(__doc__)
    COMMANDS[sys.argv[1]](*sys.argv[2:])
