#!/usr/bin/env python3
"""An FTP client for the NAT lab (tests/lab/scenarios/nat.sh), standard library only.

    nat_ftp.py --host ADDR --file NAME --expect FILE STEP... [--timeout S]

Logs in anonymously, then runs the STEPs on ONE control connection, each a transfer of NAME followed
by a plain command (PWD, SYST, NOOP in turn), so a rewritten command or reply that changes the
payload's length is followed by more traffic on the same connection (the gateway must keep the TCP
sequence numbers in step):
    port:N   active, PORT with the client's own address and data port N
    eprt:N   active, EPRT |1|address|N|
    pasv     passive, 227 (the address the reply names is the one dialled: behind a port forward it
             is the gateway's public address only if the reply was rewritten)
    epsv     passive, 229 (port only: the control connection's peer address is dialled)
Each transfer's bytes must equal --expect. Exit 0 when every step passed, 1 when a transfer failed,
3 when the control connection did. One line per step: "STEP ok|FAILED detail".
"""

from __future__ import annotations

import argparse
import ftplib
import socket
import sys

EXIT_OK, EXIT_DATA, EXIT_CONTROL = 0, 1, 3
FOLLOW_UPS = ("PWD", "SYST", "NOOP")  # a plain command after each transfer, on the same connection


def say(*parts: object) -> None:
    print(*parts, flush=True)


def _recv_all(conn: socket.socket) -> bytes:
    chunks = []
    while chunk := conn.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _active(ftp: ftplib.FTP, verb: str, port: int, name: str, timeout: float) -> bytes:
    me = ftp.sock.getsockname()[0]  # the private address: the gateway's helper must rewrite it
    with socket.create_server((me, port), reuse_port=False) as ls:
        ls.settimeout(timeout)
        say((ftp.sendport(me, port) if verb == "port" else ftp.sendeprt(me, port)).strip())
        ftp.putcmd(f"RETR {name}")
        reply = ftp.getresp()  # 150 (raises on 4xx/5xx)
        say(reply.strip())
        conn, peer = ls.accept()
        with conn:
            conn.settimeout(timeout)
            data = _recv_all(conn)
    say(f"data connection from {peer[0]} port {peer[1]}")
    say(ftp.voidresp().strip())
    return data


def _passive(ftp: ftplib.FTP, verb: str, name: str, timeout: float) -> bytes:
    if verb == "pasv":
        reply = ftp.sendcmd("PASV")
        host, port = ftplib.parse227(reply)
    else:
        reply = ftp.sendcmd("EPSV")
        host, port = ftplib.parse229(reply, ftp.sock.getpeername())
    say(reply.strip())
    say(f"server data endpoint: {host} port {port}")
    with socket.create_connection((host, port), timeout=timeout) as conn:
        ftp.putcmd(f"RETR {name}")
        say(ftp.getresp().strip())
        data = _recv_all(conn)
    say(ftp.voidresp().strip())
    return data


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, default=21)
    p.add_argument("--file", required=True)
    p.add_argument("--expect", required=True, help="a local file with the bytes each transfer must bring")
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("steps", nargs="+", metavar="STEP")
    a = p.parse_args(argv)
    with open(a.expect, "rb") as f:
        want = f.read()
    ftp = ftplib.FTP(timeout=a.timeout)
    try:
        say(ftp.connect(a.host, a.port).strip())
        say(ftp.login().strip())
        say(ftp.sendcmd("TYPE I").strip())
    except (OSError, ftplib.Error, EOFError) as exc:
        say(f"control connection FAILED: {exc}")
        return EXIT_CONTROL
    rc = EXIT_OK
    for i, step in enumerate(a.steps):
        verb, _, port = step.partition(":")
        try:
            if verb in ("port", "eprt"):
                data = _active(ftp, verb, int(port), a.file, a.timeout)
            elif verb in ("pasv", "epsv"):
                data = _passive(ftp, verb, a.file, a.timeout)
            else:
                p.error(f"unknown step {step!r}")
            say(ftp.sendcmd(FOLLOW_UPS[i % len(FOLLOW_UPS)]).strip())
        except (OSError, ftplib.Error, EOFError) as exc:
            say(f"{step} FAILED: {exc}")
            rc = EXIT_DATA
            try:  # the control connection may still work: go on with the next step
                ftp.sendcmd("NOOP")
            except (OSError, ftplib.Error, EOFError):
                return EXIT_CONTROL
            continue
        ok = data == want
        say(f"{step} {'ok' if ok else 'FAILED'} {len(data)} bytes")
        rc = rc if ok else EXIT_DATA
    try:
        say(ftp.quit().strip())
    except (OSError, ftplib.Error, EOFError) as exc:
        say(f"QUIT FAILED: {exc}")
        return EXIT_CONTROL
    return rc


if __name__ == "__main__":
    sys.exit(main())
