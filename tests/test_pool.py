"""Scale-out (alg.daemon.pool): N instances of each helper, the rules that spread
new flows over them, the budget split, N worker processes whose status is
merged, and a dead worker restarted. The workers are real forked processes
reading queues of the kernel in userspace (tests/fakekernel.py)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from multiprocessing import Pipe
from pathlib import Path

import pytest
from fakekernel import SYN, FakeKernel
from test_daemon_path import CLIENT, SERVER, Tcp

from alg import rules
from alg.daemon import pool as pool_mod
from alg.daemon.pool import Pool, Shard, merge_status, shard_policy
from alg.errors import ConfigError
from alg.plugins import load_plugins
from alg.policy import INSTANCE_QUEUE_STRIDE, instance_policies, load_policy

HOST = load_plugins()
SPECS = {n: c.spec for n, c in HOST.helpers.items()}
PASV = b"227 Entering Passive Mode (10,0,2,2,195,%d).\r\n"


def files(tmp_path: Path, core: str = "workers = 2\n", **helpers: str) -> list[str]:
    (tmp_path / "alg.toml").write_text(f'[core]\nstatus_socket = "{tmp_path}/alg.sock"\n{core}')
    for name, text in (helpers or {"ftp": 'helper = "ftp"\nfamilies = ["ipv4"]\n'}).items():
        (tmp_path / f"{name}.toml").write_text(text)
    return [str(tmp_path)]


def test_each_helper_has_n_named_instances_on_their_own_queues(tmp_path):
    policy = load_policy(files(tmp_path, sip='helper = "sip"\n', ftp='helper = "ftp"\n'), SPECS, only_listed=True)
    sip = instance_policies(policy.helpers["sip"], 2)
    assert [(i.name, i.queue) for i in sip] == [("sip0", 21), ("sip1", 21 + INSTANCE_QUEUE_STRIDE)]
    assert all(i.classes == policy.helpers["sip"].classes for i in sip)  # ExpectMax per master: not divided
    assert instance_policies(policy.helpers["sip"], 1) == [policy.helpers["sip"]]  # one worker: as before


@pytest.mark.parametrize("helper, key", [
    ('helper = "sip"\nname = "fifteen-chars-x"\n', "name"),  # 15 + the instance digit is too long
    ('helper = "sip"\nqueue = 65000\n', "queue"),  # its second instance would need 69096
    ('helper = "sip"\nqueue = 4116\n', "queue"),  # ftp's second instance reads 4116
])
def test_instances_the_kernel_cannot_take_are_refused_with_file_and_key(tmp_path, helper, key):
    with pytest.raises(ConfigError) as exc:
        load_policy(files(tmp_path, ftp='helper = "ftp"\n', sip=helper), SPECS, only_listed=True)
    assert exc.value.key == key and exc.value.file.endswith("sip.toml")


def test_nft_spreads_new_flows_by_address_hash_and_iptables_deals_them(tmp_path):
    policy = load_policy(files(tmp_path, sip='helper = "sip"\nprotocols = ["udp"]\n'), SPECS, only_listed=True)
    hps = list(policy.helpers.values())
    text = rules.nft(hps, workers=2)
    assert 'type "sip0" protocol udp' in text and 'type "sip1" protocol udp' in text
    assert ('meta nfproto ipv4 udp dport { 5060 } ct helper set jhash ip saddr . ip daddr mod 2 '
            'map { 0 : "sip0-udp", 1 : "sip1-udp" }') in text
    assert "jhash ip6 saddr . ip6 daddr mod 2" in text
    ipt = rules.iptables(hps, 4, workers=2)
    assert "--dport 5060 -m statistic --mode nth --every 2 --packet 1 -m comment --comment \"alg sip1\" " \
           "-j CT --helper sip1" in ipt
    assert "-m helper --helper sip0 " in ipt and "-m helper --helper sip1 " in ipt
    assert rules.nft(hps) == rules.nft(hps, workers=1) and "jhash" not in rules.nft(hps)


@pytest.mark.kernel
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("nft") or not shutil.which("ip"),
                    reason="needs root, nft and ip (network namespaces)")
def test_the_spreading_map_loads_in_the_kernel(tmp_path):
    """The host kernel has no nfnetlink_cthelper: the ct helper objects take the in-kernel ftp
    helper as their type instead of ftp0/ftp1, the rest of the file is alg's, loaded whole."""
    policy = load_policy(files(tmp_path), SPECS, only_listed=True)
    text = rules.nft(list(policy.helpers.values()), chains=(), workers=2)
    text = text.replace('type "ftp0"', 'type "ftp"').replace('type "ftp1"', 'type "ftp"')
    ns = f"alg-pool{os.getpid() % 1000}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        r = subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=text, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        listed = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "table", "inet", "alg"],
                                capture_output=True, text=True, check=True).stdout
        assert 'jhash ip saddr . ip daddr mod 2 map { 0 : "ftp0-tcp", 1 : "ftp1-tcp" }' in listed
    finally:
        subprocess.run(["ip", "netns", "del", ns])


def test_the_budget_is_split_so_that_the_workers_together_never_exceed_it(tmp_path):
    paths = files(tmp_path, "workers = 3\nexpect_budget = 7\nsource_share = 1.0\n")
    policy = load_policy(paths, SPECS, only_listed=True)
    shares = [shard_policy(policy, i, 3) for i in range(3)]
    assert [s.core.expect_budget for s in shares] == [3, 2, 2]  # adds up to 7
    assert [list(s.helpers) for s in shares] == [["ftp0"], ["ftp1"], ["ftp2"]]
    assert sum(s.helpers[f"ftp{i}"].max_flows for i, s in enumerate(shares)) == policy.helpers["ftp"].max_flows
    assert sum(s.core.memory_budget_mb for s in shares) == policy.core.memory_budget_mb
    # worker 1 serves ftp1 alone: its third passive port is refused for the budget
    k = FakeKernel()
    mine, theirs = Pipe()
    w = Shard(HOST, paths, 1, 3, theirs, k.ports())
    w.start()
    assert mine.recv() == ("ready", os.getpid()) and list(k.queues) == [20 + INSTANCE_QUEUE_STRIDE]
    opened = []
    for i in range(3):
        c = Tcp(k, w, 20 + INSTANCE_QUEUE_STRIDE, "ftp1", 21, sport=41000 + i)
        c.send(True, b"220 ready\r\n")
        opened += c.send(True, PASV % (80 + i))
    assert len(opened) == 2
    assert w.engine.stats()["helpers"]["ftp1"]["classes"]["ftp"]["refused"] == {"budget": 1}
    assert w.workers[20 + INSTANCE_QUEUE_STRIDE].registered  # the supervisor registered ftp1: the kernel evicts
    w.stop()
    alone = Shard(HOST, paths, 1, 3, theirs, FakeKernel().ports(), registered=False)  # --no-cthelper
    alone.start()
    assert not alone.workers[20 + INSTANCE_QUEUE_STRIDE].registered
    alone.stop()


def test_merged_status_adds_counters_and_keeps_instances_apart():
    a = {"verdicts": 3, "held": 0.003, "held_max": 0.002, "verdict_us_max": 2000.0, "expectations": 1,
         "expect_budget": 3, "kernel_errors": {"ENOENT": 1}, "conntrack_from_queue": True,
         "helpers": {"ftp0": {"packets": 3}}, "queues": {"ftp0": 20}}
    b = {"verdicts": 1, "held": 0.001, "held_max": 0.004, "verdict_us_max": 4000.0, "expectations": 0,
         "expect_budget": 2, "kernel_errors": {"ENOENT": 2, "EBUSY": 1}, "conntrack_from_queue": False,
         "helpers": {"ftp1": {"packets": 1}}, "queues": {"ftp1": 4116}}
    m = merge_status([a, b])
    assert (m["verdicts"], m["expectations"], m["expect_budget"]) == (4, 1, 5)
    assert m["kernel_errors"] == {"ENOENT": 3, "EBUSY": 1} and m["conntrack_from_queue"] is False
    assert m["helpers"] == {"ftp0": {"packets": 3}, "ftp1": {"packets": 1}}
    assert m["verdict_us_max"] == 4000.0 and m["verdict_us_mean"] == 1000.0 and m["held_max"] == 0.004
    assert a["helpers"] == {"ftp0": {"packets": 3}}  # the workers' documents are left as they were


def _pasv_session(k: FakeKernel, queue: int, helper: str, sport: int) -> None:
    cid = k.connect(helper, 4, 6, CLIENT, SERVER, sport, 21)
    k.queue_up(queue, cid, (False, b"", SYN), (True, b"", SYN | 0x10), (True, b"220 ready\r\n", 0x18),
               (True, PASV % (sport % 100), 0x18))


def _until(cond, what: str, timeout: float = 20.0, step=None):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = cond()
        if value:
            return value
        if step:
            step()
        else:
            time.sleep(0.02)
    raise AssertionError(what)


@pytest.fixture
def pool_of_two(tmp_path, monkeypatch):
    """Two forked workers over a kernel in userspace, each with one FTP session waiting in its queue."""
    monkeypatch.setattr(pool_mod, "claim_namespace", lambda: socket.socket(socket.AF_UNIX))
    monkeypatch.setattr(pool_mod, "state_file", lambda: str(tmp_path / "state.json"))
    monkeypatch.setattr(pool_mod, "write_state", lambda registered: None)
    k = FakeKernel()
    _pasv_session(k, 20, "ftp0", 40001)
    _pasv_session(k, 20 + INSTANCE_QUEUE_STRIDE, "ftp1", 40002)
    p = Pool(HOST, files(tmp_path), kernel=k.ports(), kernel_factory=k.ports)
    p.start()
    yield p, k
    p.stop()


def test_two_workers_serve_their_instances_and_status_merges_them(pool_of_two):
    p, k = pool_of_two
    assert set(k.helpers) == {"ftp0", "ftp1"}  # registered once both workers had bound their queues
    pids = {w.pid for w in p.workers}
    assert len(pids) == 2 and os.getpid() not in pids
    st = _until(lambda: (s := p.status())["verdicts"] == 8 and s, "the workers did not serve their queues")
    assert st["expectations"] == 2 and st["expect_budget"] == 4096  # one each; the shares add up to the whole
    assert {n: h["packets"] for n, h in st["helpers"].items()} == {"ftp0": 4, "ftp1": 4}
    assert {n: h["classes"]["ftp"]["created"] for n, h in st["helpers"].items()} == {"ftp0": 1, "ftp1": 1}
    assert st["queues"] == {"ftp0": 20, "ftp1": 20 + INSTANCE_QUEUE_STRIDE}
    assert [(w["index"], w["answered"]) for w in st["workers"]] == [(0, True), (1, True)]


def test_a_killed_worker_is_restarted_and_its_helpers_stay_registered(pool_of_two):
    p, k = pool_of_two
    _until(lambda: p.status()["verdicts"] == 8, "the workers did not serve their queues")
    dead = p.workers[1].pid
    os.kill(dead, signal.SIGKILL)
    _until(lambda: p.workers[1].restarts == 1 and p.workers[1].alive(), "the worker was not restarted",
           step=lambda: p.step(0.05))
    assert p.workers[1].pid != dead and p.workers[0].restarts == 0
    assert set(k.helpers) == {"ftp0", "ftp1"}
    st = p.status()  # the new worker has bound ftp1's queue again and answers
    assert st["queues"] == {"ftp0": 20, "ftp1": 20 + INSTANCE_QUEUE_STRIDE}
    assert [(w["alive"], w["answered"], w["restarts"]) for w in st["workers"]] == [(True, True, 0), (True, True, 1)]


def test_stopping_removes_the_helpers_first_and_the_workers_leave_cleanly(pool_of_two):
    p, k = pool_of_two
    processes = [w.process for w in p.workers]
    p.stop()
    assert k.helpers == {} and [pr.exitcode for pr in processes] == [0, 0]


def test_doctor_reads_the_spreading_map_as_assigning_every_instance(tmp_path):
    from alg import doctor
    policy = load_policy(files(tmp_path), SPECS, only_listed=True)
    hp = policy.helpers["ftp"]
    listed = rules.nft([hp], chains=(), workers=2).replace("\tl3proto ip\n", "")  # as `nft list ruleset` prints
    found = doctor.parse_nft(listed)
    assert sorted((r.helper, r.ports) for r in found) == [("ftp0", ((21, 21),))] * 2 + [("ftp1", ((21, 21),))] * 2
    checks = doctor.check_rules(instance_policies(hp, 2), doctor.Answer(found))
    assert [c.level for c in checks] == [doctor.OK, doctor.OK]


SUPERVISOR = """
import os, socket, sys, time
sys.path.insert(0, sys.argv[1])
from fakekernel import FakeKernel
from alg.daemon import pool
from alg.daemon.pool import Pool
from alg.plugins import load_plugins
pool.claim_namespace = lambda: socket.socket(socket.AF_UNIX)
pool.write_state = lambda registered: None
k = FakeKernel()
p = Pool(load_plugins(), [sys.argv[2]], kernel=k.ports(), kernel_factory=k.ports)
p.start()
print(" ".join(str(w.pid) for w in p.workers), flush=True)
time.sleep(60)
"""


def test_the_workers_stop_when_the_supervisor_is_killed(tmp_path):
    """Left alone they would hold the queues and the namespace's claim with nobody to remove the helpers."""
    import sys
    proc = subprocess.Popen([sys.executable, "-c", SUPERVISOR, str(Path(__file__).parent), files(tmp_path)[0]],
                            stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == 2
    finally:
        proc.kill()
        proc.wait()

    def gone(pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] == "Z"  # exited, not yet reaped
        except FileNotFoundError:
            return True
    _until(lambda: all(gone(p) for p in pids), "the workers outlived their supervisor")


def test_a_worker_that_answers_late_is_reported_and_its_late_answer_not_taken_for_the_next(pool_of_two):
    p, _k = pool_of_two
    _until(lambda: p.status()["verdicts"] == 8, "the workers did not serve their queues")
    slow = p.workers[1]
    os.kill(slow.pid, signal.SIGSTOP)
    try:
        st = p.status()
        assert [w["answered"] for w in st["workers"]] == [True, False] and list(st["helpers"]) == ["ftp0"]
        assert st["verdicts"] == 4  # worker 0's alone: the figures say what they cover (workers[].answered)
    finally:
        os.kill(slow.pid, signal.SIGCONT)
    st = p.status()
    assert [w["answered"] for w in st["workers"]] == [True, True] and st["verdicts"] == 8
    assert not slow.conn.poll(0.3)  # nothing left over to be read as the next request's answer


def test_a_worker_that_stops_answering_is_killed_and_restarted(pool_of_two, monkeypatch):
    """Stuck in a loop that never comes back (here: stopped), it serves nobody."""
    monkeypatch.setattr(pool_mod, "PING_INTERVAL", 0.1)
    monkeypatch.setattr(pool_mod, "HANG_TIMEOUT", 1.0)
    p, _k = pool_of_two
    stuck = p.workers[0].pid
    os.kill(stuck, signal.SIGSTOP)
    _until(lambda: p.workers[0].restarts == 1 and p.workers[0].alive(), "the stuck worker was not replaced",
           step=lambda: p.step(0.05))
    assert p.workers[0].pid != stuck and p.workers[1].restarts == 0  # the other one answers its pings
    assert [w["answered"] for w in p.status()["workers"]] == [True, True]


def test_a_reload_that_would_move_instances_is_refused_and_one_that_does_not_reaches_the_workers(pool_of_two,
                                                                                                 tmp_path):
    p, k = pool_of_two
    (tmp_path / "ftp.toml").write_text('helper = "ftp"\nfamilies = ["ipv4"]\nqueue = 30\n')
    assert not p.reload()  # the kernel's helpers would need other queues: restart alg for that
    (tmp_path / "ftp.toml").write_text('helper = "ftp"\nfamilies = ["ipv4"]\n[classes.ftp]\nexpect_max = 2\n')
    assert p.reload()
    assert [c.max_expected for c in k.helpers["ftp1"].classes] == [2]  # registered again with the new class
    st = _until(lambda: (s := p.status())["workers"] and all(w["answered"] for w in s["workers"]) and s,
                "the workers did not come back after reloading")
    assert st["queues"] == {"ftp0": 20, "ftp1": 20 + INSTANCE_QUEUE_STRIDE}
