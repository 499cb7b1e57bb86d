#!/usr/bin/env python3
"""FTP control-channel load for the lab benchmark (benchmarks/lab_ftp_load.sh; standard library).

    ftp_load.py --host ADDR --connections N --seconds S

N control connections log in, then each asks PASV again and again for S seconds: the server's
227 answer is what an FTP helper reads (and expects a data connection for) on its way back, so
the time from PASV sent to 227 read is the round trip with the helper in its path. One thread per
connection (the round trips overlap as many clients' would). Prints one line:

    pasv N p50_us P p99_us Q per_s R errors E cpu_ms C

(C: this process's own CPU time, user and system: under emulation the load generator shares
the VM's CPUs with the helper it measures, so its share is part of the result.)
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import threading
import time


def read_reply(f) -> str:
    """One FTP reply (RFC 959 4.2: a multi-line reply ends with 'code ' on its last line)."""
    line = f.readline()
    if line[3:4] == "-":
        code = line[:3]
        while not (line.startswith(code) and line[3:4] == " "):
            line = f.readline()
            if not line:
                break
    return line


def session(host: str, until: float, out: list[float], errors: list[str]) -> None:
    try:
        with socket.create_connection((host, 21), timeout=10) as s:
            f = s.makefile("r", encoding="latin-1", newline="\r\n")
            read_reply(f)
            for cmd in ("USER anonymous", "PASS lab@"):
                s.sendall(cmd.encode() + b"\r\n")
                read_reply(f)
            while time.monotonic() < until:
                t0 = time.perf_counter()
                s.sendall(b"PASV\r\n")
                reply = read_reply(f)
                if not reply.startswith("227"):
                    errors.append(reply.strip())
                    return
                out.append(time.perf_counter() - t0)
            s.sendall(b"QUIT\r\n")
    except OSError as exc:
        errors.append(str(exc))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", required=True)
    p.add_argument("--connections", type=int, default=8)
    p.add_argument("--seconds", type=float, default=20)
    a = p.parse_args()
    until = time.monotonic() + a.seconds
    times: list[float] = []
    errors: list[str] = []
    threads = [threading.Thread(target=session, args=(a.host, until, times, errors)) for _ in range(a.connections)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    if len(times) < 2:
        print(f"pasv {len(times)} p50_us 0 p99_us 0 per_s 0 errors {len(errors)} {errors[:1]}")
        return 1
    q = statistics.quantiles(times, n=100)
    print(f"pasv {len(times)} p50_us {q[49] * 1e6:.0f} p99_us {q[98] * 1e6:.0f} per_s {len(times) / elapsed:.1f} "
          f"errors {len(errors)} cpu_ms {time.process_time() * 1e3:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
