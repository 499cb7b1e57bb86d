#!/usr/bin/env python3
"""FTP peers for the lab scenarios (standard library, plus pyftpdlib for the server).

    ftp_peers.py ftp-server --bind ADDR --root DIR [--port 21] [--pasv-ports 50000-50009]
    ftp_peers.py ftp-get --host ADDR --file NAME [--port 21] [--timeout S] [--after-pasv 'SHELL COMMAND']

ftp-get logs in anonymously, asks for passive mode (PASV on IPv4, EPSV on IPv6, as ftplib does), runs the
--after-pasv command between the server's answer and the data connection (so the firewall's expectation can be
listed while it waits), then fetches the file. Exit 0 when bytes came, 1 when the data connection or the
transfer failed, 3 when the control connection did.
"""

from __future__ import annotations

import argparse
import ftplib
import socket
import subprocess
import sys

EXIT_OK, EXIT_DATA, EXIT_CONTROL = 0, 1, 3
RECV = 65536


def say(*parts: object) -> None:
    print(*parts, flush=True)


def ftp_get(a: argparse.Namespace) -> int:
    ftp = ftplib.FTP(timeout=a.timeout)
    try:
        try:
            say(ftp.connect(a.host, a.port).strip())
            say(ftp.login().strip())
            say(ftp.sendcmd("TYPE I").strip())
            host, port = ftp.makepasv()  # ftplib's ntransfercmd in two steps: the hook goes between
        except (OSError, ftplib.Error, EOFError) as exc:
            say(f"ftp-get: control connection FAILED: {exc}")
            return EXIT_CONTROL
        say(f"server data endpoint: {host} port {port}")
        if a.after_pasv:
            subprocess.run(a.after_pasv, shell=True, check=False)
        try:
            data_conn = socket.create_connection((host, port), timeout=a.timeout)
        except OSError as exc:
            say(f"data connection to {host} port {port}: FAILED: {exc}")
            return EXIT_DATA
        say(f"data connection to {host} port {port}: connected")
        say(ftp.sendcmd(f"RETR {a.file}").strip())
        chunks = []
        with data_conn:
            while chunk := data_conn.recv(RECV):
                chunks.append(chunk)
        say(ftp.voidresp().strip())
        data = b"".join(chunks)
        say(f"RETR {a.file}: {len(data)} bytes: {data[:60]!r}")
        try:
            ftp.quit()
        except (OSError, ftplib.Error, EOFError):
            pass
        return EXIT_OK if data else EXIT_DATA
    except (OSError, ftplib.Error, EOFError) as exc:
        say(f"ftp-get: FAILED: {exc}")
        return EXIT_DATA
    finally:
        ftp.close()


def ftp_server(a: argparse.Namespace) -> int:
    import logging

    from pyftpdlib.authorizers import DummyAuthorizer
    from pyftpdlib.handlers import FTPHandler
    from pyftpdlib.servers import FTPServer

    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="pyftpdlib: %(message)s")
    authorizer = DummyAuthorizer()
    authorizer.add_anonymous(a.root)
    lo, hi = (int(x) for x in a.pasv_ports.split("-"))
    handler = type("LabFTPHandler", (FTPHandler,), {"authorizer": authorizer, "passive_ports": range(lo, hi + 1)})
    say(f"ftp-server on {a.bind} port {a.port}, root {a.root}, passive ports {lo}-{hi}")
    FTPServer((a.bind, a.port), handler).serve_forever()
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("ftp-get")
    g.add_argument("--host", required=True)
    g.add_argument("--port", type=int, default=21)
    g.add_argument("--file", required=True)
    g.add_argument("--timeout", type=float, default=4)
    g.add_argument("--after-pasv", help="shell command run between the passive answer and the data connection")
    g.set_defaults(func=ftp_get)
    s = sub.add_parser("ftp-server")
    s.add_argument("--bind", required=True)
    s.add_argument("--port", type=int, default=21)
    s.add_argument("--root", required=True)
    s.add_argument("--pasv-ports", default="50000-50009")
    s.set_defaults(func=ftp_server)
    a = p.parse_args(argv)
    return a.func(a)


if __name__ == "__main__":
    sys.exit(main())
