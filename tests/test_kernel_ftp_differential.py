"""Differential test: the in-kernel ftp helper is the oracle for helpers/ftp.py.

Real FTP transfers (vsftpd server, curl client; PASV, EPSV, PORT, EPRT; IPv4
and IPv6) cross a firewall namespace whose raw table gives the control flow the
kernel's helper (`CT --helper ftp`). `conntrack -E expect` (its [NEW] events) in the fw
records every expectation the kernel creates (they vanish once the data
connection uses them); tcpdump on the fw records the traffic. `alg replay
--format json` on that capture must derive exactly the kernel's expectations:
tuple, mask, master, class id and helper, and a timeout within 2 s of the
kernel's (its event reports the time left when it was sent).

Then commands the helpers must refuse, each on its own control connection
(source port fixed, so the master tells them apart): a PORT naming a third
host, PORT with port 0, an IPv4 PORT on an IPv6 control connection, and a
number above 255. Where the kernel's helper does create an expectation and
alg does not, `PROBES` says so and why (the kernel reads each number without
a range check).
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

from netns import SERVER4, SERVER6, Net, wait_until_quiet

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
pasv_max_port={pasv_max_port}
seccomp_sandbox=NO
secure_chroot_dir={empty}
xferlog_enable=NO
"""


def serve_one_file(tmp: str, size: int, pasv_ports: int = 101) -> Path:
    """An anonymous vsftpd set-up in ``tmp`` serving ``pub/f.bin`` of ``size`` random
    bytes; returns its config file. The chroot directory vsftpd insists on is made
    here too: /run/vsftpd/empty exists only where systemd-tmpfiles has run."""
    root, empty = Path(tmp) / "pub", Path(tmp) / "empty"
    root.mkdir()
    empty.mkdir()
    (root / "f.bin").write_bytes(os.urandom(size))
    for p in (tmp, root, empty):
        os.chmod(p, 0o755)
    os.chmod(root / "f.bin", 0o644)
    conf = Path(tmp) / "vsftpd.conf"
    conf.write_text(VSFTPD_CONF.format(root=root, empty=empty, pasv_max_port=40000 + pasv_ports - 1))
    return conf

S6 = f"[{SERVER6}]"
TRANSFERS = [
    ["curl", "-sS", "--disable-epsv", "-o", "/dev/null", f"ftp://{SERVER4}/f.bin"],            # PASV / 227
    ["curl", "-sS", "-o", "/dev/null", f"ftp://{SERVER4}/f.bin"],                              # EPSV / 229 v4
    ["curl", "-sS", "-P", "-", "--disable-eprt", "-o", "/dev/null", f"ftp://{SERVER4}/f.bin"],  # PORT
    ["curl", "-sS", "-P", "-", "-o", "/dev/null", f"ftp://{SERVER4}/f.bin"],                   # EPRT |1|
    ["curl", "-sS", "-g", "-o", "/dev/null", f"ftp://{S6}/f.bin"],                             # EPSV v6
    ["curl", "-sS", "-g", "-P", "-", "-o", "/dev/null", f"ftp://{S6}/f.bin"],                  # EPRT |2|
]

PROBE_CLIENT = """
import socket, sys
host, sport, command = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()
family = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(family, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", sport))
s.settimeout(3)
s.connect((host, 21))
f = s.makefile("rb")
def reply():
    try:
        line = f.readline()
        while line[3:4] == b"-":
            line = f.readline()
        return line
    except OSError:  # a server that does not answer a refused command
        return b"(no answer)\\n"
reply()
for c in (b"USER anonymous", b"PASS x", command, b"QUIT"):
    s.sendall(c + b"\\r\\n")  # one command, one segment
    sys.stdout.write(reply().decode(errors="replace"))
"""

# (server, client source port, command, what the kernel's helper creates: None, or (dst, dport) where
# alg deliberately does not)
PROBES = [
    (SERVER4, 41001, "PORT 10,0,9,9,156,64", None),   # a third host: the PORT-bounce defence, both refuse
    (SERVER4, 41002, "PORT 1000,0,1,2,4,1", None),    # 1000 wraps to 232.0.1.2 in the kernel: not the sender
    # 266 = 0x10a: the kernel keeps the low byte, 10.0.1.2 (the sender): it opens port 1025; alg refuses a
    # number above 255 (RFC 959: 8-bit fields) as malformed
    (SERVER4, 41003, "PORT 266,0,1,2,4,1", ("10.0.1.2", 1025)),
    # port 0: the kernel expects tcp server:* -> 10.0.1.2:0 (measured on 6.18; no port check for PORT,
    # unlike EPRT/229's get_port); alg refuses it: a flow to port 0 is not a data connection
    (SERVER4, 41004, "PORT 10,0,1,2,0,0", ("10.0.1.2", 0)),
    (SERVER6, 41005, "PORT 10,0,1,2,156,64", None),   # IPv4 PORT on an IPv6 control connection
    (SERVER6, 41006, "EPRT |1|10.0.1.2|40000|", None),  # EPRT naming IPv4 on IPv6
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
        conf = serve_one_file(tmp, 20000)
        for ipt in ("iptables", "ip6tables"):
            net.fw(ipt, "-t", "raw", "-A", "PREROUTING", "-p", "tcp", "--dport", "21", "-j", "CT", "--helper", "ftp")
        net.popen("srv", "vsftpd", str(conf))
        events = Path(tmp) / "expect.txt"
        with events.open("w") as ev:
            net.watch_expectations("fw", ev)
            cap = net.capture("fw", str(Path(tmp) / "fw.pcap"), iface="c1", bpf="tcp")
            for _ in range(50):  # vsftpd up?
                if net.cli("bash", "-c", f"exec 3<>/dev/tcp/{SERVER4}/21", check=False).returncode == 0:
                    break
                time.sleep(0.1)
            for argv in TRANSFERS:
                net.cli(*argv, timeout=20)
            for server, sport, command, _ in PROBES:
                net.cli("python3", "-c", PROBE_CLIENT, server, str(sport), command, timeout=20)
            wait_until_quiet(events)
            pcap = cap.stop()
        raw = events.read_text()
        kernel = [k for k in map(parse_kernel, raw.splitlines()) if k]
        out = subprocess.run([sys.executable, "-m", "alg", "replay", "--format", "json", "--helper", "ftp", pcap],
                             check=True, capture_output=True, text=True).stdout
        ours = [json.loads(line) for line in out.splitlines()]
    from alg.plugins import load_plugins
    from alg.policy import default_policy
    host = load_plugins()
    ftp = default_policy({n: c.spec for n, c in host.helpers.items()}).helpers["ftp"]
    probe_ports = {str(p[1]) for p in PROBES}
    k_probe = [k for k in kernel if k["master"]["sport"] in probe_ports]
    a_probe = [e for e in ours if str(e["master"]["sport"]) in probe_ports]
    kernel = [k for k in kernel if k not in k_probe]
    ours = [e for e in ours if e not in a_probe]
    assert len(kernel) >= len(TRANSFERS), raw
    key = lambda d: json.dumps(d, sort_keys=True)  # noqa: E731
    assert sorted(map(key, map(normalise_alg, ours))) == sorted(map(key, map(normalise_kernel, kernel)))
    # class: the kernel names it by its index in the helper's policy; alg by name, its index the same
    timeouts = {key(normalise_kernel(k)): (k["class"], k["timeout"]) for k in kernel}
    for e in ours:
        k_class, k_timeout = timeouts[key(normalise_alg(e))]
        assert str(ftp.class_id(e["class"])) == k_class
        assert k_timeout is not None and 0 <= e["timeout"] - k_timeout <= 2, (e["timeout"], k_timeout)
    # refusals: alg creates nothing; the kernel nothing but where PROBES says otherwise
    assert a_probe == [], a_probe
    for _server, sport, command, kernel_opens in PROBES:
        got = [(k["dst"], int(k["dport"])) for k in k_probe if k["master"]["sport"] == str(sport)]
        assert got == ([kernel_opens] if kernel_opens else []), (command, got)
