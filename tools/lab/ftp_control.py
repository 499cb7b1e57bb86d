"""FTP control connections driven step by step (lab scenarios, stdlib only).

Reads commands from a FIFO, one per line, and appends `ok N REPLY` or
`err N WHAT` to the output file after each, so a shell script can hold
connections open across a restart of alg in between:

    open NAME               connect to HOST:21, read the banner
    send NAME TEXT          send TEXT (\\r\\n escapes allowed), read one reply line if any comes
    get NAME FILE           PASV, then RETR FILE over the data connection; ok with the byte count
"""

from __future__ import annotations

import re
import socket
import sys


def main() -> int:
    host, fifo, out = sys.argv[1], sys.argv[2], sys.argv[3]
    conns: dict[str, socket.socket] = {}

    def reply(s: socket.socket, timeout: float = 3.0) -> str:
        s.settimeout(timeout)
        try:
            return s.recv(4096).decode(errors="replace").strip()
        except OSError as exc:
            return f"(no reply: {exc})"

    n = 0
    with open(fifo) as commands, open(out, "a", buffering=1) as log:
        for line in commands:
            n += 1
            cmd, name, *rest = line.rstrip("\n").split(" ", 2)
            try:
                if cmd == "open":
                    conns[name] = socket.create_connection((host, 21), timeout=5)
                    log.write(f"ok {n} {reply(conns[name])}\n")
                elif cmd == "send":
                    conns[name].sendall(rest[0].encode().decode("unicode_escape").encode("latin-1"))
                    log.write(f"ok {n} {reply(conns[name])}\n")
                elif cmd == "get":
                    s = conns[name]
                    s.sendall(b"PASV\r\n")
                    seen = ""
                    for _ in range(5):  # past a late reply (a 421 for an earlier passive port that timed out)
                        seen = reply(s)
                        m = re.search(r"^227 .*\((\d+),(\d+),(\d+),(\d+),(\d+),(\d+)\)", seen, re.M)
                        if m is not None:
                            break
                    else:
                        raise RuntimeError(f"no 227: {seen!r}")
                    data = socket.create_connection((".".join(m.group(1, 2, 3, 4)),
                                                     int(m.group(5)) * 256 + int(m.group(6))), timeout=5)
                    s.sendall(f"RETR {rest[0]}\r\n".encode())
                    body = b"".join(iter(lambda d=data: d.recv(4096), b""))
                    log.write(f"ok {n} {len(body)} {reply(s)}\n")
                else:
                    log.write(f"err {n} unknown command {cmd}\n")
            except Exception as exc:
                log.write(f"err {n} {type(exc).__name__}: {exc}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
