"""SSDP, DHCPv6, mDNS and SLP helpers: what each expects, and the attacks
that must open nothing (a LOCATION or CALLBACK naming a third host, answers
from outside the client's subnet with the restriction on)."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import alg
from alg import EXPECT_F_PERMANENT, TCP, UDP, Direction, Expect, FlowTuple, Notice
from alg.engine import Engine, HelperSlot
from alg.errors import ProtocolViolation
from alg.expect import Expectation
from alg.policy import default_helper_policy
from alg.testing import check_outcome, feed
from alg_helpers.dhcpv6 import Dhcpv6Helper
from alg_helpers.mdns import MdnsHelper
from alg_helpers.slp import SlpHelper
from alg_helpers.ssdp import SsdpHelper

ORIG, R = Direction.ORIGINAL, Direction.REPLY
ip = ipaddress.ip_address
CLIENT4, DEVICE4, THIRD4, FAR4 = ip("192.168.1.20"), ip("192.168.1.30"), ip("192.168.1.99"), ip("10.9.9.9")
CLIENT6 = ip("fe80::20")


def udp(src, dst, sport, dport) -> FlowTuple:
    return FlowTuple(ip(src).version, UDP, ip(src), ip(dst), sport, dport)


def tcp(src, dst, sport, dport) -> FlowTuple:
    return FlowTuple(ip(src).version, TCP, ip(src), ip(dst), sport, dport)


def expects(actions) -> list[Expect]:
    return [a for a in actions if isinstance(a, Expect)]


def notices(actions) -> set[str]:
    return {a.code for a in actions if isinstance(a, Notice)}


def admits(e: Expect, master: FlowTuple, flow: FlowTuple) -> bool:
    """Would the kernel (as alg models it) relate `flow` to this expectation?"""
    x = Expectation("h", e.cls, 0, master.l3, e.proto, e.src, e.dst, e.sport, e.dport, master, 30,
                    src_prefix=e.src_prefix)
    return x.matches(flow)


# ---------------------------------------------------------------- SSDP
MSEARCH = b'M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nMAN: "ssdp:discover"\r\nMX: 1\r\nST: ssdp:all\r\n\r\n'


def answer(location: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=1800\r\nEXT:\r\nLOCATION: " + location + \
        b"\r\nST: upnp:rootdevice\r\nUSN: uuid:x::upnp:rootdevice\r\n\r\n"


@pytest.mark.parametrize("group", ["239.255.255.250", "ff02::c", "ff05::c"])
def test_ssdp_search_expects_any_answer_to_the_client_port(group):
    client = "192.168.1.20" if ":" not in group else "fe80::20"
    flow = udp(client, group, 50000, 1900)
    [e] = expects(feed(SsdpHelper(), [(ORIG, MSEARCH)], flow))
    assert (e.cls, e.proto, e.src, e.sport, e.dst, e.dport) == ("search", UDP, None, None, ip(client), 50000)
    assert e.flags & EXPECT_F_PERMANENT and e.assign_helper
    assert admits(e, flow, udp("192.168.1.30" if ":" not in group else "fe80::30", client, 1900, 50000))


def test_ssdp_search_subnet_only_refuses_answers_from_elsewhere():
    flow = udp("192.168.1.20", "239.255.255.250", 50000, 1900)
    [e] = expects(feed(SsdpHelper({"subnet_only": True}), [(ORIG, MSEARCH)], flow))
    assert e.src_prefix == 24
    assert admits(e, flow, udp("192.168.1.30", "192.168.1.20", 1900, 50000))
    assert not admits(e, flow, udp("10.9.9.9", "192.168.1.20", 1900, 50000))


def test_ssdp_unicast_search_and_notify_open_nothing():
    assert notices(feed(SsdpHelper(), [(ORIG, MSEARCH)], udp("192.168.1.20", "192.168.1.30", 50000, 1900))) == \
        {"unicast-search"}
    notify = b"NOTIFY * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nNTS: ssdp:alive\r\nLOCATION: http://1.2.3.4:1/\r\n\r\n"
    assert feed(SsdpHelper(), [(ORIG, notify)], udp("192.168.1.30", "239.255.255.250", 1900, 1900)) == []


def test_ssdp_answer_location_expects_the_responder_only():
    flow = udp("192.168.1.30", "192.168.1.20", 1900, 50000)  # the answer flow, RELATED to the search
    data = answer(b"http://192.168.1.30:49152/desc.xml")
    [e] = expects(feed(SsdpHelper(), [(ORIG, data)], flow, expected=True))
    assert (e.cls, e.proto, e.src, e.sport, e.dst, e.dport) == ("location", TCP, CLIENT4, None, DEVICE4, 49152)
    assert e.assign_helper
    off, n = e.where[0]
    assert data[off:off + n] == b"192.168.1.30:49152"
    assert not admits(e, flow, tcp("192.168.1.99", "192.168.1.30", 40000, 49152))  # conntrackd would admit it


@pytest.mark.parametrize("location, code", [
    (b"http://192.168.1.99:80/desc.xml", "location-not-sender"),  # a third host (attack)
    (b"http://10.9.9.9:8080/", "location-not-sender"),
    (b"http://printer.local:80/", "hostname-in-url"),
    (b"http://[fe80::1]:80/", "family-mismatch"),
    (b"http://192.168.1.30:0/", "bad-port"),
    (b"http://192.168.1.30:70000/", "bad-port"),
    (b"ftp://192.168.1.30/", "malformed"),
])
def test_ssdp_location_attacks_and_junk_open_nothing(location, code):
    actions = feed(SsdpHelper(), [(ORIG, answer(location))], udp("192.168.1.30", "192.168.1.20", 1900, 50000),
                   expected=True)
    assert expects(actions) == [] and code in notices(actions)


def test_ssdp_location_ipv6_literal_and_default_port():
    flow = udp("fe80::30", "fe80::20", 1900, 50000)
    [e] = expects(feed(SsdpHelper(), [(ORIG, answer(b"http://[fe80::30]/d.xml"))], flow, expected=True))
    assert (e.dst, e.dport, e.src) == (ip("fe80::30"), 80, CLIENT6)


SUBSCRIBE = (b"SUBSCRIBE /evt/conn HTTP/1.1\r\nHOST: 192.168.1.30:49152\r\n"
             b"CALLBACK: <http://192.168.1.20:49200/cb>\r\nNT: upnp:event\r\nTIMEOUT: Second-1800\r\n\r\n")


def test_ssdp_subscribe_callback_expects_the_device_to_call_back():
    flow = tcp("192.168.1.20", "192.168.1.30", 40000, 49152)
    for name, chunks in {"whole": [SUBSCRIBE], "bytewise": [SUBSCRIBE[i:i + 1] for i in range(len(SUBSCRIBE))],
                         "trailing": [SUBSCRIBE + b"GET /x HTTP/1.1\r\n"]}.items():
        [e] = expects(feed(SsdpHelper(), [(ORIG, c) for c in chunks], flow, expected=True))
        got = (e.cls, e.proto, e.src, e.sport, e.dst, e.dport)
        assert got == ("callback", TCP, DEVICE4, None, CLIENT4, 49200), name
        assert not e.flags & EXPECT_F_PERMANENT
        off, n = e.where[0]
        assert SUBSCRIBE[off:off + n] == b"192.168.1.20:49200"


def test_ssdp_callback_to_a_third_host_opens_nothing():
    data = SUBSCRIBE.replace(b"192.168.1.20:49200", b"192.168.1.99:22")
    actions = feed(SsdpHelper(), [(ORIG, data)], tcp("192.168.1.20", "192.168.1.30", 40000, 49152), expected=True)
    assert expects(actions) == [] and notices(actions) == {"callback-not-sender"}


def test_ssdp_callback_list_keeps_only_the_subscribers_urls():
    data = SUBSCRIBE.replace(b"<http://192.168.1.20:49200/cb>",
                             b"<http://192.168.1.99:22/><http://192.168.1.20:49201/b>")
    actions = feed(SsdpHelper(), [(ORIG, data)], tcp("192.168.1.20", "192.168.1.30", 40000, 49152), expected=True)
    assert [e.dport for e in expects(actions)] == [49201] and "callback-not-sender" in notices(actions)


def test_ssdp_bodies_are_skipped_and_notify_renews_the_callback():
    body = b'<?xml version="1.0"?><e:propertyset>SUBSCRIBE / HTTP/1.1\r\nCALLBACK: <http://1.1.1.1:1/>\r\n\r\n'
    post = b"POST /ctl HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    flow = tcp("192.168.1.20", "192.168.1.30", 40000, 49152)
    assert expects(feed(SsdpHelper(), [(ORIG, post), (R, b"HTTP/1.1 200 OK\r\n\r\n")], flow, expected=True)) == []
    cb = tcp("192.168.1.30", "192.168.1.20", 41000, 49200)  # the device's NOTIFY connection
    notify = b"NOTIFY /cb HTTP/1.1\r\nNT: upnp:event\r\nSEQ: 0\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    [e] = expects(feed(SsdpHelper(), [(ORIG, notify)], cb, expected=True))
    assert (e.src, e.dst, e.dport, e.sport) == (DEVICE4, CLIENT4, 49200, None)


def test_ssdp_chunked_body_stops_reading_and_bad_length_is_a_violation():
    flow = tcp("192.168.1.20", "192.168.1.30", 40000, 49152)
    chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n" + SUBSCRIBE
    assert expects(feed(SsdpHelper(), [(ORIG, chunked)], flow, expected=True)) == []
    with pytest.raises(ProtocolViolation):
        feed(SsdpHelper(), [(ORIG, b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n")], flow, expected=True)


def test_ssdp_answer_flow_gets_the_helper_in_replay():
    """The engine hands the answer flow to the master's helper (assign_helper)."""
    from alg.decode import Packet

    helper = SsdpHelper()
    slot = HelperSlot(default_helper_policy(helper.spec), helper)
    engine = Engine({"ssdp": slot}, track_related=True)

    def pkt(src, dst, sport, dport, payload):
        return Packet(l3=4, proto=UDP, src=ip(src).packed, dst=ip(dst).packed, sport=sport, dport=dport,
                      payload=payload)
    engine.process(pkt("192.168.1.20", "239.255.255.250", 50000, 1900, MSEARCH), 0.0)
    out = engine.process(pkt("192.168.1.30", "192.168.1.20", 1900, 50000,
                             answer(b"http://192.168.1.30:49152/d.xml")), 0.1)
    assert engine.related_flows == 1
    [created] = [d.expectation for d in out]
    assert (created.cls, created.dst, created.dport, created.src) == ("location", DEVICE4, 49152, CLIENT4)


# ---------------------------------------------------------------- DHCPv6
def dhcpv6(msg_type: int) -> bytes:
    return bytes([msg_type]) + b"\x12\x34\x56" + b"\x00\x01\x00\x0e" + b"\x00\x01" * 7


@pytest.mark.parametrize("msg", [1, 3, 4, 5, 6, 8, 9, 11])
def test_dhcpv6_client_messages_expect_the_server_answer(msg):
    flow = udp("fe80::20", "ff02::1:2", 546, 547)
    [e] = expects(feed(Dhcpv6Helper(), [(ORIG, dhcpv6(msg))], flow))
    assert (e.proto, e.sport, e.dst, e.dport, e.src_prefix) == (UDP, 547, CLIENT6, 546, 64)
    assert admits(e, flow, udp("fe80::1", "fe80::20", 547, 546))
    assert not admits(e, flow, udp("2001:db8::1", "fe80::20", 547, 546))  # off-link: refused
    assert not admits(e, flow, udp("fe80::1", "fe80::20", 5353, 546))


def test_dhcpv6_subnet_only_off_admits_a_global_server():
    flow = udp("fe80::20", "ff02::1:2", 546, 547)
    [e] = expects(feed(Dhcpv6Helper({"subnet_only": False}), [(ORIG, dhcpv6(1))], flow))
    assert e.src is None and admits(e, flow, udp("2001:db8::1", "fe80::20", 547, 546))


@pytest.mark.parametrize("flow, data, code", [
    (udp("fe80::20", "ff02::1:2", 546, 547), dhcpv6(2), "not-client-message"),  # Advertise
    (udp("fe80::20", "ff02::1:2", 546, 547), dhcpv6(12), "not-client-message"),  # Relay-forw
    (udp("fe80::20", "ff02::1:2", 546, 547), b"\x01", "malformed"),
    (udp("fe80::20", "fe80::1", 546, 547), dhcpv6(1), "not-multicast"),
    (udp("fe80::20", "ff02::1:2", 40000, 547), dhcpv6(1), "not-client-port"),
])
def test_dhcpv6_opens_nothing_for(flow, data, code):
    actions = feed(Dhcpv6Helper(), [(ORIG, data)], flow)
    assert expects(actions) == [] and notices(actions) == {code}


# ---------------------------------------------------------------- mDNS
def dns_query(flags: int = 0, qd: int = 1) -> bytes:
    return struct.pack("!HHHHHH", 0x1234, flags, qd, 0, 0, 0) + b"\x04host\x05local\x00\x00\x01\x00\x01"


@pytest.mark.parametrize("client, group", [("192.168.1.20", "224.0.0.251"), ("fe80::20", "ff02::fb")])
def test_mdns_legacy_unicast_query_expects_answers_from_5353_on_the_link(client, group):
    flow = udp(client, group, 41000, 5353)
    [e] = expects(feed(MdnsHelper(), [(ORIG, dns_query())], flow))
    assert (e.sport, e.dst, e.dport, e.flags) == (5353, ip(client), 41000, EXPECT_F_PERMANENT)
    near = "192.168.1.30" if ":" not in client else "fe80::30"
    far = "10.9.9.9" if ":" not in client else "2001:db8::9"
    assert admits(e, flow, udp(near, client, 5353, 41000))
    assert not admits(e, flow, udp(far, client, 5353, 41000))  # attack: answer from outside the subnet


@pytest.mark.parametrize("flow, data, code", [
    (udp("192.168.1.20", "224.0.0.251", 5353, 5353), dns_query(), "not-legacy-unicast"),
    (udp("192.168.1.20", "192.168.1.30", 41000, 5353), dns_query(), "not-multicast"),
    (udp("192.168.1.20", "224.0.0.251", 41000, 5353), dns_query(flags=0x8400), "not-a-query"),
    (udp("192.168.1.20", "224.0.0.251", 41000, 5353), dns_query(qd=0), "not-a-query"),
    (udp("192.168.1.20", "224.0.0.251", 41000, 5353), b"\x00" * 5, "malformed"),
])
def test_mdns_opens_nothing_for(flow, data, code):
    actions = feed(MdnsHelper(), [(ORIG, data)], flow)
    assert expects(actions) == [] and notices(actions) == {code}


# ---------------------------------------------------------------- SLP
def slp_v2(function: int) -> bytes:
    body = b"\x00\x00" + b"\x00\x17service:service-agent" + b"\x00\x07default" + b"\x00\x00" * 2
    length = 16 + len(body)
    return bytes([2, function]) + length.to_bytes(3, "big") + b"\x20\x00" + b"\x00\x00\x00" + b"\x12\x34" + \
        b"\x00\x02en" + body


@pytest.mark.parametrize("dst", ["239.255.255.253", "255.255.255.255", "192.168.1.255"])
@pytest.mark.parametrize("function", [1, 6, 9])
def test_slp_request_expects_agents_answers_from_the_subnet(dst, function):
    flow = udp("192.168.1.20", dst, 42000, 427)
    [e] = expects(feed(SlpHelper(), [(ORIG, slp_v2(function))], flow))
    assert (e.sport, e.dst, e.dport, e.src_prefix) == (427, CLIENT4, 42000, 24)
    assert admits(e, flow, udp("192.168.1.30", "192.168.1.20", 427, 42000))
    assert not admits(e, flow, udp("10.9.9.9", "192.168.1.20", 427, 42000))


def test_slp_ipv6_groups_and_v1_requests():
    flow = udp("fe80::20", "ff02::116", 42000, 427)
    assert expects(feed(SlpHelper(), [(ORIG, slp_v2(1))], flow))
    v1 = bytes([1, 1]) + b"\x00\x20" + b"\x00" * 8 + b"\x00" * 20
    assert expects(feed(SlpHelper(), [(ORIG, v1)], udp("192.168.1.20", "239.255.255.253", 42000, 427)))


@pytest.mark.parametrize("flow, data, code", [
    (udp("192.168.1.20", "192.168.1.30", 42000, 427), slp_v2(1), "not-multicast"),
    (udp("192.168.1.20", "10.0.0.255", 42000, 427), slp_v2(1), "not-multicast"),  # another subnet's broadcast
    (udp("192.168.1.20", "239.255.255.253", 42000, 427), slp_v2(2), "not-a-request"),  # SrvRply
    (udp("192.168.1.20", "239.255.255.253", 42000, 427), b"\x02\x01\x00", "malformed"),
    (udp("192.168.1.20", "239.255.255.253", 42000, 427), b"\x03\x01" + b"\x00" * 20, "malformed"),
])
def test_slp_opens_nothing_for(flow, data, code):
    actions = feed(SlpHelper(), [(ORIG, data)], flow)
    assert expects(actions) == [] and notices(actions) == {code}


# ---------------------------------------------------------------- fuzz
MULTICAST_FLOWS = [
    (SsdpHelper, udp("192.168.1.20", "239.255.255.250", 50000, 1900)),
    (SsdpHelper, udp("192.168.1.30", "192.168.1.20", 1900, 50000)),
    (SsdpHelper, tcp("fe80::20", "fe80::30", 40000, 49152)),
    (Dhcpv6Helper, udp("fe80::20", "ff02::1:2", 546, 547)),
    (MdnsHelper, udp("fe80::20", "ff02::fb", 41000, 5353)),
    (MdnsHelper, udp("192.168.1.20", "224.0.0.251", 41000, 5353)),
    (SlpHelper, udp("192.168.1.20", "192.168.1.255", 42000, 427)),
    (SlpHelper, udp("fe80::20", "ff05::123", 42000, 427)),
]
SEEDS = [MSEARCH, answer(b"http://192.168.1.30:1/"), SUBSCRIBE, dns_query(), dhcpv6(1), slp_v2(1),
         b"NOTIFY / HTTP/1.1\r\nContent-Length: 3\r\n\r\n", b"CALLBACK: <http://[::1]:99999/>\r\n"]


@pytest.mark.parametrize("cls, flow", MULTICAST_FLOWS, ids=[f"{c.spec.name}-{i}" for i, (c, _) in
                                                            enumerate(MULTICAST_FLOWS)])
@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_fuzz_discovery_helpers_on_their_own_flows(cls, flow, data):
    helper = cls({"subnet_only": data.draw(st.booleans())})
    seed = data.draw(st.sampled_from(SEEDS))
    cut = data.draw(st.integers(0, len(seed)))
    junk = data.draw(st.binary(max_size=80))
    chunks = [(data.draw(st.sampled_from([ORIG, R])), seed[:cut] + junk + seed[cut:])]
    try:
        for e in expects(feed(helper, chunks, flow)):
            check_outcome(helper, alg.Parsed(0, (e,)), 0, flow)
    except ProtocolViolation:
        pass


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 32))
def test_a_directed_broadcast_is_the_clients_subnet_broadcast(addr, client, prefix):
    from alg_helpers._discovery import is_broadcast_for

    a, c = ipaddress.IPv4Address(addr), ipaddress.IPv4Address(client)
    subnet = ipaddress.IPv4Network((c, min(prefix, 30)), strict=False)  # /31 and /32 have no broadcast
    want = a == ipaddress.IPv4Address("255.255.255.255") or a == subnet.broadcast_address
    assert is_broadcast_for(a, c, {"subnet_prefix_v4": prefix}) == want
    # the client's own broadcast, always
    assert is_broadcast_for(subnet.broadcast_address, c, {"subnet_prefix_v4": prefix})
