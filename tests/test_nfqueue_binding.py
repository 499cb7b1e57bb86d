"""nfnetlink_queue spoken by alg.kernel.nfqueue, without root.

Every message the binding sends is pinned as a hex dump decoded by hand
against include/uapi/linux/netfilter/nfnetlink_queue.h and
nfnetlink_conntrack.h, and compared byte for byte with the same message
encoded by pyroute2 through NLA classes declared here, once, as the
independent oracle (pyroute2 has no nfnetlink_queue classes; its ctnetlink
class declares CTA_HELP as a string, so the nest is declared here too).
Packets the kernel would send are built by that encoder and decoded by
parse_packet field by field; parse_packet takes any bytes with ValueError.
How verdicts fold into NFQNL_MSG_VERDICT_BATCH is checked on a binding whose
socket is a recorder.
"""

from __future__ import annotations

import ipaddress as I
import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyroute2.netlink import NLA_F_NESTED, nla
from pyroute2.netlink.nfnetlink import nfgen_msg
from pyroute2.netlink.nfnetlink.nfctsocket import nfct_msg

from alg.kernel import nfqueue as Q
from alg.kernel import nlmsg as L

# ---------------------------------------------------------------- the oracle: pyroute2 NLA classes


class cta_tuple(nla):
    nla_flags = NLA_F_NESTED
    nla_map = nfct_msg.cta_tuple.nla_map
    cta_ip = nfct_msg.cta_tuple.cta_ip
    cta_proto = nfct_msg.cta_tuple.cta_proto


class cta_help(nla):
    nla_flags = NLA_F_NESTED
    nla_map = ((0, "CTA_HELP_UNSPEC", "none"), (1, "CTA_HELP_NAME", "asciiz"), (2, "CTA_HELP_INFO", "cdata"))


class nfqa_ct(nla):
    """NFQA_CT: the ctnetlink attributes the kernel puts in it (ctnetlink_glue_build)."""

    nla_flags = NLA_F_NESTED
    nla_map = ((1, "CTA_TUPLE_ORIG", "cta_tuple"), (2, "CTA_TUPLE_REPLY", "cta_tuple"), (3, "CTA_STATUS", "be32"),
               (5, "CTA_HELP", "cta_help"), (7, "CTA_TIMEOUT", "be32"), (8, "CTA_MARK", "be32"),
               (12, "CTA_ID", "be32"), (14, "CTA_TUPLE_MASTER", "cta_tuple"), (18, "CTA_ZONE", "be16"))
    cta_tuple = cta_tuple
    cta_help = cta_help


class nfqa_exp(nla):
    nla_flags = NLA_F_NESTED
    nla_map = ((2, "CTA_EXPECT_TUPLE", "cta_tuple"), (3, "CTA_EXPECT_MASK", "cta_tuple"),
               (4, "CTA_EXPECT_TIMEOUT", "be32"))
    cta_tuple = cta_tuple


class nfq_msg(nfgen_msg):
    """NFQNL_MSG_PACKET / _VERDICT / _VERDICT_BATCH attributes (enum nfqnl_attr_type)."""

    nla_map = ((1, "NFQA_PACKET_HDR", "packet_hdr"), (2, "NFQA_VERDICT_HDR", "verdict_hdr"), (3, "NFQA_MARK", "be32"),
               (10, "NFQA_PAYLOAD", "cdata"), (11, "NFQA_CT", "nfqa_ct"), (12, "NFQA_CT_INFO", "be32"),
               (13, "NFQA_CAP_LEN", "be32"), (15, "NFQA_EXP", "nfqa_exp"))
    nfqa_ct = nfqa_ct
    nfqa_exp = nfqa_exp

    class packet_hdr(nla):  # struct nfqnl_msg_packet_hdr, packed: 7 bytes
        fields = (("packet_id", ">I"), ("hw_protocol", ">H"), ("hook", "B"))

    class verdict_hdr(nla):
        fields = (("verdict", ">I"), ("id", ">I"))


class nfq_config_msg(nfgen_msg):
    """NFQNL_MSG_CONFIG attributes (enum nfqnl_attr_config)."""

    nla_map = ((1, "NFQA_CFG_CMD", "cfg_cmd"), (2, "NFQA_CFG_PARAMS", "cfg_params"),
               (3, "NFQA_CFG_QUEUE_MAXLEN", "be32"), (4, "NFQA_CFG_MASK", "be32"), (5, "NFQA_CFG_FLAGS", "be32"))

    class cfg_cmd(nla):  # struct nfqnl_msg_config_cmd
        fields = (("command", "B"), ("_pad", "B"), ("pf", ">H"))

    class cfg_params(nla):  # struct nfqnl_msg_config_params, packed: 5 bytes
        fields = (("copy_range", ">I"), ("copy_mode", "B"))


def encode(cls, msg_type: int, queue: int, attrs: list, flags: int, seq: int = 0, pid: int = 0,
           family: int = socket.AF_UNSPEC) -> bytes:
    m = cls()
    m["nfgen_family"], m["res_id"], m["attrs"] = family, queue, attrs
    m["header"].update(type=(3 << 8) | msg_type, flags=flags, sequence_number=seq, pid=pid)
    m.encode()
    return bytes(m.data)


def decode(cls, data: bytes):
    m = cls(data)
    m.decode()
    return m


def tuple_attrs(l3: int, proto: int, src: str, dst: str, sport: int, dport: int) -> dict:
    v = "V4" if l3 == 4 else "V6"
    return {"attrs": [("CTA_TUPLE_IP", {"attrs": [(f"CTA_IP_{v}_SRC", src), (f"CTA_IP_{v}_DST", dst)]}),
                      ("CTA_TUPLE_PROTO", {"attrs": [("CTA_PROTO_NUM", proto), ("CTA_PROTO_SRC_PORT", sport),
                                                     ("CTA_PROTO_DST_PORT", dport)]})]}


REQ, ACK = 0x1, 0x4

# ---------------------------------------------------------------- goldens

# nlmsghdr (host order): len, type = NFNL_SUBSYS_QUEUE (3) << 8 | msg, flags, seq, pid; nfgenmsg: family
# AF_UNSPEC, version 0, res_id be16 = the queue. NFQNL_MSG_CONFIG (2): NFQA_CFG_CMD (1) {u8 command, u8 pad,
# be16 pf}, NFQA_CFG_PARAMS (2) {be32 copy_range, u8 copy_mode} (9 bytes + 3 pad), NFQA_CFG_QUEUE_MAXLEN (3)
# be32, NFQA_CFG_MASK (4) be32, NFQA_CFG_FLAGS (5) be32.
BIND_CT = ("40000000" "0203" "0500" "01000000" "07000000"  # len 64, QUEUE<<8|CONFIG, REQUEST|ACK, seq 1, pid 7
           "00000005"  # AF_UNSPEC, v0, queue 5
           "08000100" "01000000"  # NFQA_CFG_CMD: NFQNL_CFG_CMD_BIND, pad, pf 0
           "09000200" "0000fffb" "02000000"  # NFQA_CFG_PARAMS: copy_range 65531, NFQNL_COPY_PACKET + 3 pad
           "08000300" "00000400"  # NFQA_CFG_QUEUE_MAXLEN 1024
           "08000400" "00000002"  # NFQA_CFG_MASK NFQA_CFG_F_CONNTRACK
           "08000500" "00000002")  # NFQA_CFG_FLAGS NFQA_CFG_F_CONNTRACK
BIND_PLAIN = "30000000" + BIND_CT[8:-32]  # len 48: the same without MASK/FLAGS (the glue is missing)
UNBIND = ("1c000000" "0203" "0500" "02000000" "07000000" "00000005"  # len 28, CONFIG, REQUEST|ACK, seq 2
          "08000100" "02000000")  # NFQA_CFG_CMD: NFQNL_CFG_CMD_UNBIND
PARAMS_META = ("20000000" "0203" "0500" "03000000" "00000000" "00000005"  # len 32, CONFIG, seq 3
               "09000200" "00000000" "01000000")  # NFQA_CFG_PARAMS: copy_range 0, NFQNL_COPY_META
# NFQNL_MSG_VERDICT (1) / _VERDICT_BATCH (3): NFQA_VERDICT_HDR (2) {be32 verdict, be32 id}, NFQA_MARK (3)
# be32, NFQA_PAYLOAD (10) raw, NFQA_CT (11|NESTED) ctnetlink attributes, NFQA_EXP (15|NESTED).
VERDICT_FULL = (
    "5c000000" "0103" "0100" "00000000" "00000000" "00000015"  # len 92, QUEUE<<8|VERDICT, REQUEST, queue 21
    "0c000200" "00000001" "00000063"  # NFQA_VERDICT_HDR: NF_ACCEPT, id 99
    "08000300" "0000002a"  # NFQA_MARK 42
    "09000a00" "4500000a" "0b000000"  # NFQA_PAYLOAD 5 bytes + 3 pad
    "1c000b80"  # NFQA_CT
    "18000580"  # CTA_HELP (5|NESTED)
    "08000100" "73697000"  # CTA_HELP_NAME "sip\0"
    "0a000200" "01020304" "05060000"  # CTA_HELP_INFO 6 bytes + 2 pad
    "0c000f80"  # NFQA_EXP
    "08000400" "0000012c")  # CTA_EXPECT_TIMEOUT 300 (a stand-in: the binding nests what it is given)
VERDICT_BATCH = ("20000000" "0303" "0100" "00000000" "00000000" "00000015"  # len 32, QUEUE<<8|VERDICT_BATCH
                 "0c000200" "00000001" "00001000")  # NF_ACCEPT every packet up to id 4096
EXP_STANDIN = L.nla(4, L.be32(300))


def test_config_goldens():
    assert Q.pack_bind(5, 1024, 0xFFFF - 4, Q.NFQA_CFG_F_CONNTRACK, seq=1, pid=7).hex() == BIND_CT
    assert Q.pack_bind(5, 1024, 0xFFFF - 4, 0, seq=1, pid=7).hex() == BIND_PLAIN
    assert Q.pack_unbind(5, seq=2, pid=7).hex() == UNBIND
    assert Q.pack_params(5, Q.NFQNL_COPY_META, 0, seq=3).hex() == PARAMS_META


def test_verdict_goldens():
    full = Q.pack_verdict(21, 99, True, EXP_STANDIN, payload=b"\x45\x00\x00\x0a\x0b", mark=42,
                          ct=Q.pack_ct_help("sip", b"\x01\x02\x03\x04\x05\x06"))
    assert full.hex() == VERDICT_FULL
    assert Q.pack_verdict_batch(21, 4096).hex() == VERDICT_BATCH


@pytest.mark.parametrize("flags", [0, Q.NFQA_CFG_F_CONNTRACK, Q.NFQA_CFG_F_CONNTRACK | Q.NFQA_CFG_F_FAIL_OPEN])
def test_config_equals_pyroute2(flags):
    attrs = [("NFQA_CFG_CMD", {"command": Q.NFQNL_CFG_CMD_BIND, "_pad": 0, "pf": 0}),
             ("NFQA_CFG_PARAMS", {"copy_range": 1500, "copy_mode": Q.NFQNL_COPY_PACKET}),
             ("NFQA_CFG_QUEUE_MAXLEN", 20000)]
    attrs += [("NFQA_CFG_MASK", flags), ("NFQA_CFG_FLAGS", flags)] if flags else []
    assert Q.pack_bind(300, 20000, 1500, flags, seq=9, pid=1234) == encode(nfq_config_msg, 2, 300, attrs, REQ | ACK,
                                                                           9, 1234)
    unbind = [("NFQA_CFG_CMD", {"command": Q.NFQNL_CFG_CMD_UNBIND, "_pad": 0, "pf": 0})]
    assert Q.pack_unbind(300, 4, 5) == encode(nfq_config_msg, 2, 300, unbind, REQ | ACK, 4, 5)
    glue = [("NFQA_CFG_MASK", 2), ("NFQA_CFG_FLAGS", 2)]
    assert Q.pack_config_flags(65535, 2, 2, seq=1) == encode(nfq_config_msg, 2, 65535, glue, REQ | ACK, 1)


@pytest.mark.parametrize("accept", [True, False])
@pytest.mark.parametrize("extras", ["none", "payload", "ct", "exp", "all"])
def test_verdict_equals_pyroute2(accept, extras):
    payload = bytes(range(7)) * 31 if extras in ("payload", "all") else None
    ct = Q.pack_ct_help("ftp", b"\xaa" * 24) if extras in ("ct", "all") else None
    exp = EXP_STANDIN if extras in ("exp", "all") else b""
    attrs: list = [("NFQA_VERDICT_HDR", {"verdict": int(accept), "id": 0xFFFFFFF0})]
    attrs += [("NFQA_PAYLOAD", payload)] if payload is not None else []
    if ct is not None:
        attrs.append(("NFQA_CT", {"attrs": [("CTA_HELP", {"attrs": [("CTA_HELP_NAME", "ftp"),
                                                                    ("CTA_HELP_INFO", b"\xaa" * 24)]})]}))
    elif exp:
        attrs.append(("NFQA_CT", {"attrs": []}))  # the kernel reads NFQA_EXP only beside an NFQA_CT
    attrs += [("NFQA_EXP", {"attrs": [("CTA_EXPECT_TIMEOUT", 300)]})] if exp else []
    mine = Q.pack_verdict(65535, 0xFFFFFFF0, accept, exp, payload=payload, ct=ct)
    assert mine == encode(nfq_msg, 1, 65535, attrs, REQ)
    m = decode(nfq_msg, mine)
    assert m.get_attr("NFQA_VERDICT_HDR")["verdict"] == int(accept) and m.get_attr("NFQA_PAYLOAD") == payload


def test_batch_verdict_equals_pyroute2():
    for accept in (True, False):
        ref = encode(nfq_msg, 3, 7, [("NFQA_VERDICT_HDR", {"verdict": int(accept), "id": 123456})], REQ)
        assert Q.pack_verdict_batch(7, 123456, accept) == ref


def test_ct_help_bounds():
    """NF_CT_HELPER_NAME_LEN is 16 with its NUL; struct nf_conn_help holds 32 bytes of private data."""
    assert len(L.parse_attrs(Q.pack_ct_help("a" * 15, b"\0" * 32))) == 1
    for name, info in (("", b""), ("a" * 16, b""), ("sip", b"\0" * 33), ("s\0p", b"")):
        with pytest.raises(ValueError):
            Q.pack_ct_help(name, info)
    with pytest.raises(ValueError):
        Q.pack_verdict(1, 1, True, payload=b"\0" * 65532)


# ---------------------------------------------------------------- decoding what the kernel sends

V4 = (4, 17, "10.0.1.2", "10.0.2.2", 5060, 5060)
V4_REPLY_NAT = (4, 17, "10.0.2.2", "192.0.2.1", 5060, 40000)  # SNATed: the reply goes to the NAT address
V6 = (6, 6, "fd00:1::2", "fd00:2::2", 40000, 21)
V6_REPLY = (6, 6, "fd00:2::2", "fd00:1::2", 21, 40000)
MASTER = (4, 6, "10.0.1.2", "10.0.2.2", 33000, 21)


def kernel_packet(queue: int, pid: int, payload: bytes, ct: dict | None, ctinfo: int | None, mark: int = 0,
                  cap_len: int = 0, family: int = socket.AF_INET) -> bytes:
    """An NFQNL_MSG_PACKET laid out as nfqnl_build_packet_message does, through the oracle."""
    attrs: list = [("NFQA_PACKET_HDR", {"packet_id": pid, "hw_protocol": 0x0800, "hook": 2})]
    attrs += [("NFQA_MARK", mark)] if mark else []
    if ct is not None:
        attrs += [("NFQA_CT", ct), ("NFQA_CT_INFO", ctinfo)]
    attrs += [("NFQA_CAP_LEN", cap_len)] if cap_len else []
    attrs.append(("NFQA_PAYLOAD", payload))
    return encode(nfq_msg, 0, queue, attrs, 0, family=family)[16:]  # what follows the nlmsghdr


def ct_attrs(orig, reply, status, ct_id, helper=None, info=None, master=None, mark=0, zone=0) -> dict:
    a: list = [("CTA_TUPLE_ORIG", tuple_attrs(*orig)), ("CTA_TUPLE_REPLY", tuple_attrs(*reply))]
    a += [("CTA_ZONE", zone)] if zone else []
    a += [("CTA_ID", ct_id), ("CTA_STATUS", status), ("CTA_TIMEOUT", 30)]
    if helper is not None:
        h = [("CTA_HELP_NAME", helper)] + ([("CTA_HELP_INFO", info)] if info is not None else [])
        a.append(("CTA_HELP", {"attrs": h}))
    a += [("CTA_TUPLE_MASTER", tuple_attrs(*master))] if master else []
    a += [("CTA_MARK", mark)] if mark else []
    return {"attrs": a}


def same_tuple(t: Q.CtTuple, ref) -> bool:
    l3, proto, src, dst, sport, dport = ref
    return (t.l3, t.proto, I.ip_address(t.src), I.ip_address(t.dst), t.sport, t.dport) == (
        l3, proto, I.ip_address(src), I.ip_address(dst), sport, dport)


@pytest.mark.parametrize("orig,reply,master,ctinfo", [
    (V4, V4_REPLY_NAT, None, Q.IP_CT_NEW),
    (V6, V6_REPLY, None, Q.IP_CT_ESTABLISHED_REPLY),
    (V4, V4_REPLY_NAT, MASTER, Q.IP_CT_RELATED),
])
def test_packet_with_conntrack_decodes_field_by_field(orig, reply, master, ctinfo):
    payload = bytes(range(256)) * 3 + b"\x01"  # odd length: the last attribute is not padded by the kernel
    status = 0x1 | 0x8 | 0x10 | 0x20  # IPS_EXPECTED, CONFIRMED, SRC_NAT, DST_NAT (as given)
    info = b"\x00\x01\x02\x03" * 6
    raw = kernel_packet(301, 0xABCDEF01, payload, ct_attrs(orig, reply, status, 0x12345678, "sip", info, master,
                                                           mark=7, zone=3), ctinfo, mark=0x99, cap_len=1500)
    p = Q.parse_packet(raw)
    assert (p.queue, p.id, p.hook, p.hw_protocol, p.payload, p.ctinfo, p.mark, p.cap_len) == (
        301, 0xABCDEF01, 2, 0x0800, payload, ctinfo, 0x99, 1500)
    ct = p.ct
    assert ct is not None and same_tuple(ct.orig, orig) and same_tuple(ct.reply, reply)
    assert (ct.status, ct.id, ct.helper, ct.helper_info, ct.mark, ct.zone) == (status, 0x12345678, "sip", info, 7, 3)
    assert (ct.master is None) if master is None else same_tuple(ct.master, master)


def test_packet_without_conntrack_or_helper():
    p = Q.parse_packet(kernel_packet(1, 5, b"\x45" + b"\0" * 27, None, None))
    assert (p.id, p.ct, p.ctinfo, p.mark, p.cap_len) == (5, None, None, 0, 0)
    q = Q.parse_packet(kernel_packet(1, 6, b"x", ct_attrs(V4, V4_REPLY_NAT, 8, 1), Q.IP_CT_ESTABLISHED))
    assert q.ct is not None and (q.ct.helper, q.ct.helper_info, q.ct.master) == (None, None, None)
    meta = Q.parse_packet(encode(nfq_msg, 0, 1, [("NFQA_PACKET_HDR", {"packet_id": 9, "hw_protocol": 0x86DD,
                                                                      "hook": 4})], 0)[16:])
    assert (meta.id, meta.hw_protocol, meta.hook, meta.payload) == (9, 0x86DD, 4, b"")  # NFQNL_COPY_META


@pytest.mark.parametrize("raw", [b"", b"\0\0\0", b"\0\0\0\x01" + b"\x08\x00\x0a\x00abcd",  # no packet header
                                 b"\0\0\0\x01" + b"\x0a\x00\x01\x00abcdef",  # NFQA_PACKET_HDR of 6 bytes is short
                                 b"\0\0\0\x01" + b"\xff\x00\x01\x00"])  # an attribute running past the end
def test_garbage_is_value_error(raw):
    with pytest.raises(ValueError):
        Q.parse_packet(raw)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_parse_packet_any_bytes_only_value_error(raw):
    try:
        Q.parse_packet(raw)
    except ValueError:
        Q.packet_ids(raw)  # what the binding then reads of it raises nothing


VALID = kernel_packet(4, 77, b"E" * 40, ct_attrs(V6, V6_REPLY, 0x18, 3, "ftp", b"\x01" * 8, MASTER, 1, 2),
                      Q.IP_CT_RELATED_REPLY)


@settings(max_examples=500, deadline=None)
@given(st.data())
def test_parse_packet_mutated_kernel_message_only_value_error(data):
    """Near misses of a real message reach the nested decoders: truncations and byte flips."""
    raw = bytearray(VALID[:data.draw(st.integers(0, len(VALID)))])
    for _ in range(data.draw(st.integers(0, 4))):
        if raw:
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    try:
        p = Q.parse_packet(bytes(raw))
    except ValueError:
        Q.packet_ids(bytes(raw))  # raises nothing
        return
    assert isinstance(p, Q.QueuedPacket)


# ---------------------------------------------------------------- verdicts folded into batches


class Recorder:
    def __init__(self):
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> int:
        self.sent.append(data)
        return len(data)


def binding(received: list[int], batch: bool = True, send_max: int = 1 << 20) -> Q.QueueBinding:
    """A binding whose socket records what flush() sends; ``received``: ids it has handed out."""
    b = Q.QueueBinding.__new__(Q.QueueBinding)
    b.num, b.batch, b._pending, b._send_max, b.sock = 21, batch, [], send_max, Recorder()
    b._outstanding = dict.fromkeys(received)
    return b


def sent(b: Q.QueueBinding) -> list[tuple[int, int, int]]:
    """(message type, verdict, id) of every message sent, in order, and how many sends."""
    out = []
    for data in b.sock.sent:
        for t, _f, _s, payload in L.iter_messages(data):
            verdict, pid = struct.unpack("!II", L.parse_attrs(payload, 4)[Q.NFQA_VERDICT_HDR])
            out.append((t & 0xFF, verdict, pid))
    return out


def test_plain_accepts_in_order_become_one_batch():
    b = binding([10, 11, 12, 13])
    for i in (10, 11, 12, 13):
        b.verdict(i)
    b.flush()
    assert len(b.sock.sent) == 1 and sent(b) == [(Q.NFQNL_MSG_VERDICT_BATCH, 1, 13)] and not b._outstanding


def test_batch_stops_before_a_packet_that_is_not_a_plain_accept():
    b = binding([10, 11, 12, 13, 14])
    b.verdict(10)
    b.verdict(11)
    b.verdict(12, False)
    b.verdict(13, payload=b"E")
    b.verdict(14)
    b.flush()
    assert len(b.sock.sent) == 1  # one send(2) for all of them
    assert sent(b) == [(3, 1, 11), (1, 0, 12), (1, 1, 13), (1, 1, 14)]


def test_no_batch_over_a_held_packet():
    """Packet 10 is held (no verdict yet): a batch up to 12 would accept it too."""
    b = binding([10, 11, 12])
    b.verdict(11)
    b.verdict(12)
    b.flush()
    assert sent(b) == [(1, 1, 11), (1, 1, 12)] and list(b._outstanding) == [10]
    b.verdict(10, False)
    b.flush()
    assert sent(b)[-1] == (1, 0, 10) and not b._outstanding


def test_batching_off_and_chunked_sends():
    b = binding(list(range(100)), batch=False, send_max=32 * 10)  # a plain verdict is 32 bytes
    for i in range(100):
        b.verdict(i)
    b.flush()
    assert [v[2] for v in sent(b)] == list(range(100)) and len(b.sock.sent) == 10
    b.flush()  # nothing pending: nothing sent
    assert len(b.sock.sent) == 10


def test_a_bare_ack_of_a_flow_under_way_comes_without_its_conntrack_when_asked():
    """QueueBinding leaves the conntrack of a bare TCP acknowledgement (ctinfo ESTABLISHED either
    way) undecoded: the worker accepts those uninspected. Anything else keeps its conntrack."""
    from alg.decode import tcp_without_data

    def tcp(flags: int, data: bytes = b"") -> bytes:
        head = struct.pack("!HHIIBBHHH", 40000, 21, 1, 2, 5 << 4, flags, 512, 0, 0)
        return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40 + len(data), 0, 0, 64, 6, 0, bytes(4), bytes(4)) + head + data

    ct = ct_attrs(V4, V4_REPLY_NAT, 8, 1, "ftp", b"\x01" * 16)
    ack, data, fin = tcp(0x10), tcp(0x18, b"PASV\r\n"), tcp(0x11)
    assert tcp_without_data(ack) and not tcp_without_data(data) and not tcp_without_data(fin)
    for ctinfo in (Q.IP_CT_ESTABLISHED, Q.IP_CT_ESTABLISHED_REPLY, Q.IP_CT_NEW, Q.IP_CT_RELATED):
        for payload in (ack, data, fin):
            raw = kernel_packet(21, 7, payload, ct, ctinfo)
            whole = Q.parse_packet(raw)
            lean = Q.parse_packet(raw, bare_ack_conntrack=False)
            assert whole.ct is not None and whole.ct.helper == "ftp"
            skipped = payload is ack and ctinfo in Q.ESTABLISHED_CTINFO
            assert lean == (whole._replace(ct=None) if skipped else whole)
    assert Q.QueueBinding.bare_ack_conntrack is False


def test_a_packet_whose_message_does_not_read_still_gets_its_verdict():
    """A message whose NFQA_PACKET_HDR reads but whose conntrack does not (here: its tuple cut
    short) comes out with its id and an empty payload, which the worker accepts as a packet that
    does not decode; one without a readable id cannot be answered and is only counted."""
    good = kernel_packet(21, 7, b"E" * 20, ct_attrs(V4, V4_REPLY_NAT, 8, 1, "sip"), Q.IP_CT_ESTABLISHED)
    off = 4
    while True:  # the NFQA_CT attribute: its first nested attribute's length made too small
        n, t = struct.unpack_from("=HH", good, off)
        if t & 0x7FFF == Q.NFQA_CT:
            break
        off += (n + 3) & ~3
    bad = bytearray(good)
    struct.pack_into("=H", bad, off + 4, 3)
    with pytest.raises(ValueError):
        Q.parse_packet(bytes(bad))
    b = binding([])
    b.bad_messages, b.bare_ack_conntrack = 0, True
    out: list = []
    b._decode(bytes(bad), out)
    assert [(p.queue, p.id, p.payload, p.ct) for p in out] == [(21, 7, b"", None)] and b.bad_messages == 1
    b.verdict(7)
    b.flush()
    assert sent(b) == [(1, 1, 7)] and not b._outstanding
    b._decode(bytes(bad[:8]), out)  # no NFQA_PACKET_HDR left
    assert len(out) == 1 and b.bad_messages == 2


# ---------------------------------------------------------------- layouts: messages read where the last one's lay

LAID_OUT = [VALID,
            kernel_packet(21, 7, b"E" * 41, ct_attrs(V4, V4_REPLY_NAT, 8, 1, "ftp", b"\x02" * 24), Q.IP_CT_ESTABLISHED,
                          mark=5, cap_len=1500),
            kernel_packet(1, 5, b"\x45" + b"\0" * 27, None, None)]


def walked(raw: bytes, bare_ack_conntrack: bool = True):
    """What parse_packet makes of raw walking it attribute by attribute, no layout known (or ValueError)."""
    kept = Q._layouts[:]
    Q._layouts.clear()
    try:
        return Q._walk(raw, bare_ack_conntrack)
    except ValueError as exc:
        return ValueError(str(exc))
    finally:
        Q._layouts[:] = kept


def test_a_message_laid_out_as_one_before_is_read_where_its_attributes_lay():
    Q._layouts.clear()
    for raw in LAID_OUT:
        first = Q.parse_packet(raw)  # walked: its layout kept
        assert Q._layouts[0].read(raw, True) == first == Q.parse_packet(raw)
    assert len(Q._layouts) == len(LAID_OUT)
    # another payload length, other values: the same layout
    other = kernel_packet(21, 8, b"F" * 300, ct_attrs(V4, V4_REPLY_NAT, 0x18, 2, "ftp", b"\x03" * 24),
                          Q.IP_CT_ESTABLISHED_REPLY, mark=6, cap_len=1400)
    assert Q._layouts[1].read(other, True) == walked(other) != Q._layouts[1].read(LAID_OUT[1], True)
    # another length of one attribute (a helper name of another size): walked, and kept as a layout of its own
    renamed = kernel_packet(21, 8, b"F", ct_attrs(V4, V4_REPLY_NAT, 8, 2, "ftp-other", b"\x03" * 24),
                            Q.IP_CT_ESTABLISHED)
    assert all(lay.read(renamed, True) is None for lay in Q._layouts)
    assert Q.parse_packet(renamed) == walked(renamed) and Q._layouts[0].read(renamed, True) is not None
    # something after the payload: never read by a layout
    trailing = LAID_OUT[1] + L.nla(Q.NFQA_MARK, L.be32(9))
    assert all(lay.read(trailing, True) is None for lay in Q._layouts)
    assert Q.parse_packet(trailing).mark == 9


@settings(max_examples=1500, deadline=None)
@given(st.data())
def test_a_damaged_message_reads_the_same_through_a_layout_as_walked(data):
    """Byte flips and truncations of messages whose layouts are known: parse_packet (a layout
    where one fits) and the walk agree, value or ValueError, with or without the bare ACK's
    conntrack; a layout reads nothing the walk would refuse."""
    Q._layouts.clear()
    for raw in LAID_OUT:
        Q.parse_packet(raw)
    raw = bytearray(data.draw(st.sampled_from(LAID_OUT)))
    del raw[data.draw(st.integers(len(raw) - 40, len(raw))):]
    for _ in range(data.draw(st.integers(0, 3))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    bare = data.draw(st.booleans())
    want = walked(bytes(raw), bare)
    try:
        got = Q.parse_packet(bytes(raw), bare)
    except ValueError as exc:
        got = ValueError(str(exc))
    if isinstance(want, ValueError):
        assert isinstance(got, ValueError)
    else:
        assert got == want
