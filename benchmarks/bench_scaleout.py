"""Scale-out across cores: `alg run` with 1 and 2 workers draining queued SIP INVITEs (root, host kernel).

Side by side in the same run, in the fw namespace of tests/netns.py, each reader in turn:

  C loop x1         libnetfilter_queue accept loop (bench_drain's), one process, one queue
  C loop x2         two of them, one per queue: what this machine's kernel and cores allow two readers
  alg, 1 worker     `alg run --no-cthelper`, the sip helper on queue Q
  alg, 2 workers    the same with [core] workers = 2: sip0 on Q, sip1 on Q + 4096 (alg.daemon.pool)

The host kernel has no nfnetlink_cthelper (nor the queue's conntrack glue), so
the daemon runs `--no-cthelper` and FORWARD rules queue the INVITEs: with two
queues, the datagrams from source port 5061 go to Q and those from 5062 to
the second queue (as the nft jhash map of `alg rules` would spread two pairs
of hosts); with one, all go to Q. Method as bench_drain: the readers are
SIGSTOPped (every worker process too), N INVITE+SDP datagrams are sent (N/2
from each port), SIGCONT, and the wall time runs until every queue is empty;
CPU time is the readers' utime+stime summed over their processes (the
supervisor included). Median of the rounds. Then, with 2 workers, one worker
is SIGKILLed and the time until its queue is bound again by the new worker
is printed (the supervisor's restart, bind and adoption included).

What 16 cores would carry. Workers share nothing on the packet path (each
has its own queue, engine, expectation table and netlink sockets; the
supervisor sleeps in select), so N workers carry N times one worker's rate
as long as (a) each has a core of its own beside the kernel's work and (b)
the flows hash evenly over the instances. One worker's rate is 1e6 / its CPU
per packet (the "us/pkt CPU" column). The kernel's part of each packet
(queueing, the copy to userspace, the verdict, forwarding) is the C loop's
CPU per packet, ~5 us here, most of it in softirq and in the verdict call:
at 16 cores, leave 2 to it. Measured on this 2-core machine, quiet (2026-12-07, 3
rounds of 20,000 INVITEs): the C loop 157k packets/s at 5 us, two C loops
261k (1.66x: what this machine's kernel and cores allow two readers); alg
9,837 packets/s at 101.5 us of CPU per packet with 1 worker, 15,724 with 2
(1.60x, 106 us each: 96% of the machine's own ceiling); a killed worker's
queue bound again 13 ms after SIGKILL. So 16 cores would carry about
14 x 1e6 / 101.5 = 138k INVITEs/s; the kernel's share of that at 5 us is
0.7 cores, within the 2 left to it. With the lab VM busy on one of the two
cores (2026-12-06), two C loops carried no more than one (1.00x), and
neither could two workers: run it on a quiet machine. (This host's 101.5 us
includes the conntrack lookup it needs without the queue's conntrack glue,
21-25 us: benchmarks/bench_drain.py.) What bends the line on a big machine:
one pair of hosts (a SIP trunk between two proxies) always hashes to one
worker, so its rate is one worker's whatever the core count; and the expectation budget per worker is budget / N
(alg.daemon.pool), which a trunk can fill on its worker.

    sudo .venv/bin/python benchmarks/bench_scaleout.py [--n 20000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))
from bench_drain import SEND, TICK, build_c, cpu, wait  # noqa: E402
from netns import Net  # noqa: E402

from alg.kernel.nfqueue import QueueStats, rcvbuf_for  # noqa: E402
from alg.policy import INSTANCE_QUEUE_STRIDE  # noqa: E402

QUEUE = 9
QUEUES = (QUEUE, QUEUE + INSTANCE_QUEUE_STRIDE)
PORTS = (5061, 5062)


def queues(pid: int) -> dict[int, QueueStats]:
    """The queues of the namespace of PID, by number."""
    out = {}
    with open(f"/proc/{pid}/net/netfilter/nfnetlink_queue") as f:
        for line in f:
            cols = line.split()
            if len(cols) >= 8:
                out[int(cols[0])] = QueueStats(*(int(c) for c in cols[:8]))
    return out


def family(pid: int) -> list[int]:
    """PID and its descendants (a supervisor and its workers)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


def route(net: Net, spread: bool) -> None:
    """FORWARD rules queueing the INVITEs: all to Q, or by source port over both queues."""
    net.fw("iptables", "-F", "FORWARD")
    for port, q in zip(PORTS, QUEUES if spread else (QUEUE, QUEUE), strict=True):
        net.fw("iptables", "-A", "FORWARD", "-p", "udp", "--sport", str(port), "--dport", "5060", "-j", "NFQUEUE",
               "--queue-num", str(q))


def send(net: Net, n: int) -> None:
    for port in PORTS:  # bench_drain's sender, from each source port in turn
        net.cli(sys.executable, "-c", SEND.replace("5061", str(port)), str(n // 2), str(HERE), timeout=120)


def drain_once(net: Net, argvs: list[list[str]], used: tuple[int, ...], n: int,
               restart: bool = False) -> tuple[float, float, int, float | None]:
    """(wall seconds, CPU seconds, packets lost, restart ms or None) for readers draining n packets."""
    readers = [net.popen("fw", *argv) for argv in argvs]
    try:
        pid = readers[0].pid
        q0 = wait(lambda: (qs := queues(pid)) and all(q in qs and qs[q].portid for q in used) and qs, 30,
                  "readers never bound their queues")
        time.sleep(0.3)  # let them reach their loops
        procs = [p for r in readers for p in family(r.pid)]
        for p in procs:
            os.kill(p, signal.SIGSTOP)
        send(net, n)
        wait(lambda: sum(qs[q].id_sequence - q0[q].id_sequence + qs[q].dropped - q0[q].dropped
                         for qs in [queues(pid)] for q in used) >= n - n % 2, 10,
             "the kernel did not count every packet sent")
        c0, t0 = sum(cpu(p) for p in procs), time.perf_counter()
        for p in procs:
            os.kill(p, signal.SIGCONT)
        q1 = wait(lambda: (qs := queues(pid)) and all(qs[q].total == 0 for q in used) and qs, 120,
                  "the readers did not drain their queues", step=0.0005)
        wall, spent = time.perf_counter() - t0, sum(cpu(p) for p in procs) - c0
        lost = sum(q1[q].dropped - q0[q].dropped + q1[q].user_dropped - q0[q].user_dropped for q in used)
        took = restart_ms(pid, procs) if restart else None
        return wall, spent, lost, took
    finally:
        for r in readers:
            for p in family(r.pid):
                try:
                    os.kill(p, signal.SIGCONT)
                except ProcessLookupError:
                    pass
            r.terminate()
        for r in readers:
            try:
                r.wait(10)
            except subprocess.TimeoutExpired:
                r.kill()
                r.wait()


def restart_ms(pid: int, procs: list[int]) -> float:
    """SIGKILL the worker that reads the second queue; ms until a new one has bound it."""
    before = queues(pid)[QUEUES[1]].portid
    victim = next(p for p in procs[1:] if _reads(p, before))
    t0 = time.perf_counter()
    os.kill(victim, signal.SIGKILL)
    wait(lambda: (q := queues(pid).get(QUEUES[1])) is not None and q.portid not in (0, before), 10,
         "the worker was not restarted", step=0.0002)
    return (time.perf_counter() - t0) * 1e3


def _reads(pid: int, portid: int) -> bool:
    """Whether PID holds the netlink socket with this port id (/proc/PID/net/netlink lists the namespace's)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    with open(f"/proc/{pid}/net/netlink") as f:
        next(f)
        return any(c[2] == str(portid) and c[-1] in inodes for c in (line.split() for line in f))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    n = args.n - args.n % 2
    with Net(f"alg-so{os.getpid() % 100:02d}") as net, tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o755)
        exe = build_c(tmp)
        net.srv("iptables", "-A", "INPUT", "-p", "udp", "--dport", "5060", "-j", "DROP")  # nobody answers
        Path(tmp, "sip.toml").write_text(f'helper = "sip"\nqueue = {QUEUE}\nqueue_len = {n}\nprotocols = ["udp"]\n')
        alg = [sys.executable, "-m", "alg", "run", "--no-cthelper", "--policy", f"{tmp}/sip.toml", "--policy"]
        for w in (1, 2):
            Path(tmp, f"w{w}").mkdir()
            Path(tmp, f"w{w}", "alg.toml").write_text(f'[core]\nstatus_socket = "{tmp}/s{w}"\nworkers = {w}\n')
        rcv = str(min(rcvbuf_for(n, 0xFFFF), 1 << 30))
        configs = {  # name: (readers, queues used, spread over both queues)
            "C loop x1": ([[exe, str(QUEUE), str(n), rcv]], QUEUES[:1], False),
            "C loop x2": ([[exe, str(q), str(n), rcv] for q in QUEUES], QUEUES, True),
            "alg, 1 worker": ([alg + [f"{tmp}/w1/alg.toml"]], QUEUES[:1], False),
            "alg, 2 workers": ([alg + [f"{tmp}/w2/alg.toml"]], QUEUES, True),
        }
        runs: dict[str, list[tuple[float, float, int, float | None]]] = {k: [] for k in configs}
        for r in range(args.rounds):
            for name, (argvs, used, spread) in configs.items():
                route(net, spread)
                runs[name].append(drain_once(net, argvs, used, n, restart=name == "alg, 2 workers" and r == 0))
    print(f"draining {n} queued SIP INVITE+SDP packets (UDP, ~620 bytes), median of {args.rounds} rounds, "
          f"{os.cpu_count()} CPUs; CPU from /proc/PID/stat ({1e3 / TICK:.0f} ms ticks), summed over the processes")
    print(f"{'reader':<16} {'packets/s':>10} {'us/pkt wall':>12} {'us/pkt CPU':>11} {'lost':>7} {'vs C x1':>8}")
    rate, per = {}, {}
    for name, rs in runs.items():
        wall, spent, lost = (statistics.median(x[i] for x in rs) for i in range(3))
        got = max(n - lost, 1)
        rate[name], per[name] = got / wall, spent / got * 1e6
        print(f"{name:<16} {rate[name]:>10,.0f} {wall / got * 1e6:>12.2f} {per[name]:>11.2f} {lost:>7,.0f} "
              f"{rate[name] / rate['C loop x1']:>7.2f}x")
    print(f"scaling from 1 to 2: alg {rate['alg, 2 workers'] / rate['alg, 1 worker']:.2f}x, "
          f"the C loop {rate['C loop x2'] / rate['C loop x1']:.2f}x (the same machine's ceiling for two readers)")
    took = runs["alg, 2 workers"][0][3]
    if took is not None:
        print(f"restart: {took:.0f} ms from SIGKILL of a worker to its queue bound again by the new one")
    cores, kernel_cores = 16, 2
    per_pkt = max(per["alg, 1 worker"], 1e-3)
    print(f"16 cores, on paper: {cores - kernel_cores} workers at {per_pkt:.1f} us of CPU per packet (this run) "
          f"carry ~{(cores - kernel_cores) * 1e6 / per_pkt:,.0f} packets/s, {kernel_cores} cores left to the "
          f"kernel's softirq work (~{per['C loop x1']:.1f} us per packet in the C loop's verdict path); one pair of "
          f"hosts stays on one worker: ~{1e6 / per_pkt:,.0f} packets/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
