"""A kernel in userspace for daemon tests: conntracks with their helper private
data, queues handing packets over with their conntrack (as a queue bound with
NFQA_CFG_F_CONNTRACK does), verdicts read back, expectations and their
events. Only what the daemon's ports need (alg.daemon.KernelPorts)."""

from __future__ import annotations

import errno as E
import ipaddress
import itertools
import os
import struct
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from alg.daemon import KernelPorts
from alg.errors import KernelError
from alg.kernel import nlmsg as L
from alg.kernel.ctnetlink import (CTA_EXPECT_MASTER, CTA_EXPECT_NAT, CTA_EXPECT_NAT_DIR, CTA_EXPECT_NAT_TUPLE,
                                  IPS_CONFIRMED, KernelExpectation, _parse_tuple, is_full, pack_flow,
                                  parse_expectation)
from alg.kernel.nfqueue import CTA_HELP, CTA_HELP_INFO, CTA_HELP_NAME, Conntrack, CtTuple
from alg.model import FlowTuple

IP_CT_ESTABLISHED, IP_CT_NEW, IP_CT_ESTABLISHED_REPLY = 0, 2, 3
SYN, ACK, PSH = 0x02, 0x10, 0x08


def ip_packet(src: str, dst: str, proto: int, sport: int, dport: int, payload: bytes = b"",
              seq: int = 0, flags: int = ACK | PSH) -> bytes:
    """A raw IPv4 or IPv6 packet with a TCP or UDP header (checksums left zero: alg does not check them)."""
    if proto == 6:
        l4 = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, flags, 65535, 0, 0)
    else:
        l4 = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0)
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if s.version == 6:  # version 6, payload length, next header, hop limit
        return struct.pack("!IHBB16s16s", 6 << 28, len(l4) + len(payload), proto, 64, s.packed, d.packed) + l4 + payload
    total = 20 + len(l4) + len(payload)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0, 0, 64, proto, 0, s.packed, d.packed)
    return ip + l4 + payload


@dataclass
class QueuedPacket:
    id: int
    payload: bytes
    ctinfo: int | None
    ct: Conntrack | None
    queue: int = 0


@dataclass
class Verdict:
    id: int
    accept: bool
    ct: bytes | None
    expectation: bytes | None
    payload: bytes | None = None


class FakeQueue:
    def __init__(self, kernel: "FakeKernel", num: int, length: int, conntrack: bool = True):
        self.kernel, self.num, self.length, self.conntrack = kernel, num, length, conntrack
        self.waiting: list[QueuedPacket] = []
        self.verdicts: list[Verdict] = []
        self.pending: list[Verdict] = []
        self.closed = False
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)

    def fileno(self) -> int:
        return self._r

    def wake(self) -> None:
        """Make the queue readable, for a daemon that waits in select() (a forked worker)."""
        os.write(self._w, b"x")

    def receive(self, max_packets: int = 256) -> list[QueuedPacket]:
        out, self.waiting = self.waiting[:max_packets], self.waiting[max_packets:]
        if not self.waiting:
            try:
                os.read(self._r, 4096)
            except BlockingIOError:
                pass
        return out

    def verdict(self, packet_id: int, accept: bool = True, *, payload: bytes | None = None,
                ct: bytes | None = None, expectation: bytes | None = None) -> None:
        self.pending.append(Verdict(packet_id, accept, ct, expectation, payload))

    def flush(self) -> None:
        for v in self.pending:
            self.kernel.apply_verdict(v)
        self.verdicts += self.pending
        self.pending = []

    def close(self) -> None:
        self.closed = True
        self.kernel.queues.pop(self.num, None)


@dataclass
class Entry:
    ct: Conntrack
    info: bytes = b""


@dataclass
class FakeKernel:
    """Conntracks, queues, helpers and expectations of one network namespace."""

    glue: bool = True  # queues hand over the conntrack
    priv_len: int = 0
    conntracks: dict[int, Entry] = field(default_factory=dict)
    queues: dict[int, FakeQueue] = field(default_factory=dict)
    helpers: dict[str, Any] = field(default_factory=dict)
    expectations: dict[tuple, tuple[Any, FlowTuple | None]] = field(default_factory=dict)
    attached: list[bytes] = field(default_factory=list)
    helper_of: dict[FlowTuple, str] = field(default_factory=dict)  # a conntrack's helper, by original tuple
    # (master, class) -> the keys of its expectations, oldest first (those in `expectations`)
    _of_master: dict[tuple, dict] = field(default_factory=dict)
    kernel_created: list[Any] = field(default_factory=list)  # what ctnetlink EXP_NEWs created, in order
    deleted: list[Any] = field(default_factory=list)  # what ctnetlink EXP_DELETEs removed, in order
    events: list[Any] = field(default_factory=list)
    refuse_queue: set = field(default_factory=set)
    refuse_helper: set = field(default_factory=set)
    attach_works: bool = True
    backlog: dict[int, list] = field(default_factory=dict)  # packets a queue holds when it is bound
    _ids: Any = field(default_factory=lambda: itertools.count(1))
    _pkt_ids: Any = field(default_factory=lambda: itertools.count(1))
    _by_packet: dict[int, int] = field(default_factory=dict)
    _confirmed: set = field(default_factory=set)  # original tuples of the confirmed conntracks

    def ports(self) -> KernelPorts:
        return KernelPorts(self, self, lambda: FakeEvents(self), self.bind, lambda: {}, is_full)

    # ---------------------------------------------------------------- conntracks and packets
    def connect(self, helper: str, l3: int, proto: int, src: str, dst: str, sport: int, dport: int,
                reply_src: str | None = None, reply_dport: int | None = None, master: CtTuple | None = None,
                reply_dst: str | None = None) -> int:
        """A new conntrack (unconfirmed until its first packet's verdict); reply_src: DNAT,
        reply_dst (and reply_dport): SNAT."""
        s, d = ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed
        orig = CtTuple(l3, proto, s, d, sport, dport)
        rs = ipaddress.ip_address(reply_src).packed if reply_src else d
        rd = ipaddress.ip_address(reply_dst).packed if reply_dst else s
        reply = CtTuple(l3, proto, rs, rd, dport, reply_dport or sport)
        cid = next(self._ids)
        self.conntracks[cid] = Entry(Conntrack(orig, reply, 0, cid, helper, None, master), bytes(self.priv_len))
        self.helper_of[orig.flow()] = helper
        return cid

    def send(self, queue: int, cid: int, reply: bool, payload: bytes = b"", seq: int = 0,
             flags: int = ACK | PSH, ctinfo: int | None = None) -> int:
        """Queue one packet of conntrack cid (as seen at the confirm hook, after NAT)."""
        entry = self.conntracks[cid]
        o, r = entry.ct.orig, entry.ct.reply
        # after all NAT: the reverse of the other direction's tuple
        t = CtTuple(o.l3, o.proto, o.dst, o.src, o.dport, o.sport) if reply else \
            CtTuple(o.l3, o.proto, r.dst, r.src, r.dport, r.sport)
        raw = ip_packet(str(ipaddress.ip_address(t.src)), str(ipaddress.ip_address(t.dst)), o.proto,
                        t.sport, t.dport, payload, seq, flags)
        if ctinfo is None:
            ctinfo = IP_CT_ESTABLISHED_REPLY if reply else (
                IP_CT_NEW if not entry.ct.status & IPS_CONFIRMED else IP_CT_ESTABLISHED)
        ct = entry.ct._replace(helper_info=entry.info or None) if self.glue else None
        pid = next(self._pkt_ids)
        self._by_packet[pid] = cid
        self.queues[queue].waiting.append(QueuedPacket(pid, raw, ctinfo if self.glue else None, ct, queue))
        return pid

    def apply_verdict(self, v: Verdict) -> None:
        cid = self._by_packet.pop(v.id)
        entry = self.conntracks[cid]
        if v.ct:  # ctnetlink_change_helper: the same helper's private data, or the whole NFQA_CT fails
            help_ = L.parse_attrs(L.parse_attrs(v.ct).get(CTA_HELP, b""))
            name = help_.get(CTA_HELP_NAME, b"").rstrip(b"\0").decode()
            if name == entry.ct.helper and entry.ct.master is None and self.priv_len:
                entry.info = help_[CTA_HELP_INFO][: self.priv_len].ljust(self.priv_len, b"\0")
        if v.accept and not entry.ct.status & IPS_CONFIRMED:
            entry.ct = entry.ct._replace(status=entry.ct.status | IPS_CONFIRMED)
            self._confirmed.add(entry.ct.orig.flow())
        if v.expectation is not None:
            self.attached.append(v.expectation)
            if self.attach_works and entry.ct.helper is not None:  # (ctnetlink_alloc_expect: a master with a helper)
                self.attach(attached_expectation(v.expectation, entry.ct.orig.flow(), entry.ct.helper),
                            entry.ct.orig.flow())

    # ---------------------------------------------------------------- the ports
    def bind(self, num: int, length: int) -> FakeQueue:
        if num in self.refuse_queue or num in self.queues:
            raise OSError(E.EBUSY, "queue taken")
        q = FakeQueue(self, num, length, self.glue)
        self.queues[num] = q
        q.waiting += self.backlog.pop(num, [])
        if q.waiting:
            q.wake()
        return q

    def queue_up(self, queue: int, cid: int, *segments: tuple[bool, bytes, int]) -> None:
        """Leave (reply, payload, flags) segments of conntrack cid waiting for whoever binds `queue`."""
        assert queue not in self.queues, "queue_up is for a queue nobody has bound yet"
        q = self.queues[queue] = FakeQueue(self, queue, 1024, self.glue)
        seq = [1000, 5000]
        for reply, payload, flags in segments:
            self.send(queue, cid, reply, payload, seq[reply], flags)
            seq[reply] += len(payload) + (1 if flags & SYN else 0)
        self.backlog.setdefault(queue, []).extend(q.waiting)
        q.waiting = []
        del self.queues[queue]

    def supported(self) -> bool:
        return True

    def register(self, hp, priv_data_len, queue=None):
        if hp.name in self.refuse_helper:
            raise KernelError(E.EBUSY, "cthelper-new")
        self.priv_len = priv_data_len
        self.helpers[hp.name] = hp

    def set_status(self, name, proto, enabled, l3=4):
        pass

    def unregister(self, name, proto, l3=4):
        self.helpers.pop(name, None)

    def create(self, e, master: FlowTuple, exclusive: bool = False) -> None:
        """ctnetlink EXP_NEW from the daemon's own socket. As the kernel: an expectation of the
        same tuple is refreshed (no event); a new one first evicts the oldest of its master and
        class when they hold its helper's max_expected (__nf_ct_expect_check), with a destroy
        event. Its own NEW event the daemon's event socket filters out in the kernel
        (alg.kernel.ctnetlink.Events), so none is queued here."""
        if master not in self._confirmed:
            raise KernelError(E.ENOENT, "exp-new")
        held = self.expectations.get(e.key)
        if held is not None:  # ctnetlink_change_expect: the one held keeps its master and its place
            if held[1] == master:
                self.expectations[e.key] = (e, master)
            return
        self._expect(e, master)
        self.kernel_created.append(e)

    def attach(self, e, master: FlowTuple) -> None:
        """An expectation on a verdict (NFQA_EXP: ctnetlink_glue_attach_expect). As the kernel
        (__nf_ct_expect_check): the same tuple held for the same master and class is replaced
        (its end reported), for another one refused (EALREADY); a refusal is silent; the NEW
        event is the daemon's to read (it names the queue's socket, not the one the event
        socket's filter drops)."""
        held = self.expectations.get(e.key)
        if held is not None:
            if held[1] != master or held[0].class_id != e.class_id:
                return
            self._let_go(e.key)
            self.events.append(("destroy", held[0], master))
        self._expect(e, master)
        self.events.append(("new", e, master))

    def _expect(self, e, master: FlowTuple) -> None:
        """Hold e, first evicting the oldest of its master and class at its helper's max_expected."""
        limit = self._max_expected(master, e.class_id)
        mine = self._of_master.setdefault((master, e.class_id), {})  # keys, oldest first
        if limit and len(mine) >= limit:
            oldest = next(iter(mine))
            del mine[oldest]
            victim, _m = self.expectations.pop(oldest)
            self.events.append(("destroy", victim, master))
        self.expectations[e.key] = (e, master)
        mine[e.key] = None

    def hold(self, e, master: FlowTuple) -> None:
        """The kernel holds e, created by someone else (conntrackd committing a primary's)."""
        self.expectations[e.key] = (e, master)
        self._of_master.setdefault((master, e.class_id), {})[e.key] = None

    def _max_expected(self, master: FlowTuple, class_id: int) -> int:
        """max_expected of class_id in the policy of the helper master's conntrack carries (0: none known)."""
        hp = self.helpers.get(self.helper_of.get(master, ""))
        return hp.classes[class_id].max_expected if hp is not None and class_id < len(hp.classes) else 0

    def delete(self, e) -> None:
        held = self._let_go(e.key)
        if held is None:
            raise KernelError(E.ENOENT, "exp-delete")
        self.deleted.append(e)
        self.events.append(("destroy", held[0], held[1]))

    def _let_go(self, key: tuple) -> tuple | None:
        held = self.expectations.pop(key, None)
        if held is not None:
            self._of_master.get((held[1], held[0].class_id), {}).pop(key, None)
        return held

    def get(self, e):
        return self.expectations.get(e.key)

    def list(self) -> list:
        return []

    def conntrack(self, t: FlowTuple) -> Conntrack | None:
        for en in self.conntracks.values():
            tuples = (en.ct.orig.flow(), en.ct.reply.flow())
            if en.ct.status & IPS_CONFIRMED and (t in tuples or t.reversed() in tuples):  # as Ctnetlink.conntrack
                return en.ct
        return None

    def use(self, e) -> None:
        """The expected flow came: the kernel lets the expectation go."""
        _e, master = self._let_go(e.key)
        self.events.append(("destroy", e, master))


def attached_expectation(body: bytes, master: FlowTuple, helper: str) -> SimpleNamespace:
    """The expectation an NFQA_EXP nest asks for, with the fields the fake kernel reads of
    alg's Expectation (its key as alg.expect builds it); `helper`: the master's."""
    k = parse_expectation(bytes(4) + pack_flow(CTA_EXPECT_MASTER, master) + body)
    assert k is not None, "an NFQA_EXP without tuple or mask"
    t, m = k.tuple, k.mask
    src = t.src if int(m.src) else None
    sport = t.sport if m.sport else None
    nat = None
    if CTA_EXPECT_NAT in (a := L.parse_attrs(body)):
        n = L.parse_attrs(a[CTA_EXPECT_NAT])
        inside = _parse_tuple(n[CTA_EXPECT_NAT_TUPLE])
        assert inside is not None
        nat = (struct.unpack("!I", n[CTA_EXPECT_NAT_DIR])[0], inside.src, inside.sport)
    return SimpleNamespace(key=(t.l3, t.proto, None if src is None else int(src), int(t.dst), sport, t.dport),
                           helper=helper, class_id=k.class_id, l3=t.l3, proto=t.proto, src=src, dst=t.dst,
                           sport=sport, dport=t.dport, src_mask=m.src, timeout=k.timeout, flags=k.flags, nat=nat)


class FakeEvents:
    def __init__(self, kernel: FakeKernel):
        self.kernel = kernel
        self._r, self._w = os.pipe()

    def fileno(self) -> int:
        return self._r

    def read(self) -> list:
        from alg.kernel.ctnetlink import ExpectationEvent
        out = []
        for kind, e, master in self.kernel.events:
            if e is None:  # the socket overflowed (ENOBUFS): events were lost
                out.append(ExpectationEvent("overflow", None))
                continue
            z = ipaddress.ip_address(bytes(4 if e.l3 == 4 else 16))
            ones = ipaddress.ip_address(b"\xff" * (4 if e.l3 == 4 else 16))
            t = FlowTuple(e.l3, e.proto, e.src or z, e.dst, e.sport or 0, e.dport)
            m = FlowTuple(e.l3, e.proto, e.src_mask, ones, 0 if e.sport is None else 0xFFFF, 0xFFFF)
            out.append(ExpectationEvent(kind, KernelExpectation(e.helper, e.class_id, t, m, master, e.timeout,
                                                                e.flags, 1)))
        self.kernel.events.clear()
        return out

    def close(self) -> None:
        pass
