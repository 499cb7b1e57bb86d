"""Writes the crafted attack captures of tests/pcaps/*-crafted-* (issue 13), with scapy.

    .venv/bin/python tools/craft_hostile.py

ssdp-crafted-hostile: a legitimate search, answer, LOCATION fetch and SUBSCRIBE, interleaved with
  an unsolicited `200 OK` (no M-SEARCH before it) naming its sender, and a browser's SUBSCRIBE to
  tcp/1900 of a hostile host whose CALLBACK names the browser's ssh port.
ftp-crafted-slipstream-lost-head: an HTTP POST to port 21 whose first segment (the HTTP head) is
  missing from the capture; the body's lines read as PORT and EPRT commands naming the browser.
"""

from __future__ import annotations

from pathlib import Path

from scapy.all import IP, TCP, UDP, Ether, Raw, wrpcap

ROOT = Path(__file__).resolve().parents[1] / "tests" / "pcaps"
CLIENT, DEVICE, EVIL = "192.168.1.20", "192.168.1.30", "203.0.113.66"


class Tcp:
    def __init__(self, src, dst, sport, dport):
        self.a, self.b, self.sport, self.dport = src, dst, sport, dport
        self.seq = [1000, 9000]

    def pkt(self, side, payload=b"", flags="A", lose=False):
        src, dst, sp, dp = (self.a, self.b, self.sport, self.dport) if side == 0 else \
            (self.b, self.a, self.dport, self.sport)
        p = Ether() / IP(src=src, dst=dst) / TCP(sport=sp, dport=dp, flags=flags, seq=self.seq[side],
                                                 ack=self.seq[1 - side]) / Raw(payload)
        self.seq[side] += len(payload) + (1 if "S" in flags else 0)
        return None if lose else p

    def handshake(self):
        return [self.pkt(0, flags="S"), self.pkt(1, flags="SA"), self.pkt(0)]


def udp(src, dst, sport, dport, payload):
    return Ether() / IP(src=src, dst=dst) / UDP(sport=sport, dport=dport) / Raw(payload)


def ssdp() -> list:
    msearch = (b'M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nMAN: "ssdp:discover"\r\nMX: 1\r\n'
               b"ST: ssdp:all\r\n\r\n")

    def answer(url):
        return b"HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=1800\r\nST: ssdp:all\r\nLOCATION: " + url + b"\r\n\r\n"

    def subscribe(host, callback):
        return (b"SUBSCRIBE /evt HTTP/1.1\r\nHOST: " + host + b"\r\nCALLBACK: <" + callback +
                b">\r\nNT: upnp:event\r\nTIMEOUT: Second-1800\r\n\r\n")

    evil_tcp = Tcp(CLIENT, EVIL, 41000, 1900)
    fetch = Tcp(CLIENT, DEVICE, 40000, 49152)
    return [
        udp(EVIL, CLIENT, 1900, 1900, answer(b"http://203.0.113.66:8080/d.xml")),  # unsolicited
        *evil_tcp.handshake(),
        evil_tcp.pkt(0, subscribe(b"203.0.113.66:1900", b"http://192.168.1.20:22/")),  # web page's SUBSCRIBE
        udp(CLIENT, "239.255.255.250", 50000, 1900, msearch),
        udp(DEVICE, CLIENT, 1900, 50000, answer(b"http://192.168.1.30:49152/d.xml")),
        *fetch.handshake(),
        fetch.pkt(0, subscribe(b"192.168.1.30:49152", b"http://192.168.1.20:49200/cb")),
    ]


def ftp() -> list:
    c = Tcp(CLIENT, EVIL, 42000, 21)
    head = b"POST /x HTTP/1.1\r\nHost: 203.0.113.66:21\r\nContent-Type: text/plain\r\nContent-Length: 8000\r\n\r\n"
    body = b"x" * 200 + b"\r\nPORT 192,168,1,20,0,22\r\nEPRT |1|192.168.1.20|22|\r\n" + b"y" * 100 + b"\r\n"
    frames = c.handshake() + [c.pkt(0, head, "PA", lose=True)]
    frames += [c.pkt(0, body, "PA") for _ in range(20)]
    return [f for f in frames if f is not None]


def main() -> None:
    for name, frames in (("ssdp-crafted-hostile", ssdp()), ("ftp-crafted-slipstream-lost-head", ftp())):
        for i, f in enumerate(frames):
            f.time = 1_700_000_000 + 0.01 * i + (30 if name.startswith("ftp") and i > 3 else 0)
        (ROOT / name).mkdir(exist_ok=True)
        wrpcap(str(ROOT / name / "capture.pcap"), frames)


if __name__ == "__main__":
    main()
