"""Real traffic for the TFTP, IRC, SANE, Amanda, NetBIOS-NS and SNMP helpers through a firewall
namespace whose raw table hands the control flow to the kernel's own helper
(`CT --helper tftp|irc|sane|amanda`, built into the host kernel): the capture
on the fw's client side is what `alg replay` reads, `conntrack -E expect` in
the fw what the kernel created. Used by tests/test_kernel_more_helpers.py (the
differential) and tools/record-more-helpers.py (the captures in tests/pcaps/).

Each scenario runs real clients and servers where Debian has them (tftpd-hpa
and tftp-hpa, ngircd and a scripted IRC client, saned with the `test`
backend and scanimage) and then probes: hand-made control messages on
control connections of their own (fixed source port, so the master tells
them apart), each with what the kernel's helper creates for it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from netns import CLIENT4, CLIENT6, SERVER4, SERVER6, Net, wait_until_quiet

ROOT = Path(__file__).resolve().parent.parent
PEERS = ROOT / "tools" / "more_helpers_peers.py"


@dataclass
class Probe:
    """A message sent from client source port `sport`; `kernel` is what the kernel's helper expects
    for it ((dst, dport) pairs), `alg` what alg expects: equal, or different on purpose (`why`).
    `{tmp}` in `argv` is the run's temporary directory."""

    sport: int
    argv: list[str]
    kernel: list[tuple[str, int]]
    alg: list[tuple[str, int]]
    why: str = ""


@dataclass
class Scenario:
    helper: str
    proto: str
    port: int
    start: Callable[[Net, Path], None]
    clients: Callable[[Net, Path], None]
    probes: list[Probe] = field(default_factory=list)
    bpf: str = "tcp or udp"
    families: tuple[str, ...] = ("iptables", "ip6tables")  # the kernel's irc helper is IPv4 only
    chain: str = "PREROUTING"  # OUTPUT: the firewall's own traffic (the broadcast helper)
    iface: str = "c1"  # where the fw captures
    probe_ns: str = "cli"  # where the probes are sent from


def wait_port(net: Net, ns: str, proto: str, port: int, timeout: float = 10) -> None:
    """Until something listens on `port` in `ns` (ss), or `timeout`."""
    flag = "-tln" if proto == "tcp" else "-uln"
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if f":{port} " in net.run(ns, "ss", "-H", flag, check=False).stdout:
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {proto}/{port} in {ns}")


def peer(*args: str) -> list[str]:
    return [sys.executable, str(PEERS), *args]


# ---------------------------------------------------------------- TFTP
def _tftp_start(net: Net, tmp: Path) -> None:
    root = tmp / "tftp"
    root.mkdir()
    (root / "boot.bin").write_bytes(os.urandom(3000))
    (root / "up.bin").write_bytes(b"")
    for p in (root, root / "up.bin"):
        os.chmod(p, 0o777 if p == root else 0o666)
    for family, addr in (("-4", SERVER4), ("-6", f"[{SERVER6}]")):
        net.popen("srv", "in.tftpd", "-L", family, "-c", "-p", "-u", "root", "-a", f"{addr}:69", "-s", str(root))
    wait_port(net, "srv", "udp", 69)


def _tftp_clients(net: Net, tmp: Path) -> None:
    src = tmp / "upload.bin"
    src.write_bytes(os.urandom(1500))
    for host in (SERVER4, SERVER6):
        net.cli("tftp", host, "-m", "octet", "-c", "get", "boot.bin", str(tmp / "got.bin"), timeout=20)
        net.cli("tftp", host, "-m", "octet", "-c", "put", str(src), "up.bin", timeout=20)


TFTP = Scenario("tftp", "udp", 69, _tftp_start, _tftp_clients, bpf="udp", probes=[
    # a well-formed RRQ from a service port: the kernel opens it, alg refuses it (min_port)
    Probe(53, peer("tftp-request", SERVER4, "53", "rrq"), [(CLIENT4, 53)], [],
          "a request from a port below min_port (1024)"),
    # two opcode bytes and nothing else: the kernel opens on the opcode alone
    Probe(41002, peer("tftp-request", SERVER4, "41002", "bare"), [(CLIENT4, 41002)], [],
          "a request without filename and mode is malformed"),
    Probe(41003, peer("tftp-request", SERVER6, "41003", "rrq"), [(CLIENT6, 41003)], [(CLIENT6, 41003)]),
])

# ---------------------------------------------------------------- IRC
NGIRCD_CONF = """[Global]
Name = irc.alg.test
Info = alg test server
Listen = {listen}
Ports = 6667
PidFile = {tmp}/ngircd.pid
MotdPhrase = alg
[Limits]
MaxConnectionsIP = 0
MaxJoins = 0
[Options]
DNS = no
Ident = no
PAM = no
"""
DCC_PORT = 5000


def _irc_start(net: Net, tmp: Path) -> None:
    conf = tmp / "ngircd.conf"
    conf.write_text(NGIRCD_CONF.format(listen=SERVER4, tmp=tmp))
    net.popen("srv", "ngircd", "-n", "-f", str(conf))
    wait_port(net, "srv", "tcp", 6667)
    net.popen("srv", *peer("irc-listen", SERVER4, "bob", "60"))  # the addressee of every offer
    time.sleep(0.5)


def _irc_clients(net: Net, tmp: Path) -> None:
    net.popen("cli", *peer("dcc-listen", CLIENT4, str(DCC_PORT), "15"))
    net.popen("cli", *peer("dcc-listen", CLIENT4, str(DCC_PORT + 1), "15"))
    net.cli(*peer("irc-dcc", SERVER4, "alice", "bob", "0",
                  "PRIVMSG {to} :\\1DCC SEND boot.bin {ip} %d 3000\\1" % DCC_PORT,
                  "PRIVMSG {to} :\\1DCC CHAT chat {ip} %d\\1" % (DCC_PORT + 1)), timeout=30)
    for port in (DCC_PORT, DCC_PORT + 1):  # bob takes both offers: the follow-up flows
        net.srv(*peer("connect", CLIENT4, str(port)), timeout=10)


Pairs = list[tuple[str, int]]


def _dcc_probe(sport: int, body: str, kernel: Pairs, alg: Pairs, why: str = "") -> Probe:
    line = "PRIVMSG {to} :\\1DCC " + body + "\\1"
    return Probe(sport, peer("irc-dcc", SERVER4, f"p{sport}", "bob", str(sport), line), kernel, alg, why)


IPV4_WRAP = 1 << 32
IRC = Scenario("irc", "tcp", 6667, _irc_start, _irc_clients, bpf="tcp", families=("iptables",), probes=[
    _dcc_probe(42001, "SEND f 167772419 5100 1", [], []),  # 10.0.1.3: a third host ("Forged DCC command")
    _dcc_probe(42002, "SEND f {ip} 22 1", [(CLIENT4, 22)], [], "a DCC port below min_port (1024)"),
    _dcc_probe(42003, "SEND f %d 5103 1" % (IPV4_WRAP + 167772418), [(CLIENT4, 5103)], [],
               "an address of 2^32 or more: the kernel keeps its low 32 bits (10.0.1.2), alg refuses it"),
    _dcc_probe(42004, "SEND f {ip} %d 1" % (65536 + 5104), [(CLIENT4, 5104)], [],
               "a port above 65535: the kernel keeps its low 16 bits, alg refuses it"),
    _dcc_probe(42005, "SEND f {ip} 0 1 77", [], []),  # passive DCC: nothing to open
    _dcc_probe(42006, 'SEND "my file.bin" {ip} 5106 1', [], [(CLIENT4, 5106)],
               "a quoted file name with a space: the kernel's parser reads the address from the name's "
               "second word and calls it forged; alg reads the quoted name"),
])

# ---------------------------------------------------------------- SANE
SANE_PROBE_SERVER = "10.0.2.3"  # a second server address: saned holds 6566 on the first
SANE_PROBES = {43001: (0, 0, 111), 43002: (0, 0, 0), 43003: (0, 1, 40003), 43004: (9, 0, 40004),
               43005: (0, 0, 40005)}


def _sane_conf(tmp: Path) -> dict[str, str]:
    """SANE_CONFIG_DIR for saned (the `test` backend, clients of the cli subnet allowed) and for
    scanimage (the `net` backend naming both saned addresses)."""
    srv, cli = tmp / "sane-srv", tmp / "sane-cli"
    srv.mkdir()
    cli.mkdir()
    (srv / "dll.conf").write_text("test\n")
    (srv / "saned.conf").write_text(f"{CLIENT4.rsplit('.', 1)[0]}.0/24\n[{CLIENT6.rsplit(':', 2)[0]}::]/64\n")
    (cli / "dll.conf").write_text("net\n")
    (cli / "net.conf").write_text(f"connect_timeout = 5\n{SERVER4}\n[{SERVER6}]\n")
    return {"srv": str(srv), "cli": str(cli)}


def _sane_start(net: Net, tmp: Path) -> None:
    conf = _sane_conf(tmp)
    env = dict(os.environ, SANE_CONFIG_DIR=conf["srv"])
    for addr in (SERVER4, SERVER6):
        net.popen("srv", "saned", "-l", "-b", addr, env=env)
    net.srv("ip", "addr", "add", f"{SANE_PROBE_SERVER}/24", "dev", "s0")
    table = ",".join(f"{k}={'/'.join(map(str, v))}" for k, v in SANE_PROBES.items())
    net.popen("srv", *peer("sane-server", SANE_PROBE_SERVER, table))
    wait_port(net, "srv", "tcp", 6566)
    time.sleep(0.3)


def _sane_clients(net: Net, tmp: Path) -> None:
    env = dict(os.environ, SANE_CONFIG_DIR=str(tmp / "sane-cli"))
    for host in (SERVER4, f"[{SERVER6}]"):
        net.cli("scanimage", "-d", f"net:{host}:test:0", "--format=pnm", "-o", str(tmp / "scan.pnm"), env=env,
                timeout=60)


SANE = Scenario("sane", "tcp", 6566, _sane_start, _sane_clients, bpf="tcp", probes=[
    Probe(43001, peer("sane-start", SANE_PROBE_SERVER, "43001"), [(SANE_PROBE_SERVER, 111)], [],
          "a data port below min_port (1024)"),
    Probe(43002, peer("sane-start", SANE_PROBE_SERVER, "43002"), [(SANE_PROBE_SERVER, 0)], [],
          "port 0: the kernel expects it, alg refuses it"),
    Probe(43003, peer("sane-start", SANE_PROBE_SERVER, "43003"), [], []),  # the port word's upper half not 0
    Probe(43004, peer("sane-start", SANE_PROBE_SERVER, "43004"), [], []),  # status 9: access denied
    Probe(43005, peer("sane-start", SANE_PROBE_SERVER, "43005"), [(SANE_PROBE_SERVER, 40005)],
          [(SANE_PROBE_SERVER, 40005)]),
])

# ---------------------------------------------------------------- Amanda (scripted both sides)
AMANDA_BODIES = {
    44001: "CONNECT DATA 70000 MESG 50102\n",        # the kernel keeps 70000's low 16 bits: 4464
    44002: "CONNECT DATA 0 MESG 50202 INDEX 50203\n",  # the kernel stops at DATA 0
    44003: "CONNECT DATA 22 MESG 50302\n",
    44004: "OPTIONS x; CONNECT DATA 50401\n",        # CONNECT inside another line
}


def _amanda_start(net: Net, tmp: Path) -> None:
    bodies = tmp / "amanda-bodies.json"
    bodies.write_text(json.dumps({str(k): v for k, v in AMANDA_BODIES.items()}))
    for addr in (SERVER4, SERVER6):
        net.popen("srv", *peer("amanda-client", addr, str(bodies)))
    wait_port(net, "srv", "udp", 10080)


def _amanda_clients(net: Net, tmp: Path) -> None:
    for server, client in ((CLIENT4, SERVER4), (CLIENT6, SERVER6)):
        out = net.cli(*peer("amanda-server", server, "0", client), timeout=30).stdout
        assert ", 3 connected" in out, out  # the three streams reached through the kernel's expectations


def _amanda_probe(sport: int, kernel: Pairs, alg: Pairs, why: str = "") -> Probe:
    return Probe(sport, peer("amanda-server", CLIENT4, str(sport), SERVER4), kernel, alg, why)


AMANDA = Scenario("amanda", "udp", 10080, _amanda_start, _amanda_clients, probes=[
    _amanda_probe(44001, [(SERVER4, 4464), (SERVER4, 50102)], [(SERVER4, 50102)],
                  "a port above 65535: the kernel keeps its low 16 bits, alg refuses it"),
    _amanda_probe(44002, [], [(SERVER4, 50202), (SERVER4, 50203)],
                  "DATA 0: the kernel stops there; alg refuses that stream and reads the others"),
    _amanda_probe(44003, [(SERVER4, 22), (SERVER4, 50302)], [(SERVER4, 50302)], "a port below min_port (1024)"),
    _amanda_probe(44004, [(SERVER4, 50401)], [],
                  "CONNECT inside another line: the kernel finds it anywhere, alg only at a line start"),
])

# ---------------------------------------------------------------- NetBIOS-NS (the fw's own broadcasts)
FW4_S, BCAST_S = "10.0.2.1", "10.0.2.255"


def _nbns_start(net: Net, tmp: Path) -> None:
    # the kernel's broadcast helper matches the query's destination against the interface's broadcast
    # address: give s1 one (netns.py adds its address without `brd`)
    net.fw("ip", "addr", "del", f"{FW4_S}/24", "dev", "s1")
    net.fw("ip", "addr", "add", f"{FW4_S}/24", "brd", "+", "dev", "s1")
    net.popen("srv", *peer("nbns-responder", SERVER4, "ALGTEST", "60"))
    wait_port(net, "srv", "udp", 137)


def _nbns_clients(net: Net, tmp: Path) -> None:
    out = net.fw("nmblookup", "-s", "/dev/null", "-B", BCAST_S, "ALGTEST", timeout=20, check=False).stdout
    assert f"{SERVER4} ALGTEST" in out, out


NETBIOS_NS = Scenario("netbios-ns", "udp", 137, _nbns_start, _nbns_clients, bpf="udp", families=("iptables",),
                      chain="OUTPUT", iface="s1", probe_ns="fw", probes=[
    Probe(45001, peer("nbns-send", BCAST_S, "45001", "query"), [(FW4_S, 45001)], [(FW4_S, 45001)]),
    Probe(45002, peer("nbns-send", SERVER4, "45002", "query"), [], []),  # unicast: the answer is the reply
    Probe(45003, peer("nbns-send", BCAST_S, "45003", "response"), [(FW4_S, 45003)], [],
          "a response (R bit) broadcast: the kernel helps any datagram, alg only name service requests"),
])

# ---------------------------------------------------------------- SNMP (the fw's own broadcasts)
SNMPD_CONF = "agentaddress udp:161\nrocommunity public\n"
SYS_DESCR = "1.3.6.1.2.1.1.1.0"  # numeric: Debian ships no SNMPv2-MIB (snmp-mibs-downloader is non-free)
SHIM = ROOT / "tools" / "so_broadcast.c"


def with_brd(net: Net, ns: str, addr: str, dev: str) -> None:
    """Re-add `addr`/24 with its broadcast address (netns.py adds addresses without `brd`)."""
    net.run(ns, "ip", "addr", "del", f"{addr}/24", "dev", dev)
    net.run(ns, "ip", "addr", "add", f"{addr}/24", "brd", "+", "dev", dev)


def snmpget(tmp: Path, version: str, host: str, sport: int | None = None) -> list[str]:
    """snmpget with SO_BROADCAST (tools/so_broadcast.c: net-snmp's tools never set it themselves)."""
    bind = [f"--clientaddr={FW4_S}:{sport}", "--clientaddrUsesPort=yes"] if sport else []
    return ["env", f"LD_PRELOAD={tmp / 'so_broadcast.so'}", "snmpget", "-v", version, "-c", "public", "-m", "",
            "-t", "2", "-r", "0", *bind, host, SYS_DESCR]


def _snmp_start(net: Net, tmp: Path) -> None:
    with_brd(net, "fw", FW4_S, "s1")  # the kernel's helper matches the interface's broadcast address
    with_brd(net, "srv", SERVER4, "s0")  # snmpd must take 10.0.2.255 for a broadcast of its own
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(tmp / "so_broadcast.so"), str(SHIM), "-ldl"], check=True)
    (tmp / "snmpd.conf").write_text(SNMPD_CONF)
    net.popen("srv", "snmpd", "-f", "-Lo", "-C", "-c", str(tmp / "snmpd.conf"))
    wait_port(net, "srv", "udp", 161)


def _snmp_clients(net: Net, tmp: Path) -> None:
    # snmpd 5.9.3 receives these but cannot answer them: it sends from the address the request came to
    # (10.0.2.255), ENETUNREACH, and retries without it only on EINVAL (the 255.255.255.255 probe's case)
    for version in ("2c", "1"):
        net.fw(*snmpget(tmp, version, BCAST_S), timeout=20, check=False)


SNMP_ANSWERED = 45101  # the probe snmpd answers: the capture's follow-up flow
SNMP = Scenario("snmp", "udp", 161, _snmp_start, _snmp_clients, bpf="udp", families=("iptables",),
                chain="OUTPUT", iface="s1", probe_ns="fw", probes=[
    Probe(SNMP_ANSWERED, snmpget(Path("{tmp}"), "2c", "255.255.255.255", SNMP_ANSWERED), [], [(FW4_S, SNMP_ANSWERED)],
          "the limited broadcast: the kernel helps only the interface's own broadcast address, alg both"),
    Probe(45102, peer("snmp-send", SERVER4, "45102", "get"), [], []),  # unicast: the answer is the reply
    Probe(45103, peer("snmp-send", BCAST_S, "45103", "response"), [(FW4_S, 45103)], [],
          "a GetResponse broadcast: the kernel helps any datagram, alg only SNMP requests"),
    Probe(45104, peer("snmp-send", BCAST_S, "45104", "huge"), [(FW4_S, 45104)], [],
          "a length past the datagram: the kernel helps any datagram, alg only well-formed BER"),
    Probe(45105, peer("snmp-send", BCAST_S, "45105", "v3"), [(FW4_S, 45105)], [(FW4_S, 45105)]),
])

SCENARIOS = {s.helper: s for s in (TFTP, IRC, SANE, AMANDA, NETBIOS_NS, SNMP)}


def run(name: str, net: Net, tmp: Path) -> tuple[str, str]:
    """Run scenario `name` through the kernel's helper: (capture path, `conntrack -E expect` text)."""
    sc = SCENARIOS[name]
    for ipt in sc.families:
        net.fw(ipt, "-t", "raw", "-A", sc.chain, "-p", sc.proto, "--dport", str(sc.port),
               "-j", "CT", "--helper", sc.helper)
    sc.start(net, tmp)
    events = tmp / "expect.txt"
    with events.open("w") as ev:
        watcher = net.watch_expectations("fw", ev)
        cap = net.capture("fw", str(tmp / f"{name}.pcap"), iface=sc.iface, bpf=sc.bpf)
        sc.clients(net, tmp)
        for p in sc.probes:
            net.run(sc.probe_ns, *(a.replace("{tmp}", str(tmp)) for a in p.argv), timeout=20)
        wait_until_quiet(events)
        pcap = cap.stop()
        watcher.terminate()
    return pcap, events.read_text()


def available(name: str) -> str | None:
    """Why scenario `name` cannot run here, or None."""
    need = {"tftp": ("in.tftpd", "tftp"), "irc": ("ngircd",), "sane": ("saned", "scanimage"), "amanda": (),
            "netbios-ns": ("nmblookup",), "snmp": ("snmpd", "snmpget", "cc")}[name]
    for tool in need:
        if shutil.which(tool) is None:
            return f"needs {tool}"
    return None
