"""Host-kernel tier for the daemon: the NFQUEUE verdict path with real traffic,
expectations created through ctnetlink, `alg doctor` on this kernel.

The host kernel has no nfnetlink_cthelper, so here alg runs with
`--no-cthelper`: an NFQUEUE rule feeds it the FTP control connection and the
master carries the in-kernel ftp helper (which ctnetlink requires of a master).
The full cthelper path runs in the lab VM (tests/lab/scenarios/ftp.sh)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from netns import CLIENT4, SERVER4, Net
from test_kernel_ftp_differential import serve_one_file

pytestmark = pytest.mark.kernel
ALG = [sys.executable, "-m", "alg"]


def test_alg_doctor_reports_missing_cthelper_on_this_kernel(kernel_ok: None) -> None:
    from alg.kernel.cthelper import Cthelper
    with Cthelper() as c:
        if c.supported():
            pytest.skip("this kernel has nfnetlink_cthelper")
    out = subprocess.run(ALG + ["doctor"], capture_output=True, text=True)
    assert out.returncode == 1
    line = next(x for x in out.stdout.splitlines() if "nfnetlink_cthelper" in x)
    assert line.startswith("fail") and "cannot register userspace helpers" in line


def test_alg_run_without_cthelper_fails_clearly(kernel_ok: None) -> None:
    from alg.kernel.cthelper import Cthelper
    with Cthelper() as c:
        if c.supported():
            pytest.skip("this kernel has nfnetlink_cthelper")
    out = subprocess.run(ALG + ["run"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and "nfnetlink_cthelper" in out.stderr


def ftp_through_alg(prefix: str, queue_rules: list[list[str]], transfers: list,
                    nat: bool = False, pasv_ports: int = 101) -> tuple[dict, str]:
    """vsftpd in the server namespace, curl transfers from the client, the control
    connection's packets queued to `alg -v run --no-cthelper` (queue 7) in the fw by
    `queue_rules`; returns alg's status and log. A transfer may instead be a
    callable, called with (net, policy file, daemon) between transfers."""
    net = Net(prefix)
    with net, tempfile.TemporaryDirectory(prefix="alg-dm-") as tmp:
        conf = serve_one_file(tmp, 50000, pasv_ports)
        (Path(tmp) / "ftp.toml").write_text('helper = "ftp"\nqueue = 7\n')
        sock = f"{tmp}/alg.sock"
        (Path(tmp) / "alg.toml").write_text(f'[core]\nstatus_socket = "{sock}"\n')
        net.fw("iptables", "-t", "raw", "-A", "PREROUTING", "-p", "tcp", "--dport", "21", "-j", "CT", "--helper", "ftp")
        if nat:
            net.fw("iptables", "-t", "nat", "-A", "POSTROUTING", "-o", "s1", "-j", "MASQUERADE")
        for rule in queue_rules:
            net.fw(*rule)
        vsftpd = net.popen("srv", "vsftpd", str(conf))
        daemon = net.popen("fw", *ALG, "-v", "run", "--no-cthelper", "--policy", f"{tmp}/ftp.toml",
                           "--policy", f"{tmp}/alg.toml", stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            for _ in range(100):
                if os.path.exists(sock):
                    break
                time.sleep(0.05)
            for args in transfers:
                if callable(args):
                    args(net, Path(tmp) / "ftp.toml", daemon)
                    continue
                out = net.cli("curl", "-sS", "--max-time", "10", *args, "-o", "/dev/null", f"ftp://{SERVER4}/f.bin",
                              check=False)
                assert out.returncode == 0, out.stderr
            st = json.loads(net.fw(*ALG, "status", "--format", "json", "--socket", sock).stdout)
        finally:
            daemon.send_signal(signal.SIGTERM)
            log = daemon.communicate(timeout=10)[0]
            log = log.decode() if isinstance(log, bytes) else log
            vsftpd.kill()
        assert daemon.returncode == 0, log
        return st, log


def test_nfqueue_verdicts_and_expectations_with_real_ftp(kernel_ok: None) -> None:
    # both directions of the control connection go through alg's queue
    rules = [["iptables", "-A", "FORWARD", "-p", "tcp", *match, "-j", "NFQUEUE", "--queue-num", "7"]
             for match in (["--dport", "21"], ["--sport", "21"])]
    t0 = time.monotonic()
    st, _ = ftp_through_alg(f"alg-dm{os.getpid() % 100:02d}", rules,
                                  [["--disable-epsv"], [], ["-P", "-", "--disable-eprt"]])  # PASV, EPSV, PORT
    ftp = st["helpers"]["ftp"]
    assert ftp["packets"] >= 20 and st["verdicts"] >= ftp["packets"] and st["queue_errors"] == 0
    assert ftp["classes"]["ftp"]["created"] == 3, st
    assert not st["kernel_errors"], st
    assert st["queue_kernel"] == {"ftp": {"waiting": 0, "dropped_full": 0, "dropped_socket": 0}}, st  # from /proc
    print(f"3 transfers through alg's queue in {time.monotonic() - t0:.2f} s, {st['verdicts']} verdicts")


def test_helper_sees_the_real_endpoints_behind_snat(kernel_ok: None) -> None:
    """Behind MASQUERADE, with the server's answers queued before the kernel
    undoes the source NAT (as nfnetlink_cthelper queues them, after all NAT),
    the 227 goes to the firewall's address while the data connection comes
    from the client's own: alg must judge it from the conntrack, not the packet."""
    rules = [["iptables", "-A", "FORWARD", "-p", "tcp", "--dport", "21", "-j", "NFQUEUE", "--queue-num", "7"],
             ["iptables", "-t", "mangle", "-A", "PREROUTING", "-i", "s1", "-p", "tcp", "--sport", "21",
              "-j", "NFQUEUE", "--queue-num", "7"]]
    st, log = ftp_through_alg(f"alg-dn{os.getpid() % 100:02d}", rules, [["--disable-epsv"]], nat=True)
    created = [x for x in log.splitlines() if "created" in x]
    assert len(created) == 1 and f"src={CLIENT4} dst={SERVER4}" in created[0], log
    assert st["natted"] > 0 and st["helpers"]["ftp"]["classes"]["ftp"]["created"] == 1, st


def test_a_passive_port_used_by_one_session_can_be_expected_by_the_next(kernel_ok: None) -> None:
    """An FTP server with one passive port: every session's 227 names the same
    port, so each new control connection (another master) expects the tuple the
    last one expected. The kernel forgets an expectation once its data connection
    came; alg must too (its destroy event), or it refuses the next one as a clash."""
    rules = [["iptables", "-A", "FORWARD", "-p", "tcp", *match, "-j", "NFQUEUE", "--queue-num", "7"]
             for match in (["--dport", "21"], ["--sport", "21"])]
    st, log = ftp_through_alg(f"alg-dp{os.getpid() % 100:02d}", rules, [["--disable-epsv"]] * 3, pasv_ports=1)
    c = st["helpers"]["ftp"]["classes"]["ftp"]
    assert c["created"] == 3 and not c["refused"], st
    assert c["used"] == 3 and st["expectations"] == 0, st


def _wait_for_log(daemon: subprocess.Popen, text: str, seen: list[str]) -> None:
    """Read the daemon's (merged) output into seen until a line contains text (at most 20 s)."""
    watchdog = threading.Timer(20, daemon.kill)  # then readline() meets the end
    watchdog.start()
    try:
        while True:
            line = daemon.stdout.readline().decode()
            seen.append(line)
            if text in line:
                return
            assert line, f"no {text!r} in {''.join(seen)}"
    finally:
        watchdog.cancel()


def test_sighup_reloads_and_a_refused_reload_keeps_the_daemon_serving(kernel_ok: None) -> None:
    rules = [["iptables", "-A", "FORWARD", "-p", "tcp", *match, "-j", "NFQUEUE", "--queue-num", "7"]
             for match in (["--dport", "21"], ["--sport", "21"])]
    holder: list = []
    seen: list[str] = []

    def reload(text: str, expect: str):
        def step(net, policy: Path, daemon: subprocess.Popen) -> None:
            policy.write_text(text)
            daemon.send_signal(signal.SIGHUP)
            _wait_for_log(daemon, expect, seen)
        return step

    def hold_queue_9(net, policy: Path, daemon: subprocess.Popen) -> None:
        code = ("import time; from alg.kernel.nfqueue import QueueBinding; q = QueueBinding(9, 16); "
                "print('bound', flush=True); time.sleep(60)")
        holder.append(net.popen("fw", sys.executable, "-c", code, stdout=subprocess.PIPE))
        assert holder[0].stdout.readline().strip() == b"bound"

    transfers = [reload('helper = "ftp"\nqueue = 7\n[classes.ftp]\nexpect_timeout = 123\n', "policy reloaded"),
                 ["--disable-epsv"],
                 reload("queue = [", "reload refused"),
                 ["--disable-epsv"],
                 hold_queue_9, reload('helper = "ftp"\nqueue = 9\n', "reload failed"),
                 ["--disable-epsv"]]
    try:
        st, log = ftp_through_alg(f"alg-dh{os.getpid() % 100:02d}", rules, transfers)
    finally:
        for p in holder:
            p.kill()
    created = [x for x in "".join(seen).splitlines() + log.splitlines() if "created" in x]
    # the new timeout took effect, and the daemon served on queue 7 through both refusals
    assert len(created) == 3 and all(": created 123 proto=6" in x for x in created), log
    assert st["queues"] == {"ftp": 7} and st["helpers"]["ftp"]["classes"]["ftp"]["created"] == 3, st


def test_one_daemon_per_network_namespace(kernel_ok: None) -> None:
    def second_daemon(net, policy: Path, daemon: subprocess.Popen) -> None:
        out = net.fw(*ALG, "run", "--no-cthelper", "--policy", str(policy), check=False)
        assert out.returncode == 1 and "another alg daemon serves this network namespace" in out.stderr
        assert daemon.poll() is None

    rules = [["iptables", "-A", "FORWARD", "-p", "tcp", *match, "-j", "NFQUEUE", "--queue-num", "7"]
             for match in (["--dport", "21"], ["--sport", "21"])]
    st, _ = ftp_through_alg(f"alg-di{os.getpid() % 100:02d}", rules, [second_daemon, ["--disable-epsv"]])
    assert st["helpers"]["ftp"]["classes"]["ftp"]["created"] == 1, st
