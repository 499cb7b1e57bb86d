"""The supervisor (`alg run`): what the daemon owns and how it starts, reloads and stops.

Theory of operation. At start the supervisor claims the network namespace
(one daemon each), subscribes to the kernel's expectation events, then for
every enabled helper of the policy binds its queue and registers the helper
with nfnetlink_cthelper (the queue first: never a helper queueing to
nobody), writes the state file that `alg cleanup` reads after a crash,
adopts the kernel's expectations of its helpers, and opens the status
socket. One thread then serves everything from one select() loop: each
queue's worker (alg.daemon.worker), the reconciler (expectation events), the
sink's timers (alg.daemon.sink), the status server and the signals.

SIGHUP reloads the policy files, all or nothing: new queues are bound and
changed helpers registered first, so a failure (a bad file, a queue another
program holds, a class count the kernel will not change) keeps the running
policy whole; then the engine takes the new policy at once (helper options
reach existing flows, the budget and the logging interval apply), a queue
given up is drained before it is unbound, and the kernel's expectations are
adopted again. SIGTERM/SIGINT disable and remove the helpers and unbind the
queues: a helper left enabled with nobody reading its queue breaks the
control connections (their conntracks are never confirmed, DESIGN.md).
"""

from __future__ import annotations

import errno as E
import gc
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

from ..engine import Engine, HelperSlot, RateLimitedLog, make_slots
from ..errors import AlgError, KernelError
from ..expect import Refusal
from ..flows import FLOW_RECORD_LEN
from ..metrics import counter, gauge, to_json
from ..plugins import PluginHost
from ..policy import HelperPolicy, Policy, default_policy, load_policy
from .reconciler import Reconciler
from .sink import KernelSink
from .status import StatusServer, prometheus
from .systemd import Notifier
from .worker import QueueWorker

log = logging.getLogger("alg.daemon")
STATE_DIR = "/run/alg"
METRICS_INTERVAL = 15.0  # seconds between rewrites of [core] metrics_file (a scrape interval)
GC_YOUNG = 10_000  # tracked allocations between two young collections (CPython's default: 700)


def settle_collector() -> None:
    """The cyclic garbage collector as the loop wants it, once start-up is done.

    What start-up made (plugins, pyroute2's classes, policy, tables) lives as long as the
    process: frozen out of the collector's generations, a full collection does not walk it.
    A queued packet allocates dozens of tracked objects and keeps a few (its flow's state,
    transactions, expectations, timers); collecting the young every 700 allocations scanned
    them every few packets and promoted enough to run full collections under load
    (bench_worker, 20,000 INVITEs: 14.5 us of collections per INVITE at 700, 6.3 at 10,000).
    alg makes little cyclic garbage, so a young generation of GC_YOUNG costs no memory to speak of."""
    gc.freeze()
    gc.set_threshold(GC_YOUNG, *gc.get_threshold()[1:])


@dataclass
class DaemonStats:
    verdicts: int = counter("packets given their verdict")
    dropped: int = counter("packets dropped (expectation refused for lack of room, accept_on_pressure off)")
    decode_errors: int = counter("queued packets that are not IP/TCP/UDP alg can read")
    queue_errors: int = counter("failures on a packet's way (counted, the packet still got its verdict)")
    kernel_errors: Counter = counter("kernel refusals of expectation work, by errno", label="errno")
    deferred: int = counter("expectation creations retried because the master was not confirmed yet")
    unresolved: int = counter("packets whose conntrack could not be known (inspected by no helper)")
    events_lost: int = counter("expectation events the kernel could not deliver (ENOBUFS)")
    attached: int = counter("expectations attached to a verdict (NFQA_EXP) rather than created over ctnetlink")
    attach_failed: int = counter("attached expectations the kernel did not create (then asked for over ctnetlink)")
    adopted: int = counter("expectations the kernel held for alg's helpers, taken into the table")
    evicted_by_kernel: int = counter("expectations ExpectMax evicted that the kernel removed itself as it created "
                                     "the next one (no EXP_DELETE sent)")
    rewrite_failed: int = counter("NAT rewrites the packet could not take (cut to copy_range, too large)")
    held: float = counter("seconds packets spent in alg's hands before their verdict, in all")
    held_max: float = gauge("the longest a packet waited for its verdict, in seconds", 0.0)
    started: float = field(default_factory=time.time)


@dataclass
class KernelPorts:
    """The kernel as the daemon uses it; tests pass fakes."""

    cthelper: Any  # alg.kernel.cthelper.Cthelper
    ct: Any  # alg.kernel.ctnetlink.Ctnetlink
    events: Callable[[], Any]  # () -> alg.kernel.ctnetlink.Events
    bind: Callable[[int, int], Any]  # (queue, length) -> alg.kernel.nfqueue.QueueBinding
    queue_counters: Callable[[], dict]  # alg.kernel.nfqueue.proc_queues
    is_full: Callable[[KernelError], bool]


def register_helper(kernel: KernelPorts, host: PluginHost, hp: HelperPolicy, pair: bool) -> None:
    """Register hp with the kernel: the flow's record (alg.flows.FlowRecord) lives in
    the helper's private data; the classes as HelperPolicy.kernel_classes gives them."""
    kernel.cthelper.register(replace(hp, classes=hp.kernel_classes(pair)),
                             max(FLOW_RECORD_LEN, host.helpers[hp.helper].spec.priv_data_len))


def kernel_ports() -> KernelPorts:
    from ..kernel.cthelper import Cthelper
    from ..kernel.ctnetlink import Ctnetlink, is_full
    from ..kernel.nfqueue import QueueBinding, proc_queues

    ct = Ctnetlink()
    return KernelPorts(Cthelper(), ct, ct.events, lambda num, length: QueueBinding(num, length), proc_queues,
                       is_full)


def state_file() -> str:
    """Where this network namespace's daemon lists its helpers (for `alg cleanup`)."""
    return f"{STATE_DIR}/helpers-net{os.stat('/proc/self/ns/net').st_ino}.json"


def claim_namespace() -> socket.socket:
    """One daemon per network namespace (abstract socket names are per namespace, and
    the kernel frees this one when the process dies, however it dies)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.bind("\0alg-daemon")
    except OSError:
        s.close()
        raise AlgError("another alg daemon serves this network namespace "
                       "(its helpers are left alone; `alg status` shows it)") from None
    return s


def write_state(registered: list[tuple[str, int, int]]) -> None:
    """The state file `alg cleanup` reads after a crash: this process and its helper entries."""
    path = state_file()
    try:
        os.makedirs(STATE_DIR, exist_ok=True)
        with open(path + ".tmp", "w") as f:
            json.dump({"pid": os.getpid(), "helpers": registered}, f)
        os.replace(path + ".tmp", path)
    except OSError as exc:
        log.warning("cannot write %s: %s", path, exc)


def shared_entries(state_dir: str = STATE_DIR) -> set[tuple[str, int, int]]:
    """Helper entries that a live alg daemon of another network namespace registered too.

    cthelper registrations are global to the kernel while queues are per
    namespace: two firewalls in two namespaces of one kernel (a lab's pair,
    containers) share one registration, each reading its own queue. Disabling or
    removing an entry the other still serves would leave its flows queued to
    nobody, so a daemon that stops (or `alg cleanup`) leaves those alone. A state
    file counts while its pid lives in the namespace its name gives."""
    try:
        own = os.path.basename(state_file())
        names = os.listdir(state_dir)
    except OSError:
        return set()
    out: set[tuple[str, int, int]] = set()
    for name in names:
        if name == own or not (name.startswith("helpers-net") and name.endswith(".json")):
            continue
        try:
            with open(os.path.join(state_dir, name)) as f:
                state = json.load(f)
            pid = int(state["pid"])
            if pid == os.getpid() or str(os.stat(f"/proc/{pid}/ns/net").st_ino) != name[len("helpers-net"):-5]:
                continue
            out |= {(str(n), int(l3), int(p)) for n, l3, p in state.get("helpers", [])}
        except (OSError, ValueError, KeyError, TypeError):
            continue  # gone, half-written or not ours: not a live daemon's
    return out


def resolve(host: PluginHost, paths: list[str] | None) -> Policy:
    specs = {n: c.spec for n, c in host.helpers.items()}
    return load_policy(paths, specs, only_listed=True) if paths else default_policy(specs)


class Daemon:
    def __init__(self, host: PluginHost, policy_paths: list[str] | None, use_cthelper: bool = True,
                 kernel: KernelPorts | None = None, notifier: Notifier | None = None):
        self.host = host
        # without cthelper (kernels that lack it) packets come from NFQUEUE rules the
        # operator writes, and masters must carry a helper some other way (in-kernel)
        self.use_cthelper = use_cthelper
        self.policy_paths = policy_paths
        self.policy = self._resolve()
        self.kernel = kernel or kernel_ports()
        self.engine = Engine(make_slots(self.policy.helpers.values(), host.helpers), self.policy.core)
        self.stats = DaemonStats()
        self.warn = RateLimitedLog(log, self.policy.core.log_interval)
        self.sink = KernelSink(self.kernel.ct, self.engine, self.stats, self.warn, self.kernel.is_full)
        self.engine.kernel_holds = self.sink.holds
        if logging.getLogger("alg.engine").isEnabledFor(logging.DEBUG):
            self.engine.explained = []  # why each control message did or did not open a pinhole, logged
        self.reconciler: Reconciler | None = None
        self.workers: dict[int, QueueWorker] = {}  # by queue number
        self.registered: list[tuple[str, int, int]] = []  # (name, l3, l4proto)
        self.status_server: StatusServer | None = None
        self.notifier = notifier or Notifier()
        self._metrics_due = 0.0
        self.stopping = False
        self.reload_asked = False
        self._instance: socket.socket | None = None
        self._wake_r, self._wake_w = os.pipe()

    def _resolve(self) -> Policy:
        """The policy this daemon serves (a pool's worker serves its share: alg.daemon.pool)."""
        return resolve(self.host, self.policy_paths)

    # ------------------------------------------------------------ start / stop
    def start(self) -> None:
        self._claim_namespace()
        if self.use_cthelper and not self.kernel.cthelper.supported():
            raise KernelError(E.EOPNOTSUPP, "cthelper",
                              "this kernel has no nfnetlink_cthelper (CONFIG_NF_CT_NETLINK_HELPER); see `alg doctor`")
        # before any master of ours exists: with nf_conntrack_events=2 (the default) the
        # kernel reports a master's expectations only to listeners older than the master
        self.reconciler = Reconciler(self.kernel.events(), self.engine, self.sink, self.stats)
        for slot in self.engine.slots.values():
            self._register(slot)
        self._write_state()
        self._adopt()
        self.status_server = StatusServer(self.policy.core.status_socket, self.status)
        serving = ", ".join(f"{s.policy.name} (queue {s.policy.queue})" for s in self.engine.slots.values())
        log.info("serving %s", serving)
        self.notifier.ready(f"serving {serving}")

    def _claim_namespace(self) -> None:
        self._instance = claim_namespace()

    def _worker(self, slot: HelperSlot) -> QueueWorker:
        hp = slot.policy
        try:
            queue = self.kernel.bind(hp.queue, hp.queue_len)
        except OSError as exc:
            raise KernelError(exc.errno or 0, f"bind queue {hp.queue}",
                              "is another program bound to it, or nfnetlink_queue missing?") from None
        if not queue.conntrack:
            log.warning("queue %d: this kernel cannot hand over each packet's conntrack "
                        "(no CONFIG_NETFILTER_NETLINK_GLUE_CT): asking ctnetlink for it per packet", hp.queue)
        return QueueWorker(queue, hp.name, self.engine, self.sink, self.stats, self.warn,
                           lookup=None if queue.conntrack else self.kernel.ct.conntrack,
                           registered=self._registers_helpers())

    def _registers_helpers(self) -> bool:
        """Whether alg registers its helpers with the kernel (with its own classes; see
        QueueWorker.registered). Without cthelper, masters carry helpers alg does not know."""
        return self.use_cthelper

    def _register(self, slot: HelperSlot) -> None:
        """Bind the queue, then register the helper (never a helper queueing to nobody)."""
        hp = slot.policy
        worker = self._worker(slot)
        if self.use_cthelper:
            try:
                self._kernel_register(hp)
            except Exception:
                worker.queue.close()
                raise
            self._registered(hp)
        self.workers[hp.queue] = worker

    def _kernel_register(self, hp: HelperPolicy) -> None:
        register_helper(self.kernel, self.host, hp, self.policy.core.pair)

    def _registered(self, hp: HelperPolicy) -> None:
        self.registered += [r for r in _entries(hp) if r not in self.registered]

    def _adopt(self) -> None:
        if self.reconciler is None:
            return
        try:
            self.reconciler.adopt(self.kernel.ct.list())
        except KernelError as exc:
            log.warning("cannot list the kernel's expectations to adopt them: %s", exc)

    def stop(self) -> None:
        """Disable and remove our helpers, unbind the queues. Safe to call twice."""
        if self._instance is None:  # never started, or another daemon's namespace: touch nothing
            return
        self.notifier.stopping()
        try:  # first: of two daemons stopping at once, the later to look finds the other gone
            os.unlink(state_file())
        except OSError:
            pass
        shared = shared_entries()
        if shared & set(self.registered):
            log.info("left registered for alg in another network namespace: %s",
                     ", ".join(sorted({n for n, _l3, _p in shared & set(self.registered)})))
        remove_helpers(self.kernel.cthelper, [r for r in self.registered if r not in shared])
        self.registered.clear()
        for num in list(self.workers):
            self._unbind(num)
        if self.reconciler is not None:
            self.reconciler.close()
            self.reconciler = None
        if self.status_server is not None:
            self.status_server.close()
            self.status_server = None
        self._instance.close()
        self._instance = None

    def _unbind(self, num: int) -> None:
        """Unbind a queue; what waits in it is given its verdict first (unbinding drops it)."""
        worker = self.workers.pop(num)
        try:
            while worker.serve():
                pass
        except Exception as exc:  # the worker gives verdicts whatever happens; this is the socket failing
            log.warning("draining queue %d: %s", num, exc)
        worker.queue.close()

    def _write_state(self) -> None:
        write_state(self.registered)

    # ------------------------------------------------------------ loop
    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGHUP, self._on_signal)
        try:
            self.start()
            settle_collector()
            while not self.stopping:
                self.step()
        finally:
            self.stop()
        log.info("stopped; helpers removed, queues unbound")
        return 0

    def step(self, timeout: float = 1.0) -> None:
        """One turn of the loop: wait for work, then do what is ready."""
        if self.reload_asked:
            self.reload_asked = False
            self.reload()
        readers: dict[int, Callable[[], Any]] = {w.fileno(): w.serve for w in self.workers.values()}
        readers[self._wake_r] = self._woken
        if self.reconciler is not None:
            readers[self.reconciler.fileno()] = self.reconciler.read
        if self.status_server is not None:
            readers[self.status_server.fileno()] = self.status_server.serve
        self.notifier.watchdog()  # from the loop itself: a loop that hangs is restarted
        if self.notifier.interval is not None:
            timeout = min(timeout, self.notifier.interval)
        due = self.sink.next_due()
        if due is not None:
            timeout = max(0.0, min(timeout, due - time.monotonic()))
        try:
            ready, _, _ = select.select(readers, [], [], timeout)
        except InterruptedError:
            return
        for fd in ready:
            self._guarded(readers[fd])
        self._guarded(self.sink.run_due)
        self.engine.log_explanations()
        self._observe()
        if self.policy.core.metrics_file and time.monotonic() >= self._metrics_due:
            self._metrics_due = time.monotonic() + METRICS_INTERVAL
            self._guarded(self._write_metrics)

    def _woken(self) -> None:
        os.read(self._wake_r, 64)

    def _guarded(self, work: Callable[[], Any]) -> None:
        """One failure (a netlink timeout, a bug) is counted and logged; the daemon goes on,
        since its helpers stay registered and their flows need it."""
        try:
            work()
        except Exception as exc:
            name = getattr(work, "__name__", "work")
            self.stats.queue_errors += 1
            self.warn(logging.ERROR, f"loop-{name}", "%s failed: %s: %s", name, type(exc).__name__, exc)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if signum == signal.SIGHUP:
            self.reload_asked = True
        else:
            self.stopping = True
        os.write(self._wake_w, b"x")

    def _observe(self) -> None:
        if not self.engine.has_events():  # (most turns: nothing to deliver or drop, no hook looked up)
            return
        if not self.host.hook.alg_expectation_event.get_hookimpls():
            # nobody observes: a hook call per event (or the events themselves) would cost each packet microseconds
            self.engine.drop_events()
            return
        for ev in self.engine.take_events():
            try:
                self.host.hook.alg_expectation_event(event=ev)
            except Exception as exc:
                self.warn(logging.ERROR, "observer", "expectation observer failed: %s", exc)

    # ------------------------------------------------------------ reload
    def reload(self) -> bool:
        self.notifier.reloading()
        try:
            return self._reload()
        finally:
            self.notifier.ready("reloaded" if not self.stopping else "stopping")

    def _reload(self) -> bool:
        try:
            policy = self._resolve()
            new_slots = make_slots(policy.helpers.values(), self.host.helpers)
        except Exception as exc:  # a bad file (ConfigError) or a helper refusing its options
            log.error("reload refused, keeping the running policy: %s", exc)
            return False
        running = self.engine.slots
        for name, slot in new_slots.items():  # keep what did not change, and its counters
            if name in running and running[name].policy == slot.policy:
                new_slots[name] = running[name]
        new_queues = {s.policy.queue: s for s in new_slots.values()}
        changed = [s for name, s in new_slots.items() if s is not running.get(name)]
        bound: dict[int, QueueWorker] = {}
        done: list[HelperSlot] = []
        try:  # all the kernel may refuse, before anything is given up
            for q, slot in new_queues.items():
                if q not in self.workers:
                    bound[q] = self._worker(slot)
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
                        remove_helpers(self.kernel.cthelper, _entries(slot.policy))
                except Exception as undo_exc:
                    log.error("reload: could not restore helper %s: %s", slot.policy.name, undo_exc)
            for worker in bound.values():
                worker.queue.close()
            log.error("reload failed, keeping the running policy: %s", exc)
            return False
        for slot in done:
            self._registered(slot.policy)
        self.workers.update(bound)
        for q, slot in new_queues.items():
            self.workers[q].helper = slot.policy.name
        gone = {name for name in running if name not in new_slots}
        remove_helpers(self.kernel.cthelper, [r for r in self.registered if r[0] in gone])
        self.registered = [r for r in self.registered if r[0] not in gone]
        for q in [q for q in self.workers if q not in new_queues]:
            self._unbind(q)  # drained first: what waits there gets its verdict
        self.policy = policy
        self.engine.reconfigure(new_slots, policy.core)
        self.warn.interval = policy.core.log_interval
        self._write_state()
        self._adopt()
        log.info("policy reloaded: %s", ", ".join(sorted(new_slots)))
        return True

    # ------------------------------------------------------------ status
    def status(self) -> dict[str, Any]:
        st = self.engine.stats()
        refused = sum(sum(c["refused"].values()) for h in st["helpers"].values() for c in h["classes"].values())
        s = self.stats
        return {
            "pid": os.getpid(),
            "uptime": round(time.time() - s.started, 1),
            **to_json(s),
            "natted": sum(h["natted"] for h in st["helpers"].values()),
            "conntrack_from_queue": all(w.queue.conntrack for w in self.workers.values()),
            "verdict_us_mean": round(1e6 * s.held / max(1, s.verdicts), 1),
            "verdict_us_max": round(1e6 * s.held_max, 1),
            "queues": {s.policy.name: s.policy.queue for s in self.engine.slots.values()},
            "queue_kernel": self._queue_kernel(),
            "refused_total": refused,
            **st,
        }

    def _write_metrics(self) -> None:
        """The counters for node_exporter's textfile collector (written whole, then renamed)."""
        path = self.policy.core.metrics_file
        with open(path + ".tmp", "w") as f:
            f.write(prometheus(self.status()))
        os.replace(path + ".tmp", path)

    def _queue_kernel(self) -> dict[str, dict[str, int]]:
        """The kernel's side of each queue: what waits now, and what it dropped before
        alg saw it (queue full: raise queue_len; socket full: alg too slow)."""
        try:
            kernel = self.kernel.queue_counters()
        except OSError:
            return {}
        return {s.policy.name: {"waiting": q.total, "dropped_full": q.dropped, "dropped_socket": q.user_dropped}
                for s in self.engine.slots.values() if (q := kernel.get(s.policy.queue)) is not None}


def _entries(hp: HelperPolicy) -> list[tuple[str, int, int]]:
    """The kernel's helper entries for a policy: (name, l3, proto); IPv4 always (cthelper.register)."""
    return [(hp.name, l3, proto) for l3 in sorted({4, *hp.families}) for proto in hp.protocols]


def remove_helpers(cthelper: Any, registered: list[tuple[str, int, int]] | list[list]) -> list[str]:
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


REFUSAL_FIXES = {
    Refusal.KERNEL_FULL.value: "the kernel's expectation table is full: raise it with `options nf_conntrack "
                               "expect_hashsize=N` in /etc/modprobe.d (nf_conntrack_expect_max = 4 x N), "
                               "see `alg doctor`",
    Refusal.BUDGET.value: "alg's own budget is spent: raise [core] expect_budget in alg.toml",
    Refusal.HELPER_SHARE.value: "this helper holds its share of the budget: raise [core] helper_share or "
                                "expect_budget in alg.toml",
    Refusal.SOURCE_SHARE.value: "one host holds its share of the budget (a SIP proxy carrying every call?): "
                                "raise [core] source_share in alg.toml",
    Refusal.PER_MESSAGE.value: "one message asked for more than ExpectMax of a class or [core] expect_per_message",
    Refusal.CLASH.value: "another master expects the same flow (normal for repeated answers)",
}


def refusal_fix(reason: str) -> str:
    """What to do about a refusal reason (or the kernel's errno for a full table)."""
    return REFUSAL_FIXES.get(Refusal.KERNEL_FULL.value if reason in ("ENOSPC", "EMFILE") else reason, "")
