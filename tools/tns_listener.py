#!/usr/bin/env python3
"""Scripted Oracle TNS peers for recordings and the lab: a listener that answers CONNECT with
REDIRECT, and a raw client that follows one.

    tns_listener.py --bind 10.0.2.2 --port 1521 --redirect-host 10.0.2.2 --redirect-port 1522 [--split]
    tns_listener.py --bind 10.0.2.2 --port 1522 --refuse
    tns_listener.py --follow 10.0.2.2:1526 [--timeout 5]   # one line: where it was sent, what answered

Packets from the TNS facts (8-byte header: length, checksum, type, flags,
header checksum): REDIRECT (5) carries a 2-byte data length and
`(ADDRESS=(PROTOCOL=TCP)(HOST=h)(PORT=p))\\0<connect data>`, inline or
(`--split`) in a DATA (6) packet that follows; REFUSE (4) ends the attempt
on the redirect target (there is no database here: the client then fails,
after it connected to the redirected address). Serves until killed.
"""

from __future__ import annotations

import argparse
import re
import socket
import struct
import threading


def packet(ptype: int, body: bytes) -> bytes:
    return struct.pack(">HHBBH", 8 + len(body), 0, ptype, 0, 0) + body


def read_packet(s: socket.socket) -> tuple[int, bytes]:
    """(type, body) of the next TNS packet on the stream."""
    head = _read(s, 8)
    length, _, ptype = struct.unpack(">HHB", head[:5])
    return ptype, _read(s, length - 8)


def _read(s: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            raise ConnectionError("closed")
        out += chunk
    return out


def connect_packet() -> bytes:
    """CONNECT (type 1): version 313, compatible 300, SDU 8192, its connect data inline at offset 34."""
    cd = b"(DESCRIPTION=(CONNECT_DATA=(SERVICE_NAME=XE))(ADDRESS=(PROTOCOL=TCP)(HOST=lab)(PORT=1521)))"
    head = struct.pack(">9HHIBB", 313, 300, 0, 8192, 32767, 0x7F08, 0, 0x0100, len(cd), 34, 0, 0x41, 0x41)
    return packet(1, head + cd)


def follow_redirect(host: str, port: int, timeout: float) -> str:
    """CONNECT, read the REDIRECT (its data inline or in the DATA packet after it), CONNECT where it
    points; one line saying where that was and what answered there (type 4: the refusing listener)."""
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(connect_packet())
        ptype, body = read_packet(s)
        if ptype != 5:
            return f"no REDIRECT (type {ptype})"
        (n,) = struct.unpack_from(">H", body)
        data = body[2:2 + n] if len(body) > 2 else read_packet(s)[1][2:]
    m = re.search(rb"HOST=([^)]+)\)\(PORT=(\d+)", data)
    if m is None:
        return "REDIRECT without HOST and PORT"
    h, p = m.group(1).decode(), int(m.group(2))
    try:
        with socket.create_connection((h, p), timeout=timeout) as s:
            s.sendall(connect_packet())
            ptype, _ = read_packet(s)
    except OSError as e:
        return f"redirect to {h} port {p}: {e or 'timed out'}"
    return f"redirected to host {h} port {p}: packet type {ptype}" + (" (REFUSE)" if ptype == 4 else "")


def serve(a: argparse.Namespace) -> None:
    fam = socket.AF_INET6 if ":" in a.bind else socket.AF_INET
    srv = socket.socket(fam, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((a.bind, a.port))
    srv.listen(8)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=handle, args=(conn, a), daemon=True).start()


def handle(conn: socket.socket, a: argparse.Namespace) -> None:
    with conn:
        head = conn.recv(8)
        if len(head) < 8:
            return
        (length,) = struct.unpack_from(">H", head)
        rest = b""
        while len(rest) < length - 8:
            chunk = conn.recv(length - 8 - len(rest))
            if not chunk:
                break
            rest += chunk
        conn.settimeout(0.3)  # a long connect string follows the CONNECT in a DATA packet: take it too
        try:
            while conn.recv(65536):
                pass
        except TimeoutError:
            pass
        conn.settimeout(None)
        if a.refuse:
            conn.sendall(packet(4, b"\x22\x00\x00\x1c(DESCRIPTION=(ERR=12514)(VSNNUM=0))"[:4] +
                                b"(DESCRIPTION=(ERR=12514)(VSNNUM=0))"))
            return
        data = (f"(ADDRESS=(PROTOCOL=TCP)(HOST={a.redirect_host})(PORT={a.redirect_port}))".encode()
                + b"\0(DESCRIPTION=(CONNECT_DATA=(SERVICE_NAME=XE)))")
        if a.split:
            conn.sendall(packet(5, struct.pack(">H", len(data))) + packet(6, b"\0\0" + data))
        else:
            conn.sendall(packet(5, struct.pack(">H", len(data)) + data))
        conn.settimeout(5)
        try:
            while conn.recv(65536):  # until the client goes to the redirected address and closes
                pass
        except OSError:
            pass


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bind")
    p.add_argument("--port", type=int, default=1521)
    p.add_argument("--redirect-host")
    p.add_argument("--redirect-port", type=int, default=1522)
    p.add_argument("--split", action="store_true")
    p.add_argument("--refuse", action="store_true")
    p.add_argument("--follow", metavar="HOST:PORT", help="be the client instead")
    p.add_argument("--timeout", type=float, default=5)
    a = p.parse_args()
    if a.follow:
        host, port = a.follow.rsplit(":", 1)
        print(follow_redirect(host.strip("[]"), int(port), a.timeout), flush=True)
    elif a.bind:
        serve(a)
    else:
        p.error("--bind or --follow")


if __name__ == "__main__":
    main()
