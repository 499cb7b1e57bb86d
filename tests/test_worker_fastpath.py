"""The queue worker's short way for packets no helper can care about (alg.daemon.worker), and
the header test it rests on (alg.decode.tcp_without_data): a bare TCP acknowledgement of a flow
under way is accepted without the engine, and anything that might matter still goes the long way."""

from __future__ import annotations

import struct

import pytest
from fakekernel import ACK, IP_CT_ESTABLISHED, IP_CT_ESTABLISHED_REPLY, IP_CT_NEW, PSH, SYN, FakeKernel, ip_packet
from test_daemon_path import CLIENT, SERVER, Tcp, daemon

from alg.decode import TCP_FIN, TCP_RST, decode_ip, tcp_without_data

IP_CT_RELATED = 1
TS_OPTION = b"\x01\x01\x08\x0a" + bytes(8)  # NOP NOP timestamps: what Linux puts on every segment


def with_options(packet: bytes, options: bytes) -> bytes:
    """An IPv4 TCP packet of ip_packet with TCP options after the 20-byte header (lengths fixed)."""
    ip, tcp, data = packet[:20], packet[20:40], packet[40:]
    tcp = tcp[:12] + bytes([(20 + len(options)) // 4 << 4]) + tcp[13:]
    total = 20 + len(tcp) + len(options) + len(data)
    return ip[:2] + struct.pack("!H", total) + ip[4:] + tcp + options + data


V4_ACK = ip_packet(CLIENT, SERVER, 6, 40000, 21, b"", 1000, ACK)
V6_ACK = ip_packet("fd00:1::2", "fd00:2::2", 6, 40000, 21, b"", 1000, ACK)


@pytest.mark.parametrize("packet", [
    V4_ACK, V6_ACK, with_options(V4_ACK, TS_OPTION),
    V4_ACK + b"\0" * 6,  # Ethernet padding past the IP packet's end is not payload
    ip_packet(CLIENT, SERVER, 6, 40000, 21, b"", 1000, ACK | PSH),  # a window update may carry PSH
])
def test_a_bare_acknowledgement_has_nothing_for_a_helper(packet):
    assert tcp_without_data(packet)
    pkt = decode_ip(packet)  # what the long way would have found
    assert pkt.payload == b"" and not pkt.tcp_flags & (SYN | TCP_FIN | TCP_RST) and pkt.frag is None


def fragment(packet: bytes) -> bytes:
    return packet[:6] + struct.pack("!H", 0x2000) + packet[8:]  # more fragments follow


def ipv6_hop_by_hop(packet: bytes) -> bytes:
    """The IPv6 packet with an empty hop-by-hop header before its TCP header."""
    return (packet[:4] + struct.pack("!H", len(packet) - 40 + 8) + b"\x00" + packet[7:40]
            + bytes([6, 0]) + bytes(6) + packet[40:])


@pytest.mark.parametrize("packet", [
    ip_packet(CLIENT, SERVER, 6, 40000, 21, b"PASV\r\n", 1000, ACK | PSH),
    ip_packet(CLIENT, SERVER, 6, 40000, 21, b"x", 1000, ACK),  # one byte is still data
    with_options(ip_packet(CLIENT, SERVER, 6, 40000, 21, b"x", 1000, ACK), TS_OPTION),
    ip_packet("fd00:1::2", "fd00:2::2", 6, 40000, 21, b"PASV\r\n", 1000, ACK | PSH),
    ip_packet(CLIENT, SERVER, 6, 40000, 21, b"", 1000, SYN),
    ip_packet(CLIENT, SERVER, 6, 40000, 21, b"", 1000, SYN | ACK),
    ip_packet(CLIENT, SERVER, 6, 40000, 21, b"", 1000, TCP_FIN | ACK),
    ip_packet(CLIENT, SERVER, 6, 40000, 21, b"", 1000, TCP_RST),
    ip_packet(CLIENT, SERVER, 17, 40000, 21, b"", 1000),  # UDP: an empty datagram is a message
    ip_packet(CLIENT, SERVER, 17, 40000, 21, bytes(12), 1000),
    fragment(V4_ACK),
    ipv6_hop_by_hop(V6_ACK),  # extension headers: not read here, so not sure
    V4_ACK[:39], V6_ACK[:59], b"", b"\x45", bytes(60),
    V4_ACK[:12] + b"\x00" * 28,  # TCP data offset 0
    V4_ACK[:2] + struct.pack("!H", 44) + V4_ACK[4:],  # the IP header says 4 more bytes: data, cut off
])
def test_anything_else_is_not(packet):
    assert not tcp_without_data(packet)


@pytest.mark.parametrize("n", range(0, 80))
def test_any_prefix_of_a_real_segment_answers_without_raising(n):
    for packet in (with_options(V4_ACK, TS_OPTION), V6_ACK + bytes(20)):
        assert tcp_without_data(packet[:n]) in (True, False)


# ---------------------------------------------------------------- the worker


def ftp_session(tmp_path):
    k = FakeKernel()
    d = daemon(tmp_path, k)
    c = Tcp(k, d, 7, "ftp", 21)
    c.send(False, b"", ACK)
    c.send(True, b"220 ready\r\n")
    return k, d, c


def helper_packets(d) -> int:
    return d.engine.stats()["helpers"]["ftp"]["packets"]


def test_a_bare_ack_under_way_is_accepted_without_the_engine(tmp_path, monkeypatch):
    k, d, c = ftp_session(tmp_path)
    before = helper_packets(d)
    verdicts = len(k.queues[7].verdicts)
    monkeypatch.setattr(d.engine, "process", lambda *a, **kw: pytest.fail("a bare ACK reached the engine"))
    for reply, ctinfo in ((False, IP_CT_ESTABLISHED), (True, IP_CT_ESTABLISHED_REPLY)):
        c.send(reply, b"", ACK, ctinfo=ctinfo)
    new = k.queues[7].verdicts[verdicts:]
    assert [(v.accept, v.ct, v.expectation, v.payload) for v in new] == [(True, None, None, None)] * 2
    assert helper_packets(d) == before  # not inspected
    assert d.stats.verdicts == len(k.queues[7].verdicts)


@pytest.mark.parametrize("ctinfo", [IP_CT_NEW, IP_CT_RELATED])
def test_a_bare_ack_that_may_open_its_flow_goes_the_long_way(tmp_path, ctinfo):
    """NEW (a mid-stream pickup: the first alg sees of the flow) or RELATED."""
    k, d, c = ftp_session(tmp_path)
    before = helper_packets(d)
    c.send(False, b"", ACK, ctinfo=ctinfo)
    assert helper_packets(d) == before + 1


def test_the_pasv_exchange_around_bare_acks_still_expects_the_data_connection(tmp_path):
    k, d, c = ftp_session(tmp_path)
    for port in (50000, 50001):
        assert c.send(False, b"PASV\r\n") == []
        c.send(True, b"", ACK)  # the server acknowledges first, then answers
        made = c.send(True, b"227 Entering Passive Mode (10,0,2,2,%d,%d).\r\n" % (port >> 8, port & 255))
        c.send(False, b"", ACK)
        assert [key[-1] for key in made] == [port]
    assert len(k.expectations) == 1  # ExpectMax 1: the first one was replaced
    assert d.stats.verdicts == len(k.queues[7].verdicts) and not k._by_packet  # every packet answered


def test_a_batch_reads_the_clock_once_and_holds_each_packet_until_the_batch_leaves(tmp_path, monkeypatch):
    k, d, c = ftp_session(tmp_path)
    reads = []
    d.workers[7].clock = lambda: reads.append(1) or 100.0
    ticks = iter([10.0, 10.5])  # the batch's start, its verdicts sent
    monkeypatch.setattr("alg.daemon.worker.time.perf_counter", lambda: next(ticks))
    held, verdicts = d.stats.held, d.stats.verdicts
    for line in (b"USER anonymous\r\n", b"PASS lab@\r\n", b"PASV\r\n"):
        k.send(7, c.cid, False, line, c.seq[0])
        c.seq[0] += len(line)
    assert d.workers[7].serve() == 3 and d.stats.verdicts == verdicts + 3
    assert len(reads) == 1
    assert d.stats.held == pytest.approx(held + 3 * 0.5) and d.stats.held_max == pytest.approx(0.5)
