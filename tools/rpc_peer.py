#!/usr/bin/env python3
"""Portmapper v2 GETPORT client over UDP and TCP (stdlib only), for recordings and the lab.

    rpc_peer.py getport --server 10.0.2.2 --prog 100024 --vers 1 --proto tcp [--via tcp] \
        [--fragments N] [--split] [--batch] [--out FILE]

ONC RPC v2 (RFC 5531) CALL to program 100000 version 2 procedure 3 (RFC 1833
§3.2) with AUTH_NULL. Over TCP the call goes in record marking (RFC 5531 §11):
`--fragments N` cuts the message into N record fragments, `--split` writes the
record in two sends 0.2 s apart (a record split over TCP segments), `--batch`
sends a second GETPORT (prog 100099, not registered) in the same send as the first.
Prints the port; exit 0 when it is not 0. `--out` writes it to a file.
"""

from __future__ import annotations

import argparse
import random
import socket
import struct
import sys
import time

CALL, REPLY, PMAP_PROG, PMAP_VERS, GETPORT = 0, 1, 100000, 2, 3
PROTO = {"tcp": 6, "udp": 17}


def call(prog: int, vers: int, proto: str) -> tuple[int, bytes]:
    xid = random.getrandbits(32)
    msg = struct.pack(">6I", xid, CALL, 2, PMAP_PROG, PMAP_VERS, GETPORT)
    msg += struct.pack(">4I", 0, 0, 0, 0)  # AUTH_NULL credential and verifier
    msg += struct.pack(">4I", prog, vers, PROTO[proto], 0)
    return xid, msg


def port_of(xid: int, data: bytes) -> int:
    rxid, mtype, stat, _flavor, vlen = struct.unpack_from(">5I", data)
    if rxid != xid or mtype != REPLY or stat != 0:
        raise ValueError(f"bad reply xid={rxid:#x} type={mtype} stat={stat}")
    off = 20 + (vlen + 3) // 4 * 4
    accept, port = struct.unpack_from(">2I", data, off)
    if accept != 0:
        raise ValueError(f"accept_stat {accept}")
    return port


def records(msg: bytes, fragments: int) -> bytes:
    size = max(4, -(-len(msg) // fragments) // 4 * 4)
    parts = [msg[i:i + size] for i in range(0, len(msg), size)]
    return b"".join(struct.pack(">I", len(p) | (0x80000000 if i == len(parts) - 1 else 0)) + p
                    for i, p in enumerate(parts))


def read_record(s: socket.socket) -> bytes:
    msg = b""
    while True:
        (mark,) = struct.unpack(">I", recv_exact(s, 4))
        msg += recv_exact(s, mark & 0x7FFFFFFF)
        if mark & 0x80000000:
            return msg


def recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed mid-record")
        buf += chunk
    return buf


def getport(a: argparse.Namespace) -> int:
    family = socket.AF_INET6 if ":" in a.server else socket.AF_INET
    xid, msg = call(a.prog, a.vers, a.proto)
    if a.via == "udp":
        s = socket.socket(family, socket.SOCK_DGRAM)
        s.settimeout(a.timeout)
        s.sendto(msg, (a.server, 111))
        data, _ = s.recvfrom(65535)
        return port_of(xid, data)
    s = socket.create_connection((a.server, 111), a.timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    wire = records(msg, a.fragments)
    xid2 = None
    if a.batch:
        xid2, msg2 = call(100099, 1, "udp")  # not registered: answered with port 0
        wire += records(msg2, 1)
    if a.split:
        cut = len(wire) // 2 + 1
        s.sendall(wire[:cut])
        time.sleep(0.2)
        s.sendall(wire[cut:])
    else:
        s.sendall(wire)
    port = port_of(xid, read_record(s))
    if xid2 is not None:
        print(f"batched GETPORT prog 100099 v1 udp -> {port_of(xid2, read_record(s))}")
    s.close()
    return port


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("getport")
    g.add_argument("--server", required=True)
    g.add_argument("--prog", type=int, required=True)
    g.add_argument("--vers", type=int, required=True)
    g.add_argument("--proto", choices=PROTO, default="tcp", help="transport of the service asked for")
    g.add_argument("--via", choices=PROTO, default="udp", help="transport of the question itself")
    g.add_argument("--fragments", type=int, default=1)
    g.add_argument("--split", action="store_true")
    g.add_argument("--batch", action="store_true")
    g.add_argument("--timeout", type=float, default=3.0)
    g.add_argument("--out")
    a = p.parse_args(argv)
    try:
        port = getport(a)
    except (OSError, ValueError) as exc:
        print(f"getport failed: {exc}", file=sys.stderr)
        return 1
    print(f"getport prog={a.prog} vers={a.vers} {a.proto} via {a.via} -> port {port}")
    if a.out:
        with open(a.out, "w") as f:
            f.write(f"{port}\n")
    return 0 if port else 1


if __name__ == "__main__":
    sys.exit(main())
