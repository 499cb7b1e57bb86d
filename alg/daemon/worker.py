"""A queue worker: one helper's queue, packet -> engine -> kernel work -> verdict.

Each queued packet comes with its conntrack (the queue is bound with
NFQA_CFG_F_CONNTRACK): the worker turns it into the engine's `KernelView`
(direction and newness from ctinfo, the endpoints from the tuples, the
flow's record from the helper's private data), lets the engine inspect the
packet, carries out what it decides through the sink, and gives the verdict,
with the flow's record (NFQA_CT) and one of the expectations the packet makes
(NFQA_EXP: see `_on_verdict`) when there are. Every packet gets its verdict,
whatever happens on the way. Verdicts of one batch leave in one system call. A
bare TCP acknowledgement of a flow under way has nothing for anyone: it is
accepted at once, uninspected (not counted in the helper's `packets`).

On a kernel whose queues cannot carry the conntrack (no
CONFIG_NETFILTER_NETLINK_GLUE_CT: `--no-cthelper` with plain NFQUEUE rules)
the worker asks ctnetlink for each packet's conntrack instead; the flow's
record cannot be kept there (no userspace helper owns the conntrack).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Protocol

from ..decode import TCP_SYN, DecodeError, Packet, decode_ip, tcp_without_data
from ..engine import Create, Delete, Engine, HelperSlot, Mangle, RateLimitedLog, Remember
from ..expect import Expectation
from ..flows import FLOW_RECORD_LEN, FlowRecord, KernelView
from ..kernel.ctnetlink import IPS_CONFIRMED, IPS_EXPECTED, exp_body
from ..kernel.nfqueue import (ESTABLISHED_CTINFO, IP_CT_IS_REPLY, IP_CT_NEW, IP_CT_RELATED, Conntrack, CtTuple,
                              pack_ct_help)
from ..model import TCP, Direction, FlowTuple, NatMap
from ..nat import RewriteError, mangle
from .sink import KernelSink

log = logging.getLogger("alg.daemon")
_ORIGINAL, _REPLY = Direction.ORIGINAL, Direction.REPLY  # (module names: a member read off its enum costs a lookup)
# A bare TCP acknowledgement of a flow the kernel has seen both ways (ctinfo ESTABLISHED, either
# direction) leaves everything as it was: no bytes for the helper, no stream moved, nothing for the
# conntrack's record. Such packets (a third of a control channel's) get their accept at once, with
# none of the conntrack's decoding (QueueBinding leaves it undecoded), the engine's flow lookup or
# the helper. A NEW or RELATED one is not let by: it may be the first alg sees of its flow (and
# opens it, as a mid-stream pickup).


class QueuePort(Protocol):
    """What a worker needs of its queue (alg.kernel.nfqueue.QueueBinding)."""

    num: int
    conntrack: bool

    def fileno(self) -> int: ...
    def receive(self, max_packets: int = ...) -> list[Any]: ...
    def verdict(self, packet_id: int, accept: bool = True, *, payload: bytes | None = None,
                ct: bytes | None = None, expectation: bytes | None = None) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


def kernel_view(ct: Conntrack, ctinfo: int | None, helper: str, reply: bool = False,
                key: tuple | None = None, new: bool = False) -> KernelView:
    """The engine's view of a packet's flow from its conntrack. Without ctinfo
    (a conntrack looked up by tuple) `reply` and `new` say what ctinfo would."""
    if ctinfo is not None:
        reply = ctinfo >= IP_CT_IS_REPLY
    confirmed = bool(ct.status & IPS_CONFIRMED)
    orig, rep = ct.orig, ct.reply
    # rep != orig.reversed(), field by field (no tuple built for every packet)
    natted = (rep.src != orig.dst or rep.dst != orig.src or rep.sport != orig.dport or rep.dport != orig.sport
              or rep.l3 != orig.l3 or rep.proto != orig.proto)

    def tuples() -> tuple[FlowTuple, FlowTuple]:
        # each direction's source is an endpoint as it really is: the client
        # before source NAT, the server after destination NAT
        ends = CtTuple(orig.l3, orig.proto, orig.src, rep.src, orig.sport, rep.sport).flow()
        return ends, orig.flow() if natted else ends

    return KernelView(  # (positional: one per packet)
        key or (ct.id, orig),
        _REPLY if reply else _ORIGINAL,
        # before any reply, an expected conntrack's packets come as RELATED, other ones as NEW
        ctinfo in (IP_CT_NEW, IP_CT_RELATED) if ctinfo is not None else new,  # new
        confirmed,
        ct.master is not None or bool(ct.status & IPS_EXPECTED),  # expected
        FlowRecord.unpack(ct.helper_info) if ct.helper == helper else None,  # record
        tuples,
        natted,
        (lambda: NatMap(orig.flow(), rep.flow())) if natted else None,  # nat
    )


class QueueWorker:
    def __init__(self, queue: QueuePort, helper: str, engine: Engine, sink: KernelSink, stats: Any,
                 warn: RateLimitedLog, lookup: Callable[[FlowTuple], Conntrack | None] | None = None,
                 clock: Callable[[], float] = time.monotonic, registered: bool = False):
        self.queue, self.helper, self.engine, self.sink = queue, helper, engine, sink
        self.stats, self.warn, self.clock = stats, warn, clock
        self.lookup = lookup  # ctnetlink, for queues without the conntrack glue
        # alg registered `helper` with the kernel, its classes' max_expected its ExpectMax
        # (outside a pair: HelperPolicy.kernel_classes): the kernel evicts as alg does
        self.registered = registered

    @property
    def helper(self) -> str:
        """The name of the helper whose queue this is (a reload may give the queue another)."""
        return self._helper

    @helper.setter
    def helper(self, name: str) -> None:
        self._helper = name
        # NFQA_CT's CTA_HELP for a flow's record is the same bytes up to the record's own:
        # pack_ct_help's nest made once a name (a record is FLOW_RECORD_LEN bytes: no padding after it)
        self._record_head = pack_ct_help(name, bytes(FLOW_RECORD_LEN))[:-FLOW_RECORD_LEN]

    def fileno(self) -> int:
        return self.queue.fileno()

    def serve(self, max_packets: int = 256) -> int:
        """Handle what waits in the queue (one batch); returns how many packets.

        The clock is read per batch, not per packet: the batch's packets are inspected at
        one `now`, and each is held from the batch's start until its verdict leaves with
        the others' (three clock reads a batch; under emulation a read is not free)."""
        packets = self.queue.receive(max_packets)
        if not packets:
            return 0
        t0 = time.perf_counter()
        now = self.clock()
        later: list[Expectation] = []
        for qp in packets:
            self.handle(qp, later, now)
        self.queue.flush()  # the batch's verdicts in one system call
        held = time.perf_counter() - t0
        self.stats.held += held * len(packets)
        self.stats.held_max = max(self.stats.held_max, held)
        for e in later:
            self.sink.after_verdict(e)
        return len(packets)

    def handle(self, qp: Any, later: list[Expectation], now: float) -> None:
        accept, record, attach, payload = True, None, None, None
        try:
            slot = self.engine.slots.get(self._helper)  # (helper's own attribute: read per packet)
            if slot is not None and not (qp.ctinfo in ESTABLISHED_CTINFO and tcp_without_data(qp.payload)):
                accept, record, attach, payload = self._inspect(qp, slot, later, now)
        except Exception as exc:  # never leave a packet without a verdict
            self.stats.queue_errors += 1
            self.warn(logging.ERROR, "packet", "error handling a packet of %s: %s: %s",
                      self.helper, type(exc).__name__, exc)
        try:
            self.queue.verdict(qp.id, accept, ct=record, expectation=attach, payload=payload)
            if attach is not None:
                self.sink.unsent(self.queue.flush)
            self.stats.verdicts += 1
            self.stats.dropped += not accept
        except Exception as exc:
            self.stats.queue_errors += 1
            self.warn(logging.ERROR, "verdict", "verdict failed: %s", exc)

    def _inspect(self, qp: Any, slot: HelperSlot, later: list[Expectation], now: float) -> tuple:
        """(accept, NFQA_CT, NFQA_EXP, NFQA_PAYLOAD) for the packet's verdict."""
        try:
            pkt = decode_ip(qp.payload)
        except DecodeError:
            self.stats.decode_errors += 1
            return True, None, None, None
        if pkt.frag is not None:
            return True, None, None, None  # the kernel queues reassembled packets; a fragment is not ours
        view = self._view(qp, pkt)
        if view is None:
            self.stats.unresolved += 1
            return True, None, None, None
        accept, record, attach, payload = True, None, None, None
        # the kernel keeps no record for a conntrack an expectation created, and
        # fails the whole NFQA_CT (and with it NFQA_EXP) for another helper's name
        ours = qp.ct is not None and qp.ct.helper == self._helper
        keep = not view.expected and ours
        # ExpectMax's victims, held until the create they make room for (the engine decides
        # each Create right after its Deletes): the kernel may evict them itself
        victims: list[Expectation] = []
        evicts = self.registered and ours and view.confirmed and not self.engine.core.pair
        for d in self.engine.process(pkt, now, slot=slot, view=view):
            if isinstance(d, Remember):
                if keep:
                    record = self._record_head + d.record.pack()  # (pack_ct_help(self.helper, ...))
            elif isinstance(d, Create):
                e = d.expectation
                victim = self._kernel_evicts(e, victims, slot) if victims else None
                for v in victims:
                    if v is not victim:
                        self.sink.delete(v)
                victims.clear()
                if attach is None and self._on_verdict(e, view, ours):
                    attach = exp_body(e, None)
                    self.sink.attached(e, evicts=victim)
                    victim = None  # the kernel evicts it as it creates e
                elif view.confirmed:
                    if not self.sink.create(e, evicts=victim) and not self.engine.core.accept_on_pressure:
                        accept = False
                    victim = None
                else:
                    later.append(e)
                if victim is not None:  # not created over ctnetlink now: deleted as before
                    self.sink.delete(victim)
            elif isinstance(d, Delete):
                if evicts and d.why == "evicted":
                    victims.append(d.expectation)
                else:
                    self.sink.delete(d.expectation)
            elif isinstance(d, Mangle):
                payload = self._mangled(qp, pkt, d)
        for v in victims:  # evicted for an expectation the budget then refused: no create came
            self.sink.delete(v)
        if payload is not None and record is None and qp.ct is not None:
            # a length change is applied to the connection's sequence numbers only
            # with NFQA_CT in the same verdict (an empty one names the packet's own)
            record = b""
        return accept, record, attach, payload

    def _on_verdict(self, e: Expectation, view: KernelView, ours: bool) -> bool:
        """Whether e rides on its packet's verdict (NFQA_EXP, one per verdict) rather than
        being created over ctnetlink.

        The kernel creates an attached expectation while it takes the verdict, before the
        packet goes on, as it would one created over ctnetlink first: for the flow it
        announces nothing changes. The verdict saves the ctnetlink round trip (the packet
        waits for it) but has no answer: the kernel's expectation event confirms it
        (KernelSink.attached), and one the kernel refused (the table full, a clash) is
        known a moment after the packet went on. So, with the conntrack glue and outside
        a pair (there the kernel announces an attached expectation before its master, and
        conntrackd drops one whose master it has not seen):
        * always while the master is unconfirmed: ctnetlink cannot name it yet;
        * always for an expectation that gives the expected conntrack a helper: the
          kernel honours CTA_EXPECT_HELP_NAME only there (see exp_body);
        * for a confirmed master that carries this helper (the kernel attaches only to a
          conntrack with a helper), unless the packet must be dropped when the
          expectation cannot be made (accept_on_pressure off): that needs the answer
          before the verdict. conntrackd's helpers attach every expectation so."""
        if not self.queue.conntrack or self.engine.core.pair:
            return False
        return not view.confirmed or e.assign_helper or (ours and self.engine.core.accept_on_pressure)

    def _kernel_evicts(self, e: Expectation, victims: list[Expectation], slot: HelperSlot) -> Expectation | None:
        """The victim the kernel evicts itself when it creates e (over ctnetlink or from the
        verdict: the same __nf_ct_expect_check), if that is provably alg's one victim, else
        None (then every victim is deleted first, as before).

        The kernel, creating e, counts the expectations of e's master and class; at
        max_expected it removes the oldest of them (its list keeps them newest first),
        unless e clashes with one (EBUSY, checked first). With ExpectMax 1 the kernel
        holds at most that one: alg's victim, if it is still there (if it was used or
        timed out meanwhile, the kernel evicts nothing and nothing is left). Beyond 1,
        an expectation used meanwhile whose event is not read yet would make the kernel
        keep alg's victim (a refreshed one also keeps its old place in the kernel's
        list), so the EXP_DELETE stays. The victim must be in the kernel for sure (not
        riding on a verdict, not waiting for a retry) and of the same conntrack."""
        if len(victims) != 1 or slot.max_expected.get(e.cls) != 1:
            return None
        v = victims[0]
        # (the destination compared as the number in its key: the same address of the same family,
        # without an ipaddress comparison)
        if (v.cls != e.cls or v.kernel_master != e.kernel_master or not self.sink.settled(v)
                or (v.l3, v.proto, v.key[3], v.dport) == (e.l3, e.proto, e.key[3], e.dport)):  # might clash
            return None
        return v

    def _mangled(self, qp: Any, pkt: Packet, d: Mangle) -> bytes | None:
        if not d.edits:
            return None
        if getattr(qp, "cap_len", 0):  # only the first copy_range bytes came: they cannot be the packet
            self.stats.rewrite_failed += 1
            return None
        if qp.ct is None and pkt.proto == TCP and any(len(e.data) != e.length for e in d.edits):
            # without the conntrack in the verdict the kernel cannot adjust the sequence
            # numbers after a length change: the connection would break
            self.stats.rewrite_failed += 1
            self.warn(logging.WARNING, "mangle-seq", "%s: a TCP rewrite that changes the length needs the "
                      "queue's conntrack glue (CONFIG_NETFILTER_NETLINK_GLUE_CT); packet left as it was", self.helper)
            return None
        try:
            return mangle(qp.payload[:pkt.head + len(pkt.payload)], pkt.l4, pkt.head, d.edits)
        except RewriteError as exc:
            self.stats.rewrite_failed += 1
            self.warn(logging.WARNING, "mangle", "%s: packet not rewritten: %s", self.helper, exc)
            return None

    def _view(self, qp: Any, pkt: Packet) -> KernelView | None:
        if qp.ct is not None:
            return kernel_view(qp.ct, qp.ctinfo, self._helper)
        if self.lookup is not None:
            return self._looked_up(pkt)
        return None

    def _looked_up(self, pkt: Packet) -> KernelView:
        """No conntrack came with the packet: ask ctnetlink (unconfirmed: a new flow)."""
        assert self.lookup is not None
        t = CtTuple(pkt.l3, pkt.proto, pkt.src, pkt.dst, pkt.sport, pkt.dport)
        return looked_up_view(self.lookup(t.flow()), t, self.helper, syn=bool(pkt.tcp_flags & TCP_SYN))


def looked_up_view(ct: Conntrack | None, t: CtTuple, helper: str, syn: bool = False) -> KernelView:
    """The view of a packet with tuple t whose conntrack was looked up by tuple (ct, or None
    while it is unconfirmed: then this packet opens the flow, as it came).

    Such packets are queued by NFQUEUE rules, usually in FORWARD or PREROUTING, where
    an original-direction packet is past destination NAT and not yet past source
    NAT: its tuple is the flow's endpoints (each direction's source), which is the
    key. A TCP flow is new on its SYN or SYN-ACK, so that a first packet queued where
    that does not hold (after source NAT) costs nothing but the SYN."""
    if ct is None:
        ct = Conntrack(t, t.reversed(), 0, None, None, None, None)
        reply = False
    else:
        # the packet may carry translated addresses on one side: its source is the
        # original direction's source before SNAT, or its reply destination after
        reply = (t.src, t.sport) not in ((ct.orig.src, ct.orig.sport), (ct.reply.dst, ct.reply.dport))
    o, r = ct.orig, ct.reply
    ends = CtTuple(o.l3, o.proto, o.src, r.src, o.sport, r.sport)
    return kernel_view(ct, None, helper, reply=reply, key=(None, ends),
                       new=not ct.status & IPS_CONFIRMED or syn)
