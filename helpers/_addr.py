"""Reading an address a peer wrote as text (RPC universal addresses, TNS HOST=, SSDP URLs).

`ipaddress.ip_address` costs about 1.7 µs for a dotted quad, most of a
helper's own time on a message that names one. A dotted quad written as
`ipaddress` reads it (four decimal octets of at most 255 without leading
zeros: RFC 6943 §3.1.1's strict form, which `ipaddress` requires since
Python 3.9.5) is matched here with one bounded pattern and built from its
four numbers; whatever the pattern refuses (IPv6, malformed text) goes to
`ipaddress` as before, so the errors are its own.
"""

from __future__ import annotations

import ipaddress
import re

import alg

_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"  # 0-255, no leading zero, ASCII digits
_DOTTED_QUAD = re.compile(r"\.".join([_OCTET] * 4))
_IPv4 = ipaddress.IPv4Address


def ip_from_text(text: str) -> alg.IPAddress:
    """`ipaddress.ip_address(text)`: the same address, or the same ValueError."""
    m = _DOTTED_QUAD.fullmatch(text)
    if m is None:
        return ipaddress.ip_address(text)
    a, b, c, d = m.groups()
    return _IPv4(int(a) << 24 | int(b) << 16 | int(c) << 8 | int(d))
