"""`alg rules` and `alg doctor` logic, and the verdict guarantee, without a kernel."""

from __future__ import annotations

import subprocess
import sys

import pytest

from alg import doctor
from alg.plugins import load_plugins
from alg.policy import default_policy


@pytest.fixture(scope="module")
def policy():
    host = load_plugins()
    return default_policy({n: c.spec for n, c in host.helpers.items()})


def alg_rules(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "alg", "rules", *args], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_rules_assign_every_port_and_accept_related(policy):
    text = alg_rules("--helper", "ftp")
    assert '-I PREROUTING 1 -p tcp --dport 21 -m comment --comment "alg ftp" -j CT --helper ftp' in text
    assert "--ctstate RELATED -m helper --helper ftp" in text
    assert text.count("COMMIT") == 2
    # inserted (a final DROP of the user's chain must not hide them), never appended
    assert "\n-A " not in text and "-I FORWARD 1 " in text and "-I INPUT 1 " in text


def test_iptables_inserts_keep_their_order_per_chain():
    text = alg_rules("--helper", "ftp", "--helper", "sip")
    pre = [line.split()[2] for line in text.splitlines() if line.startswith("-I PREROUTING")]
    fwd = [line for line in text.splitlines() if line.startswith("-I FORWARD")]
    assert pre == [str(i) for i in range(1, len(pre) + 1)] and len(pre) >= 3  # sip: udp and tcp 5060
    assert fwd[0].startswith("-I FORWARD 1 ") and fwd[1].startswith("-I FORWARD 2 ")


def test_rules_unknown_helper_exits_2():
    out = subprocess.run([sys.executable, "-m", "alg", "rules", "--helper", "nosuch"], capture_output=True, text=True)
    assert out.returncode == 2 and "nosuch" in out.stderr


def test_nft_rules_name_ct_helper_objects():
    out = alg_rules("--nft", "--helper", "ftp")
    assert 'type "ftp" protocol tcp' in out and 'ct helper set "ftp-tcp"' in out


def test_nft_assigns_after_conntrack_and_accepts_related_in_the_users_chains():
    out = alg_rules("--nft", "--helper", "ftp")
    hooks = [line for line in out.splitlines() if "type filter hook" in line]
    assert hooks and all("priority filter;" in h for h in hooks)  # priority raw runs before conntrack
    assert "insert rule inet filter forward ct state related ct status expected" in out
    assert "insert rule inet filter input ct state related ct status expected" in out
    mine = alg_rules("--nft", "--helper", "ftp", "--nft-chain", "ip fw fwd")
    assert "insert rule ip fw fwd " in mine and "inet filter" not in mine
    assert "insert rule" not in alg_rules("--nft", "--helper", "ftp", "--nft-chain", "none")


def test_families_select_helpers(tmp_path):
    (tmp_path / "p.toml").write_text('helper = "ftp"\nfamilies = ["ipv4"]\n')
    pol = ["--policy", str(tmp_path / "p.toml")]
    v4 = alg_rules(*pol, "--family", "4")
    assert "--helper ftp" in v4 and "iptables-restore --noflush" in v4
    # ip6tables-restore refuses a CT rule for a helper with no IPv6 entry: none in the IPv6 text
    v6 = alg_rules(*pol, "--family", "6")
    assert "--helper" not in v6 and "ip6tables-restore" in v6
    assert "IPv4-only" in alg_rules(*pol)  # the default text (for both tools) says so
    nft = alg_rules(*pol, "--nft", "--nft-chain", "none")
    assert "l3proto ip\n" in nft and 'meta nfproto ipv4 tcp dport { 21 } ct helper set "ftp-tcp"' in nft
    # an IPv6-only helper gets no IPv4 rules
    dhcp4 = alg_rules("--helper", "dhcpv6", "--family", "4")
    assert "dhcpv6" not in dhcp4.replace("# alg rules", "")
    assert "--helper dhcpv6" in alg_rules("--helper", "dhcpv6", "--family", "6")
    assert "l3proto ip6" in alg_rules("--helper", "dhcpv6", "--nft")


def test_empty_ports_emit_no_broken_rule(tmp_path):
    (tmp_path / "p.toml").write_text('helper = "ftp"\nports = []\n')
    pol = ["--policy", str(tmp_path / "p.toml")]
    nft = alg_rules(*pol, "--nft")
    assert "dport {" not in nft and "no ports in its policy" in nft and 'type "ftp"' in nft
    ipt = alg_rules(*pol)
    assert "-j CT" not in ipt
    assert "no ports in its policy" in ipt


@pytest.mark.kernel
def test_rules_apply_in_a_namespace(kernel_ok):
    ns = "alg-rl-apply"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        for tool, fam in (("iptables-restore", "4"), ("ip6tables-restore", "6"), ("iptables-restore", None),
                          ("ip6tables-restore", None)):
            rules = alg_rules("--iptables", "--helper", "ftp", *(("--family", fam) if fam else ()))
            r = subprocess.run(["ip", "netns", "exec", ns, tool, "--noflush"], input=rules, capture_output=True,
                               text=True)
            assert r.returncode == 0, r.stderr
        saved = subprocess.run(["ip", "netns", "exec", ns, "iptables-save", "-t", "raw"], capture_output=True,
                               text=True).stdout
        assert "--helper ftp" in saved
    finally:
        subprocess.run(["ip", "netns", "del", ns])


# A control connection to port 21 on lo and a passive data connection (PASV for IPv4,
# EPSV for IPv6) to the port the reply names: the in-kernel ftp helper opens it only if
# the rules assigned the helper, and the firewall lets it in only through alg's RELATED rule.
FTP_EXCHANGE = r"""
import socket, sys, threading
fam, host, port = (socket.AF_INET, "127.0.0.1", 50021) if sys.argv[1] == "4" else (socket.AF_INET6, "::1", 50026)
reply = (b"227 Entering Passive Mode (127,0,0,1,%d,%d).\r\n" % divmod(port, 256) if fam == socket.AF_INET
         else b"229 Entering Extended Passive Mode (|||%d|)\r\n" % port)
ctl, data = socket.socket(fam), socket.socket(fam)
for s, p in ((ctl, 21), (data, port)):
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((host, p)); s.listen(1)
def serve():
    c, _ = ctl.accept(); c.sendall(b"220 hi\r\n"); c.recv(100); c.sendall(reply); c.recv(100)
threading.Thread(target=serve, daemon=True).start()
cli = socket.create_connection((host, 21), timeout=2)
cli.recv(100); cli.sendall(b"PASV\r\n" if fam == socket.AF_INET else b"EPSV\r\n"); cli.recv(100)
try:
    socket.create_connection((host, port), timeout=1.5).close(); print("data-ok")
except OSError as exc:
    print("data-failed", exc)
cli.sendall(b"QUIT\r\n")
"""

USER_FIREWALL = {  # the user's own INPUT: established, the control port, then a final drop
    "iptables": ["-A INPUT -m conntrack --ctstate ESTABLISHED -j ACCEPT", "-A INPUT -p tcp --dport 21 -j ACCEPT",
                 "-A INPUT -j DROP"],
    "nft": "table inet filter {\n chain input { type filter hook input priority filter; policy drop;\n"
           "  ct state established accept\n  tcp dport 21 accept\n }\n"
           " chain forward { type filter hook forward priority filter; policy drop; }\n}\n",
}


@pytest.mark.kernel
@pytest.mark.parametrize("kind", ["iptables", "nft"])
def test_rules_assign_the_helper_and_pass_the_related_flow(kernel_ok, kind):
    """The in-kernel ftp helper (same name as alg's) through `alg rules` output, in a namespace."""
    ns = f"alg-rl-{kind}"
    subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    subprocess.run(["ip", "netns", "add", ns], check=True)

    def nsx(*cmd: str, text_in: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", ns, *cmd], input=text_in, capture_output=True, text=True)

    try:
        assert nsx("ip", "link", "set", "lo", "up").returncode == 0
        if kind == "iptables":
            for fam, tool in (("4", "iptables"), ("6", "ip6tables")):
                for rule in USER_FIREWALL["iptables"]:
                    assert nsx(tool, *rule.split()).returncode == 0
                r = nsx(f"{tool}-restore", "--noflush", text_in=alg_rules("--helper", "ftp", "--family", fam))
                assert r.returncode == 0, r.stderr
        else:
            assert nsx("nft", "-f", "-", text_in=USER_FIREWALL["nft"]).returncode == 0
            r = nsx("nft", "-f", "-", text_in=alg_rules("--nft", "--helper", "ftp"))
            assert r.returncode == 0, r.stderr
        for fam in ("4", "6"):
            out = nsx(sys.executable, "-c", FTP_EXCHANGE, fam)
            assert out.stdout.strip() == "data-ok", (fam, out.stdout, out.stderr)
            ct = nsx("conntrack", "-L", "-f", "ipv4" if fam == "4" else "ipv6", "-p", "tcp", "--dport", "21").stdout
            assert "helper=ftp" in ct, (fam, ct)
        if kind == "iptables":
            counts = [nsx(t, "-nvxL", "INPUT").stdout for t in ("iptables", "ip6tables")]
            hits = [int(line.split()[0]) for c in counts for line in c.splitlines() if "alg ftp related" in line]
        else:
            listing = nsx("nft", "list", "chain", "inet", "filter", "input").stdout
            hits = [int(line.split("packets ")[1].split()[0]) for line in listing.splitlines()
                    if "alg related" in line]
        assert hits and min(hits) >= 1, hits  # alg's own RELATED rule let the data connections in
    finally:
        subprocess.run(["ip", "netns", "del", ns])


def test_headroom_warns_at_80_percent_with_the_fix():
    assert doctor.check_headroom(4096, 1000).level == doctor.OK
    c = doctor.check_headroom(4096, 3300)
    assert c.level == doctor.WARN and "expect_hashsize=2048" in c.fix and "modprobe.d" in c.fix


def test_clash_with_a_loaded_in_kernel_helper(tmp_path, policy):
    (tmp_path / "sys/module/nf_conntrack_ftp").mkdir(parents=True)
    checks = {c.name: c for c in doctor.check_clashes(str(tmp_path), list(policy.helpers.values()))}
    assert checks["name ftp"].level == doctor.FAIL and "ftp-alg" in checks["name ftp"].fix
    assert all(c.level == doctor.OK for n, c in checks.items() if n != "name ftp")


def test_features_fail_names_the_missing_piece(tmp_path):
    checks = doctor.check_features(str(tmp_path), lambda: False, lambda: True)
    by = {c.name: c for c in checks}
    assert by["nfnetlink_cthelper"].level == doctor.FAIL and by["nf_conntrack_netlink"].level == doctor.OK


def test_daemon_pressure_is_shown_with_the_fix():
    status = {"pid": 1, "verdicts": 10, "queue_errors": 0, "helpers": {
        "sip": {"classes": {"audio": {"refused": {"kernel-full": 7}, "kernel_failed": {"ENOSPC": 7}}}}}}
    checks = doctor.check_daemon(status)
    warn = [c for c in checks if c.level == doctor.WARN]
    assert warn and "expect_hashsize" in warn[0].fix and "7" in warn[0].detail


class FakePacket:
    def __init__(self, payload: bytes):
        self.payload, self.verdict = payload, None

    def get_payload(self):
        if self.payload is None:
            raise RuntimeError("netlink hiccup")
        return self.payload

    def accept(self):
        self.verdict = "accept"

    def drop(self):
        self.verdict = "drop"


def test_every_packet_gets_a_verdict_whatever_happens():
    from alg.daemon import Daemon
    d = Daemon(load_plugins(), None)
    slot = d.engine.slots["ftp"]
    for payload in (b"", b"\x45garbage", None, b"\x60" + b"\x00" * 60):
        p = FakePacket(payload)
        d.on_packet(p, slot)
        assert p.verdict == "accept"
    assert d.stats.verdicts == 4 and d.stats.queue_errors == 1 and d.stats.decode_errors >= 2
