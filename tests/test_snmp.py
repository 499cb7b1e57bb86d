"""SNMP helper: a broadcast v1/v2c/v3 request opens udp <manager's subnet>:161 -> manager:sport; unicast,
responses, traps, other versions and malformed BER open nothing; the capture's request and answer match."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
from pathlib import Path

import pytest

import alg
from actions import expects, notices
from alg import EXPECT_F_PERMANENT, UDP, Direction
from alg.testing import feed
from alg_helpers.snmp import SnmpHelper

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from more_helpers_peers import _ber, _pdu, SYS_DESCR, snmp_message  # noqa: E402

ME = ipaddress.ip_address("10.0.2.1")
CAPTURE = Path(__file__).parent / "pcaps" / "snmp-rec-snmpget" / "capture.pcap"


def message(version: int, tag: int, community: bytes = b"public") -> bytes:
    return _ber(0x30, _ber(2, bytes((version,))) + _ber(4, community) + _pdu(tag, SYS_DESCR))


def flow(dst: str, sport: int = 45000) -> alg.FlowTuple:
    return alg.FlowTuple(4, UDP, ME, ipaddress.ip_address(dst), sport, 161)


def run(wire: bytes, dst: str = "10.0.2.255", helper: SnmpHelper | None = None) -> list:
    return feed(helper or SnmpHelper(), [(Direction.ORIGINAL, wire)], flow(dst))


@pytest.mark.parametrize("version, tag", [(0, 0xA0), (0, 0xA1), (0, 0xA3), (1, 0xA0), (1, 0xA1), (1, 0xA3),
                                          (1, 0xA5)])
@pytest.mark.parametrize("dst", ["10.0.2.255", "255.255.255.255"])
def test_broadcast_request_opens_the_subnets_answers(version, tag, dst):
    (e,) = expects(run(message(version, tag), dst))
    assert (e.cls, e.proto, e.src, e.src_prefix, e.dst, e.sport, e.dport, e.flags) == (
        "snmp", UDP, ME, 24, ME, 161, 45000, EXPECT_F_PERMANENT)


def test_v3_is_accepted_after_its_version():
    assert len(expects(run(snmp_message("v3")))) == 1


def test_long_form_lengths_are_read():
    community = b"c" * 300  # 0x82 0x01 0x2c, and the outer SEQUENCE's length too
    assert len(expects(run(message(1, 0xA0, community)))) == 1
    padded = b"\x30\x84\x00\x00\x00\x26" + snmp_message("get")[2:]  # non-minimal long form: BER allows it
    assert len(expects(run(padded))) == 1


def test_the_subnet_is_the_policys():
    helper = SnmpHelper({"subnet_prefix_v4": 16})
    assert notices(run(snmp_message("get"), "10.0.2.255", helper)) == ["not-broadcast"]
    (e,) = expects(run(snmp_message("get"), "10.0.255.255", helper))
    assert e.src_prefix == 16
    (e,) = expects(run(snmp_message("get"), helper=SnmpHelper({"subnet_only": False})))
    assert e.src is None


GET = snmp_message("get")


@pytest.mark.parametrize("wire, dst, code", [
    (GET, "10.0.2.2", "not-broadcast"),                      # unicast: the answer is the request's reply
    (GET, "10.0.3.255", "not-broadcast"),                    # another subnet's broadcast
    (snmp_message("response"), "10.0.2.255", "not-a-request"),
    (message(0, 0xA4), "10.0.2.255", "not-a-request"),       # a v1 Trap
    (message(1, 0xA7), "10.0.2.255", "not-a-request"),       # an SNMPv2-Trap
    (message(1, 0xA6), "10.0.2.255", "not-a-request"),       # an InformRequest (manager to manager, udp/162)
    (message(0, 0xA5), "10.0.2.255", "not-a-request"),       # GetBulk is v2 only
    (message(2, 0xA0), "10.0.2.255", "malformed"),           # version 2 (v2u/v2p, never deployed)
    (snmp_message("huge"), "10.0.2.255", "malformed"),       # the outer length claims 2 GB
    (b"\x30\x85\x01" + GET[2:], "10.0.2.255", "malformed"),  # 5 length octets
    (b"\x30\x80" + GET[2:] + b"\0\0", "10.0.2.255", "malformed"),  # indefinite length (RFC 3417 §8)
    (GET[:-1], "10.0.2.255", "malformed"),                   # truncated: the outer length ends past the datagram
    (b"\x31" + GET[1:], "10.0.2.255", "malformed"),          # a SET, not a SEQUENCE
    (GET[:2] + b"\x02\x02\x00\x01" + GET[5:], "10.0.2.255", "malformed"),  # a non-minimal INTEGER version
    (GET[:5] + b"\x05" + GET[6:], "10.0.2.255", "malformed"),  # the community is not an OCTET STRING
    (b"\x30\x03\x02\x01\x01", "10.0.2.255", "malformed"),    # ends after the version
    (b"\x30\x05\x02\x01\x03\x04\x00", "10.0.2.255", "malformed"),  # v3 without its header SEQUENCE
    (b"", "10.0.2.255", "malformed"),
    (b"\x30", "10.0.2.255", "malformed"),
])
def test_nothing_opens(wire, dst, code):
    acts = run(wire, dst)
    assert expects(acts) == [] and notices(acts) == [code]


def test_answers_on_the_flow_are_not_read():
    assert feed(SnmpHelper(), [(Direction.REPLY, GET)], flow("10.0.2.255")) == []


def test_the_capture_request_expects_snmpds_unicast_answer():
    """alg replay on the real capture: snmpget's request to 255.255.255.255 from 45101 expects
    `udp 10.0.2.0/24:161 -> 10.0.2.1:45101`, and snmpd's answer from 10.0.2.2:161 (frame 4) matches it."""
    out = subprocess.run([sys.executable, "-m", "alg", "replay", "--format", "json", "--helper", "snmp", "--stats",
                          str(CAPTURE)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    (exp,) = [r for r in rows if r["master"]["sport"] == 45101]
    assert (exp["src"], exp["mask"]["src"], exp["sport"], exp["dst"], exp["dport"], exp["timeout"]) == (
        "10.0.2.1", "255.255.255.0", 161, "10.0.2.1", 45101, 30)
    assert json.loads(out.stderr)["related_flows"] == 1
