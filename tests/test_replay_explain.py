"""Replay as a debugging tool: encapsulations peeled, `--explain`, the summary.

Frames are built with scapy (an encoder independent of alg's decoder); the
attack packets are the smallest exchanges that make each helper refuse.
"""

from __future__ import annotations

import ipaddress
import json
import struct

import pytest
from scapy.all import ARP, GRE, IP, TCP, UDP, VXLAN, Dot1AD, Dot1Q, Ether, IPv6, PPPoE, Raw, wrpcap
from scapy.contrib.mpls import MPLS
from scapy.layers.l2 import CookedLinuxV2
from scapy.layers.ppp import PPP
from test_rpc import getaddr_call, reply, xdr_string
from test_tns import redirect

from alg.cli import main
from alg.decode import MAX_ENCAP_DEPTH, NotDecoded, decode_frame

INNER = IP(src="10.0.1.2", dst="10.0.2.2") / TCP(sport=40000, dport=21, flags="PA") / Raw(b"PASV\r\n")
INNER6 = IPv6(src="fd00::1", dst="fd00::2") / TCP(sport=40000, dport=21, flags="PA") / Raw(b"PASV\r\n")
OUTER = IP(src="192.0.2.1", dst="192.0.2.2")
ETH = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")


def erspan(version: int, inner) -> bytes:
    """GRE + ERSPAN II (8 bytes) or III (12 + 8 platform bytes, O set) by hand: an Ethernet frame inside."""
    if version == 2:
        return bytes(GRE(seqnum_present=1, proto=0x88BE, sequence_number=1)) + struct.pack("!HHI", 0x1000, 7, 0) \
            + bytes(ETH / inner)
    return bytes(GRE(seqnum_present=1, proto=0x22EB, sequence_number=1)) \
        + struct.pack("!HHIHH", 0x2000, 7, 0, 0, 1) + bytes(8) + bytes(ETH / inner)


ENCAPSULATED = {
    "802.1Q": (1, ETH / Dot1Q(vlan=100) / INNER),
    "802.1ad QinQ": (1, ETH / Dot1AD(vlan=200) / Dot1Q(vlan=100) / INNER6),
    "PPPoE IPv6": (1, ETH / PPPoE(sessionid=0x42) / PPP(proto=0x0057) / INNER6),
    "PPPoE IPv4": (1, ETH / PPPoE(sessionid=0x42) / PPP(proto=0x0021) / INNER),
    "MPLS stack": (1, ETH / MPLS(label=1000, s=0) / MPLS(label=2000, s=1) / INNER),
    "GRE with key": (1, ETH / OUTER / GRE(key_present=1, key=7, proto=0x0800) / INNER),
    "GRE Ethernet": (1, ETH / OUTER / GRE(proto=0x6558) / ETH / INNER6),
    "IP-in-IP": (1, ETH / OUTER / INNER),
    "6in4": (1, ETH / OUTER / INNER6),
    "4in6": (1, ETH / IPv6(src="2001:db8::1", dst="2001:db8::2") / INNER),
    "VXLAN": (1, ETH / OUTER / UDP(sport=5555, dport=4789) / VXLAN(vni=42) / ETH / INNER),
    "SLL2 VXLAN": (276, CookedLinuxV2(proto=0x0800) / OUTER / UDP(dport=4789) / VXLAN(vni=42) / ETH / INNER),
    "ERSPAN II": (1, ETH / IP(src="192.0.2.1", dst="192.0.2.2", proto=47) / Raw(erspan(2, INNER))),
    "ERSPAN III": (1, ETH / IP(src="192.0.2.1", dst="192.0.2.2", proto=47) / Raw(erspan(3, INNER6))),
    "raw IP": (101, INNER),
}


@pytest.mark.parametrize("name", ENCAPSULATED)
def test_every_encapsulation_gives_the_inner_packet(name):
    linktype, frame = ENCAPSULATED[name]
    pkt = decode_frame(linktype, bytes(frame))
    assert (pkt.sport, pkt.dport, pkt.payload) == (40000, 21, b"PASV\r\n")
    assert ipaddress.ip_address(pkt.src) in (ipaddress.ip_address(INNER.src), ipaddress.ip_address(INNER6.src))


@pytest.mark.parametrize("frame, kind", [
    (ETH / ARP(), "ARP"),
    (ETH / PPPoE() / PPP(proto=0xC021) / Raw(b"\x01\x01\x00\x04"), "PPP LCP"),
    (Ether(type=0x88B5) / Raw(b"x" * 40), "ethertype 0x88b5"),
    (ETH / OUTER / GRE(proto=0x1234) / Raw(b"x" * 20), "ethertype 0x1234"),
    (ETH / MPLS(s=1) / Raw(b"\x90" * 20), "MPLS payload neither IP nor Ethernet"),
])
def test_frames_without_ip_are_named(frame, kind):
    with pytest.raises(NotDecoded) as err:
        decode_frame(1, bytes(frame))
    assert err.value.kind == kind


def test_nesting_is_bounded():
    frame = ETH
    for _ in range(MAX_ENCAP_DEPTH + 1):
        frame = frame / Dot1Q(vlan=1)
    with pytest.raises(NotDecoded, match="nested deeper"):
        decode_frame(1, bytes(frame / INNER))
    tunnels = INNER
    for _ in range(MAX_ENCAP_DEPTH + 1):
        tunnels = OUTER / tunnels
    with pytest.raises(NotDecoded, match="nested deeper"):
        decode_frame(101, bytes(tunnels))


def test_frames_not_decoded_are_named_in_one_warning(tmp_path, capsys):
    path = tmp_path / "mixed.pcap"
    wrpcap(str(path), [ETH / INNER, Ether(type=0x88B5) / Raw(b"x" * 40), Ether(type=0x88B5) / Raw(b"y" * 40),
                       ETH / ARP(), ETH / Dot1Q(type=0x0800) / Raw(b"\x45")])
    assert main(["replay", "--no-summary", str(path)]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1, warnings
    assert "3 frames not decoded: 2 ethertype 0x88b5, 1 truncated IPv4 header" in warnings[0]
    assert "ARP" not in warnings[0]  # known to be no IP: the summary counts it, no warning


# ---------------------------------------------------------------- --explain
C4, S4, THIRD4 = "10.0.1.2", "10.0.2.2", "10.9.9.9"


def tcp_flow(client, server, sport, dport, messages, v6=False):
    """Handshake, then (from_client, bytes) messages with consistent sequence numbers."""
    ip = IPv6 if v6 else IP
    seq = {True: 1000, False: 5000}
    out = [ip(src=client, dst=server) / TCP(sport=sport, dport=dport, flags="S", seq=999),
           ip(src=server, dst=client) / TCP(sport=dport, dport=sport, flags="SA", seq=4999, ack=1000)]
    for from_client, data in messages:
        a, b, sp, dp = (client, server, sport, dport) if from_client else (server, client, dport, sport)
        out.append(ip(src=a, dst=b) / TCP(sport=sp, dport=dp, flags="PA", seq=seq[from_client]) / Raw(data))
        seq[from_client] += len(data)
    return out


def udp(src, dst, sport, dport, data, v6=False):
    return (IPv6 if v6 else IP)(src=src, dst=dst) / UDP(sport=sport, dport=dport) / Raw(data)


def explain(tmp_path, capsys, packets, *args):
    path = tmp_path / "attack.pcap"
    wrpcap(str(path), packets, linktype=101)
    assert main(["replay", "--explain", "--format", "json", "--no-summary", *args, str(path)]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def only(rows, **want):
    found = [r for r in rows if all(r[k] == v for k, v in want.items())]
    assert len(found) == 1, rows
    return found[0]


def test_ftp_port_bounce_is_explained_with_its_knob(tmp_path, capsys):
    rows = explain(tmp_path, capsys, tcp_flow(C4, S4, 40000, 21, [
        (True, b"PASV\r\n"), (False, b"227 Entering Passive Mode (10,9,9,9,4,1)\r\n")]))
    r = only(rows, reason="address-mismatch")
    assert r == {"frame": 4, "helper": "ftp", "master": f"tcp {C4}:40000 -> {S4}:21", "direction": "reply",
                 "message": "227 Entering Passive Mode (10,9,9,9,4,1)", "found": f"{THIRD4} advertised by {S4}",
                 "decision": "ignored", "reason": "address-mismatch", "knob": "options.loose", "file": r["file"]}


@pytest.mark.parametrize("messages, reason, v6", [
    ([(False, b"229 Entering Extended Passive Mode (|||0|)\r\n")], "bad-port", False),
    ([(True, b"EPRT |2|fd00::1|5000|\r\n")], "family-mismatch", False),
    ([(True, b"PORT 10,0,1,2,300,1\r\n")], "malformed", False),
])
def test_ftp_refusals_are_explained(tmp_path, capsys, messages, reason, v6):
    rows = explain(tmp_path, capsys, tcp_flow(C4, S4, 40000, 21, messages, v6))
    r = only(rows, reason=reason)
    assert r["decision"] == "ignored" and r["frame"] == 3 and r["message"] == messages[0][1].decode().strip()


def test_expectmax_budget_and_clash_are_explained(tmp_path, capsys):
    pasv = b"227 Entering Passive Mode (10,0,2,2,4,1)\r\n"
    pasv2 = b"227 Entering Passive Mode (10,0,2,2,4,2)\r\n"
    packets = (tcp_flow(C4, S4, 40000, 21, [(False, pasv), (False, pasv2)])  # ExpectMax 1: the first goes
               + tcp_flow(C4, S4, 40001, 21, [(False, pasv2)]))  # the same tuple, another master: clash
    rows = explain(tmp_path, capsys, packets)
    assert [(r["decision"], r["reason"], r["knob"]) for r in rows] == [
        ("expected", "", ""),
        ("expected", "evicted 1 older (ExpectMax 1)", "classes.ftp.expect_max"),
        ("refused", "clash", "none: the kernel lets one master expect a tuple (EBUSY)")]
    assert rows[2]["found"] == f"ftp tcp {C4}:* -> {S4}:1026" and rows[2]["frame"] == 7

    policy = tmp_path / "alg.toml"
    policy.write_text("[core]\nexpect_budget = 1\n")
    packets = tcp_flow(C4, S4, 40000, 21, [(False, pasv)]) + tcp_flow("10.0.1.3", S4, 40000, 21, [(False, pasv2)])
    rows = explain(tmp_path, capsys, packets, "--policy", str(policy))
    assert [(r["decision"], r["reason"], r["knob"]) for r in rows] == [
        ("expected", "", ""), ("refused", "budget", "core.expect_budget")]


SDP = (b"v=0\r\no=- 1 1 IN IP4 {addr}\r\ns=-\r\nc=IN IP4 {addr}\r\nt=0 0\r\nm=audio {port} RTP/AVP 0\r\n")


def invite(addr: str, port: int) -> bytes:
    body = SDP.replace(b"{addr}", addr.encode()).replace(b"{port}", str(port).encode())
    return (b"INVITE sip:bob@10.0.2.2 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.1.2:5060;branch=z9hG4bK1\r\n"
            b"From: <sip:alice@10.0.1.2>;tag=1\r\nTo: <sip:bob@10.0.2.2>\r\nCall-ID: c1@10.0.1.2\r\n"
            b"CSeq: 1 INVITE\r\nContact: <sip:alice@10.0.1.2>\r\nContent-Type: application/sdp\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


REGISTER = (b"REGISTER sip:10.0.2.2 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.1.2:5060;branch=z9hG4bK2\r\n"
            b"From: <sip:alice@10.0.2.2>;tag=2\r\nTo: <sip:alice@10.0.2.2>\r\nCall-ID: r1@10.0.1.2\r\n"
            b"CSeq: 1 REGISTER\r\nContact: <sip:alice@10.9.9.9:5060>\r\nExpires: 600\r\nContent-Length: 0\r\n\r\n")


@pytest.mark.parametrize("data, reason, knob, found", [
    (invite(THIRD4, 20000), "media-address-mismatch", "options.direct_media", f"{THIRD4} in SDP from {C4}"),
    (invite(C4, 80), "low-port", "options.min_media_port", "80"),
    (REGISTER, "contact-not-sender", "none: a phone registers its own address (RFC 3261 10.2.1)",
     f"{THIRD4} registered by {C4}"),
])
def test_sip_refusals_are_explained(tmp_path, capsys, data, reason, knob, found):
    rows = explain(tmp_path, capsys, [udp(C4, S4, 5060, 5060, data)])
    r = only(rows, reason=reason, found=found)
    assert (r["decision"], r["knob"], r["found"], r["helper"]) == ("ignored", knob, found, "sip")
    assert r["message"] == data.split(b"\r\n", 1)[0].decode()


def test_rpc_tns_and_ssdp_third_host_refusals_are_explained(tmp_path, capsys):
    rpc = [udp(C4, S4, 40000, 111, getaddr_call(5)),
           udp(S4, C4, 111, 40000, reply(5, xdr_string(b"10.9.9.9.8.1")))]
    tns = tcp_flow(C4, S4, 40002, 1521, [(False, redirect(b"(ADDRESS=(PROTOCOL=TCP)(HOST=10.9.9.9)(PORT=1522))"))])
    ssdp = [udp(C4, "239.255.255.250", 40003, 1900, b"M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\n"
                b"MAN: \"ssdp:discover\"\r\nMX: 1\r\nST: ssdp:all\r\n\r\n"),
            udp(S4, C4, 1900, 40003, b"HTTP/1.1 200 OK\r\nLOCATION: http://10.9.9.9:80/d.xml\r\n\r\n")]
    rows = explain(tmp_path, capsys, rpc + tns + ssdp)
    assert only(rows, helper="rpc", reason="address-mismatch")["knob"] == "options.loose, options.allowed_networks"
    assert only(rows, helper="tns", reason="address-mismatch")["knob"] == "options.loose, options.allowed_networks"
    r = only(rows, helper="ssdp", reason="location-not-sender")
    assert r["found"] == f"{THIRD4} named by {S4}" and r["message"] == "HTTP/1.1 200 OK"


def test_discovery_helpers_explain_unicast_requests(tmp_path, capsys):
    dhcp = bytes([1]) + b"\x00\x00\x01" + b"\x00\x01\x00\x0a" + b"\x00\x03\x00\x01" + bytes(6)  # Solicit
    rows = explain(tmp_path, capsys, [udp("fe80::1", "fd00::2", 546, 547, dhcp, v6=True)])
    r = only(rows, helper="dhcpv6")
    assert (r["decision"], r["reason"], r["found"]) == ("ignored", "not-multicast", "fd00::2")


def test_explain_text_names_frame_message_and_knob(tmp_path, capsys):
    path = tmp_path / "a.pcap"
    wrpcap(str(path), tcp_flow(C4, S4, 40000, 21, [(False, b"227 Entering Passive Mode (10,9,9,9,4,1)\r\n")]),
           linktype=101)
    assert main(["replay", "--explain", "--no-summary", str(path)]) == 0
    assert capsys.readouterr().out == (
        f"frame 3 ftp tcp {C4}:40000 -> {S4}:21 reply '227 Entering Passive Mode (10,9,9,9,4,1)': "
        f"{THIRD4} advertised by {S4} => ignored (address-mismatch) [options.loose]\n")


def test_engine_explanations_are_off_unless_asked_and_drainable():
    from alg.decode import decode_ip
    from alg.engine import Engine, make_slots
    from alg.plugins import load_plugins
    from alg.policy import default_policy

    host = load_plugins()
    pol = default_policy({n: c.spec for n, c in host.helpers.items()})
    eng = Engine(make_slots([pol.helpers["sip"]], host.helpers), pol.core)
    pkt = decode_ip(bytes(udp(C4, S4, 5060, 5060, invite(THIRD4, 20000))))
    eng.process(pkt, 0.0, 1)
    assert eng.explained is None and eng.take_explanations() == []
    eng.explained = []  # the daemon's switch (debug logging)
    eng.process(decode_ip(bytes(udp(C4, S4, 5060, 5060, invite(THIRD4, 20002).replace(b"c1@", b"c2@")))), 1.0, 2)
    drained = eng.take_explanations()
    assert [x.reason for x in drained] == ["media-address-mismatch"] and eng.take_explanations() == []


# ---------------------------------------------------------------- summary
def test_summary_counts_and_hints_at_ports_the_policy_misses(tmp_path, capsys):
    path = tmp_path / "offport.pcap"
    packets = ([ETH / udp(C4, S4, 5062, 5062, invite(C4, 20000)), ETH / ARP(), ETH / ARP()]
               + [ETH / p for p in tcp_flow(C4, S4, 40000, 2121, [(False, b"220 (vsFTPd 3.0.3)\r\n"),
                                                                  (True, b"USER anonymous\r\n")])]
               + [ETH / p for p in tcp_flow(C4, S4, 40001, 21, [(False, b"227 Entering Passive Mode (10,9,9,9,4,1)"
                                                                         b"\r\n")])])
    wrpcap(str(path), packets)
    assert main(["replay", "--summary", str(path)]) == 0
    err = capsys.readouterr().err
    assert "  ftp: 1 flows; 0 expectations; no expectation: 1 address-mismatch\n" in err
    assert "  not decoded: 2 ARP\n" in err
    assert "1 udp flows on port 5062 look like sip, whose policy does not list that port" in err
    assert "1 tcp flows on port 2121 look like ftp" in err
    assert main(["replay", "--no-summary", str(path)]) == 0
    assert "look like" not in capsys.readouterr().err


def test_explain_names_a_helpers_protocol_on_an_unknown_port(tmp_path, capsys):
    rows = explain(tmp_path, capsys, [udp(C4, S4, 40000, 5062, invite(C4, 20000))])
    assert rows == [{"frame": 1, "helper": "sip", "master": f"udp {C4}:40000 -> {S4}:5062", "direction": "original",
                     "message": "INVITE sip:bob@10.0.2.2 SIP/2.0", "found": "udp port 5062",
                     "decision": "not inspected", "reason": "unknown port", "knob": "ports", "file": rows[0]["file"]}]


def test_daemon_logs_explanations_at_debug_level_rate_limited(caplog):
    import logging

    from alg.decode import decode_ip
    from alg.engine import Engine, make_slots
    from alg.plugins import load_plugins
    from alg.policy import default_policy

    host = load_plugins()
    pol = default_policy({n: c.spec for n, c in host.helpers.items()})
    eng = Engine(make_slots([pol.helpers["sip"]], host.helpers), pol.core)
    eng.explained = []
    with caplog.at_level(logging.DEBUG, logger="alg.engine"):
        for i in range(3):  # one per second: the log says the first, then counts
            data = invite(THIRD4, 20000 + 2 * i).replace(b"c1@", f"c{i}@".encode())
            eng.process(decode_ip(bytes(udp(C4, S4, 5060, 5060, data))), float(i), i + 1)
            eng.log_explanations()
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert len(logged) == 1 and "media-address-mismatch" in logged[0] and "frame 1 sip" in logged[0]


def at(t: float, pkt):
    pkt.time = t
    return pkt


DNS_QUERY = struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 0) + b"\x05_http\x04_tcp\x05local\x00\x00\x0c\x00\x01"
SLP_REQUEST = bytes([2, 1]) + bytes(14)
HOSTNAME_SDP = invite("pbx.example.com", 20000)


@pytest.mark.parametrize("helper, packets, reason, knob", [
    ("mdns", [udp(C4, S4, 40000, 5353, DNS_QUERY)], "not-multicast", ""),
    ("slp", [udp(C4, S4, 40000, 427, SLP_REQUEST)], "not-multicast", ""),
    ("ssdp", [udp(C4, S4, 40000, 1900, b"M-SEARCH * HTTP/1.1\r\nST: ssdp:all\r\n\r\n")], "unicast-search", ""),
    ("ssdp", [udp(C4, "239.255.255.250", 40000, 1900, b"M-SEARCH * HTTP/1.1\r\nST: ssdp:all\r\n\r\n"),
              udp(S4, C4, 1900, 40000, b"HTTP/1.1 200 OK\r\nLOCATION: http://tv.example/d.xml\r\n\r\n")],
     "hostname-in-url", ""),
    ("sip", [udp(C4, S4, 5060, 5060, HOSTNAME_SDP)], "hostname-in-sdp", ""),
    ("sip", [udp(C4, S4, 5060, 5060, invite("224.0.1.1", 20000))], "multicast-media", ""),
    ("rpc", [at(0, udp(C4, S4, 40000, 111, getaddr_call(5))),
             at(61, udp(S4, C4, 111, 40000, reply(5, xdr_string(b"10.0.2.2.8.1"))))],
     "call-expired", "options.call_timeout"),
    ("rpc", [udp(C4, S4, 40000, 111, getaddr_call(xid)) for xid in range(33)], "pending-full", "options.max_pending"),
    ("tns", tcp_flow(C4, S4, 40002, 1521, [(False, redirect(b"(ADDRESS=(PROTOCOL=TCP)(HOST=db.example)(PORT=1522))"))]),
     "hostname", ""),
])
def test_more_refusals_are_explained(tmp_path, capsys, helper, packets, reason, knob):
    rows = explain(tmp_path, capsys, packets)
    r = only(rows, helper=helper, reason=reason)
    assert r["decision"] == "ignored" and r["knob"] == knob


def test_a_helpers_invalid_request_is_explained_as_refused():
    import alg
    from alg.decode import decode_ip
    from alg.engine import Engine, HelperSlot
    from alg.policy import default_helper_policy

    class Buggy(alg.Helper):
        spec = alg.HelperSpec("buggy", (17,), (7777,), (alg.ExpectClass("default", 1, 60),))

        def inspect(self, segment, state):
            return alg.Parsed(len(segment.data), (alg.Expect("default", 17, None, segment.sender, None, 0),))

    eng = Engine({"buggy": HelperSlot(default_helper_policy(Buggy.spec), Buggy())})
    eng.explained = []
    eng.process(decode_ip(bytes(udp(C4, S4, 40000, 7777, b"x"))), 0.0, 1)
    [x] = eng.take_explanations()
    assert (x.decision, x.reason, x.knob) == ("refused", "invalid", "none: a helper bug")


def test_a_public_pptp_capture_is_peeled_to_its_dns_packets():
    from pathlib import Path

    from alg.pcap import read_frames

    path = Path(__file__).parent / "pcaps/encap-zeek_tunnels-gre-pptp/capture.pcap"
    inner = [decode_frame(f.linktype, f.data) for f in read_frames(str(path))]
    assert [(str(ipaddress.ip_address(p.src)), p.sport, str(ipaddress.ip_address(p.dst)), p.dport) for p in inner] == [
        ("172.16.44.3", 40768, "8.8.8.8", 53), ("8.8.8.8", 53, "172.16.44.3", 40768)]


@pytest.mark.parametrize("dport, data, detail", [
    (21, b"GET / HTTP/1.1\r\n", "an HTTP request on the FTP control port (NAT Slipstreaming?)"),
    # a capture that starts mid-stream, inside a SIP message's body
    (5060, b"a=rtpmap:0 PCMU/8000\r\n\r\n", "not a SIP start line"),
])
def test_a_flow_given_up_is_explained(tmp_path, capsys, dport, data, detail):
    [r] = explain(tmp_path, capsys, [IP(src=C4, dst=S4) / TCP(sport=40000, dport=dport, flags="PA", seq=7) / Raw(data)])
    assert (r["decision"], r["reason"], r["frame"]) == ("flow no longer inspected", "protocol-violation", 1)
    assert r["found"].startswith(detail)
