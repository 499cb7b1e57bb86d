"""H.323 through alg on the host kernel: a real Q.931 exchange (TCP, cli -> srv:1720, across the fw
namespace) goes through alg's engine with its h323 helper; the expectations it decides from the callee's
Connect (h245Address, fastStart RTP/RTCP) are created in the fw's kernel through alg's ctnetlink code; the
H.245 connection and the RTP then pass as RELATED, while another port (TCP and UDP), and the H.245 port
before alg acted, are dropped.

This host kernel has no nfnetlink_cthelper, so alg's daemon cannot register its helper here: the master gets
the in-kernel sip helper (ctnetlink refuses an expectation whose master has no helper; sip's policy has the
classes alg's h245 and media map to, 0 and 1), standing in for alg's userspace helper, whose path the lab
runs. The engine reads a capture of the exchange taken on the fw's client-side interface (as `alg replay`).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time

import pytest

import h323_build as b
from netns import CLIENT4, SERVER4, Net
from test_kernel_pptp import _decide, _probe  # the engine on a capture; the fw's rule counters

pytestmark = pytest.mark.kernel
H245_PORT, RTP, OTHER = 4000, 5000, 4002

# one TPKT (RFC 1006: version, reserved, length of the whole) read from a connection, in both scripts
READ_TPKT = """
def read_tpkt(c):
    head = b""
    while len(head) < 4:
        head += c.recv(4 - len(head))
    body, n = b"", int.from_bytes(head[2:4], "big") - 4
    while len(body) < n:
        body += c.recv(n - len(body))
    return head + body
"""
# the callee (srv) accepts the call on 1720, answers the Setup with a Connect (hex in argv[2]) naming its
# H.245 address and fastStart media, and listens on the H.245 port and another one
EXCHANGE = """
import socket, sys, threading, time
""" + READ_TPKT + """
def serve(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(4)
    while True:
        c, _ = s.accept(); c.sendall(b"ok")
if sys.argv[1] == "srv":
    for port in (%d, %d):
        threading.Thread(target=serve, args=(port,), daemon=True).start()
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", 1720)); s.listen(1); c, _ = s.accept()
    read_tpkt(c); c.sendall(bytes.fromhex(sys.argv[2]))
    time.sleep(60)
else:
    c = socket.create_connection((sys.argv[3], 1720), timeout=5)
    c.sendall(bytes.fromhex(sys.argv[2])); read_tpkt(c)
    print("call", flush=True); time.sleep(60)
""" % (H245_PORT, OTHER)
CONNECT = "import socket, sys\ntry:\n    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1.5)" \
          ".recv(2); print('open')\nexcept OSError:\n    print('dropped')"
SEND_UDP = "import socket, sys\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n" \
           "for _ in range(3): s.sendto(b'\\x80' + bytes(19), (sys.argv[1], int(sys.argv[2])))"


def test_h245_and_fast_start_media_are_related_through_alg(kernel_ok: None) -> None:
    from alg.kernel.ctnetlink import Ctnetlink

    probe = _probe()
    counter, in_fw = probe.counter, probe.in_fw
    setup = b.q931(b.setup()).hex()
    connect = b.q931(b.connect(h245=(SERVER4, H245_PORT), fast=[b.olc(control=(SERVER4, RTP + 1))]), 0x07).hex()
    with Net("alg-h323") as net, tempfile.TemporaryDirectory(prefix="alg-h323-") as tmp:
        net.fw("iptables", "-t", "raw", "-A", "PREROUTING", "-p", "tcp", "--dport", "1720", "-j", "CT",
               "--helper", "sip")
        for args, comment in ((["-m", "conntrack", "--ctstate", "RELATED"], "h323-related"),
                              (["-m", "conntrack", "--ctstate", "ESTABLISHED"], "h323-established"),
                              (["-p", "tcp", "--dport", "1720"], "q931"),
                              ([], "h323-drop")):
            net.fw("iptables", "-A", "FORWARD", *args, "-m", "comment", "--comment", comment,
                   "-j", "DROP" if comment == "h323-drop" else "ACCEPT")

        def connect_to(port: int) -> str:
            return net.run("cli", sys.executable, "-c", CONNECT, SERVER4, str(port)).stdout.strip()

        cap = net.capture("fw", f"{tmp}/h323.pcap", iface="c1", bpf="tcp port 1720")
        net.popen("srv", sys.executable, "-c", EXCHANGE, "srv", connect)
        time.sleep(0.5)
        client = net.popen("cli", sys.executable, "-c", EXCHANGE, "cli", setup, SERVER4,
                           stdout=subprocess.PIPE, text=True)
        assert client.stdout.readline().strip() == "call"
        pcap = cap.stop()

        assert connect_to(H245_PORT) == "dropped"  # before alg acted: nothing expects the H.245 connection
        dropped = counter(net, "h323-drop")
        assert dropped >= 1 and counter(net, "h323-related") == 0

        made = _decide(pcap, "h323")
        assert sorted((e.cls, e.proto, str(e.src), str(e.dst), e.dport) for e in made) == [
            ("h245", 6, CLIENT4, SERVER4, H245_PORT), ("media", 17, CLIENT4, SERVER4, RTP),
            ("media", 17, CLIENT4, SERVER4, RTP + 1)]

        def create() -> None:
            with Ctnetlink() as nl:
                for e in made:
                    nl.create(e, e.master)
        in_fw(net, create)
        listing = net.fw("conntrack", "-L", "expect").stdout
        assert listing.count("dport=") >= 3 and f"dport={H245_PORT}" in listing, listing

        assert connect_to(H245_PORT) == "open"
        related = counter(net, "h323-related")
        assert related >= 1
        net.run("cli", sys.executable, "-c", SEND_UDP, SERVER4, str(RTP))
        time.sleep(0.3)
        assert counter(net, "h323-related") >= related + 1, net.fw("conntrack", "-L").stdout
        related = counter(net, "h323-related")
        dropped = counter(net, "h323-drop")
        assert connect_to(OTHER) == "dropped"  # a port nobody named
        net.run("cli", sys.executable, "-c", SEND_UDP, SERVER4, str(RTP + 2))
        time.sleep(0.3)
        assert counter(net, "h323-drop") >= dropped + 4 and counter(net, "h323-related") == related


# both ends of a scripted call: each sends its messages (hex, in argv) in turn over Q.931 (tcp/1720) and
# RAS (udp/1719); the caller's RAS message first, the gatekeeper's answer on the same flow
DIFF_EXCHANGE = """
import socket, sys, time
""" + READ_TPKT + """
side, msgs, ras = sys.argv[1], sys.argv[2].split(","), bytes.fromhex(sys.argv[3])
if side == "srv":
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", 1719))
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", 1720)); s.listen(1); c, _ = s.accept()
    read_tpkt(c)
    for m in msgs:
        c.sendall(bytes.fromhex(m)); time.sleep(0.1)
    _, peer = u.recvfrom(4096); u.sendto(ras, peer)
    time.sleep(60)
else:
    c = socket.create_connection((sys.argv[4], 1720), timeout=5)
    c.sendall(bytes.fromhex(msgs[0])); read_tpkt(c)
    for m in msgs[1:]:
        time.sleep(0.2); c.sendall(bytes.fromhex(m))
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(5)
    u.sendto(ras, (sys.argv[4], 1719)); u.recvfrom(4096)
    print("done", flush=True); time.sleep(60)
"""


def test_the_kernels_h323_helpers_expect_what_alg_decides(kernel_ok: None) -> None:
    """The in-kernel Q.931 and RAS helpers (nf_conntrack_h323) as a differential oracle: the same call
    (Setup with h245Address, a Connect with h245Address and fastStart, an OpenLogicalChannel tunnelled in a
    Facility; an RRQ and its gatekeeper's ACF) gives the kernel the expectations alg's engine decides."""
    third = "10.0.2.3"
    caller = [b.q931(b.setup(h245=(CLIENT4, 4000))),
              b.q931(b.facility(tunnel=[b.request_olc(control=(CLIENT4, 6001))], reason=3), 0x62)]
    callee = [b.q931(b.connect(h245=(SERVER4, 4100), fast=[b.olc(media=(SERVER4, 5000), control=(SERVER4, 5001))]),
                     0x07)]
    rrq, acf = b.rrq([(CLIENT4, 1720)]), b.acf((third, 1720))
    with Net("alg-h323k") as net, tempfile.TemporaryDirectory(prefix="alg-h323k-") as tmp:
        for proto, port, helper in (("tcp", 1720, "Q.931"), ("udp", 1719, "RAS")):
            net.fw("iptables", "-t", "raw", "-A", "PREROUTING", "-p", proto, "--dport", str(port), "-j", "CT",
                   "--helper", helper)
        cap = net.capture("fw", f"{tmp}/h323.pcap", iface="c1", bpf="tcp port 1720 or udp port 1719")
        net.popen("srv", sys.executable, "-c", DIFF_EXCHANGE, "srv", ",".join(m.hex() for m in callee), acf.hex())
        time.sleep(0.5)
        client = net.popen("cli", sys.executable, "-c", DIFF_EXCHANGE, "cli", ",".join(m.hex() for m in caller),
                           rrq.hex(), SERVER4, stdout=subprocess.PIPE, text=True)
        assert client.stdout.readline().strip() == "done"
        time.sleep(0.3)
        pcap = cap.stop()
        listing = net.fw("conntrack", "-L", "expect").stdout
        kernel = set()
        for line in listing.splitlines():
            fields = dict(f.split("=", 1) for f in line.split() if "=" in f and not f.startswith("mask"))
            if "proto" in fields:  # the first src/dst/dport of a line are the expected tuple's
                kernel.add((int(fields["proto"]), line.split("src=")[1].split()[0],
                            line.split("dst=")[1].split()[0], int(line.split("dport=")[1].split()[0])))
        alg_made = {(e.proto, str(e.src) if e.src else None, str(e.dst), e.dport) for e in _decide(pcap, "h323")}
        assert alg_made == {(6, SERVER4, CLIENT4, 4000), (6, CLIENT4, SERVER4, 4100), (17, CLIENT4, SERVER4, 5000),
                            (17, CLIENT4, SERVER4, 5001), (17, SERVER4, CLIENT4, 6000), (17, SERVER4, CLIENT4, 6001),
                            (6, SERVER4, CLIENT4, 1720), (6, CLIENT4, third, 1720)}
        assert kernel == alg_made, listing
