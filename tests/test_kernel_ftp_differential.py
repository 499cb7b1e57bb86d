"""Differential test: the in-kernel ftp helper is the oracle for helpers/ftp.py.

Real FTP transfers (vsftpd server, curl client; PASV, EPSV, PORT, EPRT; IPv4
and IPv6) cross a firewall namespace whose raw table gives the control flow the
kernel's helper (`CT --helper ftp`). `conntrack -E expect` (its [NEW] events) in the fw
records every expectation the kernel creates (they vanish once the data
connection uses them); tcpdump on the fw records the traffic. `alg replay
--format json` on that capture must derive exactly the kernel's expectations:
tuple, mask, master, class and helper (the timeout loosely).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from netns import SERVER4, SERVER6, Net

pytestmark = pytest.mark.kernel

VSFTPD_CONF = """listen=NO
listen_ipv6=YES
background=NO
anonymous_enable=YES
local_enable=NO
write_enable=NO
anon_root={root}
no_anon_password=YES
pasv_enable=YES
port_enable=YES
connect_from_port_20=NO
pasv_min_port=40000
pasv_max_port=40100
seccomp_sandbox=NO
secure_chroot_dir=/var/run/vsftpd/empty
xferlog_enable=NO
"""

S6 = f"[{SERVER6}]"
TRANSFERS = [
    ["curl", "-sS", "--disable-epsv", "-o", "/dev/null", f"ftp://{SERVER4}/f.bin"],            # PASV / 227
    ["curl", "-sS", "-o", "/dev/null", f"ftp://{SERVER4}/f.bin"],                              # EPSV / 229 v4
    ["curl", "-sS", "-P", "-", "--disable-eprt", "-o", "/dev/null", f"ftp://{SERVER4}/f.bin"],  # PORT
    ["curl", "-sS", "-P", "-", "-o", "/dev/null", f"ftp://{SERVER4}/f.bin"],                   # EPRT |1|
    ["curl", "-sS", "-g", "-o", "/dev/null", f"ftp://{S6}/f.bin"],                             # EPSV v6
    ["curl", "-sS", "-g", "-P", "-", "-o", "/dev/null", f"ftp://{S6}/f.bin"],                  # EPRT |2|
]

FIELD = re.compile(r"([\w-]+)=(\S+)")


def parse_kernel(line: str) -> dict | None:
    """One `conntrack -E expect -o extended` line -> the fields alg's JSON has."""
    if "[NEW]" not in line:
        return None
    pairs = FIELD.findall(line)
    # the names repeat (sport/dport after src, mask-src and master-src): walk in order
    out: dict = {"mask": {}, "master": {}}
    section = "tuple"
    for k, v in pairs:
        if k in ("src", "dst"):
            section = "tuple"
        elif k.startswith("mask-"):
            section, k = "mask", k[5:]
        elif k.startswith("master-"):
            section, k = "master", k[7:]
        if section == "tuple" and k in ("src", "dst", "sport", "dport"):
            out[k] = v
        elif section == "mask" and k in ("src", "dst", "sport", "dport"):
            out["mask"][k] = v
        elif section == "master" and k in ("src", "dst", "sport", "dport"):
            out["master"][k] = v
        if k in ("class", "helper", "proto"):
            out[k] = v
    m = re.match(r"\s*\[NEW\]\s+(\d+)", line)
    out["timeout"] = int(m.group(1)) if m else None
    return out


def normalise_alg(e: dict) -> dict:
    mask = e["mask"]
    return {
        "src": e["src"], "dst": e["dst"],
        "sport": str(e["sport"] if e["sport"] is not None else 0), "dport": str(e["dport"]),
        "mask": {k: str(mask[k]) for k in ("src", "dst", "sport", "dport")},
        "master": {k: str(e["master"][k]) for k in ("src", "dst", "sport", "dport")},
        "helper": e["helper"],
    }


def normalise_kernel(k: dict) -> dict:
    return {
        "src": k["src"], "dst": k["dst"], "sport": k["sport"], "dport": k["dport"],
        "mask": {x: k["mask"][x] for x in ("src", "dst", "sport", "dport")},
        "master": dict(k["master"]),
        "helper": k.get("helper", "ftp"),
    }


def test_kernel_ftp_helper_equals_replay(kernel_ok: None) -> None:
    net = Net(f"alg-ftp-{os.getpid() % 100:02d}")
    with net, tempfile.TemporaryDirectory(prefix="alg-ftp-") as tmp:
        root = Path(tmp) / "pub"
        root.mkdir()
        (root / "f.bin").write_bytes(os.urandom(20000))
        os.chmod(tmp, 0o755)
        os.chmod(root, 0o755)
        os.chmod(root / "f.bin", 0o644)
        conf = Path(tmp) / "vsftpd.conf"
        conf.write_text(VSFTPD_CONF.format(root=root))
        for ipt in ("iptables", "ip6tables"):
            net.fw(ipt, "-t", "raw", "-A", "PREROUTING", "-p", "tcp", "--dport", "21", "-j", "CT", "--helper", "ftp")
        net.popen("srv", "vsftpd", str(conf))
        events = Path(tmp) / "expect.txt"
        with events.open("w") as ev:
            net.popen("fw", "stdbuf", "-oL", "conntrack", "-E", "expect", "-o", "extended", stdout=ev)
            cap = net.capture("fw", str(Path(tmp) / "fw.pcap"), iface="c1", bpf="tcp")
            for _ in range(50):  # vsftpd up?
                if net.cli("bash", "-c", f"exec 3<>/dev/tcp/{SERVER4}/21", check=False).returncode == 0:
                    break
                time.sleep(0.1)
            for argv in TRANSFERS:
                net.cli(*argv, timeout=20)
            time.sleep(0.3)
            pcap = cap.stop()
        raw = events.read_text()
        kernel = [k for k in map(parse_kernel, raw.splitlines()) if k]
        out = subprocess.run([sys.executable, "-m", "alg", "replay", "--format", "json", "--helper", "ftp", pcap],
                             check=True, capture_output=True, text=True).stdout
        ours = [json.loads(line) for line in out.splitlines()]
    assert len(kernel) >= len(TRANSFERS), raw
    key = lambda d: json.dumps(d, sort_keys=True)  # noqa: E731
    assert sorted(map(key, map(normalise_alg, ours))) == sorted(map(key, map(normalise_kernel, kernel)))
    for e in ours:
        assert e["class"] == 0 or e["class"] in ("default", "0")
        assert abs(e["timeout"] - 300) <= 2
    for k in kernel:
        assert k.get("class", "0") == "0"
        assert k["timeout"] is not None and 290 <= k["timeout"] <= 300
