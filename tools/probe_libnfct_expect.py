#!/usr/bin/env python3
"""Which CTA_EXPECT_* attributes libnetfilter_conntrack puts in an expectation it creates.

conntrackd's userspace helpers create expectations with nfexp_query(NFCT_Q_CREATE_UPDATE)
(conntrack-tools src/helpers.c cthelper_add_expect), and its sync commits them the same way. This
builds one expectation with every attribute a NATed one needs (class, CTA_EXPECT_NAT's direction
and tuple, the expectfn `nat-follow-master`), sends it in a network namespace of its own (where
its master does not exist: the kernel refuses it, which does not matter), and prints the
attributes the library actually sent, read with strace. It also prints what the libmnl builder
(nfexp_nlmsg_build) emits for the same object.

    sudo python3 tools/probe_libnfct_expect.py      (needs libnetfilter-conntrack3, strace, ip)

Measured on Debian 12 (libnetfilter-conntrack3 1.0.9-3, 2026-12-06): both paths send MASTER,
TUPLE, MASK, TIMEOUT only; CLASS, NAT and FN are dropped. So conntrackd's NATed expectations are
not translated (the lab's nat.sh conntrackd-ftp phase) and its sync commits in class 0 (pair.sh).
"""

from __future__ import annotations

import ctypes
import os
import re
import struct
import subprocess
import sys

NAMES = {1: "MASTER", 2: "TUPLE", 3: "MASK", 4: "TIMEOUT", 5: "ID", 6: "HELP_NAME", 7: "ZONE", 8: "FLAGS",
         9: "CLASS", 10: "NAT", 11: "FN"}  # enum ctattr_expect
# enum nf_conntrack_attr / nf_expect_attr (libnetfilter_conntrack.h)
ATTR_ORIG_IPV4_SRC, ATTR_ORIG_IPV4_DST, ATTR_ORIG_PORT_SRC, ATTR_ORIG_PORT_DST = 0, 1, 8, 9
ATTR_ORIG_L3PROTO, ATTR_ORIG_L4PROTO = 15, 17
ATTR_EXP_MASTER, ATTR_EXP_EXPECTED, ATTR_EXP_MASK, ATTR_EXP_TIMEOUT = 0, 1, 2, 3
ATTR_EXP_CLASS, ATTR_EXP_NAT_TUPLE, ATTR_EXP_NAT_DIR, ATTR_EXP_FN = 7, 8, 9, 10
NFCT_Q_CREATE_UPDATE, EXPECT = 7, 2
NLMSG_HDR, NFGEN_HDR = 16, 4


def attributes(msg: bytes) -> list[str]:
    out, off = [], NLMSG_HDR + NFGEN_HDR
    end = min(struct.unpack_from("I", msg, 0)[0], len(msg))
    while off + 4 <= end:
        length, kind = struct.unpack_from("HH", msg, off)
        if length < 4:
            break
        out.append(NAMES.get(kind & 0x7FFF, str(kind & 0x7FFF)))
        off += (length + 3) & ~3
    return out


def expectation(lib: ctypes.CDLL) -> int:
    def ct(src: int, dst: int, sport: int, dport: int) -> int:
        c = lib.nfct_new()
        lib.nfct_set_attr_u8(c, ATTR_ORIG_L3PROTO, 2)
        lib.nfct_set_attr_u32(c, ATTR_ORIG_IPV4_SRC, src)
        lib.nfct_set_attr_u32(c, ATTR_ORIG_IPV4_DST, dst)
        lib.nfct_set_attr_u8(c, ATTR_ORIG_L4PROTO, 6)
        lib.nfct_set_attr_u16(c, ATTR_ORIG_PORT_SRC, sport)
        lib.nfct_set_attr_u16(c, ATTR_ORIG_PORT_DST, dport)
        return c

    e = lib.nfexp_new()
    lib.nfexp_set_attr(e, ATTR_EXP_MASTER, ct(1, 2, 3, 4))
    lib.nfexp_set_attr(e, ATTR_EXP_EXPECTED, ct(5, 6, 0, 7))
    lib.nfexp_set_attr(e, ATTR_EXP_MASK, ct(0xFFFFFFFF, 0xFFFFFFFF, 0, 0xFFFF))
    lib.nfexp_set_attr_u32(e, ATTR_EXP_TIMEOUT, 300)
    lib.nfexp_set_attr_u32(e, ATTR_EXP_CLASS, 2)
    lib.nfexp_set_attr(e, ATTR_EXP_NAT_TUPLE, ct(9, 10, 11, 0))
    lib.nfexp_set_attr_u32(e, ATTR_EXP_NAT_DIR, 1)
    lib.nfexp_set_attr(e, ATTR_EXP_FN, ctypes.create_string_buffer(b"nat-follow-master"))
    return e


def load() -> ctypes.CDLL:
    lib = ctypes.CDLL("libnetfilter_conntrack.so.3")
    vp, u8, u16, u32 = ctypes.c_void_p, ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32
    for name, args, res in (("nfexp_new", [], vp), ("nfct_new", [], vp), ("nfct_open", [ctypes.c_int, u32], vp),
                            ("nfexp_set_attr", [vp, ctypes.c_int, vp], None),
                            ("nfexp_set_attr_u32", [vp, ctypes.c_int, u32], None),
                            ("nfct_set_attr_u8", [vp, ctypes.c_int, u8], None),
                            ("nfct_set_attr_u16", [vp, ctypes.c_int, u16], None),
                            ("nfct_set_attr_u32", [vp, ctypes.c_int, u32], None),
                            ("nfexp_nlmsg_build", [vp, vp], ctypes.c_int),
                            ("nfexp_query", [vp, ctypes.c_int, vp], ctypes.c_int)):
        getattr(lib, name).argtypes, getattr(lib, name).restype = args, res
    return lib


def sender() -> None:
    """Run under strace: the libnfnetlink path conntrackd takes."""
    lib = load()
    lib.nfexp_query(lib.nfct_open(EXPECT, 0), NFCT_Q_CREATE_UPDATE, expectation(lib))


def main() -> int:
    if sys.argv[1:] == ["--send"]:
        sender()
        return 0
    lib = load()
    buf = ctypes.create_string_buffer(4096)
    struct.pack_into("IHHII", buf, 0, NLMSG_HDR + NFGEN_HDR, 0, 0, 0, 0)
    lib.nfexp_nlmsg_build(buf, expectation(lib))
    print("set: MASTER TUPLE MASK TIMEOUT CLASS NAT FN")
    print("libmnl builder (nfexp_nlmsg_build):", " ".join(attributes(buf.raw)))
    ns = f"probe-nfct-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        r = subprocess.run(["ip", "netns", "exec", ns, "strace", "-e", "trace=sendto", "-e", "write=all",
                            sys.executable, __file__, "--send"],
                           capture_output=True, text=True)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    # strace's dump of the datagram: " | 00000  b8 00 00 00 ...  ascii |" lines after the sendto
    dump = "".join(m.group(1) for m in re.finditer(r"^ \| [0-9a-f]{5}  ((?:[0-9a-f]{2} {1,2}){1,16})", r.stderr, re.M))
    sent = bytes.fromhex(dump.replace(" ", ""))
    print("libnfnetlink path (nfexp_query, conntrackd's):", " ".join(attributes(sent)) if sent else r.stderr[-500:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
