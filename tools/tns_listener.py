#!/usr/bin/env python3
"""Scripted Oracle TNS listener for recordings: answers CONNECT with REDIRECT.

    tns_listener.py --bind 10.0.2.2 --port 1521 --redirect-host 10.0.2.2 --redirect-port 1522 [--split]
    tns_listener.py --bind 10.0.2.2 --port 1522 --refuse

Packets from the TNS facts (8-byte header: length, checksum, type, flags,
header checksum): REDIRECT (5) carries a 2-byte data length and
`(ADDRESS=(PROTOCOL=TCP)(HOST=h)(PORT=p))\\0<connect data>`, inline or
(`--split`) in a DATA (6) packet that follows; REFUSE (4) ends the attempt
on the redirect target (there is no database here: the client then fails,
after it connected to the redirected address). Serves until killed.
"""

from __future__ import annotations

import argparse
import socket
import struct
import threading


def packet(ptype: int, body: bytes) -> bytes:
    return struct.pack(">HHBBH", 8 + len(body), 0, ptype, 0, 0) + body


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
    p.add_argument("--bind", required=True)
    p.add_argument("--port", type=int, default=1521)
    p.add_argument("--redirect-host")
    p.add_argument("--redirect-port", type=int, default=1522)
    p.add_argument("--split", action="store_true")
    p.add_argument("--refuse", action="store_true")
    serve(p.parse_args())


if __name__ == "__main__":
    main()
