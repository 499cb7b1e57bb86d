"""Firewall pairs (alg.ha, README "High availability"): the conntrackd Sync section alg prints, the pair's
doctor checks, expectations a pair's sync commits adopted from the kernel's events, and two daemons in two
namespaces of one kernel sharing one helper registration. The whole pair runs in tests/lab/scenarios/pair.sh."""

from __future__ import annotations

import errno as E
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fakekernel import FakeKernel
from test_daemon_path import CLIENT, SERVER, Tcp, daemon

from alg.daemon.reconciler import Reconciler
from alg.doctor import FAIL, OK, WARN, Answer
from alg.ha import (SyncConf, SyncLink, check_conntrackd, check_events, check_registered, pair_checks,
                    read_sync_conf, sync_names, sync_section, synced_by, unix_reachable)
from alg.kernel.ctnetlink import ExpectationEvent, KernelExpectation
from alg.model import FlowTuple
from alg.plugins import load_plugins
from alg.policy import load_policy

HOST = load_plugins()
SPECS = {n: c.spec for n, c in HOST.helpers.items()}
ip = ipaddress.ip_address


def alg(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "alg", *args], capture_output=True, text=True)


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    """ftp as is, SIP renamed (the kernel's own helper is "sip"), TNS disabled."""
    d = tmp_path / "policy"
    d.mkdir()
    (d / "ftp.toml").write_text('helper = "ftp"\nqueue = 5\n')
    (d / "sip.toml").write_text('helper = "sip"\nname = "alg-sip"\nqueue = 6\n')
    (d / "tns.toml").write_text('helper = "tns"\nenabled = false\nqueue = 7\n')
    return d


def helpers(policy_dir: Path) -> list:
    return list(load_policy([str(policy_dir)], SPECS, only_listed=True).helpers.values())


# ------------------------------------------------------------------ alg conntrackd-sync
def test_the_sync_section_lists_the_enabled_helpers_kernel_names(policy_dir):
    r = alg("conntrackd-sync", "--policy", str(policy_dir), "--interface", "sync0", "--address", "10.0.3.1",
            "--peer", "10.0.3.2")
    assert r.returncode == 0, r.stderr
    conf = read_sync_conf(r.stdout)
    assert conf.mode == "FTFW" and sorted(conf.expectation_sync or []) == ["alg-sip", "ftp"]
    body = [line.strip() for line in r.stdout.splitlines() if not line.lstrip().startswith("#")]
    for line in ("IPv4_address 10.0.3.1", "IPv4_Destination_Address 10.0.3.2", "Interface sync0", "Port 3780",
                 "DisableExternalCache Off"):
        assert line in body
    assert "tns" not in body and "sip" not in body  # disabled; the kernel name, not the implementation's


def test_ipv6_link_and_port():
    hp = [h for h in load_policy([], SPECS, only_listed=False).helpers.values() if h.name == "ftp"]
    text = sync_section(hp, SyncLink("eth2", ip("fd00:3::1"), ip("fd00:3::2"), 3781))
    assert "IPv6_address fd00:3::1" in text and "IPv6_Destination_Address fd00:3::2" in text and "Port 3781" in text


@pytest.mark.parametrize("args, message", [
    (("--address", "fd00:3::1", "--peer", "10.0.3.2"), "one family for both ends"),
    (("--address", "10.0.3.1", "--peer", "10.0.3.1"), "the other node's"),
    (("--address", "10.0.3.1", "--peer", "10.0.3.2", "--interface", "a-name-far-too-long"), "interface"),
    (("--address", "10.0.3.999", "--peer", "10.0.3.2"), "10.0.3.999"),
])
def test_bad_links_are_usage_errors(args, message):
    argv = ["conntrackd-sync", "--interface", "sync0", *args]
    r = alg(*argv)
    assert r.returncode == 2 and message in r.stderr and not r.stdout


def test_a_policy_without_enabled_helpers_is_refused(tmp_path):
    (tmp_path / "tns.toml").write_text('helper = "tns"\nenabled = false\n')
    r = alg("conntrackd-sync", "--policy", str(tmp_path), "--interface", "s", "--address", "10.0.3.1",
            "--peer", "10.0.3.2")
    assert r.returncode == 2 and "no helper" in r.stderr


def test_conntrackds_prefix_match():
    # conntrack-tools src/filter.c exp_filter_find: strncasecmp(entry, helper, strlen(entry))
    assert synced_by(["SIP"], "sip-5060") == "SIP"
    assert synced_by(["alg-sip"], "sip") is None and synced_by(["ftp"], "ft") is None
    assert synced_by(["*"], "anything") == "*"
    assert sync_names([]) == []


def test_one_line_lists_and_expectation_sync_on():
    conf = read_sync_conf("General {\n UNIX { Path /run/c.ctl }\n Filter From Userspace {\n"
                          "  Protocol Accept { TCP UDP }\n }\n}\nSync {\n Mode NOTRACK { }\n"
                          " Options { ExpectationSync On }\n}\n")
    assert conf == SyncConf("/run/c.ctl", "NOTRACK", ["*"], ["tcp", "udp"], None)
    assert read_sync_conf("General { }\n") == SyncConf()


# ------------------------------------------------------------------ the pair's checks
def test_events_setting():
    assert check_events(1).level == OK
    assert check_events(2).level == WARN and "listener" in check_events(2).detail
    assert check_events(0).level == FAIL
    assert check_events(None).level == WARN


def _entry(name: str, l3: int, proto: int, classes: int) -> dict:
    return {"name": name, "l3": l3, "proto": proto, "queue": 5, "enabled": True,
            "classes": [{"name": f"c{i}", "max_expected": 1, "timeout": 300} for i in range(classes)]}


def test_helpers_must_be_registered_for_each_family_protocol_and_class(policy_dir):
    hps = helpers(policy_dir)
    sip = next(h for h in hps if h.name == "alg-sip")
    ftp_entries = [_entry("ftp", l3, 6, 1) for l3 in (4, 6)]
    sip_entries = [_entry("alg-sip", l3, p, len(sip.classes)) for l3 in (4, 6) for p in sip.protocols]
    ok = check_registered(hps, Answer(ftp_entries + sip_entries))
    assert [c.level for c in ok] == [OK, OK]
    short = sip_entries[:-1] + [_entry("alg-sip", 6, sip.protocols[-1], 1)]
    checks = {c.name: c for c in check_registered(hps, Answer(ftp_entries[:1] + short))}
    assert checks["pair: helper ftp"].level == FAIL and "inet6 tcp" in checks["pair: helper ftp"].detail
    assert checks["pair: helper alg-sip"].level == FAIL
    assert f"(1 of {len(sip.classes)} classes)" in checks["pair: helper alg-sip"].detail
    assert check_registered(hps, Answer(None, E.EPERM, "denied"))[0].detail.startswith("needs CAP_NET_ADMIN")
    assert check_registered(hps, Answer(None))[0].level == FAIL  # no nfnetlink_cthelper


def test_conntrackd_checks(policy_dir):
    hps = helpers(policy_dir)
    reached, unreached = Answer(True), Answer(None, E.ECONNREFUSED, "Connection refused")
    good = SyncConf("/run/c.ctl", "FTFW", ["ftp", "ALG-SIP"], ["tcp", "udp"])
    assert all(c.level == OK for c in check_conntrackd(good, "c.conf", hps, reached))
    by_name = {c.name: c for c in check_conntrackd(SyncConf("/run/c.ctl", "FTFW", ["ftp"], ["tcp"]), "c.conf", hps,
                                                     unreached)}
    assert by_name["conntrackd socket"].level == FAIL and "Connection refused" in by_name["conntrackd socket"].detail
    assert by_name["ExpectationSync ftp"].level == OK and by_name["ExpectationSync alg-sip"].level == FAIL
    assert by_name["Filter alg-sip"].level == FAIL and "UDP" in by_name["Filter alg-sip"].detail
    assert "Filter ftp" not in by_name
    no_sync = check_conntrackd(SyncConf("/run/c.ctl"), "c.conf", hps, reached)
    assert no_sync[-1].name == "conntrackd sync" and no_sync[-1].level == FAIL
    assert check_conntrackd(SyncConf(), "c.conf", hps, reached)[0].level == FAIL  # no UNIX Path
    assert check_conntrackd(None, "c.conf", hps, reached)[0].level == FAIL


def test_pair_checks_read_the_file_and_ask_its_socket(policy_dir, tmp_path):
    hps = helpers(policy_dir)
    conf = tmp_path / "conntrackd.conf"
    conf.write_text(f"General {{\n\tUNIX {{ Path {tmp_path}/ctl }}\n}}\n"
                    + sync_section(hps, SyncLink("sync0", ip("10.0.3.1"), ip("10.0.3.2"))))
    asked = []
    checks = pair_checks(hps, True, 1, Answer([]), str(conf), reach=lambda p: asked.append(p) or Answer(True))
    assert asked == [f"{tmp_path}/ctl"]
    levels = {c.name: c.level for c in checks}
    assert levels["ExpectationSync ftp"] == levels["ExpectationSync alg-sip"] == levels["conntrackd socket"] == OK
    assert levels["pair: helper ftp"] == FAIL  # nothing registered (Answer([]))
    assert levels["pair: [core] pair"] == OK
    conf.write_text("General {\n")
    checks = {c.name: c.level for c in pair_checks(hps, False, 1, Answer([]), str(conf))}
    assert checks["conntrackd"] == FAIL and checks["pair: [core] pair"] == WARN


def test_unix_reachable(tmp_path):
    path = str(tmp_path / "ctl")
    assert not unix_reachable(path).ok
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.listen(1)
    try:
        assert unix_reachable(path).ok
    finally:
        s.close()


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("conntrackd"), reason="needs root and conntrackd")
def test_conntrackd_runs_with_the_printed_section_and_doctor_sees_it(policy_dir, tmp_path):
    """Kernel tier: conntrackd (the user's) takes alg's Sync section; `alg doctor --conntrackd-conf` asks it."""
    ns = f"alg-ha-t{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    proc = None
    try:
        subprocess.run(["ip", "-n", ns, "link", "add", "sync0", "type", "veth", "peer", "name", "sync1"], check=True)
        for cmd in ("addr add 10.0.3.1/24 dev sync0", "link set sync0 up", "link set sync1 up"):
            subprocess.run(["ip", "-n", ns, *cmd.split()], check=True)
        conf = tmp_path / "conntrackd.conf"
        general = (f"General {{\n\tLockFile {tmp_path}/lock\n\tLogFile {tmp_path}/log\n\tSyslog off\n"
                   f"\tUNIX {{ Path {tmp_path}/ctl }}\n}}\n")
        r = alg("conntrackd-sync", "--policy", str(policy_dir), "--interface", "sync0", "--address", "10.0.3.1",
                "--peer", "10.0.3.2")
        conf.write_text(general + r.stdout)
        proc = subprocess.Popen(["ip", "netns", "exec", ns, "conntrackd", "-C", str(conf)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not unix_reachable(f"{tmp_path}/ctl").ok:
            assert proc.poll() is None, (tmp_path / "log").read_text()
            assert time.monotonic() < deadline
            time.sleep(0.1)
        stats = subprocess.run(["ip", "netns", "exec", ns, "conntrackd", "-C", str(conf), "-s", "expect"],
                               capture_output=True, text=True)
        assert stats.returncode == 0 and "cache internal" in stats.stdout  # expectation sync is on
        d = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m", "alg", "doctor", "--policy",
                            str(policy_dir), "--conntrackd-conf", str(conf)], capture_output=True, text=True)
        lines = d.stdout.splitlines()
        for name in ("conntrackd socket", "conntrackd sync", "ExpectationSync ftp", "ExpectationSync alg-sip"):
            assert any(line.startswith(f"ok    {name}:") for line in lines), d.stdout
        assert any(line.startswith("ok    pair: conntrack events:") or line.startswith("warn  pair: conntrack events:")
                   for line in lines), d.stdout
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(5)
        subprocess.run(["ip", "netns", "del", ns], check=False)


# ------------------------------------------------------------------ adoption of what the sync commits
class Events:
    """An events port that hands out the given events once."""

    def __init__(self, events: list[ExpectationEvent]):
        self.events = events

    def fileno(self) -> int:
        return -1

    def read(self) -> list[ExpectationEvent]:
        out, self.events = self.events, []
        return out

    def close(self) -> None:
        pass


def _committed(master: FlowTuple, dport: int) -> KernelExpectation:
    """An expectation of helper ftp as conntrackd commits it on the backup (alg did not ask for it)."""
    return KernelExpectation("ftp", 0, FlowTuple(4, 6, ip(CLIENT), ip(SERVER), 0, dport),
                             FlowTuple(4, 6, ip("255.255.255.255"), ip("255.255.255.255"), 0, 0xFFFF), master,
                             290, 0, 11)


def test_an_expectation_committed_while_alg_runs_is_adopted_and_counts_against_expect_max(tmp_path):
    k = FakeKernel()
    d = daemon(tmp_path, k)
    c = Tcp(k, d, 7, "ftp", 21)  # the replicated control connection, now through this node
    master = FlowTuple(4, 6, ip(CLIENT), ip(SERVER), 40000, 21)
    committed = _committed(master, 50000)
    r = Reconciler(Events([ExpectationEvent("new", committed)]), d.engine, d.sink, d.stats)
    r.read()
    (e,) = list(d.engine.table)
    assert (e.helper, e.cls, e.dport, e.kernel_master) == ("ftp", "ftp", 50000, master)
    st = d.status()
    assert st["adopted"] == 1 and st["expectations"] == 1
    assert st["helpers"]["ftp"]["classes"]["ftp"]["adopted"] == 1
    k.hold(e, master)  # the kernel holds it
    # the next PASV on that master: ExpectMax 1, so the adopted one makes room (alg withdraws it)
    c.send(True, b"220 ready\r\n")
    (new,) = c.send(True, b"227 Entering Passive Mode (10,0,2,2,195,81).\r\n")
    assert e.key not in k.expectations and [x.dport for x in d.engine.table] == [50001]
    assert d.status()["helpers"]["ftp"]["classes"]["ftp"]["evicted"] == 1


def test_an_adopted_expectation_that_is_used_ends(tmp_path):
    k = FakeKernel()
    d = daemon(tmp_path, k)
    master = FlowTuple(4, 6, ip(CLIENT), ip(SERVER), 40000, 21)
    committed = _committed(master, 50002)
    events = Events([ExpectationEvent("new", committed)])
    r = Reconciler(events, d.engine, d.sink, d.stats)
    r.read()
    events.events = [ExpectationEvent("destroy", committed)]  # the data connection came
    r.read()
    assert len(d.engine.table) == 0 and d.status()["helpers"]["ftp"]["classes"]["ftp"]["used"] == 1
    # another helper's (not alg's) and a new-then-destroyed pair in one read are not adopted
    other = KernelExpectation("irc", 0, committed.tuple, committed.mask, master, 290, 0, 12)
    events.events = [ExpectationEvent("new", other), ExpectationEvent("new", committed),
                     ExpectationEvent("destroy", committed)]
    r.read()
    assert len(d.engine.table) == 0 and d.stats.adopted == 1


# ------------------------------------------------------------------ two daemons, one kernel
def test_a_stopping_daemon_leaves_entries_another_namespaces_daemon_registered(tmp_path, monkeypatch):
    from alg.daemon import supervisor
    k = FakeKernel()
    d = daemon(tmp_path, k)
    removed = []
    monkeypatch.setattr(k, "unregister", lambda name, proto, l3=4: removed.append((name, l3, proto)))
    monkeypatch.setattr(supervisor, "shared_entries", lambda: {("ftp", 4, 6)})
    d._instance = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    d.stop()
    assert removed == [("ftp", 6, 6)]  # IPv4 stays: the other namespace's alg still serves it


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root (a second namespace)")
def test_shared_entries_are_those_of_live_daemons_in_other_namespaces(tmp_path):
    from alg.daemon import shared_entries
    other = subprocess.Popen(["unshare", "--net", "sleep", "30"])
    try:
        deadline = time.monotonic() + 5
        mine = os.stat("/proc/self/ns/net").st_ino
        while (ino := os.stat(f"/proc/{other.pid}/ns/net").st_ino) == mine:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        entries = [["ftp", 4, 6], ["ftp", 6, 6]]
        (tmp_path / f"helpers-net{ino}.json").write_text(json.dumps({"pid": other.pid, "helpers": entries}))
        (tmp_path / f"helpers-net{mine}.json").write_text(json.dumps({"pid": other.pid, "helpers": [["own", 4, 6]]}))
        (tmp_path / "helpers-net1.json").write_text(json.dumps({"pid": other.pid, "helpers": [["wrongns", 4, 6]]}))
        (tmp_path / "helpers-net2.json").write_text("{half")
        assert shared_entries(str(tmp_path)) == {("ftp", 4, 6), ("ftp", 6, 6)}
    finally:
        other.kill()
        other.wait()
    assert shared_entries(str(tmp_path)) == set()  # its daemon is gone


def test_a_stopping_daemon_withdraws_its_state_file_before_it_looks_at_the_others(tmp_path, monkeypatch):
    """Two daemons stopping at once: each must be able to see the other gone, or both would leave the
    shared registration enabled with nobody reading its queues."""
    from alg.daemon import supervisor
    monkeypatch.setattr(supervisor, "STATE_DIR", str(tmp_path / "state"))
    k = FakeKernel()
    d = daemon(tmp_path, k)
    d._write_state()
    seen = []
    monkeypatch.setattr(supervisor, "shared_entries", lambda: seen.append(os.path.exists(supervisor.state_file()))
                        or set())
    d._instance = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    d.stop()
    assert seen == [False]
