"""The core below the helpers: decoding, TCP streams, the expectation table, the engine."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.all import IP, TCP, UDP, Dot1Q, Ether, IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrHopByHop, Raw, fragment, raw

import alg
from alg.decode import DecodeError, Defragmenter, decode_ip, decode_link
from alg.engine import Create, Delete, Engine, make_slots
from alg.errors import ProtocolViolation
from alg.expect import Expectation, ExpectationTable, Refusal
from alg.flows import TcpStream
from alg.model import FlowTuple
from alg.plugins import load_plugins
from alg.policy import CorePolicy, default_policy

ROOT = Path(__file__).resolve().parents[1]
A, B = ipaddress.ip_address("10.0.0.1"), ipaddress.ip_address("10.0.0.2")


# ---------------------------------------------------------------- decoding
def test_decode_ipv4_tcp_and_ethernet_vlan():
    frame = raw(Ether() / Dot1Q(vlan=5) / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1, dport=21, seq=7,
                                                                                   flags="PA") / Raw(b"USER x\r\n"))
    pkt = decode_ip(decode_link(1, frame))
    assert (pkt.l3, pkt.proto, pkt.sport, pkt.dport, pkt.seq, pkt.payload) == (4, 6, 1, 21, 7, b"USER x\r\n")
    assert pkt.src == B.packed[:3] + b"\x01"


def test_decode_ipv6_extension_headers():
    data = raw(IPv6(src="fd00::1", dst="fd00::2") / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt()
               / UDP(sport=5060, dport=5060) / Raw(b"OPTIONS"))
    pkt = decode_ip(data)
    assert (pkt.l3, pkt.proto, pkt.dport, pkt.payload) == (6, 17, 5060, b"OPTIONS")


@pytest.mark.parametrize("l3", [4, 6])
def test_fragments_reassemble(l3):
    body = bytes(range(256)) * 12
    if l3 == 4:
        frags = fragment(IP(src="10.0.0.1", dst="10.0.0.2", id=9) / UDP(sport=1, dport=2) / Raw(body), 600)
    else:
        from scapy.all import IPv6ExtHdrFragment, fragment6
        frags = fragment6(IPv6(src="fd00::1", dst="fd00::2") / IPv6ExtHdrFragment(id=9) / UDP(sport=1, dport=2)
                          / Raw(body), 700)
    defrag = Defragmenter()
    out = [defrag.feed(decode_ip(raw(f))) for f in reversed(frags)]
    whole = [p for p in out if p is not None]
    assert len(whole) == 1 and whole[0].payload == body and whole[0].dport == 2


@pytest.mark.parametrize("data", [b"", b"\x45", b"\x45" + b"\x00" * 10, b"\x60" + b"\x00" * 20, b"\x99" * 40,
                                  raw(IP() / TCP())[:30]])
def test_truncated_or_foreign_packets_raise_decode_error(data):
    with pytest.raises(DecodeError):
        decode_ip(data)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200))
def test_decode_never_raises_anything_but_decode_error(data):
    try:
        decode_ip(data)
    except DecodeError:
        pass


# ---------------------------------------------------------------- TCP streams
def test_stream_orders_segments_and_drops_retransmissions():
    s = TcpStream(1000)
    s.feed(99, 0x02, b"")  # SYN
    assert s.feed(100, 0x18, b"PA")
    assert not s.feed(106, 0x18, b"ST\r\n")  # from the future: parked
    assert s.feed(102, 0x18, b"SV\r\n")  # fills the hole
    assert s.buf == b"PASV\r\nST\r\n"
    assert not s.feed(100, 0x18, b"PASV")  # retransmission
    assert s.feed(104, 0x18, b"\r\nST\r\nQUIT")  # overlap: only the new part
    assert s.buf == b"PASV\r\nST\r\nQUIT"


def test_stream_bound_raises_protocol_violation():
    s = TcpStream(100)
    s.feed(0, 0x02, b"")
    with pytest.raises(ProtocolViolation):
        s.feed(1, 0x18, b"x" * 101)


def test_stream_bound_counts_parked_out_of_order_bytes():
    # in-order bytes and parked ones share the bound: a peer cannot make us hold
    # memory by never filling a hole (2 x 60 bytes parked > 100)
    s = TcpStream(100)
    s.feed(0, 0x02, b"")
    assert not s.feed(11, 0x18, b"y" * 40)
    with pytest.raises(ProtocolViolation):
        s.feed(51, 0x18, b"z" * 61)


def test_stream_skips_a_hole_that_does_not_fill():
    from alg.flows import GAP_SEGMENTS
    s = TcpStream(100000)
    s.feed(99, 0x02, b"")
    assert s.feed(100, 0x18, b"PO")  # a command cut short by the lost segment
    seq = 110  # 8 bytes (102..109) never arrive
    for i in range(GAP_SEGMENTS - 1):
        assert not s.feed(seq, 0x18, b"%02d\r\n" % i, now=float(i))
        seq += 4
    assert s.buf == b"PO" and s.gaps == 0
    assert s.feed(seq, 0x18, b"xx\r\n", now=15.0)  # one segment too many behind the hole: skip it
    assert (s.gaps, s.resync, s.ooo, s.ooo_bytes) == (1, True, {}, 0)
    assert s.buf == b"".join(b"%02d\r\n" % i for i in range(GAP_SEGMENTS - 1)) + b"xx\r\n"
    assert not s.feed(102, 0x18, b"RT 1,2,3")  # the lost segment, too late: old data


def test_stream_skips_a_hole_older_than_gap_seconds():
    from alg.flows import GAP_SECONDS
    s = TcpStream(100000)
    s.feed(0, 0x02, b"")
    assert not s.feed(11, 0x18, b"a\n", now=1.0)
    assert not s.feed(13, 0x18, b"b\n", now=1.0 + GAP_SECONDS / 2)  # retransmission may still come
    assert s.feed(15, 0x18, b"c\n", now=1.0 + GAP_SECONDS)
    assert (s.buf, s.gaps) == (b"a\nb\nc\n", 1)


def test_stream_without_clock_skips_on_parked_bytes():
    s = TcpStream(1000)
    s.feed(0, 0x02, b"")
    assert not s.feed(11, 0x18, b"x" * 499)
    assert s.feed(510, 0x18, b"y")  # half the bound parked
    assert s.gaps == 1 and s.buf == b"x" * 499 + b"y"


def test_stream_sequence_wraps():
    s = TcpStream(100)
    s.feed(2**32 - 3, 0x02, b"")
    assert s.feed(2**32 - 2, 0x18, b"ab")
    assert s.feed(0, 0x18, b"cd")
    assert s.buf == b"abcd"


# ---------------------------------------------------------------- expectation table
MASTER = FlowTuple(4, 6, A, B, 40000, 21)
OTHER = FlowTuple(4, 6, A, B, 40001, 21)


def exp(port: int, master: FlowTuple = MASTER, cls: str = "default", created: float = 0.0, timeout=300):
    return Expectation("ftp", cls, 0, 4, 6, A, B, None, port, master, timeout, created=created)


def test_per_master_and_class_max_evicts_the_oldest():
    t = ExpectationTable()
    assert t.admit(exp(1000), 2).accepted
    assert t.admit(exp(1001), 2).accepted
    adm = t.admit(exp(1002), 2)
    assert adm.accepted and [e.dport for e in adm.evicted] == [1000]
    assert sorted(e.dport for e in t) == [1001, 1002]


def test_clash_with_another_master_and_replace_by_the_same():
    t = ExpectationTable()
    t.admit(exp(1000), 4)
    assert t.admit(exp(1000, OTHER), 4).refused is Refusal.CLASH
    again = t.admit(exp(1000, created=5.0), 4)
    assert again.accepted and len(t) == 1


def test_global_budget_refuses_and_timeouts_expire():
    t = ExpectationTable(budget=2)
    t.admit(exp(1000), 9)
    t.admit(exp(1001, OTHER), 9)
    assert t.admit(exp(1002), 9).refused is Refusal.BUDGET
    assert len(t.expire(now=300.0)) == 2 and len(t) == 0


def test_src_prefix_gives_a_network_mask():
    e = Expectation("x", "d", 0, 4, 17, ipaddress.ip_address("192.168.1.7"), B, None, 53, MASTER, 30,
                    src_prefix=24)
    assert e.to_json()["mask"]["src"] == "255.255.255.0"
    assert e.matches(FlowTuple(4, 17, ipaddress.ip_address("192.168.1.99"), B, 5353, 53))
    assert not e.matches(FlowTuple(4, 17, ipaddress.ip_address("192.168.2.1"), B, 5353, 53))


def test_holding_finds_ours_by_the_kernels_tuple_and_mask():
    ip = ipaddress.ip_address
    t = ExpectationTable()
    wild = Expectation("ftp", "default", 0, 4, 6, None, B, None, 1000, MASTER, 300)
    net = Expectation("ftp", "default", 0, 4, 6, ip("192.168.1.7"), B, None, 1001, MASTER, 300, src_prefix=24)
    t.admit(wild, 9)
    t.admit(net, 9)
    zero, ones = ip("0.0.0.0"), ip("255.255.255.255")
    assert t.holding(FlowTuple(4, 6, zero, B, 0, 1000), zero, True) is wild
    assert t.holding(FlowTuple(4, 6, ip("192.168.1.0"), B, 0, 1001), ip("255.255.255.0"), True) is net
    assert t.holding(FlowTuple(4, 6, ip("192.168.1.7"), B, 0, 1001), ones, True) is None  # another mask
    assert t.holding(FlowTuple(4, 6, zero, B, 0, 1000), zero, False) is None  # a fixed source port
    assert t.holding(FlowTuple(4, 17, zero, B, 0, 1000), zero, True) is None


# ---------------------------------------------------------------- engine
class Boom(alg.Helper):
    spec = alg.HelperSpec(name="boom", protocols=(alg.UDP,), ports=(9,), classes=(alg.ExpectClass("d", 1, 9),))

    def inspect(self, segment, state):
        if segment.data == b"bug":
            raise ZeroDivisionError("helper bug")
        if segment.data == b"bad":
            raise ProtocolViolation("nonsense")
        port = 7000 + segment.data[0]
        return alg.Parsed(len(segment.data), (alg.Expect("d", alg.UDP, None, segment.sender, None, port),))


def engine_with(helper_cls, **core):
    host = load_plugins(extra=[type("P", (), {"alg_register_helpers": alg.hookimpl(
        lambda self, register: register(helper_cls))})()])
    policy = default_policy({n: c.spec for n, c in host.helpers.items()})
    return Engine(make_slots([policy.helpers[helper_cls.spec.name]], host.helpers), CorePolicy(**core))


def udp(payload: bytes, sport=5000):
    return decode_ip(raw(IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=sport, dport=9) / Raw(payload)))


def test_helper_bug_and_violation_cost_the_flow_not_the_engine():
    eng = engine_with(Boom)
    assert eng.process(udp(b"bug"), 0.0) == []
    assert eng.process(udp(b"fine"), 1.0) == []  # that flow is no longer inspected
    assert eng.process(udp(b"bad", 5001), 1.0) == []
    stats = eng.stats()["helpers"]["boom"]
    assert (stats["internal_errors"], stats["parse_errors"]) == (1, 1)
    [d] = eng.process(udp(b"ok", 5002), 2.0)
    assert isinstance(d, Create) and d.expectation.dport == 7000 + ord("o")


def test_max_expected_one_evicts_and_reports_delete():
    eng = engine_with(Boom)
    eng.process(udp(b"one"), 0.0)
    out = eng.process(udp(b"two"), 1.0)
    assert [type(d) for d in out] == [Delete, Create]
    assert eng.stats()["helpers"]["boom"]["classes"]["d"]["evicted"] == 1


def test_budget_refusal_is_counted_by_reason():
    eng = engine_with(Boom, expect_budget=1)
    eng.process(udp(b"a", 6000), 0.0)
    assert eng.process(udp(b"b", 6001), 0.0) == []
    assert eng.stats()["helpers"]["boom"]["classes"]["d"]["refused"] == {"budget": 1}


def test_a_clash_with_an_expectation_the_kernel_let_go_is_no_clash():
    eng = engine_with(Boom)
    [first] = eng.process(udp(b"x", 5000), 0.0)
    assert eng.process(udp(b"x", 5001), 1.0) == []  # another master, same tuple: replay trusts its table
    asked = []
    eng.kernel_holds = lambda e: asked.append(e) or True
    assert eng.process(udp(b"x", 5002), 2.0) == [] and asked == [first.expectation]
    eng.kernel_holds = lambda e: False  # its flow came and used it
    [d] = eng.process(udp(b"x", 5003), 3.0)
    assert isinstance(d, Create) and d.expectation.master.sport == 5003
    c = eng.stats()["helpers"]["boom"]["classes"]["d"]
    assert (c["created"], c["used"], c["refused"]) == (2, 1, {"clash": 2})


def test_an_ended_expectation_frees_its_room_and_counts_as_used_before_its_timeout():
    eng = engine_with(Boom, expect_budget=1)
    [a] = eng.process(udp(b"a", 6000), 0.0)
    eng.ended(a.expectation, 5.0)  # the kernel's destroy event, long before its 9 s timeout
    [b] = eng.process(udp(b"b", 6001), 6.0)  # the budget has room again
    eng.ended(b.expectation, 6.0 + b.expectation.timeout)  # at its timeout: not used
    eng.ended(b.expectation, 20.0)  # twice: nothing more
    assert eng.stats()["helpers"]["boom"]["classes"]["d"]["used"] == 1 and len(eng.table) == 0
    assert [ev.kind for ev in eng.take_events()] == ["created", "used", "created"]


class Records(alg.Helper):
    """A binary protocol on TCP (2-byte length, then a port): cannot resync after a gap."""

    spec = alg.HelperSpec(name="records", protocols=(alg.TCP,), ports=(9,), classes=(alg.ExpectClass("d", 4, 9),))

    def inspect(self, segment, state):
        data = segment.data
        if len(data) < 2 or len(data) < 2 + data[0] * 256 + data[1]:
            return alg.NEED_DATA
        n = 2 + data[0] * 256 + data[1]
        port = int(data[2:n])
        return alg.Parsed(n, (alg.Expect("d", alg.TCP, None, segment.sender, None, port),))


def record(port: int) -> bytes:
    body = b"%d" % port
    return len(body).to_bytes(2, "big") + body


def test_a_helper_that_cannot_resync_gives_up_that_direction_only():
    from alg.flows import GAP_SEGMENTS
    eng = engine_with(Records)
    c, s = ("10.0.0.1", "10.0.0.2", 40000, 9), ("10.0.0.2", "10.0.0.1", 9, 40000)
    eng.process(tcp(*c, flags="S", seq=99), 0.0)
    eng.process(tcp(*s, flags="SA", seq=499), 0.0)
    [d] = eng.process(tcp(*c, record(1001), seq=100), 0.1)
    assert d.expectation.dport == 1001
    seq = 100 + 6 + 3  # 3 bytes lost
    for i in range(GAP_SEGMENTS):
        assert eng.process(tcp(*c, record(2000 + i), seq=seq), 0.2) == []
        seq += 6
    stats = eng.stats()["helpers"]["records"]
    assert (stats["gaps"], stats["desynced"], stats["parse_errors"]) == (1, 1, 0)
    assert eng.process(tcp(*c, record(3000), seq=seq), 0.3) == []  # still given up
    [d] = eng.process(tcp(*s, record(4000), seq=500), 0.4)  # the other direction goes on
    assert d.expectation.dport == 4000
    flow, _ = eng.flows.lookup(tcp(*c))
    assert flow.streams[0].buf == b"" and flow.streams[0].ooo == {}  # nothing held for it


def test_several_commands_in_one_segment_through_the_engine():
    eng = ftp_engine()
    eng.process(tcp("10.0.0.1", "10.0.0.2", 40000, 21, flags="S", seq=99), 0.0)
    head = b"TYPE I\r\nPORT 10,0,0,1,4,1\r\nRETR a\r\nPORT 10,0,0,1,4,2\r\nPORT 10,0,0,1,4,"
    out = eng.process(tcp("10.0.0.1", "10.0.0.2", 40000, 21, head, seq=100), 0.1)
    # ExpectMax 1: the second PORT evicts the first; the third waits for its line end
    assert [(type(d).__name__, d.expectation.dport) for d in out] == [("Create", 1025), ("Delete", 1025),
                                                                      ("Create", 1026)]
    [_, d] = eng.process(tcp("10.0.0.1", "10.0.0.2", 40000, 21, b"3\r\n", seq=100 + len(head)), 0.2)
    assert d.expectation.dport == 1027


class BadRequests(alg.Helper):
    spec = alg.HelperSpec(name="badreq", protocols=(alg.UDP,), ports=(9,), classes=(alg.ExpectClass("d", 1, 9),))

    def inspect(self, segment, state):
        kind = segment.data
        a = {b"port": alg.Expect("d", alg.UDP, None, segment.sender, None, 0),
             b"family": alg.Expect("d", alg.UDP, None, alg.ip("fd00::1"), None, 5),
             b"class": alg.Expect("nosuch", alg.UDP, None, segment.sender, None, 5)}[kind]
        return alg.Parsed(len(kind), (a,))


def test_invalid_expectation_requests_are_refused_as_invalid():
    eng = engine_with(BadRequests)
    for i, kind in enumerate((b"port", b"family", b"class")):
        assert eng.process(udp(kind, 5000 + i), 0.0) == []
    stats = eng.stats()["helpers"]["badreq"]
    assert stats["classes"]["d"]["refused"] == {"invalid": 2}
    assert stats["internal_errors"] == 1  # a class the helper never declared: nothing to count it in


# ---------------------------------------------------------------- replay contract
def test_replay_json_contract(capsys):
    from alg.cli import main
    assert main(["replay", "--format", "json", str(ROOT / "tests/pcaps/ftp-zeek_ftp-ipv6/capture.pcap")]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows
    for r in rows:
        assert {"helper", "class", "frame", "l3", "proto", "src", "dst", "sport", "dport", "mask", "master",
                "timeout", "flags"} <= set(r)
        assert set(r["mask"]) == {"src", "dst", "sport", "dport"}
        assert set(r["master"]) >= {"src", "dst", "sport", "dport", "proto"}
        assert r["l3"] == "ipv6" and r["proto"] == "tcp" and r["sport"] is None and r["frame"] >= 1


def test_replay_of_a_missing_or_bad_file_exits_1(tmp_path, capsys):
    from alg.cli import main
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(b"not a capture at all")
    assert main(["replay", str(bad)]) == 1
    assert main(["replay", str(tmp_path / "none.pcap")]) == 1
    assert main(["replay", "--helper", "nosuch", str(bad)]) == 2


def ftp_engine(**policy_changes):
    from dataclasses import replace
    host = load_plugins()
    policy = default_policy({n: c.spec for n, c in host.helpers.items()})
    return Engine(make_slots([replace(policy.helpers["ftp"], **policy_changes)], host.helpers))


def tcp(src, dst, sport, dport, payload=b"", flags="PA", seq=1000):
    return decode_ip(raw(IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=flags, seq=seq) / Raw(payload)))


def test_capture_starting_mid_flow_with_the_servers_reply():
    eng = ftp_engine()
    [d] = eng.process(tcp("10.0.0.2", "10.0.0.1", 21, 40000, b"227 Entering Passive Mode (10,0,0,2,4,1)\r\n"), 0.0)
    e = d.expectation
    assert (str(e.src), str(e.dst), e.dport) == ("10.0.0.1", "10.0.0.2", 1025)
    assert (e.master.sport, e.master.dport) == (40000, 21)  # the master keeps its original direction


def test_flows_per_helper_are_bounded_oldest_first():
    eng = ftp_engine(max_flows=2)
    for port in (40000, 40001, 40002):
        eng.process(tcp("10.0.0.1", "10.0.0.2", port, 21, flags="S"), 0.0)
    assert len(eng.flows) == 2 and eng.flows.evicted == 1
    assert eng.flows.lookup(tcp("10.0.0.1", "10.0.0.2", 40000, 21)) is None


def test_idle_flows_and_old_expectations_are_swept():
    eng = ftp_engine()
    eng.process(tcp("10.0.0.1", "10.0.0.2", 40000, 21, b"PORT 10,0,0,1,4,1\r\n", flags="PA"), 0.0)
    assert len(eng.table) == 1
    eng.process(tcp("10.0.0.3", "10.0.0.2", 40000, 21, flags="S"), 301.0)
    assert len(eng.table) == 0
    eng.process(tcp("10.0.0.3", "10.0.0.2", 40001, 21, flags="S"), 4000.0)
    assert len(eng.flows) == 1


# ---------------------------------------------------------------- captures: damaged, truncated, foreign
import struct  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

FTP4 = ROOT / "tests/pcaps/ftp-zeek_ftp-ipv4/capture.pcap"


def pcapng(*blocks: bytes) -> bytes:
    return b"".join(blocks)


def block(btype: int, body: bytes, blen: int | None = None) -> bytes:
    n = 12 + len(body) if blen is None else blen
    return struct.pack("<II", btype, n) + body + struct.pack("<I", n)


SHB = block(0x0A0D0D0A, b"\x4d\x3c\x2b\x1a" + struct.pack("<HHq", 1, 0, -1))
IDB = block(1, struct.pack("<HHI", 1, 0, 65535))


@pytest.mark.parametrize("data, offset", [
    (SHB + block(1, b"\x01\x00"), 28),  # interface description too short for its fields
    (SHB + IDB + block(6, b"\x00" * 8), 48),  # enhanced packet too short
    (SHB + IDB + struct.pack("<II", 6, 8) + b"\x00" * 8, 48),  # block length < 12
    (SHB + IDB + block(6, struct.pack("<IIII", 0, 0, 0, 500) + b"\x00" * 8), 48),  # caplen beyond the block
    (SHB + IDB + block(6, struct.pack("<IIII", 3, 0, 0, 4) + b"\x00" * 4), 48),  # no such interface
    (block(0x0A0D0D0A, b"\x4d\x3c\x2b\x1a", 8), 0),  # section header shorter than a header
], ids=["short-idb", "short-epb", "blen-8", "caplen-beyond-block", "no-such-interface", "short-shb"])
def test_malformed_pcapng_is_a_clean_error_naming_file_and_offset(tmp_path, capsys, data, offset):
    from alg.cli import main
    path = tmp_path / "bad.pcapng"
    path.write_bytes(data)
    assert main(["replay", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}: offset {offset}:" in err and "Traceback" not in err


def test_truncated_pcap_warns_and_keeps_what_was_read(tmp_path, capsys):
    from alg.cli import main
    whole = FTP4.read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(whole[:-7])
    assert main(["replay", "--format", "json", str(cut)]) == 0
    out, err = capsys.readouterr()
    assert main(["replay", "--format", "json", str(FTP4)]) == 0
    full = capsys.readouterr().out
    assert out and full.startswith(out.replace(str(cut), str(FTP4)))  # all but what the cut frame held
    assert "warning" in err and f"{cut}: truncated at offset" in err


def test_capture_without_ip_frames_warns(tmp_path, capsys):
    from alg.cli import main
    path = tmp_path / "usb.pcap"
    path.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 220)
                     + struct.pack("<IIII", 0, 0, 4, 4) + b"\x00" * 4)  # LINKTYPE_USB_LINUX_MMAPPED
    assert main(["replay", str(path)]) == 0
    err = capsys.readouterr().err
    assert "link type 220" in err and "not supported" in err


def test_nflog_frames_are_unwrapped():
    from alg.pcap import LINKTYPE_RAW, nflog_payload, read_frames
    packet = raw(IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=2) / Raw(b"x"))
    prefix = b"fw\0\0"  # NFULA_PREFIX (10), padded
    frame = (b"\x02\x00\x00\x07" + struct.pack("<HH", 4 + len(prefix), 10) + prefix
             + struct.pack("<HH", 4 + len(packet), 9) + packet + b"\0" * (-len(packet) % 4))
    assert nflog_payload(frame) == packet
    assert nflog_payload(b"\x02\x00\x00\x07" + struct.pack("<HH", 8, 10) + b"pfx\0") is None
    frames = list(read_frames(str(ROOT / "tests/pcaps/ftp-rec-curl-nflog-v4/capture.pcap")))
    assert frames and all(f.linktype == LINKTYPE_RAW for f in frames)
    assert decode_ip(frames[0].data).dport == 21


def test_replay_of_several_captures_streams_rows_naming_their_file(tmp_path):
    bad = tmp_path / "z-bad.pcap"
    bad.write_bytes(b"not a capture at all")
    v6 = ROOT / "tests/pcaps/ftp-zeek_ftp-ipv6/capture.pcap"
    r = subprocess.run([sys.executable, "-m", "alg", "replay", "--format", "json", str(FTP4), str(v6), str(bad)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and str(bad) in r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]  # printed before the bad file stopped it
    assert {row["file"] for row in rows} == {str(FTP4), str(v6)}
    assert [row["file"] for row in rows] == sorted((row["file"] for row in rows), key=[str(FTP4), str(v6)].index)


def test_text_output_is_conntrack_l_expect():
    master = FlowTuple(4, 6, A, B, 40000, 21)
    e = Expectation("rpc", "rpc", 0, 4, 17, A, B, None, 2049, master, 300, flags=0x3)
    # libnetfilter_conntrack's __snprintf_expect_default: flags comma-joined, then class and helper
    assert e.to_text() == ("300 proto=17 src=10.0.0.1 dst=10.0.0.2 sport=0 dport=2049 mask-src=255.255.255.255 "
                           "mask-dst=255.255.255.255 sport=0 dport=65535 master-src=10.0.0.1 master-dst=10.0.0.2 "
                           "sport=40000 dport=21 PERMANENT,INACTIVE class=0 helper=rpc")
    assert " class=0 helper=rpc" in Expectation("rpc", "rpc", 0, 4, 17, A, B, None, 1, master, 300).to_text()
    assert "dport=21 class=0" in Expectation("rpc", "rpc", 0, 4, 17, A, B, None, 1, master, 300).to_text()


def long_capture(path: Path, frames: int) -> None:
    pkt = raw(IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=2) / Raw(b"x"))
    rec = struct.pack("<IIII", 0, 0, len(pkt), len(pkt)) + pkt
    path.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 101) + rec * frames)


def test_progress_only_when_stderr_is_a_terminal(tmp_path):
    import os
    import pty
    cap = tmp_path / "long.pcap"
    long_capture(cap, 10001)
    argv = [sys.executable, "-m", "alg", "replay", "--no-summary", str(cap)]  # summary: own test
    master, slave = pty.openpty()
    try:
        r = subprocess.run(argv, stderr=slave, stdout=subprocess.PIPE, timeout=60)
        os.close(slave)
        shown = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the other side is closed
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(master)
    assert r.returncode == 0
    assert b"10000 packets, 0 expectations" in shown and b"5000 packets" in shown
    assert shown.endswith(b"\r\x1b[K")  # the line is erased at the end
    plain = subprocess.run(argv, capture_output=True, timeout=60)
    assert plain.returncode == 0 and b"packets" not in plain.stderr


def test_rotated_captures_of_one_session_share_the_flow_table(tmp_path):
    """A capture cut in two between the 227 reply and the data connection (tcpdump -C/-G
    rotation) gives what the whole gives: the flow and its expectation carry over."""
    from scapy.all import rdpcap, wrpcap
    from alg.replay import replay
    whole = ROOT / "tests/pcaps/ftp-rec-curl-pasv-v4/capture.pcap"
    frames = rdpcap(str(whole))
    cut = next(i for i, p in enumerate(frames) if b"227 " in bytes(p.payload)) + 1
    first, second = tmp_path / "a.pcap", tmp_path / "b.pcap"
    wrpcap(str(first), frames[:cut])
    wrpcap(str(second), frames[cut:])
    one = replay(ftp_engine_related(), [str(whole)])
    two = replay(ftp_engine_related(), [str(first), str(second)])
    assert [e.key for e in two.expectations] == [e.key for e in one.expectations] != []
    assert two.related_flows == one.related_flows >= 1  # the data connection, in the second file, is RELATED


def ftp_engine_related():
    host = load_plugins()
    policy = default_policy({n: c.spec for n, c in host.helpers.items()})
    return Engine(make_slots([policy.helpers["ftp"]], host.helpers), track_related=True)
