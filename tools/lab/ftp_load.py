#!/usr/bin/env python3
"""FTP control-channel load for the lab benchmark (benchmarks/lab_ftp_load.sh; standard library).

    ftp_load.py --host ADDR --connections N --seconds S [--data K] [--data-timeout T] [--log FILE]
                [--sources ADDR,...]

N control connections log in, then each asks PASV again and again for S seconds: the server's
227 answer is what an FTP helper reads (and expects a data connection for) on its way back, so
the time from PASV sent to 227 read is the round trip with the helper in its path. One thread per
connection (the round trips overlap as many clients' would).

--data K: then each connection does K rounds more of PASV and a data connection to the port its
227 names, closed at once (no transfer: pyftpdlib's data channel then closes without a reply).
Behind a firewall that lets a data connection in only as RELATED, a connection that does not
open within T seconds (its SYN dropped: no expectation matched it) is a failure: it shows whether
the helper acted on the 227, whatever an event listener saw. The rounds start when the PASV phase
ends, all connections at once, so the helper is loaded as it was; their round trips are not in
the PASV figures. Prints one line of names and values:

    pasv N p50_us P p99_us Q mean_us M per_s R errors E cpu_ms C replies227 A data D data_failed F

--rate R: an open loop instead: the PASVs leave R per second over all connections, evenly spaced;
a connection whose answer came late asks at once, never in a burst (a helper that cannot keep up
shows as per_s below R). Well below what the helpers can carry, the round trip then shows what
each adds to a packet, not how the queue behind a saturated one grows.

--sources ADDR,...: connection i (control and data) leaves from the i-th address, round robin (the
client must hold them): a hash of the addresses that spreads control connections over helper
instances (`alg rules` with workers > 1) sees one pair of hosts per source, not one for the whole load.

--log FILE: one line per 227 read, 'CLIENT_PORT DATA_PORT' (the control connection's own port and
the one the 227 names), to match against the expectation events.

(per_s: PASV answers per second of the PASV phase; M: the mean round trip, which without --rate
is the connections over the rate (Little's law): two helpers carrying the same rate add the
same mean, and differ only in how their round trips spread about it; A: every 227 read, both
phases; C: this process's own CPU time, user and system: under emulation the load generator shares
the VM's CPUs with the helper it measures, so its share is part of the result.)
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field

PASV_OK = "227"
PASV_FIELDS = 6  # RFC 959 4.1.2: h1,h2,h3,h4,p1,p2


@dataclass
class Tally:
    """What the threads add to (list.append and += under the lock are all they do)."""

    times: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    replies: int = 0
    endpoints: list[tuple[int, int]] = field(default_factory=list)  # (control client port, 227's port)
    data: int = 0
    data_failed: int = 0
    pasv_end: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)


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


def pasv_endpoint(reply: str) -> tuple[str, int] | None:
    """The address and port of a 227 answer, '227 Entering passive mode (h1,h2,h3,h4,p1,p2).'"""
    start, end = reply.find("("), reply.find(")")
    fields = reply[start + 1:end].split(",") if 0 <= start < end else []
    if len(fields) != PASV_FIELDS or not all(x.strip().isdigit() for x in fields):
        return None
    n = [int(x) for x in fields]
    return ".".join(map(str, n[:4])), n[4] << 8 | n[5]


def pasv(s: socket.socket, f, tally: Tally) -> tuple[str, int] | None:
    """Ask PASV; the address and port the 227 names, None (an error counted) for any other answer."""
    s.sendall(b"PASV\r\n")
    reply = read_reply(f)
    endpoint = pasv_endpoint(reply) if reply.startswith(PASV_OK) else None
    with tally.lock:
        if endpoint is None:
            tally.errors.append(reply.strip())
        else:
            tally.replies += 1
            tally.endpoints.append((s.getsockname()[1], endpoint[1]))
    return endpoint


def data_round(s: socket.socket, f, tally: Tally, timeout: float, source: str | None) -> bool:
    endpoint = pasv(s, f, tally)
    if endpoint is None:
        return False
    try:  # from the control connection's address: the expectation names it (and the server checks it)
        socket.create_connection(endpoint, timeout=timeout, source_address=(source, 0) if source else None).close()
        ok = True
    except OSError:  # timed out: the firewall dropped the SYN
        ok = False
    with tally.lock:
        tally.data += 1
        tally.data_failed += not ok
    return True


def session(host: str, until: float, rounds: int, timeout: float, tally: Tally, source: str | None = None,
            interval: float = 0.0, offset: float = 0.0) -> None:
    """One control connection: PASV in a loop until `until`, then `rounds` data rounds. With an
    `interval`, each PASV leaves `interval` seconds after the last one left (the first `offset`
    after the login), or at once when the last one's answer came later than that."""
    try:
        with socket.create_connection((host, 21), timeout=10, source_address=(source, 0) if source else None) as s:
            f = s.makefile("r", encoding="latin-1", newline="\r\n")
            read_reply(f)
            for cmd in ("USER anonymous", "PASS lab@"):
                s.sendall(cmd.encode() + b"\r\n")
                read_reply(f)
            due = time.monotonic() + offset
            while time.monotonic() < until:
                if interval:
                    time.sleep(max(0.0, due - time.monotonic()))
                    due = max(due, time.monotonic()) + interval  # (one left late: the next counts from it)
                t0 = time.perf_counter()
                if pasv(s, f, tally) is None:
                    return
                dt = time.perf_counter() - t0
                with tally.lock:
                    tally.times.append(dt)
            with tally.lock:
                tally.pasv_end = max(tally.pasv_end, time.monotonic())
            for _ in range(rounds):
                if not data_round(s, f, tally, timeout, source):
                    return
            s.sendall(b"QUIT\r\n")
    except OSError as exc:
        with tally.lock:
            tally.errors.append(str(exc))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", required=True)
    p.add_argument("--connections", type=int, default=8)
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--data", type=int, default=0, metavar="K", help="data connection rounds per connection")
    p.add_argument("--log", metavar="FILE", help="write each 227's control client port and data port")
    p.add_argument("--data-timeout", type=float, default=2.0, metavar="T",
                   help="seconds a data connection may take to open (the first SYN retry comes at 1 s)")
    p.add_argument("--sources", metavar="ADDR,...", help="the client addresses the connections leave from, in turn")
    p.add_argument("--rate", type=float, default=0.0, metavar="R",
                   help="PASV exchanges per second over all connections, paced (0: each asks again once answered)")
    a = p.parse_args()
    interval = a.connections / a.rate if a.rate > 0 else 0.0
    sources = a.sources.split(",") if a.sources else [None]
    until = time.monotonic() + a.seconds
    tally = Tally()
    threads = [threading.Thread(target=session, args=(a.host, until, a.data, a.data_timeout, tally,
                                                      sources[i % len(sources)], interval,
                                                      i * interval / a.connections))  # (evenly spaced)
               for i in range(a.connections)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    times = tally.times
    if a.log:
        with open(a.log, "w") as out:
            out.writelines(f"{c} {d}\n" for c, d in tally.endpoints)
    tail = (f"errors {len(tally.errors)} cpu_ms {time.process_time() * 1e3:.0f} replies227 {tally.replies} "
            f"data {tally.data} data_failed {tally.data_failed}")
    if len(times) < 2:
        print(f"pasv {len(times)} p50_us 0 p99_us 0 mean_us 0 per_s 0 {tail} {tally.errors[:1]}")
        return 1
    q = statistics.quantiles(times, n=100)
    print(f"pasv {len(times)} p50_us {q[49] * 1e6:.0f} p99_us {q[98] * 1e6:.0f} "
          f"mean_us {statistics.fmean(times) * 1e6:.0f} "
          f"per_s {len(times) / max(tally.pasv_end - start, 1e-9):.1f} {tail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
