"""Three host network namespaces (client, fw, server) for host-kernel tests.

    client ns  PREFIX-cli   c0 10.0.1.2/24 fd00:1::2/64   default via fw
    fw ns      PREFIX-fw    c1 10.0.1.1/24 fd00:1::1/64, s1 10.0.2.1/24 fd00:2::1/64, forwarding
    server ns  PREFIX-srv   s0 10.0.2.2/24 fd00:2::2/64   default via fw

Same layout as tools/lab/netns.sh, in Python so tests can use it without
bash. Every namespace carries the caller's PREFIX (e.g. ``alg-ftp-t1234``) so
parallel sessions never collide; ``down()`` removes them (also as a context
manager). Nothing is ever created in the caller's namespace; the fw has no
default route, so nothing leaves for a real network.

    with Net("alg-ftp-x") as net:
        net.fw("iptables", "-t", "raw", "-A", "PREROUTING", ...)
        cap = net.capture("fw", "/tmp/x.pcap", iface="c1")
        net.cli("curl", ...)
        cap.stop()
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import Any

CLIENT4, FW4_C, FW4_S, SERVER4 = "10.0.1.2", "10.0.1.1", "10.0.2.1", "10.0.2.2"
NETLINK_NETFILTER = 12  # linux/netlink.h
CLIENT6, FW6_C, FW6_S, SERVER6 = "fd00:1::2", "fd00:1::1", "fd00:2::1", "fd00:2::2"


def _sh(*argv: str, check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), check=check, capture_output=True, text=True, **kw)


def wait_until_quiet(path: "os.PathLike[str] | str", quiet: float = 0.5, limit: float = 15) -> None:
    """Until the file at PATH has not grown for QUIET seconds (a watcher has written
    what the kernel gave it), or LIMIT seconds."""
    end, last, since = time.monotonic() + limit, -1, time.monotonic()
    while time.monotonic() < end:
        size = os.stat(path).st_size
        if size != last:
            last, since = size, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
        time.sleep(0.05)


@dataclass
class Capture:
    proc: subprocess.Popen[bytes]
    path: str

    def stop(self) -> str:
        """Stop tcpdump (SIGINT flushes the file) and return the capture path."""
        if self.proc.poll() is None:
            time.sleep(0.2)  # let the last packets reach the file
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.path


class Net:
    def __init__(self, prefix: str):
        if len(prefix) > 10:  # interface-independent, but keep `ip netns` output readable
            raise ValueError("prefix too long (max 10 characters)")
        self.prefix = prefix
        self.names = {"cli": f"{prefix}-cli", "fw": f"{prefix}-fw", "srv": f"{prefix}-srv"}
        self._procs: list[subprocess.Popen[Any]] = []

    # --- running things -------------------------------------------------
    def argv(self, ns: str, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", self.names[ns], *cmd]

    def run(self, ns: str, *cmd: str, check: bool = True, timeout: float = 30, **kw: Any) -> subprocess.CompletedProcess[str]:
        return _sh(*self.argv(ns, *cmd), check=check, timeout=timeout, **kw)

    def cli(self, *cmd: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return self.run("cli", *cmd, **kw)

    def fw(self, *cmd: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return self.run("fw", *cmd, **kw)

    def srv(self, *cmd: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return self.run("srv", *cmd, **kw)

    def popen(self, ns: str, *cmd: str, **kw: Any) -> subprocess.Popen[Any]:
        """Start a background process in NS; down() stops it (its own process group)."""
        kw.setdefault("stdout", subprocess.DEVNULL)
        kw.setdefault("stderr", subprocess.DEVNULL)
        p = subprocess.Popen(self.argv(ns, *cmd), start_new_session=True, **kw)
        self._procs.append(p)
        return p

    def watch_expectations(self, ns: str, out: Any) -> subprocess.Popen[Any]:
        """`conntrack -E expect -o extended` in NS writing lines to OUT; returns once its
        socket has joined the event groups, so the first expectation is not missed (a
        fixed sleep was too short on a loaded machine)."""
        p = self.popen(ns, "stdbuf", "-oL", "conntrack", "-E", "expect", "-o", "extended", stdout=out)
        deadline = time.monotonic() + 30
        while not self._has_netfilter_listener(ns):
            if p.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"conntrack -E expect did not subscribe in {ns} (rc {p.poll()})")
            time.sleep(0.05)
        return p

    def _has_netfilter_listener(self, ns: str) -> bool:
        """Whether NS has a NETLINK_NETFILTER socket that joined a multicast group
        (/proc/net/netlink: sk, Eth = protocol, Pid, Groups, ...); nothing else in a
        test's namespace listens for netfilter events."""
        rows = self.run(ns, "cat", "/proc/net/netlink").stdout.splitlines()[1:]
        return any(f[1] == str(NETLINK_NETFILTER) and int(f[3], 16) for f in map(str.split, rows))

    def capture(self, ns: str, path: str, iface: str = "any", bpf: str = "tcp or udp") -> Capture:
        """tcpdump -w PATH in NS; returns once tcpdump is listening."""
        p = self.popen(ns, "tcpdump", "-Z", "root", "--immediate-mode", "-U", "-n", "-s", "0", "-i", iface, "-w", path, bpf,
                       stderr=subprocess.PIPE)
        assert p.stderr is not None
        line = p.stderr.readline()  # "tcpdump: listening on ..."
        if b"listening" not in line:
            raise RuntimeError(f"tcpdump did not start: {line!r}")
        return Capture(p, path)

    # --- topology ----------------------------------------------------------
    def up(self) -> "Net":
        self.down()
        for ns in self.names.values():
            _sh("ip", "netns", "add", ns)
        nodad = ["net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0"]
        self.cli("sysctl", "-qw", *nodad)
        self.srv("sysctl", "-qw", *nodad)
        self.fw("sysctl", "-qw", *nodad, "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
        n = self.names
        batches = {
            "cli": f"""link add c0 type veth peer name c1 netns {n['fw']}
link set lo up
addr add {CLIENT4}/24 dev c0
addr add {CLIENT6}/64 dev c0 nodad
link set c0 up
route add default via {FW4_C} dev c0
route add default via {FW6_C} dev c0
""",
            "srv": f"""link add s0 type veth peer name s1 netns {n['fw']}
link set lo up
addr add {SERVER4}/24 dev s0
addr add {SERVER6}/64 dev s0 nodad
link set s0 up
route add default via {FW4_S} dev s0
route add default via {FW6_S} dev s0
""",
            "fw": f"""link set lo up
addr add {FW4_C}/24 dev c1
addr add {FW6_C}/64 dev c1 nodad
addr add {FW4_S}/24 dev s1
addr add {FW6_S}/64 dev s1 nodad
link set c1 up
link set s1 up
""",
        }
        for ns in ("cli", "srv", "fw"):
            _sh("ip", "-n", n[ns], "-batch", "-", input=batches[ns])
        for _ in range(100):
            st = self.fw("cat", "/sys/class/net/c1/operstate", "/sys/class/net/s1/operstate", check=False).stdout.split()
            if st == ["up", "up"]:
                break
            time.sleep(0.05)
        return self

    def down(self) -> None:
        for p in self._procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
                try:
                    p.wait(3)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
        self._procs.clear()
        existing = set(_sh("ip", "netns", "list", check=False).stdout.split())
        for ns in self.names.values():
            if ns in existing:
                _sh("ip", "netns", "del", ns, check=False)

    def __enter__(self) -> "Net":
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()
