"""`alg rules` and `alg doctor` logic, and the verdict guarantee, without a kernel."""

from __future__ import annotations

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


class FakeKernel:
    """Queues and cthelper as the daemon sees them; refuses what it is told to."""

    def __init__(self):
        self.bound: dict = {}
        self.helpers: dict = {}
        self.refuse_queue: set = set()
        self.refuse_helper: set = set()

    def bind(self, num, max_len, callback):
        if num in self.refuse_queue:
            raise KernelError(16, f"bind queue {num}")
        self.bound[num] = callback

    def rebind(self, num, callback):
        self.bound[num] = callback

    def unbind(self, num):
        self.bound.pop(num, None)

    def register(self, hp, priv_data_len):
        if hp.name in self.refuse_helper:
            raise KernelError(16, "cthelper-new")
        self.helpers[hp.name] = hp

    def set_status(self, name, proto, enabled, l3=4):
        pass

    def unregister(self, name, proto, l3=4):
        self.helpers.pop(name, None)


def test_a_reload_the_kernel_refuses_keeps_the_running_policy_whole(tmp_path):
    from alg.daemon import Daemon
    pol = tmp_path / "ftp.toml"
    pol.write_text('helper = "ftp"\nqueue = 7\n')
    d = Daemon(load_plugins(), [str(pol)])
    d.queues = d.cthelper = k = FakeKernel()
    d._register(d.engine.slots["ftp"])
    running = d.engine.slots["ftp"]

    def unchanged():
        assert list(k.bound) == [7] and k.helpers["ftp"].queue == 7
        assert d.engine.slots["ftp"] is running and d.policy.helpers["ftp"].queue == 7

    pol.write_text('helper = "ftp"\nqueue = 9\n')
    k.refuse_queue = {9}  # another program holds queue 9
    d.reload()
    unchanged()
    k.refuse_queue, k.refuse_helper = set(), {"ftp"}  # the kernel will not change the helper (EBUSY)
    d.reload()
    unchanged()  # queue 9 was bound for it, and let go again
    pol.write_text("queue = [")
    d.reload()
    unchanged()
    k.refuse_helper = set()
    pol.write_text('helper = "ftp"\nqueue = 9\n')
    d.reload()
    assert list(k.bound) == [9] and k.helpers["ftp"].queue == 9 and d.engine.slots["ftp"].policy.queue == 9
    assert d.registered == [("ftp", 4, 6), ("ftp", 6, 6)]
