"""alg's CPU per queued packet of an FTP control channel asking PASV in a loop, on the host: the
load of benchmarks/lab_ftp_load.sh (issue 14, goal 4) without the VM.

Queue messages are laid out as the lab's kernel sends them with the conntrack glue
(NFQNL_MSG_PACKET with NFQA_CT: tuples, id, status, timeout, TCP protoinfo whose flags follow
the unacknowledged data, the helper's name and private data; NFQA_CT_INFO, interfaces, payload),
for N control connections, each exchange three packets: the client's `PASV` (original
direction), the server's `227 Entering Passive Mode (...)` (reply; the ftp helper expects the
data connection, replacing the connection's last expectation: ExpectMax 1) and the client's
pure ACK (the lab counts 2.9 packets per PASV, 0.8 of them pure ACKs). They go through the
real binding (alg.kernel.nfqueue.QueueBinding: receive's decode, verdict, flush; only the
system calls are left out: messages in, verdict bytes kept), the daemon's loop (one
`Daemon.step` per packet: under the lab's load each packet wakes alg alone), the worker, the
engine and the ftp helper; the verdicts go to the userspace kernel of the tests
(tests/fakekernel.py), which sets the private data the next message carries and creates the
227's expectation, on its verdict, as the kernel does. Then the expectation events (created,
and the evicted one gone) are read once per 227, as the daemon's reconciler does.

Beside it, in the same run, the floor for Python: a loop that reads the same messages at
bytes level (attributes, packet id, TCP payload, the 227's six numbers) and packs a plain
verdict, nothing else. The ratio to it is printed. In the lab the C helper of conntrackd
(which has no Python to run) is the reference: benchmarks/lab_ftp_load.sh.

    .venv/bin/python benchmarks/bench_ftp.py [--exchanges 4000] [--connections 8] [--profile 25]

Each packet's wall time is taken apart and the median per kind printed (the mean CPU time
beside it): on a machine shared with other work the median is the steadier figure.
`--profile N` adds a flat profile (cProfile, the N functions with the most time of their own,
in microseconds per packet; the profiler itself inflates small calls).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import os
import re
import statistics
import struct
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fakekernel import FakeKernel, attached_expectation  # noqa: E402
from bench_worker import flat  # noqa: E402  (this folder is the script's: sys.path[0])

from alg.daemon import Daemon  # noqa: E402
from alg.daemon.reconciler import Reconciler  # noqa: E402
from alg.daemon.supervisor import settle_collector  # noqa: E402
from alg.kernel import nfqueue as Q  # noqa: E402
from alg.kernel import nlmsg as L  # noqa: E402
from alg.kernel.ctnetlink import IPS_CONFIRMED, pack_tuple  # noqa: E402
from alg.plugins import load_plugins  # noqa: E402

QUEUE = 5
HELPER = "alg-ftp"
ETH_P_IP, NF_INET_FORWARD = 0x0800, 2
TCP, SYN, ACK, PSH = 6, 0x02, 0x10, 0x08
# include/uapi/linux/netfilter/nfnetlink_conntrack.h, nf_conntrack_common.h, nf_conntrack_tcp.h
CTA_PROTOINFO, CTA_TIMEOUT, CTA_PROTOINFO_TCP = 4, 7, 1
CTA_PROTOINFO_TCP_STATE, CTA_PROTOINFO_TCP_WSCALE_ORIGINAL, CTA_PROTOINFO_TCP_WSCALE_REPLY = 1, 2, 3
CTA_PROTOINFO_TCP_FLAGS_ORIGINAL, CTA_PROTOINFO_TCP_FLAGS_REPLY = 4, 5
TCP_CONNTRACK_ESTABLISHED = 3
IP_CT_TCP_FLAG_WINDOW_SCALE, IP_CT_TCP_FLAG_SACK_PERM = 0x01, 0x02
IP_CT_TCP_FLAG_DATA_UNACKNOWLEDGED, IP_CT_TCP_FLAG_MAXACK_SET = 0x10, 0x20
IPS_SEEN_REPLY, IPS_ASSURED = 1 << 1, 1 << 2
TCP_TIMEOUT_ESTABLISHED = 432000  # seconds (nf_conntrack_proto_tcp.c): refreshed by every packet
CLIENT, SERVER = bytes([10, 0, 1, 2]), bytes([10, 0, 2, 2])
PASV = b"PASV\r\n"
FLOOR_CHUNK = 300  # messages the floor reads per timing


def reply_227(port: int) -> bytes:
    return b"227 Entering Passive Mode (10,0,2,2,%d,%d).\r\n" % (port >> 8, port & 0xFF)


def tcp_packet(src: bytes, dst: bytes, sport: int, dport: int, seq: int, ack: int, flags: int,
               payload: bytes) -> bytes:
    """IPv4 + TCP with the timestamp option (as Linux sends: a pure ACK is 52 bytes)."""
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 8 << 4, flags, 502, 0, 0) + b"\x01\x01\x08\x0a" + bytes(8)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp) + len(payload), 0, 0x4000, 63, TCP, 0, src, dst)
    return ip + tcp + payload


class Connection:
    """One control connection as the kernel's conntrack knows it (confirmed, established)."""

    def __init__(self, i: int):
        self.id = 1000 + i
        self.sport = 40000 + i
        self.orig = pack_tuple(Q.CTA_TUPLE_ORIG, 4, TCP, CLIENT, SERVER, self.sport, 21)
        self.reply = pack_tuple(Q.CTA_TUPLE_REPLY, 4, TCP, SERVER, CLIENT, 21, self.sport)
        self.info = bytes(24)  # the helper's private data (priv_data_len 24), set by the verdicts
        self.seq = [1000, 5000]  # next sequence number per direction
        self.unacked = [False, False]
        self.exchanges = 0

    def conntrack(self, timeout: int, status: int) -> bytes:
        flags = IP_CT_TCP_FLAG_WINDOW_SCALE | IP_CT_TCP_FLAG_SACK_PERM | IP_CT_TCP_FLAG_MAXACK_SET
        proto = L.nest(CTA_PROTOINFO, L.nest(
            CTA_PROTOINFO_TCP, L.nla(CTA_PROTOINFO_TCP_STATE, L.u8(TCP_CONNTRACK_ESTABLISHED)),
            L.nla(CTA_PROTOINFO_TCP_WSCALE_ORIGINAL, L.u8(7)), L.nla(CTA_PROTOINFO_TCP_WSCALE_REPLY, L.u8(7)),
            *(L.nla(k, struct.pack("BB", flags | (IP_CT_TCP_FLAG_DATA_UNACKNOWLEDGED if u else 0), 0xFF))
              for k, u in zip((CTA_PROTOINFO_TCP_FLAGS_ORIGINAL, CTA_PROTOINFO_TCP_FLAGS_REPLY), self.unacked, strict=True))))
        # in the order of the kernel's __ctnetlink_glue_build
        return L.nest(Q.NFQA_CT, self.orig, self.reply,
                      L.nla(Q.CTA_STATUS, L.be32(status)),
                      L.nla(CTA_TIMEOUT, L.be32(timeout)), proto,
                      L.nest(Q.CTA_HELP, L.nla(Q.CTA_HELP_NAME, HELPER.encode() + b"\0"),
                             L.nla(Q.CTA_HELP_INFO, self.info)),
                      L.nla(Q.CTA_ID, L.be32(self.id)))

    def packet(self, pid: int, reply: bool, payload: bytes, timeout: int, syn: bool = False) -> bytes:
        """The NFQNL_MSG_PACKET of this connection's next segment (what the queue's socket reads);
        `syn`: the handshake's (the client's SYN opens the conntrack, unconfirmed while it waits)."""
        d = int(reply)
        src, dst, sport, dport = (SERVER, CLIENT, 21, self.sport) if reply else (CLIENT, SERVER, self.sport, 21)
        flags = (SYN | (ACK if reply else 0)) if syn else ACK | (PSH if payload else 0)
        raw = tcp_packet(src, dst, sport, dport, self.seq[d], self.seq[1 - d], flags, payload)
        self.seq[d] += len(payload) + syn
        opening = syn and not reply
        status = 0 if opening else IPS_CONFIRMED | IPS_SEEN_REPLY | (0 if syn else IPS_ASSURED)
        ctinfo = Q.IP_CT_NEW if opening else Q.IP_CT_ESTABLISHED_REPLY if reply else Q.IP_CT_ESTABLISHED
        self.unacked[1 - d] = False  # this segment acknowledges the other side's data
        self.unacked[d] = self.unacked[d] or bool(payload)
        body = (L.nla(Q.NFQA_PACKET_HDR, Q._PKT_HDR.pack(pid, ETH_P_IP, NF_INET_FORWARD))
                + self.conntrack(timeout, status)
                + L.nla(Q.NFQA_CT_INFO, L.be32(ctinfo))
                + L.nla(Q.NFQA_IFINDEX_INDEV, L.be32(3 - d)) + L.nla(Q.NFQA_IFINDEX_OUTDEV, L.be32(2 + d))
                + L.nla(Q.NFQA_HWADDR, struct.pack("!H2x8s", 6, bytes(8)))
                + L.nla(Q.NFQA_PAYLOAD, raw))
        return L.message(L.NFNL_SUBSYS_QUEUE, Q.NFQNL_MSG_PACKET, 0, 2, body, res_id=QUEUE)


class OfflineBinding(Q.QueueBinding):
    """The real binding's decode and verdict code, fed messages instead of a socket: receive()
    reads `inbox`, flush() leaves its datagrams in `sent`."""

    def __init__(self, num: int):  # (not super().__init__: that opens a socket and binds the queue)
        self.num, self.max_len, self.copy_range, self.batch = num, 1024, Q.NFQNL_MAX_COPY_RANGE, True
        self.enobufs, self.errors, self.bad_messages = 0, Counter(), 0
        self._pending, self._outstanding, self._stash, self._seq = [], {}, [], 0
        self._send_max, self.conntrack, self._bound = 4 << 20, True, False
        self.inbox: list[bytes] = []
        self.sent: list[bytes] = []
        self._r, self._w = os.pipe()  # readable while the inbox holds messages (the daemon selects on it)
        os.set_blocking(self._r, False)

    def fileno(self) -> int:
        return self._r

    def put(self, msg: bytes) -> None:
        self.inbox.append(msg)
        os.write(self._w, b"x")

    def receive(self, max_packets: int = 256) -> list[Q.QueuedPacket]:
        out: list[Q.QueuedPacket] = []
        for m in self.inbox[:max_packets]:
            self._datagram(memoryview(m), out)
        del self.inbox[:max_packets]
        if not self.inbox:
            os.read(self._r, 4096)
        return out

    def _send_one(self, data: bytes) -> None:
        self.sent.append(data)

    def close(self) -> None:
        os.close(self._r)
        os.close(self._w)


class Lab:
    """The daemon with the ftp helper on queue 5 and `connections` established control connections."""

    def __init__(self, tmp: str, connections: int):
        (Path(tmp) / "ftp.toml").write_text(f'helper = "ftp"\nname = "{HELPER}"\nqueue = {QUEUE}\n')
        (Path(tmp) / "alg.toml").write_text(f'[core]\nstatus_socket = "{tmp}/alg.sock"\n')
        self.k = FakeKernel()
        self.d = Daemon(load_plugins(), [f"{tmp}/ftp.toml", f"{tmp}/alg.toml"], kernel=self.k.ports())
        for slot in self.d.engine.slots.values():
            self.d._register(slot)
        self.d.workers[QUEUE].queue.close()
        self.q = self.d.workers[QUEUE].queue = OfflineBinding(QUEUE)
        self.d.reconciler = Reconciler(self.k.ports().events(), self.d.engine, self.d.sink, self.d.stats)
        self.conns = [Connection(i) for i in range(connections)]
        for c in self.conns:  # masters the fake's ctnetlink knows as confirmed (as FakeKernel.connect + verdict)
            o = Q.CtTuple(4, TCP, CLIENT, SERVER, c.sport, 21)
            self.k._confirmed.add(o.flow())
            self.k.helper_of[o.flow()] = HELPER  # (its helper's max_expected: the kernel evicts as alg does)
        self.pid = 0
        self.by_id: dict[int, Connection] = {}
        self.timeout = TCP_TIMEOUT_ESTABLISHED

    def message(self, c: Connection, reply: bool, payload: bytes, syn: bool = False) -> bytes:
        self.pid += 1
        self.by_id[self.pid] = c
        return c.packet(self.pid, reply, payload, self.timeout, syn)

    def exchange(self, c: Connection):
        """One PASV exchange's three messages, each made when the last one's verdict is through
        (it carries the private data that verdict set); the 227 names a new port each time, as
        pyftpdlib's does."""
        c.exchanges += 1
        port = 50000 + (c.id * 7 + c.exchanges) % 1000
        for reply, payload in ((False, PASV), (True, reply_227(port)), (False, b"")):
            yield self.message(c, reply, payload)

    def kernel_side(self) -> int:
        """Apply what the verdicts said (NFQA_CT's private data, as ctnetlink_change_helper); verdicts."""
        n = 0
        for datagram in self.q.sent:
            for t, _f, _s, payload in L.iter_messages(datagram):
                a = L.parse_attrs(payload, 4)
                hdr = Q._VERDICT_HDR.unpack(a[Q.NFQA_VERDICT_HDR])
                if t & 0xFF == Q.NFQNL_MSG_VERDICT_BATCH:
                    ids = [i for i in self.by_id if i <= hdr[1]]
                else:
                    ids = [hdr[1]]
                    help_ = L.parse_attrs(L.parse_attrs(a.get(Q.NFQA_CT, b"")).get(Q.CTA_HELP, b""))
                    c = self.by_id[hdr[1]]
                    if Q.CTA_HELP_INFO in help_:
                        c.info = help_[Q.CTA_HELP_INFO][:24].ljust(24, b"\0")
                    if Q.NFQA_EXP in a:  # the 227's expectation, on its verdict: the kernel creates it there
                        master = Q.CtTuple(4, TCP, CLIENT, SERVER, c.sport, 21).flow()
                        self.k.attach(attached_expectation(a[Q.NFQA_EXP], master, HELPER), master)
                for i in ids:
                    del self.by_id[i]
                    n += 1
        self.q.sent.clear()
        return n


def run(exchanges: int, connections: int, profile: cProfile.Profile | None = None) -> dict:
    """CPU seconds per packet through the daemon, and what came of it."""
    with tempfile.TemporaryDirectory() as tmp:
        lab = Lab(tmp, connections)
        d = lab.d
        for c in lab.conns:  # handshake, greeting and login, unmeasured
            for reply, payload, syn in ((False, b"", True), (True, b"", True), (False, b"", False),
                                        (True, b"220 pyftpdlib ready.\r\n", False),
                                        (False, b"USER anonymous\r\n", False),
                                        (True, b"331 Username ok, send password.\r\n", False),
                                        (False, b"PASS lab@\r\n", False), (True, b"230 Login successful.\r\n", False)):
                lab.q.put(lab.message(c, reply, payload, syn))
                d.step(0)
        lab.kernel_side()
        settle_collector()  # as the daemon's loop does once started
        packets = verdicts = 0
        cpu = 0.0
        kinds: tuple[list[float], ...] = ([], [], [])  # wall time of each PASV, 227, ACK
        for i in range(exchanges):
            c = lab.conns[i % connections]
            msgs = lab.exchange(c)  # each built when the loop asks for it, outside the measured time
            for j, m in enumerate(msgs):
                lab.q.put(m)
                t0, w0 = time.process_time(), time.perf_counter()
                if profile is not None:
                    profile.enable()
                d.step(0)  # wakes on the queue: receive, worker, engine, helper, verdict
                if j == 1:
                    d.reconciler.read()  # the expectation events of the 227 (read as the daemon's loop does)
                if profile is not None:
                    profile.disable()
                kinds[j].append(time.perf_counter() - w0)
                cpu += time.process_time() - t0
                verdicts += lab.kernel_side()
                packets += 1
            if i % 1000 == 999:
                lab.timeout -= 1  # (seconds go by: the remaining timeout the kernel reports changes)
        gc.unfreeze()  # (this run's objects collectable again)
        st = d.engine.stats()["helpers"][HELPER]
        return {"cpu": cpu / packets, "median": [statistics.median(k) for k in kinds],
                "packets": packets, "verdicts": verdicts,
                "created": st["classes"]["ftp"]["created"], "held": len(lab.k.expectations),
                "errors": d.stats.queue_errors + d.stats.decode_errors + lab.q.bad_messages}


_SIX = re.compile(rb"(\d{1,3}),(\d{1,3}),(\d{1,3}),(\d{1,3}),(\d{1,3}),(\d{1,3})")


def floor(msgs: list[bytes]) -> int:
    """The least a Python reader does per message: the attributes (packet id, payload), the TCP
    payload, a 227's numbers, a plain verdict packed. Returns how many 227s it read."""
    nla, hdr, verdict = Q._NLA.unpack_from, Q._PKT_HDR.unpack_from, Q._VERDICT_HDR.pack
    found = 0
    for m in msgs:
        off, end, pid, payload = 20, len(m), 0, b""
        while off + 4 <= end:
            n, t = nla(m, off)
            t &= 0x3FFF
            if t == Q.NFQA_PACKET_HDR:
                pid = hdr(m, off + 4)[0]
            elif t == Q.NFQA_PAYLOAD:
                payload = m[off + 4:off + n]
            off += (n + 3) & ~3
        ihl = (payload[0] & 15) * 4
        data = payload[ihl + (payload[ihl + 12] >> 4) * 4:]
        if data[:4] == b"227 ":
            nums = _SIX.search(data)
            found += nums is not None and (int(nums[5]) << 8 | int(nums[6])) > 0
        L.message(L.NFNL_SUBSYS_QUEUE, Q.NFQNL_MSG_VERDICT, L.NLM_F_REQUEST, 0,
                  L.nla(Q.NFQA_VERDICT_HDR, verdict(Q.NF_ACCEPT, pid)), res_id=QUEUE)
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--exchanges", type=int, default=4000)
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--profile", type=int, default=0, metavar="N", help="print the top N of a flat profile")
    a = ap.parse_args()
    r = run(a.exchanges, a.connections)
    with tempfile.TemporaryDirectory() as tmp:
        lab = Lab(tmp, a.connections)
        msgs = [m for i in range(a.exchanges) for m in lab.exchange(lab.conns[i % a.connections])]
    chunks, found = [], 0
    for at in range(0, len(msgs), FLOOR_CHUNK):  # timed in chunks: the median one is a busy machine's best guess
        t0 = time.perf_counter()
        found += floor(msgs[at:at + FLOOR_CHUNK])
        chunks.append((time.perf_counter() - t0) / len(msgs[at:at + FLOOR_CHUNK]))
    ref = statistics.median(chunks)
    pasv, r227, ack = (x * 1e6 for x in r["median"])
    per = (pasv + r227 + ack) / 3
    print(f"{a.exchanges} PASV exchanges on {a.connections} control connections: {r['packets']} packets "
          f"(PASV, 227, pure ACK), each with its conntrack")
    print(f"  alg (binding, daemon loop, worker, engine, ftp helper), median: PASV {pasv:.1f} us, 227 {r227:.1f} us "
          f"(with its expectation events), ACK {ack:.1f} us: {per:.1f} us per packet "
          f"(mean CPU {r['cpu'] * 1e6:.1f} us; {r['verdicts']} verdicts, {r['created']} expectations created, "
          f"{r['held']} held, {r['errors']} errors)")
    print(f"  bytes-level Python floor (reference, same messages):  {ref * 1e6:.1f} us per packet "
          f"({found} 227s read); alg {per / (ref * 1e6):.1f}x")
    if a.profile:
        prof = cProfile.Profile()
        n = max(a.exchanges // 4, a.connections)
        run(n, a.connections, prof)
        flat(prof, 3 * n, a.profile)


if __name__ == "__main__":
    main()
