"""The daemon: NFQUEUE in, ctnetlink expectations out (`alg run`).

Theory of operation. At start every enabled helper of the policy is
registered with nfnetlink_cthelper (status enabled, its NFQUEUE number and
the policy's classes) and its queue is bound. One thread serves all queues
with select(): a queued packet is decoded, its conntrack looked up (cached
per packet tuple) so the helper sees the flow as its endpoints do, whatever
NAT lies between, the packet is given to the engine with the queue's helper,
the expectations it yields are created with ctnetlink *before* the verdict,
and then the packet is accepted, whatever happened on the way. A flow's
first packet is special: the kernel confirms its conntrack only once the
packet leaves our queue, so ctnetlink cannot name it as a master yet. A
question to a multicast or broadcast address, or a flow alg itself
expected, is inspected as it came and its expectation attached to the
verdict (NFQA_EXP), since answers follow within a millisecond; any other
first packet is inspected right after its verdict (retried briefly).
Observers' hooks also run after the verdict. The kernel's expectation
events keep alg's table true: an expectation its flow used is gone at once,
and no longer counts against ExpectMax, the budget or a later master's
claim to the same tuple.

On SIGTERM/SIGINT the helpers are disabled and removed and the queues
unbound: a helper left enabled with nobody reading its queue breaks the
control connections (their conntracks are never confirmed, DESIGN.md). The
helpers registered are also written to a state file (one per network
namespace, as helpers are) so `alg cleanup` can undo what a crashed instance
left. One daemon serves a network namespace: a second one stops before it
touches the kernel. SIGHUP reloads the policy files: new queues are bound and
helpers registered first, so a failure (a bad file, a queue another program
holds, a class count the kernel will not change) keeps the running policy
whole, and a queue given up is drained before it is unbound.
"""

from __future__ import annotations

import errno as E
import json
import logging
import os
import select
import signal
import socket
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from .decode import DecodeError, Packet, decode_ip
from .engine import Create, Delete, Engine, HelperSlot, RateLimitedLog, make_slots
from .errors import AlgError, KernelError
from .expect import Expectation, Refusal
from .flows import packet_tuple
from .model import FlowTuple
from .kernel.cthelper import Cthelper
from .kernel.ctnetlink import Ctnetlink, Events, exp_body, is_full
from .kernel.nfqueue import proc_queues
from .kernel.nfqueue_legacy import QueueSet
from .plugins import PluginHost
from .policy import HelperPolicy, Policy, default_policy, load_policy

log = logging.getLogger("alg.daemon")
STATE_DIR = "/run/alg"
RETRY_DELAYS = (0.002, 0.01, 0.05, 0.2)  # after the verdict, for an unconfirmed master


@dataclass
class DaemonStats:
    verdicts: int = 0
    dropped: int = 0
    decode_errors: int = 0
    queue_errors: int = 0
    kernel_errors: Counter[str] = field(default_factory=Counter)
    deferred: int = 0
    natted: int = 0  # packets seen through NAT, given to helpers with their endpoints' addresses
    unresolved: int = 0  # first packets whose conntrack never showed up
    events_lost: int = 0  # expectation events the kernel could not deliver (ENOBUFS)
    attached: int = 0  # expectations attached to a verdict (first packet of a question to many, or expected)
    held: float = 0.0  # seconds packets spent in our hands before their verdict, in all
    held_max: float = 0.0
    started: float = field(default_factory=time.time)


def _to_many(pkt: Packet) -> bool:
    """Sent to a multicast group or a broadcast address (IPv4: all ones, or a last octet 255)."""
    if pkt.proto != 17:
        return False
    if pkt.l3 == 6:
        return pkt.dst[0] == 0xFF
    return 224 <= pkt.dst[0] <= 239 or pkt.dst[3] == 255


def state_file() -> str:
    """Where this network namespace's daemon lists its helpers (for `alg cleanup`)."""
    return f"{STATE_DIR}/helpers-net{os.stat('/proc/self/ns/net').st_ino}.json"


def errno_name(code: int) -> str:
    return E.errorcode.get(code, str(code))


def resolve(host: PluginHost, paths: list[str] | None) -> Policy:
    specs = {n: c.spec for n, c in host.helpers.items()}
    return load_policy(paths, specs, only_listed=True) if paths else default_policy(specs)


class Daemon:
    def __init__(self, host: PluginHost, policy_paths: list[str] | None, use_cthelper: bool = True):
        self.host = host
        # without cthelper (kernels that lack it) packets come from NFQUEUE rules the
        # operator writes, and masters must carry a helper some other way (in-kernel)
        self.use_cthelper = use_cthelper
        self.policy_paths = policy_paths
        self.policy = resolve(host, policy_paths)
        self.engine = Engine(make_slots(self.policy.helpers.values(), host.helpers), self.policy.core)
        self.stats = DaemonStats()
        self.warn = RateLimitedLog(log, self.policy.core.log_interval)
        self.ct = Ctnetlink()
        self.engine.kernel_holds = self._kernel_holds
        self.exp_events: Events | None = None
        self.cthelper = Cthelper()
        self.queues = QueueSet()
        self.registered: list[tuple[str, int, int]] = []  # (name, l3, l4proto)
        self.pending: list[tuple[float, int, Callable[[int], Any]]] = []  # (due, attempt, retry(attempt))
        self.stopping = False
        self.reload_asked = False
        self.status_sock: socket.socket | None = None
        self._instance: socket.socket | None = None
        self._wake_r, self._wake_w = os.pipe()

    # ------------------------------------------------------------ start / stop
    def start(self) -> None:
        self._claim_namespace()
        if self.use_cthelper and not self.cthelper.supported():
            raise KernelError(E.EOPNOTSUPP, "cthelper",
                              "this kernel has no nfnetlink_cthelper (CONFIG_NF_CT_NETLINK_HELPER); see `alg doctor`")
        # before any master of ours exists: with nf_conntrack_events=2 (the default) the
        # kernel reports a master's expectations only to listeners older than the master
        self.exp_events = self.ct.events()
        for slot in self.engine.slots.values():
            self._register(slot)
        self._write_state()
        self._open_status()
        log.info("serving %s", ", ".join(f"{s.policy.name} (queue {s.policy.queue})"
                                          for s in self.engine.slots.values()))

    def _claim_namespace(self) -> None:
        """One daemon per network namespace (abstract socket names are per namespace, and
        the kernel frees this one when the process dies, however it dies)."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.bind("\0alg-daemon")
        except OSError:
            s.close()
            raise AlgError("another alg daemon serves this network namespace "
                           "(its helpers are left alone; `alg status` shows it)") from None
        self._instance = s

    def _register(self, slot: HelperSlot) -> None:
        """Bind the queue, then register the helper (never a helper queueing to nobody)."""
        hp = slot.policy
        self.queues.bind(hp.queue, hp.queue_len, self._callback(slot))
        if self.use_cthelper:
            try:
                self._kernel_register(hp)
            except Exception:
                self.queues.unbind(hp.queue)
                raise
            self._registered(hp)

    def _kernel_register(self, hp: HelperPolicy) -> None:
        self.cthelper.register(hp, self.host.helpers[hp.helper].spec.priv_data_len)

    def _registered(self, hp: HelperPolicy) -> None:
        self.registered += [r for r in _entries(hp) if r not in self.registered]

    def stop(self) -> None:
        """Disable and remove our helpers, unbind the queues. Safe to call twice."""
        if self._instance is None:  # never started, or another daemon's namespace: touch nothing
            return
        remove_helpers(self.cthelper, self.registered)
        self.registered.clear()
        try:
            os.unlink(state_file())
        except OSError:
            pass
        self.queues.unbind_all()
        if self.exp_events is not None:
            self.exp_events.close()
            self.exp_events = None
        if self.status_sock is not None:
            self.status_sock.close()
            self.status_sock = None
            try:
                os.unlink(self.policy.core.status_socket)
            except OSError:
                pass
        self._instance.close()
        self._instance = None

    def _write_state(self) -> None:
        path = state_file()
        try:
            os.makedirs(STATE_DIR, exist_ok=True)
            with open(path + ".tmp", "w") as f:
                json.dump({"pid": os.getpid(), "helpers": self.registered}, f)
            os.replace(path + ".tmp", path)
        except OSError as exc:
            log.warning("cannot write %s: %s", path, exc)

    def _open_status(self) -> None:
        path = self.policy.core.status_socket
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(path)
        s.listen(8)
        s.setblocking(False)
        self.status_sock = s

    # ------------------------------------------------------------ per packet
    def _callback(self, slot: HelperSlot) -> Callable[[Any], None]:
        return lambda pkt: self.on_packet(pkt, slot)

    def on_packet(self, pkt: Any, slot: HelperSlot) -> None:
        t0 = time.perf_counter()
        verdict_accept = True
        unconfirmed = None
        first: list[Expectation] = []  # asked for by a flow's first packet, to attach to its verdict
        try:
            payload = pkt.get_payload()
            try:
                decoded = decode_ip(payload)
            except DecodeError:
                self.stats.decode_errors += 1
                decoded = None
            if decoded is not None and decoded.frag is None:
                # a flow neither we nor the cache know is new (so is a SYN's): its conntrack
                # is unconfirmed until the verdict, so asking the kernel first would only cost time
                t = packet_tuple(decoded)
                syn = decoded.tcp_flags & 0x12 == 0x02
                if syn:  # maybe on an old connection's tuple
                    self.ct.forget(t)
                if not syn and (self.ct.cached(t) or self.engine.flows.lookup(decoded) is not None):
                    # no conntrack for a flow we know: none will come (NFQUEUE without conntrack?)
                    seen = self._as_conntrack_sees(decoded, t, miss_ttl=1.0)
                    if seen is None:
                        self.stats.unresolved += 1
                    verdict_accept = self._inspect(seen or decoded, slot)
                elif _to_many(decoded) or self.engine.table.match(t) is not None:
                    # answers to a multicast or broadcast question come within a millisecond,
                    # before an expectation made after the verdict: attach it to the verdict;
                    # so for a flow alg itself expected (an SSDP answer, whose LOCATION opens
                    # the SUBSCRIBE connection, which must carry the helper in turn). Such
                    # packets are not NATed in practice: take them as they came.
                    self._inspect(decoded, slot, first)
                else:
                    unconfirmed = decoded
        except Exception as exc:  # never leave a packet without a verdict
            self.stats.queue_errors += 1
            self.warn(logging.ERROR, "packet", "error handling a packet of %s: %s: %s",
                      slot.policy.name, type(exc).__name__, exc)
        finally:
            try:
                if first and self._verdict_with(pkt, slot, first[0]):
                    self.stats.attached += 1
                elif verdict_accept:
                    pkt.accept()
                else:
                    pkt.drop()
                    self.stats.dropped += 1
                self.stats.verdicts += 1
            except Exception as exc:
                self.stats.queue_errors += 1
                self.warn(logging.ERROR, "verdict", "verdict failed: %s", exc)
            held = time.perf_counter() - t0
            self.stats.held += held
            self.stats.held_max = max(self.stats.held_max, held)
        for e in first:  # the attached one too: refreshed, its result checked and counted
            self._create(e)
        if unconfirmed is not None:
            self._inspect_confirmed(unconfirmed, slot)

    def _verdict_with(self, pkt: Any, slot: HelperSlot, e: Expectation) -> bool:
        """Accept pkt with e attached to its verdict; False if that could not be sent."""
        try:
            self.queues.verdict(slot.policy.queue, pkt, True, exp_body(e, None))
        except OSError as exc:
            self.stats.kernel_errors[errno_name(exc.errno or 0)] += 1
            return False
        return True

    def _as_conntrack_sees(self, pkt: Packet, t: FlowTuple, miss_ttl: float = 0.0) -> Packet | None:
        """The packet with its endpoints' real addresses and ports (from its
        conntrack), None while the conntrack is unconfirmed.

        Where nfnetlink_cthelper queues, after NAT, a packet carries translated
        addresses while its payload names the endpoints' own, and the flows to
        expect come from and go to the real endpoints: helpers must judge the
        flow as its endpoints see it (as the kernel's helpers do, from each
        direction's source address).
        """
        ref = self.ct.lookup(t, miss_ttl)
        if ref is None:
            return None
        seen = ref.seen
        if seen == t:
            return pkt
        self.stats.natted += 1
        return replace(pkt, src=seen.src.packed, dst=seen.dst.packed, sport=seen.sport, dport=seen.dport)

    def _inspect_confirmed(self, pkt: Packet, slot: HelperSlot, attempt: int = 0) -> None:
        """A flow's first packet, after its verdict: once confirmed, its conntrack is known."""
        try:
            seen = self._as_conntrack_sees(pkt, packet_tuple(pkt))
            if seen is None and attempt < len(RETRY_DELAYS):
                self.pending.append((time.monotonic() + RETRY_DELAYS[attempt], attempt + 1,
                                     lambda n: self._inspect_confirmed(pkt, slot, n)))
                self.stats.deferred += 1
                return
            if seen is None:  # gone (dropped further on?): inspect it as it came
                self.stats.unresolved += 1
            self._inspect(seen or pkt, slot)
        except Exception as exc:
            self.stats.queue_errors += 1
            self.warn(logging.ERROR, "packet", "error handling a packet of %s: %s: %s",
                      slot.policy.name, type(exc).__name__, exc)

    def _inspect(self, pkt: Packet, slot: HelperSlot, later: list[Expectation] | None = None) -> bool:
        """Give the packet to its helper, act on the result (creations into `later`
        if given); False: drop it (pressure, if so configured)."""
        accept = True
        for d in self.engine.process(pkt, time.monotonic(), slot=slot):
            if isinstance(d, Create) and later is not None:
                later.append(d.expectation)
            elif isinstance(d, Create):
                if not self._create(d.expectation) and not self.policy.core.accept_on_pressure:
                    accept = False
            elif isinstance(d, Delete):
                self._delete(d.expectation)
        return accept

    def _create(self, e: Expectation, attempt: int = 0) -> bool:
        """Create in the kernel; False when refused for lack of room."""
        try:
            master = self.ct.lookup(e.master)
            if master is None:
                raise KernelError(E.ENOENT, "ct-get")
            self.ct.create(e, master)
            log.debug("%s: created %s", e.helper, e.to_text())
            return True
        except KernelError as exc:
            if exc.errno == E.ENOENT and attempt < len(RETRY_DELAYS):
                # the master is unconfirmed while its first packet waits in our queue: after the verdict
                self.pending.append((time.monotonic() + RETRY_DELAYS[attempt], attempt + 1,
                                     lambda n: self._create(e, n)))
                self.stats.deferred += 1
                return True
            name = errno_name(exc.errno)
            self.stats.kernel_errors[name] += 1
            self.engine.kernel_failed(e, name, is_full(exc))
            if not is_full(exc):
                self.warn(logging.WARNING, f"create-{name}", "%s: expectation %s refused by the kernel: %s",
                          e.helper, e.to_text(), exc)
            return not is_full(exc)

    def _delete(self, e: Expectation) -> None:
        try:
            self.ct.delete(e)
        except KernelError as exc:
            if exc.errno != E.ENOENT:  # already used or timed out
                name = errno_name(exc.errno)
                self.stats.kernel_errors[name] += 1

    def _kernel_holds(self, e: Expectation) -> bool:
        try:
            return self.ct.get(e) is not None
        except KernelError:
            return True  # in doubt the clash stands

    def _follow_kernel(self) -> None:
        """Drop from the table what the kernel's events say it let go (used, deleted, timed out)."""
        assert self.exp_events is not None
        last = {}  # the last event per tuple and mask says whether the kernel holds it now
        for ev in self.exp_events.read():
            if ev.expectation is None:  # missed ones show up when they clash (kernel_holds)
                self.stats.events_lost += 1
            else:
                k = ev.expectation
                last[(k.tuple, k.mask)] = (ev.kind, k.master)
        now = time.monotonic()
        for (t, mask), (kind, master) in last.items():
            e = self.engine.table.holding(t, mask.src, mask.sport == 0) if kind == "destroy" else None
            if e is None:
                continue
            # ours names its master by the endpoints' view; the kernel by the conntrack's tuple
            ref = self.ct.lookup(e.master)
            if ref is None or ref.tuple == master:  # not another master's, still unborn
                self.engine.ended(e, now)

    def _retry_pending(self) -> None:
        now = time.monotonic()
        due = [p for p in self.pending if p[0] <= now]
        self.pending = [p for p in self.pending if p[0] > now]
        for _due, attempt, retry in due:
            retry(attempt)

    # ------------------------------------------------------------ loop
    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGHUP, self._on_signal)
        try:
            self.start()
            while not self.stopping:
                if self.reload_asked:
                    self.reload_asked = False
                    self.reload()
                fds = self.queues.fds() + [self._wake_r] + ([self.status_sock.fileno()] if self.status_sock else [])
                if self.exp_events is not None:
                    fds.append(self.exp_events.fileno())
                timeout = max(0.0, min(p[0] for p in self.pending) - time.monotonic()) if self.pending else 1.0
                try:
                    ready, _, _ = select.select(fds, [], [], timeout)
                except InterruptedError:
                    continue
                for fd in ready:
                    if self.status_sock is not None and fd == self.status_sock.fileno():
                        self._guarded(self._serve_status)
                    elif fd == self._wake_r:
                        os.read(self._wake_r, 64)
                    elif self.exp_events is not None and fd == self.exp_events.fileno():
                        self._guarded(self._follow_kernel)
                    else:
                        self._guarded(self.queues.service, fd)
                if self.pending:
                    self._guarded(self._retry_pending)
                self._observe()
        finally:
            self.stop()
        log.info("stopped; helpers removed, queues unbound")
        return 0

    def _guarded(self, work: Callable[..., Any], *args: Any) -> None:
        """One failure (a netlink timeout, a bug) is counted and logged; the daemon goes on,
        since its helpers stay registered and their flows need it."""
        try:
            work(*args)
        except Exception as exc:
            self.stats.queue_errors += 1
            self.warn(logging.ERROR, f"loop-{getattr(work, '__name__', 'work')}", "%s failed: %s: %s",
                      getattr(work, "__name__", "work"), type(exc).__name__, exc)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if signum == signal.SIGHUP:
            self.reload_asked = True
        else:
            self.stopping = True
        os.write(self._wake_w, b"x")

    def _observe(self) -> None:
        events = self.engine.take_events()
        for ev in events:
            try:
                self.host.hook.alg_expectation_event(event=ev)
            except Exception as exc:
                self.warn(logging.ERROR, "observer", "expectation observer failed: %s", exc)

    def reload(self) -> None:
        try:
            policy = resolve(self.host, self.policy_paths)
            new_slots = make_slots(policy.helpers.values(), self.host.helpers)
        except Exception as exc:  # a bad file (ConfigError) or a helper refusing its options
            log.error("reload refused, keeping the running policy: %s", exc)
            return
        running = self.engine.slots
        for name, slot in new_slots.items():  # keep what did not change, and its counters
            if name in running and running[name].policy == slot.policy:
                new_slots[name] = running[name]
        old_queues = {s.policy.queue for s in running.values()}
        new_queues = {s.policy.queue: s for s in new_slots.values()}
        changed = [s for name, s in new_slots.items() if s is not running.get(name)]
        bound: list[int] = []
        done: list[HelperSlot] = []
        try:  # all the kernel may refuse, before anything is given up
            for q, slot in new_queues.items():
                if q not in old_queues:
                    self.queues.bind(q, slot.policy.queue_len, self._callback(slot))
                    bound.append(q)
            for slot in changed if self.use_cthelper else ():
                self._kernel_register(slot.policy)
                done.append(slot)
        except Exception as exc:
            for slot in done:  # put back what was registered before
                old = running.get(slot.policy.name)
                try:
                    if old is not None:
                        self._kernel_register(old.policy)
                    else:
                        remove_helpers(self.cthelper, _entries(slot.policy))
                except Exception as undo_exc:
                    log.error("reload: could not restore helper %s: %s", slot.policy.name, undo_exc)
            for q in bound:
                self.queues.unbind(q)
            log.error("reload failed, keeping the running policy: %s", exc)
            return
        for slot in done:
            self._registered(slot.policy)
        for q, slot in new_queues.items():
            self.queues.rebind(q, self._callback(slot))
        gone = {name for name in running if name not in new_slots}
        remove_helpers(self.cthelper, [r for r in self.registered if r[0] in gone])
        self.registered = [r for r in self.registered if r[0] not in gone]
        for q in old_queues - new_queues.keys():
            self.queues.unbind(q)  # drained first: what waits there gets its verdict
        self.policy = policy
        self.engine.slots = new_slots
        self.engine.core = policy.core
        self._write_state()
        log.info("policy reloaded: %s", ", ".join(sorted(new_slots)))

    # ------------------------------------------------------------ status
    def status(self) -> dict[str, Any]:
        st = self.engine.stats()
        refused = sum(sum(c["refused"].values()) for h in st["helpers"].values() for c in h["classes"].values())
        return {
            "pid": os.getpid(),
            "uptime": round(time.time() - self.stats.started, 1),
            "verdicts": self.stats.verdicts, "dropped": self.stats.dropped,
            "decode_errors": self.stats.decode_errors, "queue_errors": self.stats.queue_errors,
            "kernel_errors": dict(self.stats.kernel_errors), "deferred": self.stats.deferred,
            "natted": self.stats.natted, "unresolved": self.stats.unresolved, "attached": self.stats.attached,
            "events_lost": self.stats.events_lost,
            "verdict_us_mean": round(1e6 * self.stats.held / max(1, self.stats.verdicts), 1),
            "verdict_us_max": round(1e6 * self.stats.held_max, 1),
            "queues": {s.policy.name: s.policy.queue for s in self.engine.slots.values()},
            "queue_kernel": self._queue_kernel(),
            "refused_total": refused,
            **st,
        }

    def _queue_kernel(self) -> dict[str, dict[str, int]]:
        """The kernel's side of each queue: what waits now, and what it dropped before
        alg saw it (queue full: raise queue_len; socket full: alg too slow)."""
        try:
            kernel = proc_queues()
        except OSError:
            return {}
        return {s.policy.name: {"waiting": q.total, "dropped_full": q.dropped, "dropped_socket": q.user_dropped}
                for s in self.engine.slots.values() if (q := kernel.get(s.policy.queue)) is not None}

    def _serve_status(self) -> None:
        assert self.status_sock is not None
        try:
            conn, _ = self.status_sock.accept()
        except BlockingIOError:
            return
        with conn:
            conn.settimeout(1.0)
            try:
                conn.sendall(json.dumps(self.status()).encode())
            except OSError:
                pass


def _entries(hp: HelperPolicy) -> list[tuple[str, int, int]]:
    """The kernel's helper entries for a policy: (name, l3, proto); IPv4 always (cthelper.register)."""
    return [(hp.name, l3, proto) for l3 in sorted({4, *hp.families}) for proto in hp.protocols]


def remove_helpers(cthelper: Cthelper, registered: list[tuple[str, int, int]] | list[list]) -> list[str]:
    """Disable, then delete, each (name, l3, proto); returns what could not be undone."""
    problems = []
    for name, l3, proto in registered:
        try:
            cthelper.set_status(name, proto, False, l3)
        except KernelError as exc:
            if exc.errno != E.ENOENT:
                problems.append(f"{name}: {exc}")
            continue
        try:
            cthelper.unregister(name, proto, l3)
        except KernelError as exc:  # EBUSY while conntracks use it: disabled is enough
            if exc.errno not in (E.ENOENT, E.EBUSY):
                problems.append(f"{name}: {exc}")
    return problems


def read_status(path: str, timeout: float = 2.0) -> dict[str, Any]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
        chunks = []
        while True:
            b = s.recv(65536)
            if not b:
                break
            chunks.append(b)
    except OSError as exc:
        raise AlgError(f"no alg daemon answers on {path}: {exc.strerror or exc}") from None
    finally:
        s.close()
    return json.loads(b"".join(chunks))


def refusal_fix(reason: str) -> str:
    if reason in (Refusal.KERNEL_FULL.value, "ENOSPC", "EMFILE"):
        return ("the kernel's expectation table is full: raise it with `options nf_conntrack expect_hashsize=N` "
                "in /etc/modprobe.d (nf_conntrack_expect_max = 4 x N), see `alg doctor`")
    if reason == Refusal.BUDGET.value:
        return "alg's own budget is spent: raise [core] expect_budget in alg.toml"
    if reason == Refusal.CLASH.value:
        return "another master expects the same flow (normal for repeated answers)"
    return ""
