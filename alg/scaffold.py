"""`alg new-helper NAME`: start a helper plugin as an installable package.

It writes `alg-NAME/` with the helper (a working toy protocol to replace),
its default policy, tests that use alg's pytest plugin, and a capture case
(a synthetic capture, its SOURCE.md and golden file)::

    alg new-helper tftp --port 69 && cd alg-tftp
    pip install -e . && pytest          # the tests pass as generated
    alg helpers                         # tftp ... [alg-tftp 0.1.0]

The toy protocol: a UDP datagram `DATA-PORT n` from the client to the
server announces that the server will send to the client's port n; the helper
asks for that expectation. See docs/plugins.md for the contract.
"""

from __future__ import annotations

import argparse
import os
import re
import struct
import sys
from string import Template
from typing import Any

from .model import HELPER_NAME_MAX

NAME_RE = re.compile(rf"[a-z][a-z0-9_]{{0,{HELPER_NAME_MAX - 1}}}")  # a kernel helper name and a Python name

# The synthetic capture: client 192.0.2.1:40000 -> server 192.0.2.2:PORT (RFC 5737 documentation
# addresses), then the server's datagram to the announced port, which the expectation matches.
CLIENT, SERVER, CLIENT_PORT, DATA_PORT = "192.0.2.1", "192.0.2.2", 40000, 50000
PCAP_MAGIC, PCAP_VERSION, SNAPLEN, LINKTYPE_RAW = 0xA1B2C3D4, (2, 4), 65535, 101
IP_PROTO_UDP, IP_TTL, IPV4_VERSION_IHL = 17, 64, 0x45


def _checksum(data: bytes) -> int:
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _ipv4_udp(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    """An IPv4 datagram (header checksum set; UDP checksum 0: "none", RFC 768)."""
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    addrs = bytes(map(int, src.split("."))) + bytes(map(int, dst.split(".")))
    head = struct.pack("!BBHHHBBH", IPV4_VERSION_IHL, 0, 20 + len(udp), 1, 0, IP_TTL, IP_PROTO_UDP, 0) + addrs
    return head[:10] + struct.pack("!H", _checksum(head)) + head[12:] + udp


def capture(port: int) -> bytes:
    """A pcap file (raw IP link type) of the toy exchange."""
    out = struct.pack("!IHHiIII", PCAP_MAGIC, *PCAP_VERSION, 0, 0, SNAPLEN, LINKTYPE_RAW)
    packets = [_ipv4_udp(CLIENT, SERVER, CLIENT_PORT, port, b"DATA-PORT %d\n" % DATA_PORT),
               _ipv4_udp(SERVER, CLIENT, 60000, DATA_PORT, b"hello")]
    for i, pkt in enumerate(packets):
        out += struct.pack("!IIII", 1_700_000_000 + i, 0, len(pkt), len(pkt)) + pkt
    return out


FILES = {
    "pyproject.toml": '''\
[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "alg-$name"
version = "0.1.0"
description = "$name: a userspace conntrack helper for alg"
requires-python = ">=3.11"
dependencies = ["alg"]   # pin the major version you tested with, e.g. "alg>=0.1,<1" (docs/plugins.md)

# how alg finds the helper: the entry-point group alg.helpers
[project.entry-points."alg.helpers"]
$name = "alg_$name"

[tool.setuptools]
packages = ["alg_$name"]

[tool.setuptools.package-data]
alg_$name = ["policy.toml"]
''',
    "README.md": '''\
# alg-$name

A helper for [alg](https://example.invalid/alg) made with `alg new-helper $name`.

    pip install -e .          # alg finds it through the entry-point group alg.helpers
    pytest                    # alg's pytest plugin gives the fixtures
    alg helpers               # lists $name with this distribution and version
    alg policy $name > /etc/alg/$name.toml    # enable it under `alg run --policy /etc/alg`
    alg rules --helper $name  # its firewall rules

Replace the toy protocol in `alg_$name/__init__.py` with yours, then the
capture case in `tests/cases/` with a real capture (and its SOURCE.md).
''',
    "alg_$name/__init__.py": '''\
"""$name: the toy protocol of `alg new-helper` (replace it with yours).

A UDP datagram `DATA-PORT n` from the client announces that the server will
send to the client's port n: the helper asks for that expectation (class
"data"), so the kernel lets the server's datagram in as RELATED.
"""

from __future__ import annotations

import alg

PREFIX = b"DATA-PORT "


class Helper(alg.Helper):
    spec = alg.HelperSpec(
        name="$name",
        protocols=(alg.UDP,),
        ports=($port,),
        classes=(alg.ExpectClass("data", 1, 60),),   # ExpectMax 1, ExpectTimeout 60 s
        doc="$name (toy protocol): DATA-PORT n opens udp server -> client:n",
    )

    def inspect(self, segment: alg.Segment, state: object) -> alg.Outcome:
        data = segment.data
        if segment.direction is not alg.Direction.ORIGINAL or not data.startswith(PREFIX):
            return alg.Parsed(len(data))
        digits = data[len(PREFIX):].strip()
        if not digits.isdigit() or not 0 < int(digits) < 65536:
            raise alg.ProtocolViolation(f"bad port {digits[:8]!r}")
        expect = alg.Expect("data", alg.UDP, segment.receiver, segment.sender, None, int(digits))
        return alg.Parsed(len(data), (expect,))


@alg.hookimpl
def alg_register_helpers(register):
    register(Helper)
''',
    "alg_$name/policy.toml": "",  # filled from the helper's defaults (alg policy $name)
    "tests/test_$name.py": '''\
"""Tests of $name with alg's pytest plugin (fixtures alg_helper, alg_feed, alg_case)."""

from pathlib import Path

import pytest

import alg
from alg.testing import case_dirs, flow, split_variants

CASES = Path(__file__).parent / "cases"
FLOW = flow("udp", "192.0.2.1", 40000, "192.0.2.2", $port)


def test_announced_port_is_expected(alg_helper, alg_feed):
    [e] = alg_feed(alg_helper("$name"), [(alg.Direction.ORIGINAL, b"DATA-PORT 50000\\n")], FLOW)
    assert (e.cls, str(e.src), str(e.dst), e.sport, e.dport) == ("data", "192.0.2.2", "192.0.2.1", None, 50000)


def test_other_datagrams_expect_nothing(alg_helper, alg_feed):
    assert alg_feed(alg_helper("$name"), [(alg.Direction.REPLY, b"DATA-PORT 1\\n"),
                                         (alg.Direction.ORIGINAL, b"hello")], FLOW) == []


@pytest.mark.parametrize("bad", [b"DATA-PORT 0\\n", b"DATA-PORT 70000\\n", b"DATA-PORT x\\n"])
def test_bad_port_is_a_protocol_violation(alg_helper, alg_feed, bad):
    with pytest.raises(alg.ProtocolViolation):
        alg_feed(alg_helper("$name"), [(alg.Direction.ORIGINAL, bad)], FLOW)


def test_shipped_policy_is_the_helpers_default(alg_host):
    from alg.policy import default_helper_policy, load_policy

    path = Path(__import__("alg_$name").__file__).with_name("policy.toml")
    specs = {n: c.spec for n, c in alg_host.helpers.items()}
    hp = load_policy([str(path)], specs, only_listed=True).helpers["$name"]
    want = default_helper_policy(specs["$name"])
    assert (hp.ports, hp.classes, hp.queue) == (want.ports, want.classes, want.queue)


@pytest.mark.parametrize("case", case_dirs(CASES), ids=lambda p: p.name)
def test_capture_case(alg_case, case):
    alg_case(case)
''',
    "tests/cases/$name-example/SOURCE.md": '''\
# $name-example

Synthetic, written by `alg new-helper $name` (alg/scaffold.py): client
192.0.2.1:40000 sends `DATA-PORT 50000` to the server 192.0.2.2:$port (frame
1), then the server sends a datagram from port 60000 to 192.0.2.1:50000 (frame
2), the flow the expectation admits. Raw IPv4 link type; RFC 5737 addresses.
Replace it with a real capture of your protocol, and say here who made it how.
''',
    "tests/cases/$name-example/case.toml": '''\
helpers = ["$name"]
related_min = 1   # the server's datagram matched the expectation
''',
    "tests/cases/$name-example/expected.jsonl": '''\
{"class": "data", "dport": 50000, "dst": "192.0.2.1", "flags": [], "frame": 1, "helper": "$name", "l3": "ipv4", \
"mask": {"dport": 65535, "dst": "255.255.255.255", "sport": 0, "src": "255.255.255.255"}, "master": {"dport": $port, \
"dst": "192.0.2.2", "proto": "udp", "sport": 40000, "src": "192.0.2.1"}, "proto": "udp", "sport": null, \
"src": "192.0.2.2", "timeout": 60}
''',
}


def generate(name: str, port: int, where: str) -> str:
    """Write the package `alg-NAME` under `where`; returns its path."""
    from .policy import policy_file_text
    from .model import UDP, ExpectClass, HelperSpec

    if not NAME_RE.fullmatch(name):
        raise ValueError(f"helper name {name!r}: a lower-case letter, then up to {HELPER_NAME_MAX - 1} of a-z 0-9 _")
    if not 0 < port < 65536:
        raise ValueError(f"port {port}: 1-65535")
    root = os.path.join(where, f"alg-{name}")
    if os.path.exists(root):
        raise FileExistsError(f"{root} exists")
    values = {"name": name, "port": port}
    # the shipped policy is the helper's defaults, as `alg policy NAME` prints them
    spec = HelperSpec(name=name, protocols=(UDP,), ports=(port,), classes=(ExpectClass("data", 1, 60),))
    for rel, text in FILES.items():
        path = os.path.join(root, Template(rel).substitute(values))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        body = policy_file_text(spec, f"alg-{name}") if rel.endswith("policy.toml") else \
            Template(text).substitute(values)
        with open(path, "w") as f:
            f.write(body)
    with open(os.path.join(root, "tests", "cases", f"{name}-example", "capture.pcap"), "wb") as fb:
        fb.write(capture(port))
    return root


def cmd_new_helper(args: argparse.Namespace, host: Any) -> int:
    if args.name in host.helpers:
        print(f"alg new-helper: a helper named {args.name} is already loaded ({host.source(args.name)})",
              file=sys.stderr)
        return 2
    try:
        root = generate(args.name, args.port, args.dir)
    except (ValueError, FileExistsError) as exc:
        print(f"alg new-helper: {exc}", file=sys.stderr)
        return 2
    print(f"alg new-helper: wrote {root}; next: cd {root} && pip install -e . && pytest")
    return 0


def add_command(sub: Any) -> None:
    p = sub.add_parser("new-helper", help="start a helper plugin: an installable package with tests",
                       description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("name", metavar="NAME", help="helper name (kernel helper name and Python module alg_NAME)")
    p.add_argument("--port", type=int, default=9999, help="its UDP port (default 9999)")
    p.add_argument("--dir", default=".", help="where to create alg-NAME/ (default: here)")
    p.set_defaults(func=cmd_new_helper)
