"""Per-message cost of the discovery helpers' inspect() (no engine, no I/O).

    .venv/bin/python benchmarks/bench_discovery.py
"""

from __future__ import annotations

import ipaddress
import struct
import time

from alg import TCP, UDP, Direction, FlowTuple, Segment
from alg_helpers.dhcpv6 import Dhcpv6Helper
from alg_helpers.mdns import MdnsHelper
from alg_helpers.slp import SlpHelper
from alg_helpers.ssdp import SsdpHelper

ip = ipaddress.ip_address
MSEARCH = b'M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nMAN: "ssdp:discover"\r\nMX: 1\r\nST: ssdp:all\r\n\r\n'
ANSWER = (b"HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=1800\r\nEXT:\r\nLOCATION: http://192.168.1.30:49152/d.xml\r\n"
          b"SERVER: Linux UPnP/1.0 x/1\r\nST: upnp:rootdevice\r\nUSN: uuid:x::upnp:rootdevice\r\n\r\n")
SUBSCRIBE = (b"SUBSCRIBE /evt HTTP/1.1\r\nHOST: 192.168.1.30:49152\r\nCALLBACK: <http://192.168.1.20:49200/cb>\r\n"
             b"NT: upnp:event\r\nTIMEOUT: Second-1800\r\n\r\n")
QUERY = struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 0) + b"\x04host\x05local\x00\x00\x01\x00\x01"
SRVRQST = bytes([2, 1, 0, 0, 40, 0x20, 0, 0, 0, 0, 0x12, 0x34, 0, 2]) + b"en" + b"\x00" * 24

CASES = [
    ("ssdp M-SEARCH", SsdpHelper(), FlowTuple(4, UDP, ip("192.168.1.20"), ip("239.255.255.250"), 50000, 1900), MSEARCH),
    ("ssdp 200 OK + LOCATION", SsdpHelper(), FlowTuple(4, UDP, ip("192.168.1.30"), ip("192.168.1.20"), 1900, 50000),
     ANSWER),
    ("ssdp SUBSCRIBE", SsdpHelper(), FlowTuple(4, TCP, ip("192.168.1.20"), ip("192.168.1.30"), 40000, 49152),
     SUBSCRIBE),
    ("mdns legacy query", MdnsHelper(), FlowTuple(4, UDP, ip("192.168.1.20"), ip("224.0.0.251"), 41000, 5353), QUERY),
    ("dhcpv6 Solicit", Dhcpv6Helper(), FlowTuple(6, UDP, ip("fe80::20"), ip("ff02::1:2"), 546, 547),
     b"\x01\x12\x34\x56" + b"\x00" * 40),
    ("slp SrvRqst", SlpHelper(), FlowTuple(4, UDP, ip("192.168.1.20"), ip("239.255.255.253"), 42000, 427), SRVRQST),
]


def main(n: int = 20000) -> None:
    for name, helper, flow, data in CASES:
        seg, state = Segment(data, Direction.ORIGINAL, flow, 0.0), helper.new_state()
        t = time.perf_counter()
        for _ in range(n):
            helper.inspect(seg, state)
        us = (time.perf_counter() - t) / n * 1e6
        print(f"{name:24} {us:6.1f} us/message  {1e6 / us:9.0f} messages/s")


if __name__ == "__main__":
    main()
