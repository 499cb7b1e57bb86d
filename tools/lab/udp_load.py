"""UDP echo server and load client for the lab's fault scenario (stdlib only).

    udp_load.py echo ADDR PORT...                 echo every datagram back
    udp_load.py send ADDR PORT COUNT [--flows N] [--rate PPS] [--until FILE] [--log FILE]

`send` sends COUNT datagrams (spread over N source ports, at most PPS a second;
with --until, until FILE exists), then waits 2 s for the last echoes and prints
`sent S echoed E`. With --log it writes one line per echo: the time it came."""

from __future__ import annotations

import argparse
import os
import select
import socket
import sys
import time


def echo(addr: str, ports: list[int]) -> None:
    socks = []
    for p in ports:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((addr, p))
        socks.append(s)
    while True:
        for s in select.select(socks, [], [])[0]:
            data, peer = s.recvfrom(65535)
            s.sendto(data, peer)


def send(a: argparse.Namespace) -> None:
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(a.flows)]
    for s in socks:
        s.setblocking(False)
    log = open(a.log, "w", buffering=1) if a.log else None
    sent = echoed = 0
    gap = 1.0 / a.rate if a.rate else 0.0
    nxt = time.monotonic()
    end = None

    def drain(timeout: float) -> None:
        nonlocal echoed
        for s in select.select(socks, [], [], timeout)[0]:
            try:
                while s.recv(65535):
                    echoed += 1
                    if log:
                        log.write(f"{time.time():.3f}\n")
            except BlockingIOError:
                pass

    while True:
        if end is None and (sent >= a.count if not a.until else os.path.exists(a.until)):
            end = time.monotonic() + 2.0
        if end is not None:
            if time.monotonic() >= end:
                break
            drain(0.05)
            continue
        if time.monotonic() >= nxt:
            socks[sent % a.flows].sendto(b"%d" % sent, (a.addr, a.port))
            sent += 1
            nxt += gap
        drain(max(0.0, min(0.05, nxt - time.monotonic())))
    print(f"sent {sent} echoed {echoed}")


def main() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("echo")
    e.add_argument("addr")
    e.add_argument("ports", nargs="+", type=int)
    s = sub.add_parser("send")
    s.add_argument("addr")
    s.add_argument("port", type=int)
    s.add_argument("count", type=int)
    s.add_argument("--flows", type=int, default=1)
    s.add_argument("--rate", type=float, default=0.0)
    s.add_argument("--until")
    s.add_argument("--log")
    a = p.parse_args()
    if a.cmd == "echo":
        echo(a.addr, a.ports)
    else:
        send(a)


if __name__ == "__main__":
    sys.exit(main())
