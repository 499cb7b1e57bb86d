"""The helpers rewritten for speed (issue 14: FTP, RPC, TNS, SSDP, DHCPv6, mDNS, SLP, the shared
discovery and address code) behave exactly as before: each is run beside its former self
(tests/oracle_helpers/, verbatim) on the same random and mutated inputs, and every outcome must be
the same: bytes consumed, actions (every field), NEED_DATA, or the same ProtocolViolation."""

from __future__ import annotations

import ipaddress
import itertools
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from oracle_helpers import _discovery as old_discovery
from oracle_helpers import dhcpv6 as old_dhcpv6
from oracle_helpers import ftp as old_ftp
from oracle_helpers import mdns as old_mdns
from oracle_helpers import rpc as old_rpc
from oracle_helpers import slp as old_slp
from oracle_helpers import ssdp as old_ssdp
from oracle_helpers import tns as old_tns

import alg
from alg import NEED_DATA, TCP, UDP, Direction, FlowTuple, NatMap, Segment
from alg.errors import ProtocolViolation
from alg_helpers import _addr, _discovery, dhcpv6, ftp, mdns, rpc, slp, ssdp, tns

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
OUT, R = Direction.ORIGINAL, Direction.REPLY

# addresses that sit on the helpers' decisions: groups, broadcasts, their IPv4-compatible IPv6
# twins (the same number in the other family), unspecified, link-local, neighbours
V4 = [ipaddress.ip_address(a) for a in ("10.0.1.2", "10.0.2.2", "10.0.1.255", "10.0.1.0", "255.255.255.255",
                                        "239.255.255.250", "224.0.0.251", "239.255.255.253", "0.0.0.0", "10.9.9.9")]
V6 = [ipaddress.ip_address(a) for a in ("fe80::1", "fe80::2", "ff02::1:2", "ff02::fb", "ff02::c", "ff05::c",
                                        "ff02::116", "ff05::1:1000", "ff02::123", "::efff:fffa", "::e000:fb",
                                        "::", "2001:db8::1", "fd00::2")]
PORTS = [111, 427, 546, 547, 1521, 1900, 5353, 40000, 0, 65535]


@st.composite
def flows(draw, protos=(UDP,), families=(4, 6)):
    l3 = draw(st.sampled_from(families))
    pool = V4 if l3 == 4 else V6
    return FlowTuple(l3, draw(st.sampled_from(protos)), draw(st.sampled_from(pool)), draw(st.sampled_from(pool)),
                     draw(st.sampled_from(PORTS)), draw(st.sampled_from(PORTS)))


def mutated(base: bytes):
    """`base` as it is, truncated, extended, or with a few bytes changed."""
    return st.one_of(
        st.just(base),
        st.integers(0, len(base)).map(lambda n: base[:n]),
        st.binary(max_size=16).map(lambda tail: base + tail),
        st.lists(st.tuples(st.integers(0, max(len(base) - 1, 0)), st.integers(0, 255)), min_size=1, max_size=4)
        .map(lambda flips: bytes(_flip(base, flips))),
        st.binary(max_size=64),
    )


def _flip(base: bytes, flips) -> bytearray:
    out = bytearray(base)
    for at, value in flips:
        if at < len(out):
            out[at] = value
    return out


def outcome(helper, segment: Segment, state):
    try:
        return helper.inspect(segment, state)
    except ProtocolViolation as e:
        return ("violation", str(e))


def same(old, new, segments: list[Segment], stream: bool) -> None:
    """Both helpers on `segments` (one state each); on a stream, each direction's bytes accumulate
    until consumed, as the engine hands them over."""
    states = [old.new_state(), new.new_state()]
    buffers = {OUT: b"", R: b""}
    for seg in segments:
        if not stream:
            assert outcome(old, seg, states[0]) == outcome(new, seg, states[1])
            continue
        buffers[seg.direction] += seg.data
        while buffers[seg.direction]:
            shown = Segment(buffers[seg.direction], seg.direction, seg.flow, seg.now, seg.expected, seg.nat)
            got = outcome(old, shown, states[0])
            assert got == outcome(new, shown, states[1])
            if got is NEED_DATA or isinstance(got, tuple):
                if isinstance(got, tuple):
                    return  # a violation ends the flow
                break
            if got.consumed == 0:
                break
            buffers[seg.direction] = buffers[seg.direction][got.consumed:]


# ---------------------------------------------------------------- text addresses
@SETTINGS
@given(st.one_of(
    st.lists(st.text("0123456789", max_size=4), min_size=1, max_size=5).map(".".join),
    st.text(" 0123456789.:abcdefx%\x00٣", max_size=20),
    st.text(max_size=12),
))
def test_ip_from_text_is_ip_address(text):
    try:
        want = ipaddress.ip_address(text)
    except ValueError as e:
        with pytest.raises(type(e)):
            _addr.ip_from_text(text)
        return
    got = _addr.ip_from_text(text)
    assert (type(got), got) == (type(want), want)


@SETTINGS
@given(st.one_of(st.binary(max_size=24),
                 st.lists(st.text("0123456789", max_size=4), min_size=1, max_size=7)
                 .map(lambda p: ".".join(p).encode()),
                 st.sampled_from([b"10.0.2.2.8.1", b"::.0.111", b"fe80::1.3.255", b"0.0.0.0.1.0", b"010.0.0.1.1.1"])))
def test_parse_uaddr_unchanged(uaddr):
    assert rpc.parse_uaddr(uaddr) == old_rpc.parse_uaddr(uaddr)


# ---------------------------------------------------------------- FTP
_FTP_LINES = [(OUT, b"USER anonymous\r\n"), (OUT, b"AUTH TLS\r\n"), (OUT, b"auth ssl\r\n"), (OUT, b"AUTH X\r\n"),
              (OUT, b"PORT 10,0,1,2,19,137\r\n"), (OUT, b"EPRT |1|10.0.1.2|5001|\r\n"),
              (OUT, b"EPRT |2|fe80::1|5001|\n"),
              (OUT, b"GET / HTTP/1.1\r\n"), (R, b"220 FTP ready\r\n"), (R, b"234 AUTH TLS ok\r\n"),
              (R, b"534 no\r\n"), (R, b"227 Entering Passive Mode (10,0,2,2,19,137).\r\n"),
              (R, b"229 Entering Extended Passive Mode (|||5001|)\r\n"), (R, b"\x16\x03\x01\x00\x05hello"),
              (OUT, b"\x17\x03\x03\x00\x02ab")]


@SETTINGS
@given(flows(protos=(TCP,)), st.lists(st.sampled_from(_FTP_LINES), min_size=1, max_size=8), st.data())
def test_ftp_unchanged(flow, lines, data):
    segments = [Segment(data.draw(st.one_of(st.just(m), mutated(m))), d, flow, 0.0) for d, m in lines]
    same(old_ftp.FtpHelper({}), ftp.FtpHelper({}), segments, stream=True)


def test_ftp_every_pair_of_lines_unchanged():
    """Each line after each other (AUTH then its answer, say), whole, and cut in two at every byte."""
    for l3 in (4, 6):
        flow = FlowTuple(l3, TCP, *((V4[0], V4[1]) if l3 == 4 else (V6[0], V6[1])), 40000, 21)
        for (d1, first), (d2, second) in itertools.product(_FTP_LINES, repeat=2):
            same(old_ftp.FtpHelper({}), ftp.FtpHelper({}),
                 [Segment(first, d1, flow, 0.0), Segment(second, d2, flow, 0.0)], stream=True)
        for d, line in _FTP_LINES:
            for cut in range(1, len(line)):
                same(old_ftp.FtpHelper({}), ftp.FtpHelper({}),
                     [Segment(line[:cut], d, flow, 0.0), Segment(line[cut:], d, flow, 0.0)], stream=True)


# ---------------------------------------------------------------- RPC
def _xdr(s: bytes) -> bytes:
    return struct.pack(">I", len(s)) + s + b"\0" * (-len(s) % 4)


def _rpc_messages(xid: int, auth_len: int) -> list[tuple[Direction, bytes]]:
    # credential and verifier (RFC 5531 §8.2) of `auth_len` bytes: past the 400 allowed, or
    # longer than what follows
    auth = struct.pack(">2I", 1, auth_len) + b"\xaa" * min(auth_len, 8) + b"\0" * (-min(auth_len, 8) % 4)
    auth += struct.pack(">2I", 0, 0)
    call_v2 = struct.pack(">6I", xid, 0, 2, 100000, 2, 3) + auth + struct.pack(">4I", 100003, 3, 6, 0)
    call_v4 = (struct.pack(">6I", xid, 0, 2, 100000, 4, 3) + auth + struct.pack(">2I", 100003, 3)
               + _xdr(b"tcp") + _xdr(b"") + _xdr(b""))
    head = struct.pack(">4I", xid, 1, 0, 0) + struct.pack(">I", auth_len) + b"\xaa" * min(auth_len, 8) \
        + b"\0" * (-min(auth_len, 8) % 4) + struct.pack(">I", 0)
    return [(OUT, call_v2), (OUT, call_v4), (R, head + struct.pack(">I", 2049)),
            (R, head + _xdr(b"10.0.2.2.8.1")), (R, head + _xdr(b"0.0.0.0.8.1")), (R, head + _xdr(b"10.9.9.9.8.1")),
            (R, head + _xdr(b"fe80::2.8.1")), (R, head + _xdr(b"")), (R, struct.pack(">3I", xid, 1, 1))]


@st.composite
def rpc_sessions(draw):
    proto = draw(st.sampled_from((UDP, TCP)))
    flow = draw(flows(protos=(proto,)))
    now, segments = 0.0, []
    xid, auth_len = draw(st.sampled_from((7, 8))), draw(st.sampled_from((0, 0, 0, 5, 8, 400, 401, 2**32 - 1)))
    for i in range(draw(st.integers(1, 6))):
        if draw(st.integers(0, 3)) == 0:  # mostly one xid and one auth length: replies meet their call
            xid, auth_len = draw(st.sampled_from((7, 8))), draw(st.sampled_from((0, 5, 400, 401, 2**32 - 1)))
        messages = _rpc_messages(xid, auth_len)
        # calls and replies in turn (a call as it is, half the time), so that replies reach the
        # reading of their result
        direction, message = draw(st.sampled_from(messages[:2] if i % 2 == 0 else messages[2:]))
        message = draw(st.one_of(st.just(message), mutated(message)))
        if proto == TCP:
            last = draw(st.sampled_from((True, True, True, False)))
            message = struct.pack(">I", len(message) | (0x80000000 if last else 0)) + message
        now += draw(st.sampled_from((0.0, 0.0, 1.0, 100.0)))
        segments.append(Segment(message, draw(st.sampled_from((direction, direction, direction, OUT, R))), flow, now))
    return proto, segments


@SETTINGS
@given(rpc_sessions(), st.fixed_dictionaries({
    "loose": st.booleans(), "allowed_networks": st.sampled_from(([], ["10.9.0.0/16"], ["fe80::/64"])),
    "max_pending": st.sampled_from((1, 32)), "call_timeout": st.sampled_from((1, 60))}))
def test_rpc_unchanged(session, options):
    proto, segments = session
    same(old_rpc.RpcHelper(options), rpc.RpcHelper(options), segments, stream=proto == TCP)


@pytest.mark.parametrize("auth_len", [0, 5, 400, 401])
def test_rpc_every_truncation_unchanged(auth_len):
    """Each call and each reply cut at every byte, after an intact call or before an intact reply:
    every bounds check of the reading meets its end of data."""
    messages = _rpc_messages(7, auth_len)
    calls, replies = messages[:2], messages[2:]
    for proto, l3 in ((UDP, 4), (TCP, 4), (UDP, 6)):
        server = V4[1] if l3 == 4 else V6[1]
        flow = FlowTuple(l3, proto, V4[0] if l3 == 4 else V6[0], server, 40000, 111)
        for options in ({}, {"loose": True}):
            for (_, call) in calls:
                for (_, answer) in replies:
                    for cut in range(len(answer) + 1):
                        pair = [(OUT, call), (R, answer[:cut])]
                        if cut <= len(call):
                            pair += [(OUT, call[:cut]), (R, answer)]
                        if proto == TCP:
                            pair = [(d, struct.pack(">I", len(m) | 0x80000000) + m) for d, m in pair]
                        same(old_rpc.RpcHelper(options), rpc.RpcHelper(options),
                             [Segment(m, d, flow, 0.0) for d, m in pair], stream=proto == TCP)


# ---------------------------------------------------------------- TNS
_NV_PIECES = [b"(", b")", b"=", b"(ADDRESS=", b"ADDRESS", b"address", b"(PROTOCOL=TCP)", b"PROTOCOL", b"TCP", b"tcps",
              b"(HOST=", b"HOST", b"10.0.2.2", b"[fe80::2]", b"10.9.9.9", b"db.example", b"(PORT=1522)", b"PORT",
              b"1522", b"0", b"x y", b" ", b"\t", b"\r\n", b"a_b", b"A1", b"(DESCRIPTION=", b"\0",
              b"(host= 10.0.2.2 )", b"(Port=1522)", b"(protocol=tcp)", b"(A1=x)", b"( =x)", b"(=)"]
# keywords and values about the bounds of tns._NV_TOKEN's runs (64, 320) too
_NV_KEYWORDS = st.sampled_from([b"ADDRESS", b"address", b"HOST", b"host", b"Port", b"PROTOCOL", b"A1", b"", b" x_y ",
                                b" " * 60 + b"HOST", b" " * 61 + b"HOST", b"K" * 65])
_NV_VALUES = st.sampled_from([b"TCP", b"tcp", b"10.0.2.2", b" 10.0.2.2\t", b"[fe80::2]", b"1522", b"", b"x y",
                              b"10.0.2.2" + b" " * 312, b"10.0.2.2" + b" " * 313, b"v" * 400])
# the grammar's shape: (keyword=value) and (keyword=(...)(...)), nested, with stray marks between
nv_lists = st.recursive(
    st.tuples(_NV_KEYWORDS, _NV_VALUES).map(lambda kv: b"(" + kv[0] + b"=" + kv[1] + b")"),
    lambda inner: st.tuples(_NV_KEYWORDS, st.lists(st.one_of(inner, st.sampled_from([b"(", b")", b"=", b" "])),
                                                    max_size=4))
    .map(lambda kv: b"(" + kv[0] + b"=" + b"".join(kv[1]) + b")"),
    max_leaves=40)
descriptors = st.one_of(nv_lists, st.lists(st.sampled_from(_NV_PIECES), max_size=30).map(b"".join),
                        # deep: past MAX_NV_DEPTH lists open
                        st.lists(st.sampled_from([b"(", b"(A=", b"(HOST=1)", b")", b"(ADDRESS="]), max_size=40)
                        .map(b"".join))


@SETTINGS
@given(st.one_of(descriptors, st.binary(max_size=80), st.lists(st.sampled_from(b"()= AB"), max_size=60).map(bytes)))
def test_tns_first_address_unchanged(text):
    assert tns._first_address(text) == old_tns._first_address(text)


def _tns_packet(ptype: int, body: bytes, csum: int = 0) -> bytes:
    return struct.pack(">HHBBH", 8 + len(body), csum, ptype, 0, 0) + body


@st.composite
def tns_sessions(draw):
    # mostly a client and the listener that redirects it to itself: the redirect is read through
    flow = draw(st.one_of(st.just(FlowTuple(4, TCP, V4[0], V4[1], 40000, 1521)), flows(protos=(TCP,))))
    text = draw(st.one_of(descriptors, st.just(b"(ADDRESS=(PROTOCOL=TCP)(HOST=10.0.2.2)(PORT=1522))")))
    inline = draw(st.booleans())
    announced = draw(st.sampled_from((len(text), 0, len(text) + 5)))
    csum = draw(st.sampled_from((0, 0, 1)))
    first = _tns_packet(5, struct.pack(">H", announced) + (text if inline else b""), csum)
    stream = first if inline else first + _tns_packet(6, b"\0\0" + text)
    stream = draw(st.one_of(st.just(stream), mutated(stream)))
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=3)))
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True) if stream[a:b]]
    nat = NatMap(flow, flow.reversed()) if draw(st.booleans()) else None
    head = [Segment(_tns_packet(1, b"(DESCRIPTION=)"), OUT, flow, 0.0)]
    return head + [Segment(p, draw(st.sampled_from((R, R, OUT))), flow, 0.0, nat=nat) for p in pieces]


@SETTINGS
@given(tns_sessions(), st.sampled_from(({}, {}, {"loose": True}, {"allowed_networks": ["10.9.0.0/16"]})))
def test_tns_unchanged(segments, options):
    same(old_tns.TnsHelper(options), tns.TnsHelper(options), segments, stream=True)


@pytest.mark.parametrize("depth", range(12, 19))
def test_tns_depth_bound_unchanged(depth):
    """Lists nested around MAX_NV_DEPTH, a (keyword=value) at the deepest."""
    for leaf in (b"(HOST=1)", b"(1=1)", b"(HOST=(PORT=1))"):
        text = b"(ADDRESS=(PORT=1)" + b"(A=" * depth + leaf + b")" * depth + b")"
        assert tns._first_address(text) == old_tns._first_address(text)


@pytest.mark.parametrize("inline, split", [(51, ()), (0, (51,)), (0, (20, 31)), (20, (31,))])
def test_tns_redirect_cut_anywhere_unchanged(inline, split):
    """A REDIRECT with `inline` bytes of its data, the rest in DATA packets of `split` bytes, cut
    in two at every byte, under NAT and not."""
    text = b"(ADDRESS=(PROTOCOL=TCP)(HOST=10.0.2.2)(PORT=1522))"
    flow = FlowTuple(4, TCP, V4[0], V4[1], 40000, 1521)
    stream = _tns_packet(5, struct.pack(">H", len(text)) + text[:inline])
    for n in split:
        stream += _tns_packet(6, b"\0\0" + text[inline:inline + n])
        inline += n
    for nat in (None, NatMap(flow, flow.reversed())):
        for cut in range(len(stream) + 1):
            pieces = [p for p in (stream[:cut], stream[cut:]) if p]
            same(old_tns.TnsHelper({}), tns.TnsHelper({}), [Segment(p, R, flow, 0.0, nat=nat) for p in pieces],
                 stream=True)


# ---------------------------------------------------------------- discovery: DHCPv6, mDNS, SLP, SSDP
discovery_options = st.fixed_dictionaries({"subnet_only": st.booleans(),
                                           "subnet_prefix_v4": st.sampled_from((0, 24, 31, 32)),
                                           "subnet_prefix_v6": st.sampled_from((0, 64, 128))})
_DATAGRAMS = [b"\x01\x19.\xef\x00\x01", b"\x03\xde1W", b"\x02\x00\x00\x00",
              b"\x00\x00\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00",
              b"\x00\x00\x84\x00\x00\x00\x00\x04\x00\x00\x00\x00", b"\x02\x01\x00\x000 \x00\x00\x00\x00BB\x00\x02en",
              b"\x01\x06\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00", b"\x02\x02\x00\x00\x00",
              b"M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\n\r\n",
              b"HTTP/1.1 200 OK\r\nLOCATION: http://10.0.2.2:8080/d.xml\r\n\r\n",
              b"HTTP/1.1 200 OK\r\nLocation: http://[fe80::2]/d.xml\r\n\r\n",
              b"HTTP/1.1 200 OK\r\nLOCATION: http://010.0.2.2/\r\n\r\n"]


@st.composite
def datagrams(draw):
    flow = draw(flows())
    return [Segment(draw(mutated(draw(st.sampled_from(_DATAGRAMS)))), draw(st.sampled_from((OUT, OUT, R))), flow,
                    0.0, expected=draw(st.booleans())) for _ in range(draw(st.integers(1, 3)))]


@pytest.mark.parametrize("old, new", [(old_dhcpv6.Dhcpv6Helper, dhcpv6.Dhcpv6Helper),
                                      (old_mdns.MdnsHelper, mdns.MdnsHelper), (old_slp.SlpHelper, slp.SlpHelper),
                                      (old_ssdp.SsdpHelper, ssdp.SsdpHelper)],
                         ids=["dhcpv6", "mdns", "slp", "ssdp"])
@SETTINGS
@given(segments=datagrams(), options=discovery_options)
def test_discovery_unchanged(old, new, segments, options):
    same(old(options), new(options), segments, stream=False)


@SETTINGS
@given(st.sampled_from(V4 + V6), st.sampled_from(V4 + V6), discovery_options)
def test_discovery_functions_unchanged(addr, client, options):
    assert _discovery.is_broadcast_for(addr, client, options) == old_discovery.is_broadcast_for(addr, client, options)
    for l3 in (4, 6):
        assert _discovery.prefix_for(options, l3) == old_discovery.prefix_for(options, l3)
    flow = FlowTuple(addr.version, UDP, addr, client, 40000, 427)
    for d in (OUT, R):
        seg = Segment(b"", d, flow, 0.0)
        want = old_discovery.answers(seg, "default", 427, options)
        assert _discovery.answers(seg, "default", 427, options) == want
        assert _discovery.answers(seg, "default", 427, options, slp.SlpHelper(options).prefixes) == want


_SSDP_TCP = [b"SUBSCRIBE /ev HTTP/1.1\r\nCALLBACK: <http://10.0.1.2:5000/cb><http://10.9.9.9/>\r\n"
             b"NT: upnp:event\r\n\r\n",
             b"NOTIFY /cb HTTP/1.1\r\nContent-Length: 4\r\n\r\nbody", b"GET /d.xml HTTP/1.1\r\n\r\n",
             b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"]


@SETTINGS
@given(flows(protos=(TCP,)), st.booleans(), st.lists(st.tuples(st.sampled_from(_SSDP_TCP), st.sampled_from((OUT, R))),
                                                     min_size=1, max_size=4), st.data())
def test_ssdp_tcp_unchanged(flow, expected, messages, data):
    segments = [Segment(data.draw(mutated(m)), d, flow, 0.0, expected) for m, d in messages]
    same(old_ssdp.SsdpHelper({}), ssdp.SsdpHelper({}), segments, stream=True)


def test_the_oracles_are_the_former_helpers_not_the_new_ones():
    """The comparisons above mean something only if the oracle is another module."""
    assert old_rpc.RpcHelper is not rpc.RpcHelper and hasattr(old_rpc, "_Xdr") and not hasattr(rpc, "_Xdr")
    assert hasattr(old_tns, "_NV_PUNCT") and not hasattr(tns, "_NV_PUNCT")
    assert alg.Helper in old_dhcpv6.Dhcpv6Helper.__mro__
