"""Golden encodings of every netlink message alg builds (no root needed).

Each lean packer is compared byte for byte with pyroute2's encoding of the
same message through the NLA classes declared in alg.kernel (same seq/pid),
and the main layouts are pinned as hex dumps so a change in either shows.
"""

import ipaddress as I
import socket
import struct

import pytest

from alg.expect import Expectation
from alg.kernel import cthelper as H
from alg.kernel import ctnetlink as C
from alg.kernel import nlmsg as L
from alg.model import ExpectClass, FlowTuple

M4 = FlowTuple(4, 6, I.ip_address("10.0.1.2"), I.ip_address("10.0.2.2"), 40000, 21)
M6 = FlowTuple(6, 6, I.ip_address("fd00:1::2"), I.ip_address("fd00:2::2"), 40000, 21)


def exp(master, **kw):
    d = {"helper": "ftp", "cls": "data", "class_id": 0, "l3": master.l3, "proto": 6, "src": master.src,
         "dst": master.dst,     "sport": None, "dport": 50004, "master": master, "timeout": 300}
    d.update(kw)
    return Expectation(**d)


CT_GET_V4 = ("48000000010105000700000000000000020000003400018014000180080001000a000102080002000a000202"
             "1c0002800500010006000000060002009c4000000600030000150000")
EXP_NEW_V4_ASSIGN = (  # with CTA_EXPECT_HELP_NAME "ftp" (08000600 66747000)
    "d8000000000205040300000005000000020000003400018014000180080001000a000102080002000a0002021c00028005000100"
    "06000000060002009c40000006000300001500003400028014000180080001000a000102080002000a0002021c00028005000100"
    "0600000006000200000000000600030"
    "0c3540000340003801400018008000100ffffffff08000200ffffffff1c00028005000100060000000600020000000000060003"
    "00ffff0000080004000000012c0800060066747000060007000000000008000800000000000800090000000000")
EXP_GET_V4 = ("4800000001020500070000000000000002000000"  # nlmsghdr (EXP_GET, REQUEST|ACK, seq 7), nfgenmsg
              "3400028014000180080001000a000102080002000a0002021c000280050001000600000006000200000000000600"
              "0300c3540000")  # CTA_EXPECT_TUPLE 10.0.1.2 -> 10.0.2.2 tcp sport 0 dport 50004
# the same without the helper name: 8 bytes shorter
EXP_NEW_V4 = "d0" + EXP_NEW_V4_ASSIGN[2:].replace("0800060066747000", "")


def test_ct_get_v4_golden():
    assert C.pack_ct_get(M4, seq=7).hex() == CT_GET_V4
    assert C.pyroute2_ct_get(M4, seq=7).hex() == CT_GET_V4


@pytest.mark.parametrize("m", [M4, M6, M4.reversed()])
@pytest.mark.parametrize("by_reply", [False, True])
def test_ct_get_equals_pyroute2(m, by_reply):
    assert C.pack_ct_get(m, by_reply, seq=99, pid=1234) == C.pyroute2_ct_get(m, by_reply, seq=99, pid=1234)


def test_ct_get_by_reply_uses_cta_tuple_reply():
    b = C.pack_ct_get(M4, by_reply=True)
    a = L.parse_attrs(b, 20)
    assert list(a) == [C.CTA_TUPLE_REPLY]
    assert struct.unpack_from("=H", b, 4)[0] == (L.NFNL_SUBSYS_CTNETLINK << 8) | C.IPCTNL_MSG_CT_GET


def test_exp_new_v4_golden():
    assert C.pack_exp_new(exp(M4), M4, seq=3, pid=5).hex() == EXP_NEW_V4
    assert C.pyroute2_exp_new(exp(M4), M4, seq=3, pid=5).hex() == EXP_NEW_V4
    e = exp(M4, assign_helper=True)
    assert C.pack_exp_new(e, M4, seq=3, pid=5).hex() == EXP_NEW_V4_ASSIGN
    assert C.pyroute2_exp_new(e, M4, seq=3, pid=5).hex() == EXP_NEW_V4_ASSIGN


def test_exp_new_names_helper_only_to_assign_it():
    """CTA_EXPECT_HELP_NAME names the helper the expected conntrack gets (conntrackd sets it for
    ssdp alone): without assign_helper it is left out, else old kernels give every expected
    flow the master's helper and queue it to userspace."""
    assert C.CTA_EXPECT_HELP_NAME not in L.parse_attrs(C.pack_exp_new(exp(M4), M4), 20)
    a = L.parse_attrs(C.pack_exp_new(exp(M4, helper="ssdp", assign_helper=True), M4), 20)
    assert a[C.CTA_EXPECT_HELP_NAME] == b"ssdp\0"


@pytest.mark.parametrize("e", [
    exp(M4), exp(M6), exp(M4, src=None), exp(M6, src=None), exp(M4, sport=20, class_id=1, flags=1),
    exp(M4, src_prefix=24), exp(M6, src_prefix=64, proto=17, helper="sip", timeout=60),
    exp(M4, assign_helper=True), exp(M6, src=None, proto=17, helper="ssdp", assign_helper=True, flags=1),
])
@pytest.mark.parametrize("excl", [True, False])
def test_exp_new_equals_pyroute2(e, excl):
    assert C.pack_exp_new(e, e.master, 42, 9, excl) == C.pyroute2_exp_new(e, e.master, 42, 9, excl)


def test_exp_new_flags():
    f = struct.unpack_from("=H", C.pack_exp_new(exp(M4), M4), 6)[0]
    assert f & L.NLM_F_CREATE and f & L.NLM_F_ACK and not f & L.NLM_F_EXCL
    f = struct.unpack_from("=H", C.pack_exp_new(exp(M4), M4, exclusive=True), 6)[0]
    assert f & L.NLM_F_CREATE and f & L.NLM_F_EXCL


def test_exp_new_mask_carries_src_prefix_and_wildcards():
    k = C.parse_expectation(C.pack_exp_new(exp(M4, src_prefix=24), M4)[16:])
    assert str(k.mask.src) == "255.255.255.0" and k.mask.sport == 0 and k.mask.dport == 0xFFFF
    assert k.to_json()["mask"]["src"] == "255.255.255.0"
    w = C.parse_expectation(C.pack_exp_new(exp(M6, src=None), M6)[16:])
    assert w.to_json()["src"] is None and int(w.mask.src) == 0


def test_exp_roundtrip_fields():
    e = exp(M4, sport=20, class_id=1, flags=C.NF_CT_EXPECT_PERMANENT, timeout=120, assign_helper=True)
    k = C.parse_expectation(C.pack_exp_new(e, M4)[16:])
    assert (k.helper, k.class_id, k.timeout, k.flags, k.master) == ("ftp", 1, 120, 1, M4)
    assert (k.tuple.src, k.tuple.dst, k.tuple.sport, k.tuple.dport) == (e.src, e.dst, 20, 50004)


@pytest.mark.parametrize("msg_type", [C.IPCTNL_MSG_EXP_GET, C.IPCTNL_MSG_EXP_DELETE])
@pytest.mark.parametrize("e", [exp(M4), exp(M6, src=None, sport=5060, proto=17)])
def test_exp_get_and_delete_equal_pyroute2(msg_type, e):
    b = C.pack_exp_by_tuple(msg_type, e, seq=1)
    assert b == C.pyroute2_exp_by_tuple(msg_type, e, seq=1)
    assert struct.unpack_from("=H", b, 4)[0] == (L.NFNL_SUBSYS_CTNETLINK_EXP << 8) | msg_type
    assert list(L.parse_attrs(b, 20)) == [C.CTA_EXPECT_TUPLE]


def test_exp_get_v4_golden():
    assert C.pack_exp_by_tuple(C.IPCTNL_MSG_EXP_GET, exp(M4), seq=7).hex() == EXP_GET_V4


def test_parse_ignores_truncated():
    assert C.parse_expectation(b"\x02\x00\x00\x00" + b"\x08\x00\x02\x80\x00") is None


CLASSES = (ExpectClass("data", 3, 120), ExpectClass("other", 1, 30))


@pytest.mark.parametrize("l3", [4, 6])
@pytest.mark.parametrize("priv", [24, None])
@pytest.mark.parametrize("enabled", [True, False, None])
def test_cthelper_new_equals_pyroute2(l3, priv, enabled):
    a = H.pack_new("ftp", l3, 6, 5, CLASSES, priv, enabled, seq=8, pid=3)
    assert a == H.pyroute2_new("ftp", l3, 6, 5, CLASSES, priv, enabled, seq=8, pid=3)


def test_cthelper_new_parses_back():
    b = H.pack_new("ftp", 4, 6, 5, CLASSES, 24, True)
    h = H.parse_helper(b[16:])
    assert h == {"name": "ftp", "l3": 4, "proto": 6, "queue": 5, "priv_data_len": 24, "enabled": True,
                 "classes": [{"name": "data", "max_expected": 3, "timeout": 120},
                             {"name": "other", "max_expected": 1, "timeout": 30}]}
    assert struct.unpack_from("!H", b, 20 + 8 + 4 + 4)[0] == socket.AF_INET  # NFCTH_TUPLE_L3PROTONUM


def test_cthelper_status_and_del_layouts():
    s = H.pack_status("ftp", 4, 6, False)
    a = L.parse_attrs(s, 20)
    assert a[H.NFCTH_STATUS] == b"\0\0\0\0" and H.NFCTH_POLICY not in a
    assert not struct.unpack_from("=H", s, 6)[0] & L.NLM_F_CREATE
    d = H.pack_del("ftp", 6, 17)
    assert struct.unpack_from("=H", d, 4)[0] == (L.NFNL_SUBSYS_CTHELPER << 8) | H.NFNL_MSG_CTHELPER_DEL
    assert H.parse_helper(d[16:])["proto"] == 17


@pytest.mark.parametrize("e", [exp(M4, assign_helper=True), exp(M6, src=None, assign_helper=True),
                               exp(M4, sport=20, src_prefix=24, flags=1, assign_helper=True)])
def test_kernel_json_matches_replay_json(e):
    k = C.parse_expectation(C.pack_exp_new(e, e.master)[16:]).to_json()
    j = e.to_json()
    for key in ("helper", "l3", "proto", "src", "dst", "sport", "dport", "mask", "master", "timeout", "flags"):
        assert k[key] == j[key], key
    assert k["class_id"] == e.class_id


GLUE_PROBE = ("24000000" "0203" "0500" "01000000" "00000000"  # len 36, QUEUE<<8|NFQNL_MSG_CONFIG (2), REQUEST|ACK
              "0000ffff"  # AF_UNSPEC, v0, res_id be16 = queue 65535 (one nobody has bound)
              "08000400" "00000002"  # NFQA_CFG_MASK (4) be32 NFQA_CFG_F_CONNTRACK (1 << 1)
              "08000500" "00000002")  # NFQA_CFG_FLAGS (5) be32 NFQA_CFG_F_CONNTRACK; no NFQA_CFG_CMD: nothing binds


def test_glue_probe_golden():
    """alg doctor's probe of the NFQUEUE conntrack glue (alg.kernel.nfqueue.conntrack_glue)."""
    assert Q.pack_config_flags(65535, Q.NFQA_CFG_F_CONNTRACK, Q.NFQA_CFG_F_CONNTRACK, seq=1).hex() == GLUE_PROBE
