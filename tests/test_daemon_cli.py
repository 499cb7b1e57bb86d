"""`alg rules` and `alg doctor` logic, and the verdict guarantee, without a kernel."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest

from alg import doctor
from alg.errors import KernelError
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
    assert '-A alg-helpers -p tcp --dport 21 -m comment --comment "alg ftp" -j CT --helper ftp' in text
    assert "-A alg-related -m conntrack --ctstate RELATED -m helper --helper ftp" in text
    assert text.count("COMMIT") == 2
    # alg's chains are declared (iptables-restore flushes and refills them) and jumped to from the top of the
    # built-in chains (a final DROP of the user's chain must not hide them), never appended there
    assert ":alg-helpers - [0:0]" in text and ":alg-related - [0:0]" in text
    for chain in ("PREROUTING", "OUTPUT", "FORWARD", "INPUT"):
        assert f"-I {chain} 1 -j alg-" in text and f"-A {chain}" not in text


def test_iptables_rules_keep_their_order_in_algs_chain():
    text = alg_rules("--helper", "ftp", "--helper", "sip")
    raw = [line for line in text.splitlines() if line.startswith("-A alg-helpers")]
    assert ["--dport 21" in raw[0], "--dport 5060" in raw[1], "--dport 5060" in raw[2]] == [True] * 3


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


@pytest.mark.kernel
@pytest.mark.parametrize("kind", ["iptables", "nft"])
def test_rules_apply_twice_then_remove(kernel_ok, kind):
    """`alg rules --apply` is safe to repeat (each rule once) and `--remove` takes back all of it."""
    ns = f"alg-rt{os.getpid() % 100000}-{kind[:3]}"
    subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    subprocess.run(["ip", "netns", "add", ns], check=True)

    def nsx(*cmd: str, text_in: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", ns, *cmd], input=text_in, capture_output=True, text=True)

    def dump() -> str:
        if kind == "nft":
            return nsx("nft", "list", "ruleset").stdout
        saved = "".join(nsx(t).stdout for t in ("iptables-save", "ip6tables-save"))
        return "".join(line for line in saved.splitlines(True) if not line.startswith("#"))  # (dated)

    alg = [sys.executable, "-m", "alg", "rules", "--helper", "ftp", "--helper", "sip"] + (["--nft"] if kind == "nft"
                                                                                           else [])
    try:
        if kind == "nft":
            assert nsx("nft", "-f", "-", text_in=USER_FIREWALL["nft"]).returncode == 0
        else:
            assert nsx("iptables", *USER_FIREWALL["iptables"][2].split()).returncode == 0
        before = dump()
        for _ in range(2):
            r = nsx(*alg, "--apply")
            assert r.returncode == 0, r.stderr
        once = dump()
        if kind == "nft":
            assert once.count('comment "alg related"') == 2  # input and forward, once each
            assert once.count("table inet alg") == 1 and once.count('ct helper set "sip-udp"') == 2
        else:
            for fam in ("iptables-save", "ip6tables-save"):
                text = nsx(fam).stdout
                assert text.count("-j alg-helpers") == 2 and text.count("-j alg-related") == 2, text
                assert text.count("--dport 5060") == 2 and text.count('"alg ftp related"') == 1, text
            # alg's jumps come before the user's final drop
            text = nsx("iptables-save", "-t", "filter").stdout
            assert text.index("-A INPUT -j alg-related") < text.index("-A INPUT -j DROP"), text
        assert nsx(*alg, "--apply").returncode == 0 and dump() == once
        r = nsx(*alg, "--remove")
        assert r.returncode == 0, r.stderr
        after = dump()  # (iptables leaves the raw table's built-in chains it made, empty)
        assert "alg" not in after and all(line in after for line in before.splitlines()), after
        assert nsx(*alg, "--remove").returncode == 0  # nothing left to remove is no error
    finally:
        subprocess.run(["ip", "netns", "del", ns])


def test_rules_refuse_two_helpers_on_one_port(tmp_path):
    (tmp_path / "sip.toml").write_text('helper = "sip"\n')
    (tmp_path / "sip2.toml").write_text('helper = "sip"\nname = "sip2"\nqueue = 99\n')
    r = subprocess.run([sys.executable, "-m", "alg", "rules", "--policy", str(tmp_path)],
                       capture_output=True, text=True)
    # refused at load, as by every command: the file, line and key, and both claims
    assert r.returncode == 2 and "sip2.toml:1: key 'ports': udp port 5060" in r.stderr, r.stderr
    assert "both sip (" in r.stderr, r.stderr


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
            counts = [nsx(t, "-nvxL", "alg-related").stdout for t in ("iptables", "ip6tables")]
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
    checks = doctor.check_features(str(tmp_path), doctor.Answer(False), doctor.Answer(3))
    by = {c.name: c for c in checks}
    assert by["nfnetlink_cthelper"].level == doctor.FAIL and by["nf_conntrack_netlink"].level == doctor.OK


def _refused():
    def probe():
        raise KernelError(errno.EPERM, "exp-list")
    return doctor.ask(probe)


def test_without_cap_net_admin_every_check_says_why(tmp_path, policy):
    """`alg doctor` as an unprivileged user: the kernel refuses (EPERM), each check fails with the reason."""
    denied = _refused()
    assert denied.denied and not denied.ok
    helpers = [policy.helpers["ftp"]]
    checks = [*doctor.check_features(str(tmp_path), denied, denied), doctor.check_glue(None, denied),
              *doctor.check_rules(helpers, denied), *doctor.check_queues(helpers, doctor.ask(_perm_error), None),
              doctor.check_headroom(4096, None, denied=True)]
    need = [c for c in checks if c.detail == doctor.NEEDS_ADMIN]
    assert {c.name for c in need} == {"nf_conntrack_netlink", "nfnetlink_cthelper", "nfqueue conntrack glue",
                                      "rules", "queues", "expectation table"}
    assert all(c.level == doctor.FAIL and "root" in c.fix for c in need)


def _perm_error():
    raise PermissionError(errno.EACCES, "Permission denied", "/proc/net/netfilter/nfnetlink_queue")


def test_glue_from_the_kernel_config_or_the_probe(tmp_path):
    import gzip
    import os

    (tmp_path / "proc").mkdir()
    with gzip.open(tmp_path / "proc/config.gz", "wt") as f:
        f.write("CONFIG_NF_CT_NETLINK=y\n# CONFIG_NETFILTER_NETLINK_GLUE_CT is not set\n")
    cfg = doctor.kernel_config(str(tmp_path))
    assert cfg == ({"CONFIG_NF_CT_NETLINK": "y", "CONFIG_NETFILTER_NETLINK_GLUE_CT": "n"}, "/proc/config.gz")
    c = doctor.check_glue(cfg, _refused())  # no privileges: the config decides
    assert c.level == doctor.FAIL and "/proc/config.gz" in c.detail and "GLUE_CT=y" in c.fix
    (tmp_path / "boot").mkdir()
    (tmp_path / "proc/config.gz").unlink()
    (tmp_path / f"boot/config-{os.uname().release}").write_text("CONFIG_NETFILTER_NETLINK_GLUE_CT=y\n")
    assert doctor.check_glue(doctor.kernel_config(str(tmp_path)), _refused()).level == doctor.OK
    # the kernel's own answer wins over a config file
    assert doctor.check_glue(doctor.kernel_config(str(tmp_path)), doctor.Answer(False)).level == doctor.FAIL
    assert doctor.check_glue(None, doctor.Answer(True)).level == doctor.OK
    assert doctor.check_glue(None, doctor.Answer(None, errno.EIO, "boom")).level == doctor.WARN


# `iptables-save` (1.8.9, nf_tables) after `alg rules --helper ftp --helper sip | iptables-restore --noflush`
# in a namespace, plus a CT rule on other ports, a RELATED-only rule and look-alike helper names added by hand
IPTABLES_SAVE = """# Generated by iptables-save v1.8.9 (nf_tables) on Wed Nov 25 11:25:29 2026
*raw
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A PREROUTING -p tcp -m tcp --dport 21 -m comment --comment "alg ftp" -j CT --helper ftp
-A PREROUTING -p udp -m udp --dport 5060 -m comment --comment "alg sip" -j CT --helper sip
-A PREROUTING -p tcp -m tcp --dport 5060 -m comment --comment "alg sip" -j CT --helper sip
-A PREROUTING -p tcp -m tcp --dport 2000:2100 -j CT --helper tns
-A PREROUTING -p udp -m multiport --dports 111,2049 -j CT --helper rpc-alg
-A PREROUTING -p udp -m udp ! --dport 1900 -j CT --helper ssdp
-A OUTPUT -p tcp -m tcp --dport 21 -m comment --comment "alg ftp" -j CT --helper ftp
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
-A FORWARD -m conntrack --ctstate RELATED -m helper --helper rpc -m comment --comment "alg rpc related" -j ACCEPT
-A FORWARD -p udp -m udp --dport 5353 -j CT --helper mdns
COMMIT
"""

# `nft list ruleset` after `alg rules --nft --helper ftp | nft -f -` and one added rule (nftables 1.0.6)
NFT_RULESET = """table inet alg {
	ct helper ftp-tcp {
		type "ftp" protocol tcp
		l3proto inet
	}

	chain alg-prerouting {
		type filter hook prerouting priority raw; policy accept;
		tcp dport 21 ct helper set "ftp-tcp"
		tcp dport { 21, 2121 } ct helper set "ftp-tcp"
	}

	chain alg-output {
		type filter hook output priority raw; policy accept;
		tcp dport 21 ct helper set "ftp-tcp"
	}
}
table ip raw {
	chain PREROUTING {
		type filter hook prerouting priority raw; policy accept;
		tcp dport 21  counter packets 0 bytes 0 xt target CT
	}
}
"""


def test_rules_are_parsed_not_grepped(policy):
    hp = policy.helpers
    rules = doctor.parse_iptables_save(IPTABLES_SAVE)
    assert {(r.helper, r.where) for r in rules} >= {("ftp", "iptables raw PREROUTING"), ("ftp", "iptables raw OUTPUT")}
    assert not any(r.helper in ("mdns", "ssdp") for r in rules)  # filter table; negated port
    tns = next(r for r in rules if r.helper == "tns")
    assert (tns.proto, tns.ports) == (6, ((2000, 2100),))
    assert next(r for r in rules if r.helper == "rpc-alg").ports == ((111, 111), (2049, 2049))
    checks = {c.name: c for c in doctor.check_rules([hp[n] for n in ("ftp", "sip", "rpc", "tns", "mdns")],
                                                    doctor.Answer(rules))}
    assert checks["rules ftp"].level == doctor.OK and checks["rules sip"].level == doctor.OK
    # RELATED accept for rpc and CT --helper rpc-alg: neither assigns helper "rpc"
    assert checks["rules rpc"].level == doctor.WARN and "alg rules --helper rpc" in checks["rules rpc"].fix
    assert checks["rules tns"].level == doctor.WARN and "none of its ports" in checks["rules tns"].detail
    assert checks["rules mdns"].level == doctor.WARN


# `iptables-save -t raw` (1.8.9, nf_tables) after `alg rules --helper ftp --family 4 --apply` in a namespace
IPTABLES_SAVE_OWN_CHAIN = """*raw
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:alg-helpers - [0:0]
-A PREROUTING -j alg-helpers
-A OUTPUT -j alg-helpers
-A alg-helpers -p tcp -m tcp --dport 21 -m comment --comment "alg ftp" -j CT --helper ftp
COMMIT
"""


def test_rules_in_algs_own_chain_count_only_when_jumped_to(policy):
    ftp = [policy.helpers["ftp"]]
    [rule] = doctor.parse_iptables_save(IPTABLES_SAVE_OWN_CHAIN)
    assert (rule.helper, rule.where) == ("ftp", "iptables raw alg-helpers")
    assert doctor.check_rules(ftp, doctor.Answer([rule]))[0].level == doctor.OK
    unjumped = "\n".join(line for line in IPTABLES_SAVE_OWN_CHAIN.splitlines() if "-j alg-helpers" not in line)
    assert doctor.parse_iptables_save(unjumped) == []  # a chain nothing jumps to assigns nothing
    [check] = doctor.check_rules(ftp, doctor.Answer([]))
    assert check.level == doctor.WARN and check.fix.startswith("alg rules --helper ftp --apply")


def test_nft_rules_resolve_ct_helper_objects(policy):
    rules = doctor.parse_nft(NFT_RULESET)
    assert {(r.helper, r.proto, r.ports) for r in rules} == {("ftp", 6, ((21, 21),)),
                                                             ("ftp", 6, ((21, 21), (2121, 2121)))}
    assert doctor.check_rules([policy.helpers["ftp"]], doctor.Answer(rules))[0].level == doctor.OK
    sip = doctor.check_rules([policy.helpers["sip"]], doctor.Answer(rules))[0]
    assert sip.level == doctor.WARN


PROC_QUEUES = ("   20  12345     3 2 65531     0     0       17  1\n"
               "   21   4000     0 2 65531     5     2      900  1\n")


def _proc(tmp_path, text):
    (tmp_path / "proc/net/netfilter").mkdir(parents=True)
    (tmp_path / "proc/net/netfilter/nfnetlink_queue").write_text(text)
    return str(tmp_path)


def test_proc_queues_parses_the_kernel_columns(tmp_path):
    from alg.kernel.nfqueue import QueueStats, proc_queues

    q = proc_queues(_proc(tmp_path, PROC_QUEUES))
    assert q[20] == QueueStats(20, 12345, 3, 2, 65531, 0, 0, 17)
    assert (q[21].dropped, q[21].user_dropped) == (5, 2)
    with pytest.raises(FileNotFoundError):
        proc_queues(str(tmp_path / "nowhere"))


def test_queue_health(tmp_path, policy):
    from alg.kernel.nfqueue import proc_queues

    hp = policy.helpers
    queues = doctor.ask(lambda: proc_queues(_proc(tmp_path, PROC_QUEUES)))
    ftp, sip, tns = hp["ftp"], hp["sip"], hp["tns"]
    assert (ftp.queue, sip.queue) == (20, 21) and tns.queue not in (20, 21)
    checks = {c.name.split()[2]: c for c in doctor.check_queues([ftp, sip, tns], queues, {"tns"})}
    assert checks["(ftp)"].level == doctor.OK and "port 12345" in checks["(ftp)"].detail
    assert checks["(sip)"].level == doctor.WARN and "raise queue_len" in checks["(sip)"].fix
    assert "5 dropped (queue full), 2 dropped" in checks["(sip)"].detail
    assert checks["(tns)"].level == doctor.WARN and "nobody reads" in checks["(tns)"].detail
    assert doctor.check_queues([tns], queues, set())[0].level == doctor.OK  # not registered, not bound
    missing = doctor.check_queues([tns], doctor.ask(lambda: proc_queues(str(tmp_path / "x"))), None)
    assert missing[0].level == doctor.WARN and "modprobe nfnetlink_queue" in missing[0].fix


def test_daemon_pressure_is_shown_with_the_fix():
    status = {"pid": 1, "verdicts": 10, "queue_errors": 0, "helpers": {
        "sip": {"classes": {"audio": {"refused": {"kernel-full": 7}, "kernel_failed": {"ENOSPC": 7}}}}}}
    checks = doctor.check_daemon(status)
    warn = [c for c in checks if c.level == doctor.WARN]
    assert warn and "expect_hashsize" in warn[0].fix and "7" in warn[0].detail


BIND_QUEUE = """
import time
from alg.kernel.nfqueue import QueueBinding
q = QueueBinding({queue}, 16)
print("ready", flush=True)
time.sleep(60)
"""


def _doctor(ns: str, *prefix: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *prefix, sys.executable, "-m", "alg", "doctor"],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.kernel
def test_doctor_on_the_host_kernel(kernel_ok, policy):
    """In a fresh namespace with alg's ftp rules and ftp's queue bound: rules and queue are found;
    the kernel's missing pieces fail with their reason; without CAP_NET_ADMIN every check is still
    printed, those that need it say so, and the exit status is 1."""
    ns, ftp = "alg-nd-doctor", policy.helpers["ftp"]
    subprocess.run(["ip", "netns", "add", ns], check=True)
    q = None
    try:
        rules = subprocess.run([sys.executable, "-m", "alg", "rules", "--helper", "ftp"], capture_output=True,
                               text=True, check=True).stdout
        subprocess.run(["ip", "netns", "exec", ns, "iptables-restore", "--noflush"], input=rules, text=True,
                       check=True)
        q = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", BIND_QUEUE.format(queue=ftp.queue)],
                             stdout=subprocess.PIPE, text=True)
        assert q.stdout.readline().strip() == "ready"
        root = _doctor(ns)
        lines = {ln.split(":")[0][6:]: ln for ln in root.stdout.splitlines() if not ln.startswith(" ")}
        assert root.returncode == 1 and root.stderr == "", root.stderr
        assert lines["rules ftp"].startswith("ok") and "iptables raw" in lines["rules ftp"]
        assert lines[f"queue {ftp.queue} (ftp)"].startswith("ok ") and "bound by netlink port" in root.stdout
        assert lines["nf_conntrack_netlink"].startswith("ok")
        cth = lines["nfnetlink_cthelper"]
        assert cth.startswith("ok") or "CONFIG_NF_CT_NETLINK_HELPER" in cth
        glue = lines["nfqueue conntrack glue"]
        config = doctor.kernel_config()
        if config is not None:  # the probe's answer agrees with how the kernel was built
            want = config[0].get(doctor.GLUE) == "y"
            assert glue.startswith("ok" if want else "fail") and "NFQA_CFG_F_CONNTRACK" in glue, glue
        bare = _doctor(ns, "setpriv", "--inh-caps=-net_admin", "--bounding-set=-net_admin")
        names = [ln.split(":")[0][6:] for ln in bare.stdout.splitlines() if not ln.startswith(" ")]
        assert bare.returncode == 1 and "Operation not permitted" not in bare.stderr, bare.stderr
        assert set(names) - {"rules"} == set(lines) - {n for n in lines if n.startswith("rules ")}
        needs = {n for n in names if f"{n}: {doctor.NEEDS_ADMIN}" in bare.stdout}
        assert {"nf_conntrack_netlink", "nfnetlink_cthelper", "rules", "expectation table"} <= needs
    finally:
        if q is not None:
            q.kill()
            q.wait()
        subprocess.run(["ip", "netns", "del", ns])


def test_logs_carry_syslog_priorities_under_systemd(tmp_path):
    """systemd sets JOURNAL_STREAM to stderr's device:inode; then each line starts with <N>."""
    log = tmp_path / "stderr"
    code = ("import logging; from alg.cli import configure_logging; configure_logging(False); "
            "logging.getLogger('alg.t').error('boom'); logging.getLogger('alg.t').info('fine')")
    for journal in (True, False):
        with log.open("w") as f:
            st = os.fstat(f.fileno())
            env = dict(os.environ, JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}" if journal else "")
            subprocess.run([sys.executable, "-c", code], stderr=f, env=env, check=True)
        lines = log.read_text().splitlines()
        want = ["<3>ERROR alg.t: boom", "<6>INFO alg.t: fine"]
        assert lines == (want if journal else [x[3:] for x in want])


def test_status_text_shows_every_counter(monkeypatch, capsys):
    """The text view of a real daemon's status (fakes for the kernel), as an operator reads it."""
    import argparse

    from fakekernel import FakeKernel, QueuedPacket

    from alg import daemon, daemon_cli
    k = FakeKernel()
    d = daemon.Daemon(load_plugins(), None, kernel=k.ports())
    d._register(d.engine.slots["ftp"])
    k.queues[20].waiting.append(QueuedPacket(1, b"\x45garbage", None, None))
    k._by_packet[1] = k.connect("ftp", 4, 6, "10.0.0.1", "10.0.0.2", 1, 21)
    d.workers[20].serve()
    monkeypatch.setattr(daemon, "read_status", lambda path, timeout=2.0: d.status())
    monkeypatch.setattr(d, "_queue_kernel", lambda: {"ftp": {"waiting": 2, "dropped_full": 5, "dropped_socket": 0}})
    args = argparse.Namespace(format="text", socket="/nonexistent", policy=None)
    assert daemon_cli.cmd_status(args, load_plugins()) == 0
    out = capsys.readouterr().out
    assert "1 verdicts" in out and "undecodable" in out
    assert "helper ftp (queue 20): packets 0" in out and "stream gaps 0 (0 given up)" in out
    assert "queue: 2 waiting, dropped by the kernel: 5 queue full (raise queue_len), 0 socket full" in out
    assert "class ftp: created 0, used 0, refused 0, evicted 0, removed 0, kernel failed 0" in out


def test_doctor_says_whether_nated_flows_are_rewritten(tmp_path, policy):
    from dataclasses import replace
    helpers = list(policy.helpers.values())
    (check,) = doctor.check_nat(str(tmp_path), helpers)
    assert check.level == doctor.OK and "nothing to rewrite" in check.detail
    (tmp_path / "sys/module/nf_nat").mkdir(parents=True)
    (check,) = doctor.check_nat(str(tmp_path), helpers)
    assert check.level == doctor.OK and "nat-follow-master" in check.detail
    checks = doctor.check_nat(str(tmp_path), [replace(helpers[0], nat=False), *helpers[1:]])
    assert checks[-1].level == doctor.WARN and helpers[0].name in checks[-1].detail and "nat = false" in checks[-1].fix
