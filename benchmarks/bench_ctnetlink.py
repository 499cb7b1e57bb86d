"""ctnetlink cost on this machine (root; builds its own alg-nl-bench-* namespaces).

Prints: expectations created per second (lean path, each ACK read and checked),
per-call master lookup with the lean layout vs pyroute2's conntrack API, and
encoding cost of one EXP_NEW with the lean packer vs pyroute2's NLA classes.

    sudo .venv/bin/python benchmarks/bench_ctnetlink.py [--n 2000]
"""

from __future__ import annotations

import argparse
import ctypes
import ipaddress as I
import os
import subprocess
import sys
import time
from pathlib import Path

from alg.expect import Expectation
from alg.kernel import ctnetlink as C
from alg.model import FlowTuple

LAB = str(Path(__file__).resolve().parents[1] / "tools" / "lab" / "netns.sh")
ENV = dict(os.environ, LAB_NS_CLIENT="alg-nl-bench-c", LAB_NS_FW="alg-nl-bench-f", LAB_NS_SERVER="alg-nl-bench-s")
HOLD = """
import socket, sys, time
if sys.argv[1] == "srv":
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", 21)); s.listen(8); print("ready", flush=True); c = s.accept(); time.sleep(600)
else:
    c = socket.create_connection(("10.0.2.2", 21), timeout=5); print(c.getsockname()[1], flush=True); time.sleep(600)
"""


def sh(cmd):
    subprocess.run(["bash", "-c", f"source {LAB}; {cmd}"], env=ENV, check=True, capture_output=True)


def setns(path):
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    assert libc.setns(fd, 0x40000000) == 0
    os.close(fd)


def per_call(fn, n):
    fn()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    n = ap.parse_args().n
    sh("lab_net_down >/dev/null 2>&1; lab_net_up tcp/21 >/dev/null; "
       "lab_fw iptables -t raw -A PREROUTING -i c1 -p tcp --dport 21 -j CT --helper ftp")
    procs = []
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        srv = subprocess.Popen(["ip", "netns", "exec", ENV["LAB_NS_SERVER"], sys.executable, "-c", HOLD, "srv"],
                               stdout=subprocess.PIPE, text=True)
        procs.append(srv)
        srv.stdout.readline()
        cli = subprocess.Popen(["ip", "netns", "exec", ENV["LAB_NS_CLIENT"], sys.executable, "-c", HOLD, "cli"],
                               stdout=subprocess.PIPE, text=True)
        procs.append(cli)
        m = FlowTuple(4, 6, I.ip_address("10.0.1.2"), I.ip_address("10.0.2.2"), int(cli.stdout.readline()), 21)
        time.sleep(0.2)
        setns(f"/run/netns/{ENV['LAB_NS_FW']}")
        from pyroute2 import Conntrack
        from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

        ctn = C.Ctnetlink()
        ref = ctn.conntrack(m)
        assert ref is not None, "master conntrack not found"

        def lean():
            ctn.conntrack(m)

        pr = Conntrack()
        tup = NFCTAttrTuple(saddr=str(m.src), daddr=str(m.dst), proto=6, sport=m.sport, dport=m.dport)
        assert pr.entry("get", tuple_orig=tup)
        lean_us = per_call(lean, n)
        pr_us = per_call(lambda: pr.entry("get", tuple_orig=tup), max(50, n // 10))
        reply_us = per_call(lambda: ctn.conntrack(
            FlowTuple(4, 6, I.ip_address("10.0.2.9"), m.dst, m.sport, 21)), n)  # miss both ways
        e = Expectation(helper="ftp", cls="ftp", class_id=0, l3=4, proto=6, src=m.src, dst=m.dst, sport=None,
                        dport=50000, master=m, timeout=300)
        enc_lean = per_call(lambda: C.pack_exp_new(e, m, seq=1), n)
        enc_pr = per_call(lambda: C.pyroute2_exp_new(e, m, seq=1), max(50, n // 10))
        ctn.flush()
        # the in-kernel ftp policy keeps 1 expectation per master: each create evicts the previous one
        t = time.perf_counter()
        for i in range(n):
            ctn.create(Expectation(helper="ftp", cls="ftp", class_id=0, l3=4, proto=6, src=m.src, dst=m.dst,
                                   sport=None, dport=20000 + i % 40000, master=m, timeout=300), m)
        rate = n / (time.perf_counter() - t)
        ctn.flush()
        print(f"expectation create (lean, ACK checked):     {rate:10.0f} /s  ({1e6 / rate:.1f} us each)")
        print(f"master lookup, lean CT_GET (orig hit):      {lean_us:10.1f} us/call")
        print(f"master lookup, lean miss orig+reply:        {reply_us:10.1f} us/call")
        print(f"master lookup, pyroute2 Conntrack.entry:    {pr_us:10.1f} us/call")
        print(f"EXP_NEW encode lean / pyroute2 NLA classes: {enc_lean:10.1f} / {enc_pr:.1f} us")
        print(f"added latency per queued packet that yields an expectation (lookup + create): "
              f"{lean_us + 1e6 / rate:.1f} us")
        pr.close()
        ctn.close()
    finally:
        for p in procs:
            p.kill()
            p.wait()
        ctypes.CDLL(None).setns(home, 0x40000000)
        sh("lab_net_down >/dev/null 2>&1; true")


if __name__ == "__main__":
    main()
