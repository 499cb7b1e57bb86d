"""Host-kernel tier: alg's own NFQUEUE verdict, with an expectation attached.

The first packet of a flow waits in the queue while its conntrack is
unconfirmed: ctnetlink cannot name it as a master yet (ENOENT), but an
expectation attached to the verdict (NFQA_EXP beside an NFQA_CT) is made on
the packet's own conntrack. Here the queued packet is the SYN of a
connection that carries the in-kernel ftp helper. On this host kernel the
attachment is ignored for such a master (no expectation appears, no error:
the daemon creates every expectation again over ctnetlink after the verdict);
with a userspace helper's master in the lab VM it is made (discovery.sh).
What must hold everywhere: the verdict lets the packet through."""

from __future__ import annotations

import subprocess
import sys

import pytest
from netns import CLIENT4, SERVER4, Net

from alg.kernel.nfqueue import NFQA_CT, NFQA_EXP, NFQA_VERDICT_HDR, pack_verdict
from alg.kernel.nlmsg import iter_messages, parse_attrs

pytestmark = pytest.mark.kernel

QUEUE_ONE = f"""
import ipaddress as I, sys
from alg.expect import Expectation
from alg.kernel.ctnetlink import exp_body
from alg.kernel.nfqueue import QueueSet
from alg.model import FlowTuple
qs = QueueSet()
done = []
def on_packet(pkt):
    m = FlowTuple(4, 6, I.ip_address("{CLIENT4}"), I.ip_address("{SERVER4}"), 0, 21)
    e = Expectation(helper="ftp", cls="ftp", class_id=0, l3=4, proto=6, src=I.ip_address("{SERVER4}"),
                    dst=I.ip_address("{CLIENT4}"), sport=None, dport=50123, master=m, timeout=300)
    qs.verdict(9, pkt, True, exp_body(e, None) if sys.argv[1] == "attach" else b"")
    done.append(1)
qs.bind(9, 16, on_packet)
print("ready", flush=True)
while not done:
    qs.service(qs.fds()[0])
"""


def test_pack_verdict_layout() -> None:
    msg = pack_verdict(21, 7, True, b"\x08\x00\x07\x00\x00\x00\x01\x2c")
    (typ, _f, _s, payload), = list(iter_messages(msg))
    assert typ == (3 << 8) | 1 and payload[2:4] == (21).to_bytes(2, "big")
    a = parse_attrs(payload, 4)
    assert a[NFQA_VERDICT_HDR] == (1).to_bytes(4, "big") + (7).to_bytes(4, "big")
    assert a[NFQA_CT] == b"" and a[NFQA_EXP] == b"\x08\x00\x07\x00\x00\x00\x01\x2c"
    assert NFQA_EXP not in parse_attrs(pack_verdict(21, 7, False)[20:])


@pytest.mark.parametrize("mode", ["attach", "plain"])
def test_our_verdict_passes_the_first_packet(kernel_ok: None, mode: str) -> None:
    with Net(f"alg-vq{mode[0]}") as net:
        net.fw("iptables", "-t", "raw", "-A", "PREROUTING", "-p", "tcp", "--dport", "21", "-j", "CT", "--helper", "ftp")
        net.fw("iptables", "-A", "FORWARD", "-p", "tcp", "--dport", "21", "--syn", "-j", "NFQUEUE", "--queue-num", "9")
        srv = net.popen("srv", sys.executable, "-c", "import socket,time; s=socket.create_server(('', 21)); "
                        "c=s.accept(); time.sleep(5)")
        q = net.popen("fw", sys.executable, "-c", QUEUE_ONE, mode, stdout=subprocess.PIPE, text=True)
        try:
            assert q.stdout.readline().strip() == "ready"
            net.cli(sys.executable, "-c", f"import socket; socket.create_connection(('{SERVER4}', 21), timeout=5)")
            q.wait(timeout=10)
            established = net.fw("conntrack", "-L", "-p", "tcp", "--dport", "21").stdout
        finally:
            for p in (q, srv):
                p.kill()
                p.wait()
    assert q.returncode == 0 and "[ASSURED]" in established, established  # the handshake went through
