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


def test_rules_assign_every_port_and_accept_related(policy):
    out = subprocess.run([sys.executable, "-m", "alg", "rules", "--helper", "ftp"], capture_output=True, text=True)
    assert out.returncode == 0
    text = out.stdout
    assert "-A PREROUTING -p tcp --dport 21 -m comment --comment \"alg ftp\" -j CT --helper ftp" in text
    assert "--ctstate RELATED -m helper --helper ftp" in text
    assert text.count("COMMIT") == 2


def test_rules_unknown_helper_exits_2():
    out = subprocess.run([sys.executable, "-m", "alg", "rules", "--helper", "nosuch"], capture_output=True, text=True)
    assert out.returncode == 2 and "nosuch" in out.stderr


def test_nft_rules_name_ct_helper_objects():
    out = subprocess.run([sys.executable, "-m", "alg", "rules", "--nft", "--helper", "ftp"], capture_output=True,
                         text=True)
    assert 'type "ftp" protocol tcp' in out.stdout and 'ct helper set "ftp-tcp"' in out.stdout


@pytest.mark.kernel
def test_rules_apply_in_a_namespace(kernel_ok):
    ns = "alg-rules-t"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        for tool, fmt in (("iptables-restore", "--iptables"), ("ip6tables-restore", "--iptables")):
            rules = subprocess.run([sys.executable, "-m", "alg", "rules", fmt, "--helper", "ftp"], capture_output=True,
                                   text=True, check=True).stdout
            r = subprocess.run(["ip", "netns", "exec", ns, tool, "--noflush"], input=rules, capture_output=True,
                               text=True)
            assert r.returncode == 0, r.stderr
        # nft resolves a ct helper object at load: only helpers the kernel knows (here the in-kernel ftp)
        nft = subprocess.run([sys.executable, "-m", "alg", "rules", "--nft", "--helper", "ftp"], capture_output=True,
                             text=True).stdout
        r = subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=nft, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        saved = subprocess.run(["ip", "netns", "exec", ns, "iptables-save", "-t", "raw"], capture_output=True,
                               text=True).stdout
        assert "--helper ftp" in saved
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
