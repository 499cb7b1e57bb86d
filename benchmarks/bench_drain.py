"""How fast a reader drains a full NFQUEUE queue of SIP INVITEs (root, host kernel).

Side by side in the same run, each reader in turn binds queue 9 in the fw
namespace of tests/netns.py (`-j NFQUEUE` for UDP to port 5060, FORWARD):

  C loop          libnetfilter_queue, recv + nfq_handle_packet + nfq_set_verdict(NF_ACCEPT),
                  written to a temp dir and built here with gcc (libnetfilter-queue-dev)
  binding         alg.kernel.nfqueue.QueueBinding in a Python loop: receive() + verdict() + flush()
                  (runs of plain accepts folded into NFQNL_MSG_VERDICT_BATCH)
  binding/single  the same with batch=False: one NFQNL_MSG_VERDICT per packet
  alg run         `alg run --no-cthelper` with the sip helper on queue 9 (whatever the daemon is)

Method, per reader and round: start it, wait until /proc shows the queue bound,
SIGSTOP it, send N INVITE+SDP datagrams (~620 bytes, one UDP flow, new Call-ID
each; queue_len = N), wait until the kernel has counted them all, SIGCONT, and
wait until the queue is empty. Wall time runs from SIGCONT to empty; CPU time
is the reader's utime+stime from /proc/PID/stat (clock ticks: 10 ms
resolution); loss is what the kernel counted as dropped (queue full) plus
user_dropped (the reader's socket buffer full). Median of 3 rounds; the ratio
is to the C loop of the same run. The host kernel holds at most 65,536 queued
packets in all: keep N below that. Then, the reader still running, --pings
INVITEs go one at a time to an echo server: the added latency is their round
trip's p50/p99 minus the same without the NFQUEUE rule (measured first).

--cthelper (a kernel with nfnetlink_cthelper and the glue: the lab VM, through
tools/lab/vm-run ... run-all.sh with a script calling this) drains the flow as alg serves it:
a userspace helper `sipd` on queue 9 is registered by this script (and enabled again after
alg, which disables it as it stops), `-t raw -j CT --helper sipd` gives it the flows to port 5060, and
the kernel queues their packets to queue 9 with their conntrack, no NFQUEUE rule. alg runs as
it does on a firewall (`alg run`, not --no-cthelper): each INVITE's expectations are made in
the kernel, the first on its verdict (NFQA_EXP), and the kernel evicts past ExpectMax. Before
each burst one INVITE goes through with the reader running, so that the burst's flow is
confirmed, as a phone's is long before a burst (a burst of a flow's very first packets gets
a conntrack per packet, none confirmed, whose expectations ctnetlink cannot make).

This host's queues come without the conntrack (no CONFIG_NETFILTER_NETLINK_GLUE_CT):
`alg run --no-cthelper` asks ctnetlink for each packet's conntrack, and the fw namespace,
whose rules use no conntrack match, tracks nothing, so each lookup is two GETs (the tuple,
then its reverse) that both find nothing. The same run measures that lookup alone in the
fw namespace, and what replaces it where the queue hands the conntrack over (the lab's
kernel, NFQA_CT): decoding NFQA_CT in the packet's message, no system call.

    sudo .venv/bin/python benchmarks/bench_drain.py [--n 20000] [--rounds 3] [--cthelper]
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
from netns import CLIENT4, SERVER4, Net  # noqa: E402

from alg.kernel import nfqueue as Q  # noqa: E402
from alg.kernel import nlmsg as L  # noqa: E402
from alg.kernel.ctnetlink import IPS_CONFIRMED, pack_tuple  # noqa: E402
from alg.kernel.nfqueue import QueueStats, rcvbuf_for  # noqa: E402

QUEUE = 9
CTA_TIMEOUT = 7  # include/uapi/linux/netfilter/nfnetlink_conntrack.h
IPS_SEEN_REPLY = 1 << 1  # include/uapi/linux/netfilter/nf_conntrack_common.h
ETH_P_IP, NF_INET_FORWARD = 0x0800, 2
TICK = os.sysconf("SC_CLK_TCK")

C_LOOP = r"""
#include <stdio.h>
#include <stdlib.h>
#include <errno.h>
#include <arpa/inet.h>
#include <sys/socket.h>
#include <linux/netfilter.h>
#include <libnfnetlink/libnfnetlink.h>
#include <libnetfilter_queue/libnetfilter_queue.h>

static int cb(struct nfq_q_handle *qh, struct nfgenmsg *m, struct nfq_data *nfa, void *data)
{
	unsigned char *payload;
	struct nfqnl_msg_packet_hdr *ph = nfq_get_msg_packet_hdr(nfa);

	nfq_get_payload(nfa, &payload);  /* a reader looks at the packet */
	return nfq_set_verdict(qh, ntohl(ph->packet_id), NF_ACCEPT, 0, NULL);
}

int main(int argc, char **argv)
{
	static char buf[65536 + 4096];
	struct nfq_handle *h = nfq_open();
	struct nfq_q_handle *qh;
	int fd, rv;

	if (!h || !(qh = nfq_create_queue(h, atoi(argv[1]), &cb, NULL))) { perror("bind"); return 1; }
	if (nfq_set_mode(qh, NFQNL_COPY_PACKET, 0xffff) < 0 || nfq_set_queue_maxlen(qh, atoi(argv[2])) < 0) {
		perror("config"); return 1;
	}
	nfnl_rcvbufsiz(nfq_nfnlh(h), strtoul(argv[3], NULL, 10));
	fd = nfq_fd(h);
	printf("bound\n");
	fflush(stdout);
	for (;;) {
		rv = recv(fd, buf, sizeof(buf), 0);
		if (rv >= 0)
			nfq_handle_packet(h, buf, rv);
		else if (errno != ENOBUFS) { perror("recv"); return 1; }
	}
}
"""

PY_LOOP = """
import select, sys
from alg.kernel.nfqueue import QueueBinding
q = QueueBinding(int(sys.argv[1]), int(sys.argv[2]), batch=sys.argv[3] == "batch")
print("bound", flush=True)
while True:
    select.select([q], [], [])
    for p in q.receive():
        q.verdict(p.id)
    q.flush()
"""

ECHO = """import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("%s", 5060))
while True:
    d, a = s.recvfrom(4096); s.sendto(d, a)
""" % SERVER4
# one INVITE at a time from port 5070 (the drain's datagrams come from 5061 and are dropped at the server)
PING = """import socket, statistics, sys, time
sys.path.insert(0, sys.argv[2])
from bench_sip import invite
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("", 5070)); s.settimeout(0.5)
rtt, lost = [], 0
for i in range(int(sys.argv[1])):
    m = invite(100000 + i)
    t = time.perf_counter(); s.sendto(m, ("%s", 5060))
    try:
        while s.recv(4096) != m:  # a late answer to an earlier, timed-out request
            pass
    except socket.timeout:
        lost += 1
        continue
    rtt.append(time.perf_counter() - t)
q = statistics.quantiles(rtt, n=100)
print(q[49] * 1e6, q[98] * 1e6, lost)
""" % SERVER4

SEND = """
import socket, sys
sys.path.insert(0, sys.argv[2])
from bench_sip import invite
msgs = [invite(i) for i in range(int(sys.argv[1]))]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("", 5061))
for m in msgs:
    s.sendto(m, ("%s", 5060))
""" % SERVER4

# --cthelper: register (or enable again) the userspace helper of the drained flows, as alg would,
# or remove it; alg's own policy files say what it is
HELPER = "sipd"
CTHELPER = """import sys
from alg.daemon.supervisor import kernel_ports, register_helper, resolve
from alg.plugins import load_plugins
kernel = kernel_ports()
if sys.argv[1] == "add":
    host = load_plugins()
    register_helper(kernel, host, resolve(host, sys.argv[2:]).helpers["%s"], False)
else:  # every entry of that name (EBUSY, raised, while something still holds one: asked again)
    for h in kernel.cthelper.list():
        if h["name"] == "%s":
            kernel.cthelper.unregister(h["name"], h["proto"], h["l3"])
""" % (HELPER, HELPER)


# the daemon's lookup of the drain's flow (alg.daemon.worker: one Ctnetlink.conntrack per packet)
LOOKUP = """import ipaddress, sys, time
from alg.kernel.ctnetlink import Ctnetlink
from alg.model import FlowTuple
ct, n = Ctnetlink(), int(sys.argv[1])
t = FlowTuple(4, 17, ipaddress.ip_address("%s"), ipaddress.ip_address("%s"), 5061, 5060)
found = ct.conntrack(t) is not None
gets = ct.lookups
c, w = time.process_time(), time.perf_counter()
for _ in range(n):
    ct.conntrack(t)
print((time.process_time() - c) / n * 1e6, (time.perf_counter() - w) / n * 1e6, gets, int(found))
""" % (CLIENT4, SERVER4)


def lookup_cost(net: Net, n: int = 5000) -> tuple[float, float, int, bool]:
    """(CPU us, wall us, GETs, found) of one conntrack lookup of the drain's flow, in the fw namespace."""
    out = net.fw(sys.executable, "-c", LOOKUP, str(n), timeout=120).stdout.split()
    return float(out[0]), float(out[1]), int(out[2]), out[3] == "1"


def glue_cost(payload: bytes, n: int = 20000) -> tuple[float, float]:
    """CPU us that NFQA_CT adds to decoding one queued packet's message (alg.kernel.nfqueue.parse_packet):
    the conntrack a glue kernel hands over with the packet (tuples, status, timeout, id, the helper's
    private data, as ctnetlink_glue_build lays them out). Twice: the same bytes as the flow's last packet
    (the remaining timeout in seconds unchanged), and new bytes for every packet."""
    s, d = bytes([10, 0, 1, 2]), bytes([10, 0, 2, 2])

    def message(timeout: int) -> bytes:
        ct = L.nest(Q.NFQA_CT, pack_tuple(Q.CTA_TUPLE_ORIG, 4, 17, s, d, 5061, 5060),
                    pack_tuple(Q.CTA_TUPLE_REPLY, 4, 17, d, s, 5060, 5061), L.nla(Q.CTA_ID, L.be32(7)),
                    L.nla(Q.CTA_STATUS, L.be32(IPS_CONFIRMED | IPS_SEEN_REPLY)), L.nla(CTA_TIMEOUT, L.be32(timeout)),
                    L.nest(Q.CTA_HELP, L.nla(Q.CTA_HELP_NAME, b"sip\0"), L.nla(Q.CTA_HELP_INFO, bytes(16))))
        return head + ct + L.nla(Q.NFQA_CT_INFO, L.be32(Q.IP_CT_ESTABLISHED)) + L.nla(Q.NFQA_PAYLOAD, payload)

    head = L.message(Q.NFNL_SUBSYS_QUEUE, Q.NFQNL_MSG_PACKET, 0, 2,
                     L.nla(Q.NFQA_PACKET_HDR, Q._PKT_HDR.pack(1, ETH_P_IP, NF_INET_FORWARD)), res_id=QUEUE)[16:]
    plain = [head + L.nla(Q.NFQA_PAYLOAD, payload)] * n
    same = [message(180)] * n
    new = [message(i) for i in range(n)]
    assert Q.parse_packet(same[0]).ct is not None and Q.parse_packet(plain[0]).ct is None
    cost = []
    for msgs in (plain, same, new):
        t0 = time.process_time()
        for m in msgs:
            Q.parse_packet(m)
        cost.append((time.process_time() - t0) / n * 1e6)
    return cost[1] - cost[0], cost[2] - cost[0]


def build_c(tmp: str) -> str:
    src, exe = Path(tmp, "drain.c"), Path(tmp, "drain")
    src.write_text(C_LOOP)
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(src), "-lnetfilter_queue", "-lnfnetlink"], check=True)
    return str(exe)


def _read(pid: int) -> QueueStats | None:
    """Queue 9 as the reader's namespace sees it (/proc/PID/net is the network namespace of PID)."""
    with open(f"/proc/{pid}/net/netfilter/nfnetlink_queue") as f:
        for line in f:
            cols = line.split()
            if len(cols) >= 8 and int(cols[0]) == QUEUE:
                return QueueStats(*(int(c) for c in cols[:8]))
    return None


def cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def wait(cond, timeout: float, what: str, step: float = 0.001):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        time.sleep(step)
    raise TimeoutError(what)


def ping(net: Net, n: int) -> tuple[float, float]:
    """Round trip of one INVITE at a time through the fw: p50, p99 in microseconds."""
    out = net.cli(sys.executable, "-c", PING, str(n), str(HERE), timeout=300).stdout.split()
    if int(out[2]):
        print(f"  ({out[2]} of {n} round trips got no answer within 0.5 s)")
    return float(out[0]), float(out[1])


def drain_once(net: Net, argv: list[str], n: int, pings: int, confirm: bool = False
               ) -> tuple[float, float, int, float, float]:
    """(wall seconds, CPU seconds, packets lost, round trip p50, p99) for one reader draining n
    queued packets, then forwarding `pings` INVITEs one at a time. `confirm`: one INVITE of the
    burst's flow goes through first, the reader running."""
    reader = net.popen("fw", *argv)
    try:
        pid = reader.pid  # ip netns exec execs the reader: same pid
        q0 = wait(lambda: (q := _read(pid)) is not None and q.portid and q, 180,
                  f"{' '.join(argv[:4])} never bound the queue")  # alg starts in 20-40 s in the lab VM
        time.sleep(0.2)  # let it reach its loop
        if confirm:
            net.cli(sys.executable, "-c", SEND, "1", str(HERE), timeout=120)
            q0 = wait(lambda: (q := _read(pid)) and q.id_sequence > q0.id_sequence and q.total == 0 and q, 60,
                      "the reader did not pass the flow's first packet")
        os.kill(pid, signal.SIGSTOP)
        net.cli(sys.executable, "-c", SEND, str(n), str(HERE), timeout=120)
        wait(lambda: (q := _read(pid)) and q.id_sequence - q0.id_sequence + q.dropped - q0.dropped >= n, 10,
             "the kernel did not count every packet sent")
        c0, t0 = cpu(pid), time.perf_counter()
        os.kill(pid, signal.SIGCONT)
        q1 = wait(lambda: (q := _read(pid)) and q.total == 0 and q, 120, "the reader did not drain the queue",
                  step=0.0005)
        wall, used = time.perf_counter() - t0, cpu(pid) - c0
        p50, p99 = ping(net, pings) if pings else (0.0, 0.0)
        return wall, used, (q1.dropped - q0.dropped) + (q1.user_dropped - q0.user_dropped), p50, p99
    finally:
        try:
            os.kill(reader.pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
        reader.terminate()
        try:
            reader.wait(10)
        except subprocess.TimeoutExpired:
            reader.kill()
            reader.wait()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--skip-daemon", action="store_true", help="leave `alg run` out")
    ap.add_argument("--pings", type=int, default=1000, help="round trips for the added latency (0: skip)")
    ap.add_argument("--cthelper", action="store_true",
                    help=f"the flows get the userspace helper {HELPER} (nfnetlink_cthelper: the lab VM), alg runs as "
                         "on a firewall")
    args = ap.parse_args()
    n = args.n
    with Net(f"alg-dr{os.getpid() % 100:02d}") as net, tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o755)
        exe = build_c(tmp)
        net.srv("iptables", "-A", "INPUT", "-p", "udp", "--sport", "5061", "-j", "DROP")  # the burst: no echo
        net.popen("srv", sys.executable, "-c", ECHO)
        time.sleep(0.5)
        named = f'name = "{HELPER}"\n' if args.cthelper else ""
        Path(tmp, "sip.toml").write_text(f'helper = "sip"\n{named}queue = {QUEUE}\nqueue_len = {n}\n'
                                         'protocols = ["udp"]\n')
        Path(tmp, "alg.toml").write_text(f'[core]\nstatus_socket = "{tmp}/s"\n')
        policy = ["--policy", f"{tmp}/sip.toml", "--policy", f"{tmp}/alg.toml"]
        if args.cthelper:  # the kernel queues the helper's flows itself (and their replies), with their conntrack
            net.fw(sys.executable, "-c", CTHELPER, "add", *policy[1::2], timeout=300)  # (Python starts slowly under TCG)
            net.fw("sysctl", "-qw", "net.netfilter.nf_conntrack_events=1")  # alg confirms attachments from events
            rule = ["PREROUTING", "-p", "udp", "--dport", "5060", "-j", "CT", "--helper", HELPER]
            net.fw("iptables", "-t", "raw", "-A", *rule)
        else:
            queue_rule = ["FORWARD", "-p", "udp", "--dport", "5060", "-j", "NFQUEUE", "--queue-num", str(QUEUE)]
            net.fw("iptables", "-A", *queue_rule)
        readers = {
            "C loop (libnetfilter_queue)": [exe, str(QUEUE), str(n), str(min(rcvbuf_for(n, 0xFFFF), 1 << 30))],
            "binding, Python loop": [sys.executable, "-c", PY_LOOP, str(QUEUE), str(n), "batch"],
            "binding, no batch verdicts": [sys.executable, "-c", PY_LOOP, str(QUEUE), str(n), "single"],
        }
        alg = "alg run" if args.cthelper else "alg run --no-cthelper"
        if not args.skip_daemon:
            readers[alg] = [sys.executable, "-m", *alg.split(), *policy]
        runs: dict[str, list[tuple[float, float, int, float, float]]] = {k: [] for k in readers}
        try:
            for _ in range(args.rounds):
                for name, argv in readers.items():
                    runs[name].append(drain_once(net, argv, n, args.pings, confirm=args.cthelper))
                    print(f"({name}: {n} packets in {runs[name][-1][0]:.2f} s)", file=sys.stderr, flush=True)
                    if args.cthelper and name == alg:
                        # alg, stopping, disables its helper (the rule's template holds it): enabled again
                        net.fw(sys.executable, "-c", CTHELPER, "add", *policy[1::2], timeout=300)
        finally:
            net.fw("iptables", *(("-t", "raw", "-D", *rule) if args.cthelper else ("-D", *queue_rule)))
        # the round trip without the queue, measured after the readers: in the lab VM the first
        # runs of a code path are the emulator's translation, not the path
        base = [ping(net, args.pings) for _ in range(args.rounds)] if args.pings else [(0.0, 0.0)]
        lookup = lookup_cost(net) if not (args.skip_daemon or args.cthelper) else None
    if args.cthelper:  # the kernel's, not the namespace's: removed once the namespace is gone (until its
        # teardown is through, the kernel answers EBUSY: the CT rule's template still holds it)
        unregister = [sys.executable, "-c", CTHELPER, "del"]
        try:
            wait(lambda: subprocess.run(unregister, capture_output=True, timeout=300).returncode == 0, 60,
                 "", step=1.0)
        except TimeoutError:  # as alg leaves its own helper when the kernel holds it: disabled
            print(f"(the kernel still holds helper {HELPER}: left registered, disabled; `nfct del helper {HELPER}`"
                  " removes it later)", file=sys.stderr)
    med = {k: tuple(statistics.median(r[i] for r in v) for i in range(5)) for k, v in runs.items()}
    b50, b99 = statistics.median(b[0] for b in base), statistics.median(b[1] for b in base)
    c_wall, c_cpu, c_lost, _, _ = med["C loop (libnetfilter_queue)"]
    ref, ref_cpu = (n - c_lost) / c_wall, c_cpu / max(n - c_lost, 1)
    print(f"draining {n} queued SIP INVITE+SDP packets (UDP, ~620-byte messages), median of {args.rounds} rounds; "
          f"CPU from /proc/PID/stat ({1e3 / TICK:.0f} ms ticks); rates per packet the reader got")
    print(f"{'reader':<30} {'packets/s':>10} {'us/pkt wall':>12} {'us/pkt CPU':>11} {'lost':>7} {'vs C':>7}"
          f" {'CPU vs C':>9}"
          + (f" {'added p50':>10} {'p99 (us)':>9}" if args.pings else ""))
    for name, (wall, used, lost, p50, p99) in med.items():
        got = max(n - lost, 1)  # lost packets never reached the reader: they cost it nothing
        print(f"{name:<30} {got / wall:>10,.0f} {wall / got * 1e6:>12.2f} {used / got * 1e6:>11.2f} {lost:>7,.0f} "
              f"{got / wall / ref:>6.2f}x {ref_cpu / max(used / got, 1e-9):>8.2f}x"
              + (f" {p50 - b50:>10.1f} {p99 - b99:>9.1f}" if args.pings else ""))
    print("vs C: packets/s over the C loop's (wall clock: on a shared machine the reader also waits for a CPU);"
          " CPU vs C: the C loop's CPU per packet over the reader's (the kernel's forwarding of each accepted packet"
          " runs in the reader's verdict call and counts for every reader)")
    if args.pings:
        print(f"added latency: {args.pings} INVITEs one at a time through the queue, round trip minus the same "
              f"without the queue, measured after the readers (p50 {b50:.1f} us, p99 {b99:.1f} us)")
    if lookup is not None:
        l_cpu, l_wall, gets, found = lookup
        wall, used, lost = med[alg][:3]
        per = used / max(n - lost, 1) * 1e6
        same, new = glue_cost(bench_invite())
        print(f"of alg's {per:.0f} us CPU per packet: its conntrack lookup {l_cpu:.1f} us CPU ({l_wall:.1f} us wall; "
              f"{gets} ctnetlink GET{'s' if gets > 1 else ''}, conntrack {'found' if found else 'not found'}), "
              f"{l_cpu / per * 100:.0f}%; with the conntrack glue (NFQA_CT, the lab) there is no lookup, and "
              f"decoding NFQA_CT adds {same:.1f} us ({new:.1f} us when its bytes differ from the flow's last packet's)")
    return 0


def bench_invite() -> bytes:
    sys.path.insert(0, str(HERE))
    from bench_sip import invite
    return invite(1)


if __name__ == "__main__":
    sys.exit(main())
