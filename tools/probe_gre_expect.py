#!/usr/bin/env python3
"""Probe: can a userspace helper make PPTP's GRE data flow RELATED? (needs root; host kernel)

What a PPTP helper must create (nf_conntrack_pptp.c's exp_gre): once the
control connection (tcp/1723) has set up a call, two expectations, one per
direction, for GRE version 1 packets keyed by the call IDs: `gre PNS ->
PAC, key = PAC's call ID` and `gre PAC -> PNS, key = PNS's call ID`.
A userspace helper has ctnetlink's EXP_NEW, whose tuple carries the GRE keys
where TCP/UDP carry ports (CTA_PROTO_SRC_PORT / DST_PORT). The kernel's GRE
tracker reads the destination key from the packet's call ID and the source
key from a "keymap" that only nf_conntrack_pptp fills (nf_ct_gre_keymap_add,
no netlink interface): for a flow no kernel pptp helper saw, the source key
is 0, so a userspace expectation must leave it out (mask 0).

The probe, in network namespaces (tests/netns.py: cli 10.0.1.2, fw, srv
10.0.2.2): a TCP connection cli -> srv:6667 gets the in-kernel irc helper in
the fw (ctnetlink refuses an expectation whose master has no helper; the class
must exist in its policy and allow two: irc's class 0, 8 expectations; ftp's
1 would evict the first), standing in for alg's userspace pptp helper. The
fw's FORWARD drops GRE unless RELATED or ESTABLISHED, each rule counting.
Through alg.kernel.ctnetlink (what alg's daemon uses) it creates
`gre 10.0.1.2 -> 10.0.2.2, src key *, dst key 0x1234` and the reverse with
key 0x5678, then sends GRE v1 (PPTP, RFC 2637 §4.1) packets both ways: with
the expected keys (they must pass as RELATED), and with another call ID (it
must be dropped). Prints one line per finding and exits 0 when the
expectations are created and used as described.
"""

from __future__ import annotations

import ipaddress
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from netns import CLIENT4, SERVER4, Net  # noqa: E402

GRE = 47
SEND = """
import socket, struct, sys
dst, call_id, n = sys.argv[1], int(sys.argv[2], 0), int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 47)
ppp = b"\\xff\\x03\\x00\\x21" + b"\\x45" + b"\\x00" * 19  # PPP, IPv4: a stand-in payload
for _ in range(n):
    # RFC 2637 §4.1 enhanced GRE: K bit and version 1 (0x2001), protocol PPP (0x880B), payload length, call ID
    s.sendto(struct.pack("!HHHH", 0x2001, 0x880B, len(ppp), call_id) + ppp, (dst, 0))
"""
HOLD = """
import socket, sys, time
if sys.argv[1] == "srv":
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", 6667)); s.listen(1); c = s.accept(); time.sleep(30)
else:
    c = socket.create_connection((sys.argv[2], 6667), timeout=5); print(c.getsockname()[1], flush=True); time.sleep(30)
"""


def counter(net: Net, comment: str) -> int:
    out = net.fw("iptables", "-nvxL", "FORWARD").stdout
    return sum(int(line.split()[0]) for line in out.splitlines() if f"/* {comment} */" in line)


def in_fw(net: Net, fn):
    """Run fn() with this thread in the fw namespace (its netlink socket opened there)."""
    import ctypes
    import os
    libc = ctypes.CDLL(None, use_errno=True)
    orig = os.open("/proc/self/ns/net", os.O_RDONLY)
    fd = os.open(f"/run/netns/{net.names['fw']}", os.O_RDONLY)
    try:
        if libc.setns(fd, 0x40000000) != 0:
            raise OSError(ctypes.get_errno(), "setns")
        return fn()
    finally:
        libc.setns(orig, 0x40000000)
        os.close(fd)
        os.close(orig)


def main() -> int:
    from alg.kernel.ctnetlink import Ctnetlink
    from alg.model import TCP, FlowTuple

    cli, srv = ipaddress.ip_address(CLIENT4), ipaddress.ip_address(SERVER4)
    ok = True
    with Net("alg-gre") as net:
        net.fw("iptables", "-t", "raw", "-A", "PREROUTING", "-p", "tcp", "--dport", "6667", "-j", "CT",
               "--helper", "irc")
        for state, comment in (("RELATED", "gre-related"), ("ESTABLISHED", "gre-established")):
            net.fw("iptables", "-A", "FORWARD", "-p", "gre", "-m", "conntrack", "--ctstate", state,
                   "-m", "comment", "--comment", comment, "-j", "ACCEPT")
        net.fw("iptables", "-A", "FORWARD", "-p", "gre", "-m", "comment", "--comment", "gre-drop", "-j", "DROP")
        net.popen("srv", sys.executable, "-c", HOLD, "srv")
        time.sleep(0.5)
        holder = net.popen("cli", sys.executable, "-c", HOLD, "cli", SERVER4, stdout=subprocess.PIPE, text=True)
        sport = int(holder.stdout.readline())
        master = FlowTuple(4, TCP, cli, srv, sport, 6667)

        def exp(src, dst, key):
            return SimpleNamespace(l3=4, proto=GRE, src=src, dst=dst, sport=None, dport=key, src_prefix=None,
                                   timeout=60, helper="irc", flags=0, class_id=0, assign_helper=False)

        def create():
            with Ctnetlink() as nl:
                nl.create(exp(cli, srv, 0x1234), master)
                nl.create(exp(srv, cli, 0x5678), master)
        try:
            in_fw(net, create)
            print("EXP_NEW gre (src key masked out, dst key = call ID): created, both directions")
        except Exception as e:  # noqa: BLE001 - the finding is the error itself
            print(f"EXP_NEW gre: refused: {e}")
            return 1
        listing = net.fw("conntrack", "-L", "expect").stdout
        print("  " + listing.strip().replace("\n", "\n  "))
        r0, d0 = counter(net, "gre-related"), counter(net, "gre-drop")
        net.cli(sys.executable, "-c", SEND, SERVER4, "0x1234", "3")
        net.srv(sys.executable, "-c", SEND, CLIENT4, "0x5678", "3")
        time.sleep(0.3)
        r1, d1 = counter(net, "gre-related"), counter(net, "gre-drop")
        passed = r1 - r0 == 6 and d1 == d0
        ok &= passed
        print(f"GRE v1 with the expected call IDs, 3 each way: {r1 - r0} RELATED, {d1 - d0} dropped"
              f" -> {'pass' if passed else 'FAIL'}")
        net.cli(sys.executable, "-c", SEND, SERVER4, "0x9999", "2")
        time.sleep(0.3)
        d2 = counter(net, "gre-drop")
        ok &= d2 - d1 == 2
        print(f"GRE v1 with another call ID: {d2 - d1} of 2 dropped -> {'pass' if d2 - d1 == 2 else 'FAIL'}")
        cts = net.fw("conntrack", "-L", "-p", "gre").stdout
        print("  " + cts.strip().replace("\n", "\n  "))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
