"""nfnetlink_cthelper: userspace conntrack helpers registered with the kernel.

A userspace helper is a (name, l3 family, l4 protocol) entry with an NFQUEUE
number and a policy (one class per expectation class: name, max expected,
timeout).  ``iptables -t raw ... -j CT --helper NAME`` attaches it to flows;
while it is *enabled*, the kernel queues those flows' packets to the queue
from the conntrack confirm hook (a dead daemon therefore breaks the flows,
measured in the lab VM: disable on exit).

Kernel behaviour (net/netfilter/nfnetlink_cthelper.c):

* NEW for a name+tuple that does not exist creates it and needs
  NFCTH_PRIV_DATA_LEN (EINVAL without).  A kernel helper of the same name and
  tuple (e.g. nf_conntrack_ftp) makes the create fail with EEXIST.
* NEW for an existing userspace helper (say, pre-registered by
  ``nfct add helper ftp inet tcp``) updates it: the policy must have the same
  number of classes with the same names and priv_data_len, if sent, must be
  equal (EBUSY otherwise).  Without NLM_F_EXCL that is our idempotent path.
* ``inet`` in nfct means l3num AF_INET; an IPv6 flow needs its own AF_INET6 entry.

Registration, listing and removal are off the hot path, so they are encoded
and decoded with the pyroute2 NLA classes declared below (the kernel's
attribute numbers, include/uapi/linux/netfilter/nfnetlink_cthelper.h) and sent
over alg's own netlink socket (pyroute2's socket API is not needed).  The lean
``pack_*`` layouts are an independent second encoding: the golden tests
(tests/test_netlink_golden.py) pin both to the same hand-decoded bytes.
``python -m alg.kernel.cthelper --selftest`` exercises
register/list/disable/unregister on the running kernel.
"""

from __future__ import annotations

import errno as E
import socket
import struct
import sys
from typing import Any, Self

from alg.errors import KernelError
from alg.kernel import nlmsg as L
from alg.kernel.pyroute2_netlink import NLA_F_NESTED, nfgen_msg, nla

NFNL_MSG_CTHELPER_NEW, NFNL_MSG_CTHELPER_GET, NFNL_MSG_CTHELPER_DEL = 0, 1, 2
NFCTH_NAME, NFCTH_TUPLE, NFCTH_QUEUE_NUM, NFCTH_POLICY, NFCTH_PRIV_DATA_LEN, NFCTH_STATUS = range(1, 7)
NFCTH_TUPLE_L3PROTONUM, NFCTH_TUPLE_L4PROTONUM = 1, 2
NFCTH_POLICY_SET_NUM, NFCTH_POLICY_SET1 = 1, 2
NFCTH_POLICY_NAME, NFCTH_POLICY_EXPECT_MAX, NFCTH_POLICY_EXPECT_TIMEOUT = 1, 2, 3
NFCT_HELPER_STATUS_DISABLED, NFCT_HELPER_STATUS_ENABLED = 0, 1
NF_CT_HELPER_NAME_LEN = 16
NF_CT_MAX_EXPECT_CLASSES = 4

L3 = {4: socket.AF_INET, 6: socket.AF_INET6}
PROTO_NAMES = {6: "tcp", 17: "udp", 132: "sctp", 33: "dccp"}


class nfct_helper_msg(nfgen_msg):
    """NFNL_MSG_CTHELPER_* (reference encoding and dump parser)."""

    prefix = "NFCTH_"
    nla_map = (
        ("NFCTH_UNSPEC", "none"),
        ("NFCTH_NAME", "asciiz"),
        ("NFCTH_TUPLE", "nfcth_tuple"),
        ("NFCTH_QUEUE_NUM", "be32"),
        ("NFCTH_POLICY", "nfcth_policy"),
        ("NFCTH_PRIV_DATA_LEN", "be32"),
        ("NFCTH_STATUS", "be32"),
    )

    class nfcth_tuple(nla):
        nla_flags = NLA_F_NESTED
        nla_map = (
            ("NFCTH_TUPLE_UNSPEC", "none"),
            ("NFCTH_TUPLE_L3PROTONUM", "be16"),
            ("NFCTH_TUPLE_L4PROTONUM", "uint8"),
        )

    class nfcth_policy(nla):
        nla_flags = NLA_F_NESTED
        nla_map = (
            ("NFCTH_POLICY_SET_UNSPEC", "none"),
            ("NFCTH_POLICY_SET_NUM", "be32"),
            ("NFCTH_POLICY_SET1", "nfcth_set"),
            ("NFCTH_POLICY_SET2", "nfcth_set"),
            ("NFCTH_POLICY_SET3", "nfcth_set"),
            ("NFCTH_POLICY_SET4", "nfcth_set"),
        )

        class nfcth_set(nla):
            nla_flags = NLA_F_NESTED
            nla_map = (
                ("NFCTH_POLICY_UNSPEC", "none"),
                ("NFCTH_POLICY_NAME", "asciiz"),
                ("NFCTH_POLICY_EXPECT_MAX", "be32"),
                ("NFCTH_POLICY_EXPECT_TIMEOUT", "be32"),
            )


def _tuple(l3: int, proto: int) -> bytes:
    return L.nest(NFCTH_TUPLE, L.nla(NFCTH_TUPLE_L3PROTONUM, L.be16(L3[l3])),
                  L.nla(NFCTH_TUPLE_L4PROTONUM, L.u8(proto)))


def pack_new(name: str, l3: int, proto: int, queue: int, classes, priv_data_len: int | None,
             enabled: bool | None = True, seq: int = 0, pid: int = 0) -> bytes:
    """NFNL_MSG_CTHELPER_NEW (create or update), with ACK, without NLM_F_EXCL (lean layout; the adapter
    sends pyroute2_new's bytes, which the golden tests prove equal)."""
    sets = [L.nest(NFCTH_POLICY_SET1 + i, L.nla(NFCTH_POLICY_NAME, L.asciiz(c.name)),
                   L.nla(NFCTH_POLICY_EXPECT_MAX, L.be32(c.max_expected)),
                   L.nla(NFCTH_POLICY_EXPECT_TIMEOUT, L.be32(c.timeout)))
            for i, c in enumerate(classes)]
    body = [L.nla(NFCTH_NAME, L.asciiz(name)), _tuple(l3, proto), L.nla(NFCTH_QUEUE_NUM, L.be32(queue)),
            L.nest(NFCTH_POLICY, L.nla(NFCTH_POLICY_SET_NUM, L.be32(len(classes))), *sets)]
    if priv_data_len is not None:
        body.append(L.nla(NFCTH_PRIV_DATA_LEN, L.be32(priv_data_len)))
    if enabled is not None:
        body.append(L.nla(NFCTH_STATUS, L.be32(NFCT_HELPER_STATUS_ENABLED if enabled else NFCT_HELPER_STATUS_DISABLED)))
    return L.message(L.NFNL_SUBSYS_CTHELPER, NFNL_MSG_CTHELPER_NEW,
                     L.NLM_F_REQUEST | L.NLM_F_ACK | L.NLM_F_CREATE, socket.AF_UNSPEC, b"".join(body), seq, pid)


def pack_status(name: str, l3: int, proto: int, enabled: bool, seq: int = 0, pid: int = 0) -> bytes:
    """NEW on an existing helper with only name, tuple and status (no NLM_F_CREATE)."""
    body = L.nla(NFCTH_NAME, L.asciiz(name)) + _tuple(l3, proto) + L.nla(
        NFCTH_STATUS, L.be32(NFCT_HELPER_STATUS_ENABLED if enabled else NFCT_HELPER_STATUS_DISABLED))
    return L.message(L.NFNL_SUBSYS_CTHELPER, NFNL_MSG_CTHELPER_NEW, L.NLM_F_REQUEST | L.NLM_F_ACK,
                     socket.AF_UNSPEC, body, seq, pid)


def pack_del(name: str, l3: int, proto: int, seq: int = 0, pid: int = 0) -> bytes:
    return L.message(L.NFNL_SUBSYS_CTHELPER, NFNL_MSG_CTHELPER_DEL, L.NLM_F_REQUEST | L.NLM_F_ACK,
                     socket.AF_UNSPEC, L.nla(NFCTH_NAME, L.asciiz(name)) + _tuple(l3, proto), seq, pid)


def pack_dump(seq: int = 0, pid: int = 0) -> bytes:
    return L.message(L.NFNL_SUBSYS_CTHELPER, NFNL_MSG_CTHELPER_GET, L.NLM_F_REQUEST | L.NLM_F_DUMP,
                     socket.AF_UNSPEC, b"", seq, pid)


def _encode(msg_type: int, flags: int, attrs: list, seq: int, pid: int) -> bytes:
    m = nfct_helper_msg()
    m["nfgen_family"] = socket.AF_UNSPEC
    m["attrs"] = attrs
    m["header"]["type"] = (L.NFNL_SUBSYS_CTHELPER << 8) | msg_type
    m["header"]["flags"] = flags
    m["header"]["sequence_number"], m["header"]["pid"] = seq, pid
    m.encode()
    return bytes(m.data)


def _key_attrs(name: str, l3: int, proto: int) -> list:
    """NFCTH_NAME and NFCTH_TUPLE: what identifies a userspace helper."""
    return [("NFCTH_NAME", name),
            ("NFCTH_TUPLE", {"attrs": [("NFCTH_TUPLE_L3PROTONUM", L3[l3]), ("NFCTH_TUPLE_L4PROTONUM", proto)]})]


def pyroute2_new(name, l3, proto, queue, classes, priv_data_len, enabled=True, seq=0, pid=0) -> bytes:
    """NFNL_MSG_CTHELPER_NEW (create or update) through the NLA classes; same bytes as pack_new."""
    pol: list = [("NFCTH_POLICY_SET_NUM", len(classes))]
    pol += [(f"NFCTH_POLICY_SET{i + 1}", {"attrs": [("NFCTH_POLICY_NAME", c.name),
                                                    ("NFCTH_POLICY_EXPECT_MAX", c.max_expected),
                                                    ("NFCTH_POLICY_EXPECT_TIMEOUT", c.timeout)]})
            for i, c in enumerate(classes)]
    attrs: list = [*_key_attrs(name, l3, proto), ("NFCTH_QUEUE_NUM", queue), ("NFCTH_POLICY", {"attrs": pol})]
    if priv_data_len is not None:
        attrs.append(("NFCTH_PRIV_DATA_LEN", priv_data_len))
    if enabled is not None:
        attrs.append(("NFCTH_STATUS", NFCT_HELPER_STATUS_ENABLED if enabled else NFCT_HELPER_STATUS_DISABLED))
    return _encode(NFNL_MSG_CTHELPER_NEW, L.NLM_F_REQUEST | L.NLM_F_ACK | L.NLM_F_CREATE, attrs, seq, pid)


def pyroute2_status(name: str, l3: int, proto: int, enabled: bool, seq: int = 0, pid: int = 0) -> bytes:
    """Enable/disable an existing helper; same bytes as pack_status."""
    attrs = [*_key_attrs(name, l3, proto),
             ("NFCTH_STATUS", NFCT_HELPER_STATUS_ENABLED if enabled else NFCT_HELPER_STATUS_DISABLED)]
    return _encode(NFNL_MSG_CTHELPER_NEW, L.NLM_F_REQUEST | L.NLM_F_ACK, attrs, seq, pid)


def pyroute2_del(name: str, l3: int, proto: int, seq: int = 0, pid: int = 0) -> bytes:
    """Unregister a helper; same bytes as pack_del."""
    return _encode(NFNL_MSG_CTHELPER_DEL, L.NLM_F_REQUEST | L.NLM_F_ACK, _key_attrs(name, l3, proto), seq, pid)


def pyroute2_dump(seq: int = 0, pid: int = 0) -> bytes:
    """List every userspace helper; same bytes as pack_dump."""
    return _encode(NFNL_MSG_CTHELPER_GET, L.NLM_F_REQUEST | L.NLM_F_DUMP, [], seq, pid)


def parse_helper(payload: bytes) -> dict[str, Any]:
    """Decode one NFNL_MSG_CTHELPER_NEW payload of a dump (nfgenmsg + attributes) with nfct_helper_msg."""
    m = nfct_helper_msg(struct.pack("=IHHII", 16 + len(payload),
                                    (L.NFNL_SUBSYS_CTHELPER << 8) | NFNL_MSG_CTHELPER_NEW, 0, 0, 0) + payload)
    m.decode()
    tup = m.get_attr("NFCTH_TUPLE")
    pol = m.get_attr("NFCTH_POLICY")
    classes = []
    for i in range(NF_CT_MAX_EXPECT_CLASSES):
        c = pol.get_attr(f"NFCTH_POLICY_SET{i + 1}") if pol is not None else None
        if c is not None:
            classes.append({"name": c.get_attr("NFCTH_POLICY_NAME"),
                            "max_expected": c.get_attr("NFCTH_POLICY_EXPECT_MAX"),
                            "timeout": c.get_attr("NFCTH_POLICY_EXPECT_TIMEOUT")})
    l3num: int | None = tup.get_attr("NFCTH_TUPLE_L3PROTONUM") if tup is not None else None
    return {
        "name": m.get_attr("NFCTH_NAME"),
        "l3": None if l3num is None else {int(socket.AF_INET): 4, int(socket.AF_INET6): 6}.get(l3num, l3num),
        "proto": tup.get_attr("NFCTH_TUPLE_L4PROTONUM") if tup is not None else None,
        "queue": m.get_attr("NFCTH_QUEUE_NUM"),
        "priv_data_len": m.get_attr("NFCTH_PRIV_DATA_LEN"),
        "enabled": m.get_attr("NFCTH_STATUS") == NFCT_HELPER_STATUS_ENABLED,
        "classes": classes,
    }


_HINTS = {
    E.ENOENT: "no such userspace helper",
    E.EEXIST: "a helper of that name and tuple exists in the kernel (an in-kernel helper module like "
              "nf_conntrack_{name} is loaded? rename the alg helper or unload the module)",
    E.EBUSY: "an existing userspace helper '{name}' has a different policy (class names/count) or "
             "priv_data_len (unregister it with nfct del helper, or match it), or the kernel's own "
             "nf_conntrack_{name} is loaded and holds the name (rename the alg helper: name = \"alg-{name}\")",
    E.EINVAL: "invalid helper attributes (name > 15 chars, 0 or > 4 classes, missing priv_data_len?)",
    E.EOPNOTSUPP: "nfnetlink_cthelper is not available in this kernel (CONFIG_NF_CT_NETLINK_HELPER); "
                  "use a kernel with it (the lab VM) or load the module",
    E.EPERM: "needs CAP_NET_ADMIN",
}


class Cthelper:
    """Register, list, enable/disable and remove userspace conntrack helpers."""

    def __init__(self) -> None:
        self.sock = L.NfnlSocket()
        self._supported: bool | None = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def _do(self, op: str, name: str, build, *args):
        seq = self.sock.next_seq()
        try:
            return self.sock.transact(build(*args, seq=seq, pid=0), seq)
        except L.NetlinkError as exc:
            e = exc.errno or E.EIO
            if e in (E.EINVAL, E.EOPNOTSUPP) and (op == "cthelper-list" or not self.supported()):
                # nfnetlink answers EINVAL for a message to a subsystem that is not registered
                raise KernelError(e, op, _HINTS[E.EOPNOTSUPP]) from None
            hint = _HINTS.get(e, "")
            raise KernelError(e, op, f"helper '{name}': " + hint.format(name=name)) from None

    def supported(self) -> bool:
        """Whether the kernel answers a cthelper dump (nfnetlink_cthelper present); KernelError(EPERM)
        without CAP_NET_ADMIN."""
        if self._supported is None:
            seq = self.sock.next_seq()
            try:
                self.sock.transact(pyroute2_dump(seq=seq), seq)
                self._supported = True
            except L.NetlinkError as exc:
                if exc.errno in (E.EPERM, E.EACCES):  # not an answer about the kernel
                    raise KernelError(exc.errno, "cthelper-list", _HINTS[E.EPERM]) from None
                self._supported = False
        return self._supported

    def _l3s(self, hp) -> list[int]:
        return sorted({4, *(f for f in hp.families if f in L3)})

    def register(self, hp, priv_data_len: int, queue: int | None = None) -> None:
        """Create or update ``hp`` (one entry per l3 family x l4 protocol), enabled."""
        if len(hp.name) >= NF_CT_HELPER_NAME_LEN:
            raise KernelError(E.EINVAL, "cthelper-new", f"helper name '{hp.name}' longer than 15 characters")
        q = hp.queue if queue is None else queue
        for l3 in self._l3s(hp):
            for proto in hp.protocols:
                try:
                    self._do("cthelper-new", hp.name, pyroute2_new, hp.name, l3, proto, q, hp.classes, priv_data_len)
                except KernelError as exc:
                    if exc.errno != E.EBUSY:
                        raise
                    # pre-registered without priv_data_len semantics we can match: update without it
                    # (a create without it is EINVAL: the first answer says what is wrong)
                    try:
                        self._do("cthelper-new", hp.name, pyroute2_new, hp.name, l3, proto, q, hp.classes, None)
                    except KernelError:
                        raise exc from None

    def set_status(self, name: str, proto: int, enabled: bool, l3: int = 4) -> None:
        self._do("cthelper-status", name, pyroute2_status, name, l3, proto, enabled)

    def unregister(self, name: str, proto: int, l3: int = 4) -> None:
        self._do("cthelper-del", name, pyroute2_del, name, l3, proto)

    def list(self) -> list[dict[str, Any]]:
        return [parse_helper(p) for _t, p in self._do("cthelper-list", "*", pyroute2_dump)]


def _selftest() -> int:
    """Register a throw-away helper, list it, disable, unregister; print PASS/FAIL lines."""
    from alg.model import ExpectClass
    from alg.policy import HelperPolicy

    name = "alg-selftest"
    hp = HelperPolicy(helper="ftp", name=name, enabled=True, queue=7, queue_len=16, protocols=(6,), families=(4,),
                      ports=(21,), classes=(ExpectClass("data", 3, 120),), options={}, max_buffer=4096)
    ok = True

    def check(label: str, cond: bool, extra: Any = "") -> None:
        nonlocal ok
        ok &= bool(cond)
        print(f"{'PASS' if cond else 'FAIL'} {label}{' ' + str(extra) if extra and not cond else ''}", flush=True)

    def find(c):
        return [h for h in c.list() if h["name"] == name]

    with Cthelper() as c:
        c.register(hp, priv_data_len=24)
        got = find(c)
        check("cthelper-register", len(got) == 1 and got[0]["enabled"] and got[0]["queue"] == 7
              and got[0]["classes"] == [{"name": "data", "max_expected": 3, "timeout": 120}], got)
        c.register(hp, priv_data_len=24)  # idempotent
        check("cthelper-register-again", len(find(c)) == 1)
        c.set_status(name, 6, False)
        got = find(c)
        check("cthelper-disable", len(got) == 1 and not got[0]["enabled"], got)
        if len(sys.argv) > 2 and sys.argv[2] == "--keep":
            return 0 if ok else 1
        c.unregister(name, 6)
        check("cthelper-unregister", not find(c))
        try:  # the kernel answers 0 when no userspace helper is left at all, else ENOENT
            c.unregister(name, 6)
            check("cthelper-unregister-missing", True)
        except KernelError as exc:
            check("cthelper-unregister-missing", exc.errno == E.ENOENT, exc)
    return 0 if ok else 1


if __name__ == "__main__":
    if sys.argv[1:2] == ["--selftest"]:
        sys.exit(_selftest())
    with Cthelper() as c:
        for h in c.list():
            print(h)
