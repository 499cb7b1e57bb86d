"""Added latency per queued packet and packets/s through `alg run` (root, host kernel).

A UDP echo across a firewall namespace; the requests go to port 5060 and are
queued to alg (--no-cthelper, an NFQUEUE rule) where the SIP helper parses a
real OPTIONS request; the replies are not queued. Prints the round trip with
and without alg, so the difference is what one queued packet costs.

    sudo .venv/bin/python benchmarks/bench_daemon.py [--n 3000]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from netns import CLIENT4, SERVER4, Net  # noqa: E402

ECHO = """import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("{ip}", 5060))
while True:
    d, a = s.recvfrom(4096); s.sendto(d, a)
"""
PING = """import socket, time, statistics, sys
msg = (b"OPTIONS sip:bob@{srv} SIP/2.0\\r\\nVia: SIP/2.0/UDP {cli}:5070;branch=z9hG4bK1\\r\\n"
       b"From: <sip:alice@{cli}>;tag=1\\r\\nTo: <sip:bob@{srv}>\\r\\nCall-ID: bench@{cli}\\r\\n"
       b"CSeq: 1 OPTIONS\\r\\nContent-Length: 0\\r\\n\\r\\n")
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("{cli}", 5070)); s.settimeout(2)
rtt = []
t0 = time.perf_counter()
for _ in range({n}):
    t = time.perf_counter(); s.sendto(msg, ("{srv}", 5060)); s.recv(4096); rtt.append(time.perf_counter() - t)
total = time.perf_counter() - t0
print(statistics.median(rtt) * 1e6, {n} / total)
"""


def ping(net: Net, n: int) -> tuple[float, float]:
    out = net.cli(sys.executable, "-c", PING.format(srv=SERVER4, cli=CLIENT4, n=n), timeout=120).stdout.split()
    return float(out[0]), float(out[1])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=3000)
    n = ap.parse_args().n
    with Net(f"alg-bd{os.getpid() % 100:02d}") as net, tempfile.TemporaryDirectory() as tmp:
        echo = net.popen("srv", sys.executable, "-c", ECHO.format(ip=SERVER4))
        time.sleep(0.5)
        base = ping(net, n)
        Path(tmp, "sip.toml").write_text('helper = "sip"\nqueue = 9\nprotocols = ["udp"]\n')
        Path(tmp, "alg.toml").write_text(f'[core]\nstatus_socket = "{tmp}/s"\n')
        # conntrack on, as under nfnetlink_cthelper: alg looks each flow's conntrack up (cached)
        net.fw("iptables", "-A", "FORWARD", "-p", "udp", "--dport", "5060", "-m", "conntrack", "--ctstate",
               "NEW,ESTABLISHED", "-j", "NFQUEUE", "--queue-num", "9")
        daemon = net.popen("fw", sys.executable, "-m", "alg", "run", "--no-cthelper", "--policy", f"{tmp}/sip.toml",
                           "--policy", f"{tmp}/alg.toml")
        time.sleep(1.5)
        try:
            with_alg = ping(net, n)
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(10)
            echo.kill()
    print(f"UDP round trip, {n} SIP OPTIONS requests, one at a time:")
    print(f"  without alg: median {base[0]:8.1f} us  ({base[1]:8.0f} requests/s)")
    print(f"  through alg: median {with_alg[0]:8.1f} us  ({with_alg[1]:8.0f} requests/s)")
    print(f"  added per queued packet: {with_alg[0] - base[0]:.1f} us (decode + SIP parse + verdict, no expectation)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
