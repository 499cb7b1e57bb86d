"""NAT rewriting: alg/nat.py itself (checksums against scapy's, the forms, the
edits of one message, NatMap), and TNS and SSDP rewritten on the daemon's path
through the kernel in userspace (tests/fakekernel.py): the payload, its length
fields, the IP and TCP/UDP checksums and the expectation with CTA_EXPECT_NAT;
hostile messages refused untouched. IPv6 through the engine and `mangle`
(the fake kernel speaks IPv4)."""

from __future__ import annotations

import ipaddress
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from fakekernel import FakeKernel
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrHopByHop, IPv6ExtHdrRouting, \
    IPv6ExtHdrSegmentRouting
from scapy.packet import Raw
from test_daemon_path import _segment, _tcp, daemon

import alg
from alg.decode import decode_frame, decode_ip
from alg.kernel import nlmsg as L
from alg.kernel.ctnetlink import CTA_EXPECT_FN, CTA_EXPECT_NAT, CTA_EXPECT_NAT_DIR
from alg.kernel.nfqueue import CtTuple
from alg.model import Direction, FlowTuple, Form, Length, NatMap, Rewrite
from alg.nat import Edit, RewriteError, checksum, length_field, mangle, message_edits, render
from alg.pcap import read_frames
from alg.testing import feed

ip = ipaddress.ip_address
PCAPS = Path(__file__).parent / "pcaps"
PUBLIC = "192.0.2.1"  # the gateway's outside address


def payloads(case: str) -> list[bytes]:
    """The L4 payloads of a capture, frame by frame (empty ones too)."""
    return [decode_frame(f.linktype, f.data).payload for f in read_frames(str(PCAPS / case / "capture.pcap"))]


# ---------------------------------------------------------------- alg/nat.py: checksums
def _scapy_rebuilt(raw: bytes, cls) -> bytes:
    """The packet with every length and checksum computed by scapy."""
    p = cls(raw)
    for layer in (IP, IPv6, TCP, UDP):
        if layer in p:
            for name in ("len", "plen", "chksum"):
                if name in p[layer].fields and not (layer is IPv6 and name == "len"):
                    delattr(p[layer], name)
    return bytes(cls(bytes(p)))


V6_EXT = [None, IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt(),
          IPv6ExtHdrRouting(addresses=["fd00::9", "fd00::8"], segleft=2),  # type 0: the last one is the final
          IPv6ExtHdrSegmentRouting(addresses=["fd00::9", "fd00::8"], segleft=1),  # SRH: the first one is
          IPv6ExtHdrRouting(addresses=["fd00::9"], segleft=0)]  # no segment left: the header's field


@pytest.mark.parametrize("l4", [TCP, UDP])
@pytest.mark.parametrize("ext", range(len(V6_EXT) + 1))
def test_mangle_lengths_and_checksums_are_scapys(l4, ext):
    body = b"LOCATION: http://10.0.2.2:49152/d.xml\r\n"
    hdr = l4(sport=1900, dport=40000) if l4 is UDP else l4(sport=1521, dport=40000, flags="PA", seq=7)
    if ext == len(V6_EXT):
        pkt, cls = IP(src="10.0.2.2", dst="10.0.1.2") / hdr / Raw(body), IP
    else:
        chain = V6_EXT[ext]
        base = IPv6(src="fd00:2::2", dst="fd00:1::2")
        pkt, cls = (base / chain / hdr if chain is not None else base / hdr) / Raw(body), IPv6
    raw = bytes(pkt)
    p = decode_ip(raw)
    at = body.index(b"10.0.2.2")
    for new in (b"192.0.2.1", b"1.2.3.4", b"10.0.2.2"):  # longer, shorter, the same
        out = mangle(raw, p.l4, p.head, [Edit(at, 8, new)])
        assert out[p.head:] == body.replace(b"10.0.2.2", new)
        assert out == _scapy_rebuilt(out, cls)
        if cls is IP:
            assert checksum(out[:20]) == 0


def test_the_internet_checksum_of_odd_and_carrying_data():
    assert checksum(b"\x00\x01\xf2\x03\xf4\xf5\xf6\xf7") == 0x220D  # RFC 1071 §3's example, complemented
    assert checksum(b"\xff\xff\xff") == 0x00FF and checksum(b"\x12") == 0xEDFF


def test_a_routing_header_of_unknown_kind_with_segments_left_is_refused():
    pkt = IPv6(src="fd00:2::2", dst="fd00:1::2") / IPv6ExtHdrRouting(type=3, segleft=1) / UDP() / Raw(b"xx")
    raw = bytes(pkt)
    p = decode_ip(raw)
    with pytest.raises(RewriteError, match="routing header type 3"):
        mangle(raw, p.l4, p.head, [Edit(0, 1, b"y")])


def test_a_packet_that_would_grow_past_65535_is_refused():
    for cls, room in ((IP, 65535 - 20 - 8), (IPv6, 65535 - 8)):
        raw = bytes(cls() / UDP() / Raw(b"a" * (room - 1)))
        p = decode_ip(raw)
        assert len(mangle(raw, p.l4, p.head, [Edit(0, 1, b"bb")])) == len(raw) + 1  # exactly full
        with pytest.raises(RewriteError, match="grow"):
            mangle(raw, p.l4, p.head, [Edit(0, 1, b"bbb")])


# ---------------------------------------------------------------- the forms
@pytest.mark.parametrize("form, addr, port, text", [
    (Form.ADDR, "192.0.2.1", None, b"192.0.2.1"),
    (Form.ADDR, "2001:db8::1", 80, b"2001:db8::1"),
    (Form.PORT, "192.0.2.1", 1522, b"1522"),
    (Form.HOST_PORT, "192.0.2.1", 49152, b"192.0.2.1:49152"),
    (Form.HOST_PORT, "2001:db8::1", 49152, b"[2001:db8::1]:49152"),
    (Form.HOST_PORT, "2001:db8::1", None, b"[2001:db8::1]"),
    (Form.FTP, "192.0.2.1", 51210, b"192,0,2,1,200,10"),
])
def test_render(form, addr, port, text):
    assert render(form, ip(addr), port) == text


@pytest.mark.parametrize("form, addr, port", [
    (Form.PORT, "192.0.2.1", None), (Form.FTP, "2001:db8::1", 21), (Form.FTP, "192.0.2.1", None),
    (Form.DECIMAL, "192.0.2.1", 1), (Form.BE16, "192.0.2.1", 1)])
def test_render_refuses_what_a_form_cannot_hold(form, addr, port):
    with pytest.raises(RewriteError):
        render(form, ip(addr), port)


def test_length_fields():
    assert length_field(Form.DECIMAL, 1234) == b"1234"
    assert length_field(Form.BE16, 0x1234) == b"\x12\x34" and length_field(Form.BE16, 0xFFFF) == b"\xff\xff"
    for form, value in ((Form.BE16, 0x10000), (Form.BE16, -1), (Form.ADDR, 3)):
        with pytest.raises(RewriteError):
            length_field(form, value)


# ---------------------------------------------------------------- the edits of one message
MSG = b"\x00\x1c" + b"HOST=10.0.2.2 PORT=1522 x" + b"."  # a BE16 length of the whole 28 bytes, then the text
HOST = Rewrite(7, 8, ip("10.0.2.2"), None, Form.ADDR)
PORT = Rewrite(21, 4, ip("10.0.2.2"), 1522, Form.PORT)
TOTAL = Length(0, 2, 0, len(MSG), Form.BE16)


def test_rewrites_and_the_length_fields_around_them():
    edits = message_edits(len(MSG), [(HOST, ip(PUBLIC), None), (PORT, ip(PUBLIC), 61000)], [TOTAL], MSG)
    from alg.nat import apply
    out = apply(MSG, edits)
    assert out == struct.pack("!H", len(MSG) + 2) + b"HOST=192.0.2.1 PORT=61000 x."
    assert struct.unpack_from("!H", out)[0] == len(out)
    # a decimal length of a region that holds one edit, not of one that does not
    inner = Length(26, 1, 7, 15, Form.DECIMAL)  # the "x" holds the HOST value's length (8)
    msg = MSG[:26] + b"8."
    edits = message_edits(len(msg), [(HOST, ip(PUBLIC), None)], [inner, Length(27, 1, 21, 25)], msg)
    assert apply(msg, edits) == b"\x00\x1cHOST=192.0.2.1 PORT=1522 9."


def test_an_unchanged_span_is_no_edit_and_changes_no_length():
    assert message_edits(len(MSG), [(HOST, ip("10.0.2.2"), None)], [TOTAL], MSG) == []


@pytest.mark.parametrize("rewrites, lengths", [
    ([(HOST, ip(PUBLIC), None), (Rewrite(10, 8, ip("10.0.2.2"), None, Form.ADDR), ip(PUBLIC), None)], []),
    ([(HOST, ip(PUBLIC), None)], [Length(6, 2, 0, 28, Form.BE16)]),  # a length field inside a rewritten span
    ([(Rewrite(26, 8, ip("10.0.2.2"), None, Form.ADDR), ip(PUBLIC), None)], []),  # past the message's end
    ([(HOST, ip(PUBLIC), None)], [Length(0, 2, 0, 29, Form.BE16)]),  # a region past the end
    ([(Rewrite(-1, 2, ip("10.0.2.2"), None, Form.ADDR), ip(PUBLIC), None)], []),
])
def test_spans_that_overlap_or_leave_the_message_are_refused(rewrites, lengths):
    with pytest.raises(RewriteError):
        message_edits(len(MSG), rewrites, lengths, MSG)


def test_a_be16_length_that_would_pass_65535_is_refused():
    msg = b"\xff\xfe" + b"HOST=10.0.2.2 ".ljust(0xFFFE - 2, b".")
    host = Rewrite(7, 8, ip("10.0.2.2"), None, Form.ADDR)
    total = Length(0, 2, 0, len(msg), Form.BE16)
    assert len(message_edits(len(msg), [(host, ip("192.0.2.1"), None)], [total], msg)) == 2  # 65535: fits
    with pytest.raises(RewriteError, match="two bytes"):
        message_edits(len(msg), [(host, ip("192.0.2.123"), None)], [total], msg)


# ---------------------------------------------------------------- NatMap.map
def ft(src, dst, sport, dport, proto=6):
    return FlowTuple(4, proto, ip(src), ip(dst), sport, dport)


INSIDE, OUTSIDE = "10.0.1.2", "198.51.100.7"  # a host behind the gateway, one outside
SNAT = NatMap(ft(INSIDE, OUTSIDE, 40000, 21), ft(OUTSIDE, PUBLIC, 21, 61000))  # masquerade
DNAT = NatMap(ft(OUTSIDE, PUBLIC, 40000, 1521), ft(INSIDE, OUTSIDE, 1521, 40000))  # a port forward to INSIDE


@pytest.mark.parametrize("nat, direction, addr, port, to", [
    # SNAT, the inside client speaks: its own endpoint becomes the outside one
    (SNAT, 0, INSIDE, 40000, (PUBLIC, 61000)), (SNAT, 0, INSIDE, None, (PUBLIC, None)),
    (SNAT, 0, OUTSIDE, 21, (OUTSIDE, 21)),  # the receiver's, as the sender knows it
    (SNAT, 0, INSIDE, 50000, None),  # another port of the client: not the flow's
    # SNAT, the server answers: what it names of the client is the outside endpoint, which it knows as such
    (SNAT, 1, PUBLIC, 61000, (INSIDE, 40000)), (SNAT, 1, OUTSIDE, None, (OUTSIDE, None)),
    # DNAT, the forwarded server speaks: its own address becomes the public one
    (DNAT, 1, INSIDE, 1521, (PUBLIC, 1521)), (DNAT, 1, INSIDE, None, (PUBLIC, None)),
    (DNAT, 1, OUTSIDE, 40000, (OUTSIDE, 40000)),
    # DNAT, the outside client speaks of the public address: the server knows itself
    (DNAT, 0, PUBLIC, 1521, (INSIDE, 1521)), (DNAT, 0, PUBLIC, None, (INSIDE, None)),
    (DNAT, 0, "203.0.113.9", None, None), (DNAT, 1, "203.0.113.9", 5, None),
])
def test_natmap_map(nat, direction, addr, port, to):
    got = nat.map(Direction(direction), ip(addr), port)
    assert got == (None if to is None else (ip(to[0]), to[1]))


def test_natmap_outside():
    assert SNAT.outside(Direction.ORIGINAL) == ip(PUBLIC) and SNAT.outside(Direction.REPLY) == ip(OUTSIDE)
    assert DNAT.outside(Direction.REPLY) == ip(PUBLIC) and DNAT.outside(Direction.ORIGINAL) == ip(OUTSIDE)


# ---------------------------------------------------------------- TNS on the daemon's path
TNS = ("tns.toml", 'helper = "tns"\nqueue = 7\n')
CLIENT, LISTENER = "10.0.1.2", "10.0.2.2"  # the capture's client and listener
TNS_FRAMES = payloads("tns-rec-redirect")
REDIRECT_SEGMENT = TNS_FRAMES[7]  # frame 8: REDIRECT (data length 97) + DATA with the address, one segment


def tns_packet(ptype: int, body: bytes, csum: int = 0) -> bytes:
    return struct.pack("!HHBBH", 8 + len(body), csum, ptype, 0, 0) + body


def tns_redirect(data: bytes, announced: int | None = None, split: bool = True) -> bytes:
    """A REDIRECT, its data in a DATA packet after it (as the capture's listener sends it) or inline."""
    n = len(data) if announced is None else announced
    if not split:
        return tns_packet(5, struct.pack("!H", n) + data)
    return tns_packet(5, struct.pack("!H", n)) + tns_packet(6, b"\0\0" + data)


def forwarded_listener(tmp_path, public: str = PUBLIC):
    """A port forward: the client connects to `public`:1521, the listener is 10.0.2.2 (DNAT)."""
    k = FakeKernel()
    d = daemon(tmp_path, k, TNS)
    c = _tcp(k, d, k.connect("tns", 4, 6, CLIENT, public, 58350, 1521, reply_src=LISTENER))
    for payload in TNS_FRAMES[3], TNS_FRAMES[5]:  # the client's CONNECT and its connect data
        c.send(False, payload)
    return k, d, c


def test_a_forwarded_listeners_redirect_names_the_public_address(tmp_path):
    """The capture's REDIRECT, from a listener behind a port forward redirecting to
    itself: HOST becomes the public address, the TNS packet length of the DATA
    packet and the REDIRECT's data length grow with it, the REDIRECT's own length
    does not; the expectation waits on the public address and is translated to
    the listener (CTA_EXPECT_NAT, the reply direction's tuple)."""
    k, d, c = forwarded_listener(tmp_path)
    data = REDIRECT_SEGMENT[20:]
    assert REDIRECT_SEGMENT[:10] == tns_packet(5, struct.pack("!H", len(data))) and b"HOST=10.0.2.2)" in data
    (key,) = c.send(True, REDIRECT_SEGMENT)
    e, _master = k.expectations[key]
    assert (e.src, e.dst, e.sport, e.dport, e.nat) == (ip(CLIENT), ip(PUBLIC), None, 1522, (0, ip(LISTENER), 1522))
    v = k.queues[7].verdicts[-1]
    sent = _segment(v.payload)  # the IP total length and both checksums checked there
    assert sent == tns_redirect(data.replace(b"HOST=10.0.2.2)", b"HOST=192.0.2.1)"))
    assert v.ct is not None  # with the conntrack: the kernel moves the sequence numbers on by one
    (redirect_len,) = struct.unpack_from("!H", sent)
    (data_len,) = struct.unpack_from("!H", sent, 8)
    (packet_len,) = struct.unpack_from("!H", sent, redirect_len)
    assert (redirect_len, data_len, packet_len) == (10, len(data) + 1, len(sent) - 10)
    assert d.engine.stats()["helpers"]["tns"]["rewritten"] == 1


def test_an_inline_redirect_is_rewritten_and_without_nat_nothing_is(tmp_path):
    k, d, c = forwarded_listener(tmp_path)
    addr = b"(ADDRESS=(PROTOCOL=TCP)(HOST=10.0.2.2)(PORT=1522))\0(DESCRIPTION=(CONNECT_DATA=(SERVICE_NAME=XE)))"
    (key,) = c.send(True, tns_redirect(addr, split=False))
    assert k.expectations[key][0].dst == ip(PUBLIC)
    sent = _segment(k.queues[7].verdicts[-1].payload)
    assert sent == tns_redirect(addr.replace(b"10.0.2.2", PUBLIC.encode()), split=False)
    # no NAT: the helper names no span, the packet goes as it came
    k2 = FakeKernel()
    d2 = daemon(tmp_path, k2, TNS)
    c2 = _tcp(k2, d2, k2.connect("tns", 4, 6, CLIENT, LISTENER, 58350, 1521))
    (key,) = c2.send(True, REDIRECT_SEGMENT)
    assert k2.expectations[key][0].dst == ip(LISTENER) and k2.queues[7].verdicts[-1].payload is None


@pytest.mark.parametrize("host", [b"fd00:2::2", b"[fd00:2::2]"])
def test_an_ipv6_listener_behind_a_port_forward(tmp_path, host):
    k = FakeKernel()
    d = daemon(tmp_path, k, TNS)
    c = _tcp(k, d, k.connect("tns", 6, 6, "2001:db8:1::2", "2001:db8::1", 58350, 1521, reply_src="fd00:2::2"))
    data = b"(ADDRESS=(PROTOCOL=TCP)(HOST=%s)(PORT=1522))\0(DESCRIPTION=(CONNECT_DATA=(SERVICE_NAME=XE)))" % host
    (key,) = c.send(True, tns_redirect(data))
    e, _master = k.expectations[key]
    assert (e.dst, e.dport, e.nat) == (ip("2001:db8::1"), 1522, (0, ip("fd00:2::2"), 1522))
    assert checked(k.queues[7].verdicts[-1].payload) == tns_redirect(data.replace(b"fd00:2::2", b"2001:db8::1"))


def test_a_redirect_whose_data_came_in_an_earlier_segment(tmp_path):
    """The REDIRECT alone, its DATA in the next segment: a rewrite that keeps the
    length is made in the DATA packet; one that changes it would have to change
    the REDIRECT's data length, already sent: refused, counted, untouched."""
    data = REDIRECT_SEGMENT[20:]
    for public, made in (("10.9.9.9", True), (PUBLIC, False)):
        (tmp_path / public).mkdir()
        k, d, c = forwarded_listener(tmp_path / public, public)
        assert c.send(True, REDIRECT_SEGMENT[:10]) == []
        (key,) = c.send(True, REDIRECT_SEGMENT[10:])
        assert k.expectations[key][0].dst == ip(public)
        v = k.queues[7].verdicts[-1]
        if made:
            assert _segment(v.payload) == tns_packet(6, b"\0\0" + data.replace(b"10.0.2.2", public.encode()))
        else:
            assert v.payload is None and d.engine.stats()["helpers"]["tns"]["nat_failed"] == 1


@pytest.mark.parametrize("wire, notice", [
    (tns_redirect(b"(ADDRESS=(PROTOCOL=TCP)(HOST=db.example.com)(PORT=1522))\0"), "hostname"),
    (tns_redirect(REDIRECT_SEGMENT[20:], announced=30), "no-address"),  # a data length short of the address
    (tns_redirect(REDIRECT_SEGMENT[20:], announced=400), None),  # past the data: waits for more
    (tns_packet(5, struct.pack("!H", 97)) + tns_packet(6, b"\0\0" + REDIRECT_SEGMENT[20:])[:-1], None),
    (tns_packet(5, struct.pack("!H", 97)) + tns_packet(6, b"\0\0" + REDIRECT_SEGMENT[20:], csum=0x1234),
     "not-rewritten"),  # TNS checksums set
    (tns_packet(5, struct.pack("!H", 97)) + tns_packet(6, b"\0\0" + REDIRECT_SEGMENT[20:50])
     + tns_packet(6, b"\0\0" + REDIRECT_SEGMENT[50:]), "not-rewritten"),  # the data over two DATA packets
], ids=["hostname", "data length short", "data length long", "DATA packet short", "checksums", "split data"])
def test_hostile_or_unrewritable_redirects_go_untouched(tmp_path, wire, notice):
    k, d, c = forwarded_listener(tmp_path)
    c.send(True, wire)
    assert k.queues[7].verdicts[-1].payload is None
    stats = d.engine.stats()["helpers"]["tns"]
    assert stats["rewritten"] == 0 and list(stats["notices"]) == ([notice] if notice else [])


def test_two_messages_in_one_segment_are_rewritten_where_each_lies(tmp_path):
    """FTP behind masquerade: NOOP then PORT in one segment. The PORT's spans
    count from its own line; the packet's edit lands after the NOOP."""
    k = FakeKernel()
    d = daemon(tmp_path, k)
    c = _tcp(k, d, k.connect("ftp", 4, 6, CLIENT, "198.51.100.7", 40000, 21, reply_dst=PUBLIC, reply_dport=61000))
    (key,) = c.send(False, b"NOOP\r\nPORT 10,0,1,2,200,10\r\n")
    assert k.expectations[key][0].nat == (1, ip(CLIENT), 51210)
    assert _segment(k.queues[7].verdicts[-1].payload) == b"NOOP\r\nPORT 192,0,2,1,200,10\r\n"


# ---------------------------------------------------------------- SSDP on the daemon's path
SSDP = ("ssdp.toml", 'helper = "ssdp"\nqueue = 7\n')
SSDP_FRAMES = payloads("ssdp-rec-async-upnp-client")
M_SEARCH, ANSWER, SUBSCRIBE = SSDP_FRAMES[0], SSDP_FRAMES[1], SSDP_FRAMES[29]
CP, DEVICE = "192.168.77.20", "192.168.77.30"  # the capture's control point and device
CP_OUT = "198.51.100.20"  # a control point outside the gateway


def checked(raw: bytes) -> bytes:
    """The L4 payload of a packet whose lengths and checksums are the ones scapy computes."""
    cls = IPv6 if raw[0] >> 4 == 6 else IP
    assert raw == _scapy_rebuilt(raw, cls)
    return decode_ip(raw).payload


def datagram(k: FakeKernel, d, cid: int, reply: bool, payload: bytes) -> list:
    """The expectations the daemon made for this datagram (over ctnetlink or on its verdict)."""
    before = set(d.engine.table)
    k.send(7, cid, reply, payload)
    d.workers[7].serve()
    d.sink.run_due()
    return [e for e in d.engine.table if e not in before]


def forwarded_device(tmp_path, answer: bytes, l3: int = 4, device: str = DEVICE, public: str = PUBLIC,
                     cp: str = CP_OUT):
    """A control point outside asks a device behind a port forward (udp public:1900 ->
    device:1900) with a unicast M-SEARCH; the device answers on the same flow."""
    k = FakeKernel()
    d = daemon(tmp_path, k, SSDP)
    cid = k.connect("ssdp", l3, 17, cp, public, 33008, 1900, reply_src=device)
    assert datagram(k, d, cid, False, M_SEARCH) == []
    return k, d, datagram(k, d, cid, True, answer)


@pytest.mark.parametrize("l3, device, public, cp", [
    (4, DEVICE, PUBLIC, CP_OUT), (6, "fd00:77::30", "2001:db8::1", "2001:db8:1::20")])
def test_a_forwarded_devices_location_names_the_public_address(tmp_path, l3, device, public, cp):
    answer = ANSWER.replace(b"http://192.168.77.30:", b"http://%s:" % (device if l3 == 4 else f"[{device}]").encode())
    k, d, (e,) = forwarded_device(tmp_path, answer, l3, device, public, cp)
    # on the verdict: the description connection gets the helper only from there (helpers/ssdp.py)
    assert len(k.attached) == 1 and not k.kernel_created
    assert (e.proto, e.src, e.dst, e.dport, e.nat) == (6, ip(cp), ip(public), 49152, (0, ip(device), 49152))
    shown = public if l3 == 4 else f"[{public}]"
    assert checked(k.queues[7].verdicts[-1].payload) == \
        answer.replace(b"LOCATION: http://%s:" % answer.split(b"http://")[1].split(b":49152")[0],
                       f"LOCATION: http://{shown}:".encode())


def test_a_location_without_a_port_gets_the_outside_one_written(tmp_path):
    answer = ANSWER.replace(b"http://192.168.77.30:49152/", b"http://192.168.77.30/")
    k, d, (e,) = forwarded_device(tmp_path, answer)
    assert e.dport == 80
    assert checked(k.queues[7].verdicts[-1].payload) == answer.replace(b"http://192.168.77.30/",
                                                                        b"http://192.0.2.1:80/")


@pytest.mark.parametrize("answer", [ANSWER.replace(b"http://192.168.77.30:", b"http://device.local:"),
                                    ANSWER.replace(b"http://192.168.77.30:", b"http://192.168.77.31:")],
                         ids=["a hostname", "another host"])
def test_a_location_naming_a_hostname_or_another_host_goes_untouched(tmp_path, answer):
    k, d, keys = forwarded_device(tmp_path, answer)
    assert keys == [] and k.queues[7].verdicts[-1].payload is None


def test_an_answer_that_would_grow_past_65535_bytes_goes_untouched(tmp_path):
    """LOCATION's 192.168.77.30 becomes 203.100.200.101, two bytes more, in a
    datagram of 65,534: refused, counted; the expectation was made."""
    pad = 65534 - 20 - 8 - len(ANSWER) - len(b"X-PAD: \r\n")
    answer = ANSWER.replace(b"\r\n\r\n", b"\r\nX-PAD: " + b"a" * pad + b"\r\n\r\n")
    assert 20 + 8 + len(answer) == 65534
    k, d, keys = forwarded_device(tmp_path, answer, public="203.100.200.101")
    assert k.queues[7].verdicts[-1].payload is None and d.stats.rewrite_failed == 1 and len(keys) == 1


def test_a_masqueraded_m_search_is_answered_on_the_port_the_nat_gave_it(tmp_path):
    """Two control points search from port 1900; masquerade gives the second one
    61900. The answers come to 192.0.2.1:61900 and are translated to the control
    point's 1900 (the kernel's nf_nat_sip rule for the sender's own port)."""
    k = FakeKernel()
    d = daemon(tmp_path, k, SSDP)
    cid = k.connect("ssdp", 4, 17, CP, "239.255.255.250", 1900, 1900, reply_dst=PUBLIC, reply_dport=61900)
    datagram(k, d, cid, False, M_SEARCH)
    (e,) = list(d.engine.table)
    assert (e.cls, e.src, e.dst, e.sport, e.dport, e.nat) == ("search", None, ip(PUBLIC), None, 61900,
                                                              (1, ip(CP), 1900))
    # on the verdict of the flow's first packet: CTA_EXPECT_NAT (reply direction) and the expectfn
    (body,) = k.attached
    attrs = L.parse_attrs(body)
    assert L.parse_attrs(attrs[CTA_EXPECT_NAT])[CTA_EXPECT_NAT_DIR] == struct.pack("!I", 1)
    assert attrs[CTA_EXPECT_FN] == b"nat-follow-master\0"
    assert k.queues[7].verdicts[-1].payload is None


def test_a_masqueraded_control_points_answer_from_outside_is_not_rewritten(tmp_path):
    """conntrackd's case: the control point is behind masquerade, the device
    outside answers to the gateway (the answer's conntrack translated back to
    the control point by the search expectation). LOCATION names the device,
    which the NAT does not concern: the packet goes as it came, the expectation
    is of the device's real address."""
    k = FakeKernel()
    d = daemon(tmp_path, k, SSDP)
    master = CtTuple(4, 17, ip(CP).packed, ip("239.255.255.250").packed, 33008, 1900)
    cid = k.connect("ssdp", 4, 17, DEVICE, PUBLIC, 1900, 33008, reply_src=CP, master=master)
    datagram(k, d, cid, False, ANSWER)  # its first packet: the expectation rides on the verdict
    (e,) = list(d.engine.table)
    assert (e.cls, e.src, e.dst, e.dport) == ("location", ip(CP), ip(DEVICE), 49152) and len(k.attached) == 1
    assert k.queues[7].verdicts[-1].payload is None


def test_a_masqueraded_control_points_callback_names_the_public_address(tmp_path):
    """GENA SUBSCRIBE from the capture, from a control point behind masquerade
    (192.168.77.20 leaves as 192.0.2.1) on a connection our LOCATION expectation
    admitted: the CALLBACK names the gateway, the device's NOTIFY connection is
    expected there and translated to the control point."""
    k = FakeKernel()
    d = daemon(tmp_path, k, SSDP)
    master = CtTuple(4, 17, ip(DEVICE).packed, ip(CP).packed, 1900, 33008)
    c = _tcp(k, d, k.connect("ssdp", 4, 6, CP, DEVICE, 35046, 49152, reply_dst=PUBLIC, reply_dport=61046,
                             master=master))
    assert b"CALLBACK: <http://192.168.77.20:46675/" in SUBSCRIBE
    before = set(d.engine.table)
    c.send(False, SUBSCRIBE)
    (e,) = [x for x in d.engine.table if x not in before]
    assert (e.src, e.dst, e.dport, e.nat) == (ip(DEVICE), ip(PUBLIC), 46675, (1, ip(CP), 46675))
    assert len(k.attached) == 1  # on the verdict, CTA_EXPECT_NAT with it
    assert L.parse_attrs(L.parse_attrs(k.attached[0])[CTA_EXPECT_NAT])[CTA_EXPECT_NAT_DIR] == struct.pack("!I", 1)
    v = k.queues[7].verdicts[-1]
    assert checked(v.payload) == SUBSCRIBE.replace(b"<http://192.168.77.20:", b"<http://192.0.2.1:")
    assert v.ct is not None


# ---------------------------------------------------------------- any bytes under NAT
TNS_FLOW = FlowTuple(4, 6, ip(CLIENT), ip(LISTENER), 58350, 1521)
TNS_NAT = NatMap(ft(CLIENT, PUBLIC, 58350, 1521), ft(LISTENER, CLIENT, 1521, 58350))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(
    st.binary(max_size=120),
    st.builds(tns_redirect, st.sampled_from([REDIRECT_SEGMENT[20:], REDIRECT_SEGMENT[20:60], b""]),
              st.one_of(st.none(), st.integers(0, 300)), st.booleans()),
    st.builds(lambda a, b: a[:b], st.just(REDIRECT_SEGMENT), st.integers(0, len(REDIRECT_SEGMENT)))), max_size=6))
def test_tns_spans_under_nat_lie_in_the_message_they_came_with(chunks):
    """Whatever the listener sends, the spans a NATed TNS flow names lie inside the
    bytes consumed with them (alg.testing.check_outcome), or the peer broke the protocol."""
    from alg_helpers.tns import TnsHelper
    try:
        feed(TnsHelper(), [(Direction.REPLY, c) for c in chunks], TNS_FLOW, nat=TNS_NAT)
    except alg.ProtocolViolation:
        pass


def test_the_harness_feeds_nat_and_checks_spans():
    from alg_helpers.tns import TnsHelper
    acts = feed(TnsHelper(), [(Direction.REPLY, REDIRECT_SEGMENT)], TNS_FLOW, nat=TNS_NAT)
    assert sorted(type(a).__name__ for a in acts) == ["Expect", "Length", "Length", "Length", "Rewrite", "Rewrite"]
    assert not [a for a in feed(TnsHelper(), [(Direction.REPLY, REDIRECT_SEGMENT)], TNS_FLOW)
                if isinstance(a, (Rewrite, Length))]
