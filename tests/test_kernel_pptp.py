"""PPTP through alg on the host kernel: a real PPTP control exchange (TCP, cli -> srv:1723, across the fw
namespace) goes through alg's engine with its pptp helper; the expectations it decides are created in the
fw's kernel through alg's ctnetlink code, and GRE v1 packets of the call pass as RELATED both ways while
another call ID, and the call's own keys before alg acted, are dropped.

This host kernel has no nfnetlink_cthelper, so alg's daemon cannot register its helper here: as in
tools/probe_gre_expect.py the master gets the in-kernel irc helper (ctnetlink refuses an expectation whose
master has no helper; irc's class 0 holds 8), standing in for alg's userspace helper, whose path the lab
runs. The engine reads a capture of the exchange taken on the fw's client-side interface (as `alg replay` does).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from netns import CLIENT4, SERVER4, Net

pytestmark = pytest.mark.kernel
ROOT = Path(__file__).resolve().parent.parent
PNS_CALL, PAC_CALL, OTHER = 0x1234, 0x5678, 0x9999

# RFC 2637 §2: SCCRQ/SCCRP, then Outgoing-Call-Request/-Reply (result 1: connected); the client holds the
# control connection open while the GRE packets are sent
EXCHANGE = """
import socket, struct, sys, time
def msg(ctrl, size, body=b""):
    return struct.pack("!HHIHH", size, 1, 0x1A2B3C4D, ctrl, 0) + body.ljust(size - 12, b"\\0")
def read(c, n):
    got = b""
    while len(got) < n:
        got += c.recv(n - len(got))
    return got
pns, pac = int(sys.argv[2]), int(sys.argv[3])
if sys.argv[1] == "srv":
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", 1723)); s.listen(1); c, _ = s.accept()
    read(c, 156); c.sendall(msg(2, 156, b"\\x01\\x00\\x01"))
    read(c, 168); c.sendall(msg(8, 32, struct.pack("!HHB", pac, pns, 1)))
    time.sleep(60)
else:
    c = socket.create_connection((sys.argv[4], 1723), timeout=5)
    c.sendall(msg(1, 156, b"\\x01\\x00")); read(c, 156)
    c.sendall(msg(7, 168, struct.pack("!HH", pns, 1))); read(c, 32)
    print("call", flush=True); time.sleep(60)
"""


def _probe():
    spec = importlib.util.spec_from_file_location("probe_gre_expect", ROOT / "tools" / "probe_gre_expect.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _decide(pcap: str, helper: str = "pptp") -> list:
    """alg's engine (one helper, default policy) on the capture: the expectations it creates."""
    from alg.engine import Engine, make_slots
    from alg.plugins import load_plugins
    from alg.policy import default_policy
    from alg.replay import ReplayResult, replay_found

    host = load_plugins()
    policy = default_policy({n: c.spec for n, c in host.helpers.items()})
    engine = Engine(make_slots([policy.helpers[helper]], host.helpers), policy.core)
    return [e for _path, e in replay_found(engine, [pcap], ReplayResult())]


def test_pptp_call_gre_is_related_through_alg(kernel_ok: None) -> None:
    from alg.kernel.ctnetlink import Ctnetlink

    probe = _probe()
    with Net("alg-pptp") as net, tempfile.TemporaryDirectory(prefix="alg-pptp-") as tmp:
        net.fw("iptables", "-t", "raw", "-A", "PREROUTING", "-p", "tcp", "--dport", "1723", "-j", "CT",
               "--helper", "irc")
        for state, comment in (("RELATED", "gre-related"), ("ESTABLISHED", "gre-established")):
            net.fw("iptables", "-A", "FORWARD", "-p", "gre", "-m", "conntrack", "--ctstate", state,
                   "-m", "comment", "--comment", comment, "-j", "ACCEPT")
        net.fw("iptables", "-A", "FORWARD", "-p", "gre", "-m", "comment", "--comment", "gre-drop", "-j", "DROP")

        def send(ns: str, dst: str, key: int, n: int) -> None:
            net.run(ns, sys.executable, "-c", probe.SEND, dst, str(key), str(n))
            time.sleep(0.3)

        cap = net.capture("fw", f"{tmp}/pptp.pcap", iface="c1", bpf="tcp port 1723")
        net.popen("srv", sys.executable, "-c", EXCHANGE, "srv", str(PNS_CALL), str(PAC_CALL))
        time.sleep(0.5)
        client = net.popen("cli", sys.executable, "-c", EXCHANGE, "cli", str(PNS_CALL), str(PAC_CALL), SERVER4,
                           stdout=subprocess.PIPE, text=True)
        assert client.stdout.readline().strip() == "call"
        pcap = cap.stop()

        send("cli", SERVER4, PAC_CALL, 1)  # before alg acted: nothing expects the call's GRE
        assert probe.counter(net, "gre-drop") == 1 and probe.counter(net, "gre-related") == 0

        made = _decide(pcap)
        assert sorted((str(e.src), str(e.dst), e.dport) for e in made) == sorted(
            [(CLIENT4, SERVER4, PAC_CALL), (SERVER4, CLIENT4, PNS_CALL)])

        def create() -> None:
            with Ctnetlink() as nl:
                for e in made:
                    nl.create(e, e.master)
        probe.in_fw(net, create)
        listing = net.fw("conntrack", "-L", "expect").stdout
        assert listing.count("proto=47") == 2, listing

        send("cli", SERVER4, PAC_CALL, 3)
        send("srv", CLIENT4, PNS_CALL, 3)
        assert probe.counter(net, "gre-related") == 6, net.fw("conntrack", "-L", "-p", "gre").stdout
        assert probe.counter(net, "gre-drop") == 1
        send("cli", SERVER4, OTHER, 2)  # another call ID
        assert probe.counter(net, "gre-drop") == 3 and probe.counter(net, "gre-related") == 6
