#!/usr/bin/env python3
"""A phone that registers and then waits for a call, and its registrar, for the lab (standard library).

    sip_register.py registrar --bind ADDR [--port 5060] [--timeout S]
    sip_register.py phone --bind ADDR --port P --registrar ADDR [--control-port P2] [--timeout S]
    sip_register.py invite --bind ADDR --sport P --to ADDR --dport P

The registrar answers one REGISTER with a 200 that grants its Contact (RFC 3261 10.3) and exits. The phone
registers from ADDR:P, prints "registered" on the 200, then waits for datagrams on P and on the control
port (never registered): "invite on P" when a call reaches the registered Contact, "stray on P2" when
anything reaches the other port. `invite` sends an INVITE from ADDR:sport (not the registrar's 5060: a new
flow, that only an expectation lets through a firewall that drops new inbound flows). Exit 0 on success,
1 on timeout.
"""

from __future__ import annotations

import argparse
import select
import socket
import sys
import time


def say(*parts: object) -> None:
    print(*parts, flush=True)


def headers(msg: bytes) -> dict[str, str]:
    out = {}
    for line in msg.decode("ascii", "replace").split("\r\n")[1:]:
        if not line:
            break
        name, _, value = line.partition(":")
        out[name.strip().lower()] = value.strip()
    return out


def registrar(a: argparse.Namespace) -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((a.bind, a.port))
    s.settimeout(a.timeout)
    try:
        msg, peer = s.recvfrom(4096)
    except TimeoutError:
        say("registrar: no REGISTER")
        return 1
    h = headers(msg)
    say(f"registrar: {msg.split(b' ', 1)[0].decode()} from {peer[0]}:{peer[1]} contact {h.get('contact')}")
    answer = (f"SIP/2.0 200 OK\r\nVia: {h['via']}\r\nFrom: {h['from']}\r\nTo: {h['to']};tag=reg\r\n"
              f"Call-ID: {h['call-id']}\r\nCSeq: {h['cseq']}\r\nContact: {h['contact']};expires=3600\r\n"
              "Content-Length: 0\r\n\r\n")
    s.sendto(answer.encode(), peer)
    return 0


def phone(a: argparse.Namespace) -> int:
    reg = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    reg.bind((a.bind, a.port))
    control = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    control.bind((a.bind, a.control_port))
    register = (f"REGISTER sip:{a.registrar} SIP/2.0\r\nVia: SIP/2.0/UDP {a.bind}:{a.port};branch=z9hG4bKlabreg1\r\n"
                f"From: <sip:phone@{a.registrar}>;tag=p1\r\nTo: <sip:phone@{a.registrar}>\r\n"
                f"Call-ID: labreg1@{a.bind}\r\nCSeq: 1 REGISTER\r\nContact: <sip:phone@{a.bind}:{a.port}>\r\n"
                "Expires: 3600\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()
    deadline = time.monotonic() + a.timeout
    registered, invited = False, False
    next_try = 0.0
    while time.monotonic() < deadline and not invited:
        if not registered and time.monotonic() >= next_try:  # UDP: retransmit until the 200 comes
            reg.sendto(register, (a.registrar, 5060))
            next_try = time.monotonic() + 1.0
        ready, _, _ = select.select([reg, control], [], [], 0.5)
        for sock in ready:
            msg, peer = sock.recvfrom(4096)
            line = msg.split(b"\r\n", 1)[0].decode("ascii", "replace")
            if sock is control:
                say(f"stray on {a.control_port}: {line} from {peer[0]}:{peer[1]}")
            elif line.startswith("SIP/2.0 200") and not registered:
                registered = True
                say("registered")
            elif line.startswith("INVITE "):
                invited = True
                say(f"invite on {a.port} from {peer[0]}:{peer[1]}")
    if not invited:
        say("phone: " + ("no call came" if registered else "not registered"))
    return 0 if invited else 1


def invite(a: argparse.Namespace) -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((a.bind, a.sport))
    msg = (f"INVITE sip:phone@{a.to}:{a.dport} SIP/2.0\r\nVia: SIP/2.0/UDP {a.bind}:{a.sport};branch=z9hG4bKlabinv1\r\n"
           f"From: <sip:caller@{a.bind}>;tag=c1\r\nTo: <sip:phone@{a.to}>\r\nCall-ID: labinv1@{a.bind}\r\n"
           f"CSeq: 1 INVITE\r\nContact: <sip:caller@{a.bind}:{a.sport}>\r\nMax-Forwards: 70\r\n"
           "Content-Length: 0\r\n\r\n").encode()
    s.sendto(msg, (a.to, a.dport))
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("registrar")
    r.add_argument("--bind", required=True)
    r.add_argument("--port", type=int, default=5060)
    r.add_argument("--timeout", type=float, default=60)
    ph = sub.add_parser("phone")
    ph.add_argument("--bind", required=True)
    ph.add_argument("--port", type=int, required=True)
    ph.add_argument("--control-port", type=int, default=0)
    ph.add_argument("--registrar", required=True)
    ph.add_argument("--timeout", type=float, default=120)
    i = sub.add_parser("invite")
    i.add_argument("--bind", required=True)
    i.add_argument("--sport", type=int, required=True)
    i.add_argument("--to", required=True)
    i.add_argument("--dport", type=int, required=True)
    a = p.parse_args()
    return {"registrar": registrar, "phone": phone, "invite": invite}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
