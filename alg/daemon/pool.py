"""Scale-out across cores: one supervisor, N worker processes (`[core] workers = N`).

Theory of operation. nfnetlink_cthelper sends all the flows of one kernel
helper to one queue, so one helper is one reader. With N workers every
enabled helper is registered N times, as NAME0..NAME{N-1}, instance i on its
own queue (alg.policy.instance_policies), and `alg rules` spreads new flows
over the instances (nft: a hash of the two addresses; iptables: round robin).
A conntrack keeps the helper it was given, so each control flow, and every
expectation it asks for, stays with one instance; worker i serves instance i
of every helper, with its own engine, sink and reconciler (a `Shard`: the
one-process daemon of alg.daemon.supervisor on its share of the policy).

The supervisor (`Pool`) claims the namespace, forks the workers (fork: they
start from the loaded plugins, a restart takes milliseconds), waits until
each has bound its queues, and only then registers the helpers (never a
helper queueing to nobody); it writes the state file `alg cleanup` reads,
serves the status socket by asking every worker over its pipe and merging
the answers, forwards SIGHUP, and on SIGTERM removes the helpers before it
stops the workers (each drains its queues before unbinding them).

Sharing the limits:

* ExpectMax is per master and class, and a master's packets all reach one
  instance: each worker counts its own masters, nothing to share.
* The global expectation budget is split: worker i may hold
  `expect_budget // N` (the remainder to the first ones), so the workers
  together never exceed it, with no lock and no shared memory on the
  packet path. A shared counter would let one busy worker borrow the others'
  room, but a worker killed between counting and creating would leave the
  count wrong until someone recounted; split, a restarted worker recounts
  its own share by adopting the kernel's expectations of its instances. The
  price: the shares (helper_share, source_share) are fractions of a worker's
  budget, so one pair of hosts (always hashed to one worker) may hold at most
  source_share of budget/N. Raise expect_budget with workers. The memory
  budget ([core] memory_budget_mb) and each helper's max_flows are split the
  same way.

A dead worker. The supervisor sees it at once (the process sentinel is in
its select loop) and forks a new one for the same instances, which binds
their queues again and adopts their expectations; flow state lives in each
conntrack's helper private data, so the flows go on where they were. The
helpers stay registered meanwhile. What the kernel does in the gap: the
packets waiting in the dead worker's queues are dropped when its socket
closes (nfnetlink_queue flushes an instance with NF_DROP when it is
destroyed; the peers retransmit: TCP after its RTO, SIP over UDP after T1
= 500 ms). Packets that arrive before the new worker has bound the queue
find no reader: nfnetlink_cthelper queues with NF_VERDICT_FLAG_QUEUE_BYPASS,
so they pass uninspected, but from the confirm hook, so a new flow's
conntrack is not confirmed (its next packet starts again; a SIP INVITE of
that moment opens no pinhole until its retransmission). alg does not set
NFQA_CFG_F_FAIL_OPEN: a queue that fills up drops (counted in status as
dropped_full), it does not let packets past the helper. A worker that dies
within RESTART_SOON of its start is restarted after RESTART_BACKOFF, so a
worker that cannot start does not fork in a tight loop. A worker whose loop
stops turning (stuck in a parse, or in a netlink call that never returns) is
as good as dead, and systemd's watchdog hears only the supervisor: a worker
silent for PING_INTERVAL is asked whether it lives, and one silent for
HANG_TIMEOUT is killed, and so restarted.

Reload (SIGHUP) keeps the layout: a new policy with other workers, helper
names or queues is refused (restart alg for that); otherwise helpers whose
classes changed are registered again and every worker reloads its share.
"""

from __future__ import annotations

import ctypes
import errno as E
import faulthandler
import logging
import multiprocessing
import os
import select
import signal
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from ..engine import RateLimitedLog, TableStats
from ..errors import AlgError, KernelError
from ..metrics import to_json
from ..plugins import PluginHost
from ..policy import HelperPolicy, Policy, instance_policies
from .reconciler import Reconciler
from .status import StatusServer, prometheus
from .supervisor import (METRICS_INTERVAL, Daemon, DaemonStats, KernelPorts, _entries, claim_namespace, kernel_ports,
                         register_helper, remove_helpers, resolve, state_file, write_state)
from .systemd import Notifier

log = logging.getLogger("alg.daemon")
READY_WAIT = 30.0  # seconds a new worker has to bind its queues
STOP_WAIT = 5.0  # seconds a worker has to drain its queues and leave, then SIGKILL
STATUS_WAIT = 1.0  # seconds the workers have to answer a status request, all together
RESTART_SOON = 1.0  # a worker that dies this soon after its start...
RESTART_BACKOFF = 1.0  # ...is restarted after this long
PING_INTERVAL = 5.0  # seconds between the supervisor's questions to a worker that has said nothing
HANG_TIMEOUT = 30.0  # a worker silent this long is stuck (a loop that never comes back): killed, restarted
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def shard_policy(policy: Policy, index: int, workers: int) -> Policy:
    """What worker `index` of `workers` serves: instance `index` of every enabled helper,
    and its share of the expectation and memory budgets and of each helper's max_flows
    (the shares add up to the whole: the flows are spread over the instances)."""
    core = policy.core

    def share(total: int) -> int:
        return total // workers + (index < total % workers)

    helpers = {}
    for hp in policy.helpers.values():
        if hp.enabled:
            inst = instance_policies(hp, workers)[index]
            helpers[inst.name] = replace(inst, max_flows=max(1, share(hp.max_flows)))
    return Policy(replace(core, expect_budget=max(1, share(core.expect_budget)),
                          memory_budget_mb=max(1, share(core.memory_budget_mb)), metrics_file=""), helpers)


def layout(policy: Policy) -> dict[str, int]:
    """Every instance the kernel knows, by name: its queue (what a reload may not change)."""
    n = policy.core.workers
    return {i.name: i.queue for hp in policy.helpers.values() if hp.enabled for i in instance_policies(hp, n)}


# ---------------------------------------------------------------- the worker (child) side
class Control:
    """The worker's end of its pipe to the supervisor, in the loop where the status server would be."""

    def __init__(self, conn: Any, shard: "Shard"):
        self.conn, self.shard = conn, shard

    def fileno(self) -> int:
        return self.conn.fileno()

    def serve(self) -> None:
        try:
            request = self.conn.recv()
        except (EOFError, OSError):  # the supervisor is gone: nobody would register or remove our helpers
            self.shard.stopping = True
            return
        if isinstance(request, tuple) and request[0] == "status":
            self.conn.send((request[1], self.shard.status()))  # numbered: a late answer is told apart
        elif isinstance(request, tuple) and request[0] == "ping":
            self.conn.send((request[1], None))

    def close(self) -> None:
        self.conn.close()


class Shard(Daemon):
    """One worker process: its instances' queues, with its own engine, sink and reconciler.
    The supervisor claims the namespace, registers the helpers and writes the state file."""

    def __init__(self, host: PluginHost, policy_paths: list[str] | None, index: int, workers: int, conn: Any,
                 kernel: KernelPorts | None = None, registered: bool = True):
        self.index, self.n_workers, self.conn = index, workers, conn
        self.registered_by_supervisor = registered
        super().__init__(host, policy_paths, use_cthelper=False, kernel=kernel, notifier=Notifier({}))

    def _resolve(self) -> Policy:
        return shard_policy(resolve(self.host, self.policy_paths), self.index, self.n_workers)

    def start(self) -> None:
        self.reconciler = Reconciler(self.kernel.events(), self.engine, self.sink, self.stats)
        for slot in self.engine.slots.values():
            self._register(slot)  # use_cthelper is off here: binds the queue only
        self._adopt()
        self.status_server = Control(self.conn, self)  # type: ignore[assignment]  # the loop asks fileno/serve
        self.conn.send(("ready", os.getpid()))

    def _write_state(self) -> None:
        pass  # the supervisor's

    def _registers_helpers(self) -> bool:
        return self.registered_by_supervisor  # this worker's instances, their classes as policy gives them

    def stop(self) -> None:
        for num in list(self.workers):
            self._unbind(num)  # drained first
        if self.reconciler is not None:
            self.reconciler.close()
            self.reconciler = None

    def _on_signal(self, signum: int, frame: Any) -> None:
        if signum != signal.SIGINT:  # a terminal's ^C reaches the whole process group: the supervisor's to act on
            super()._on_signal(signum, frame)


def serve_shard(host: PluginHost, policy_paths: list[str] | None, index: int, workers: int, conn: Any,
                kernel_factory: Callable[[], KernelPorts], supervisor: int, theirs: list[Any],
                registered: bool = True) -> None:
    """The worker process's body (after fork): its own netlink sockets, then the loop.
    `theirs`: the supervisor's ends of the pipes, copied by the fork; closed, so that the
    supervisor's death reads as the end of the pipe. `registered`: the supervisor registers
    the helpers (not with --no-cthelper: QueueWorker.registered)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for c in theirs:
        c.close()
    _stop_with_parent(supervisor)
    try:
        shard = Shard(host, policy_paths, index, workers, conn, kernel_factory(), registered)
        shard.start = _reporting(shard.start, conn)  # type: ignore[method-assign]
        shard.run()
    except Exception as exc:
        log.error("worker %d stopped: %s: %s", index, type(exc).__name__, exc)
        os._exit(1)


def _stop_with_parent(supervisor: int) -> None:
    """SIGTERM this worker when the supervisor dies, however it dies: a worker left alone
    would keep its queues and the namespace's claim, and nobody would remove the helpers
    (with the supervisor gone, `alg cleanup` does that, and a new `alg run` may start)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        return  # the pipe's end of file still stops the worker, once no other process holds it
    if os.getppid() != supervisor:  # the supervisor died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _reporting(start: Callable[[], None], conn: Any) -> Callable[[], None]:
    """start(), telling the supervisor why it failed (before the worker exits)."""
    def run() -> None:
        try:
            start()
        except Exception as exc:
            try:
                conn.send(("error", f"{type(exc).__name__}: {exc}"))
            except OSError:
                pass
            raise
    return run


# ---------------------------------------------------------------- the supervisor (parent) side
@dataclass
class Worker:
    """The supervisor's handle on one worker process."""

    index: int
    process: Any = None  # multiprocessing.Process
    conn: Any = None  # the supervisor's end of the pipe
    started: float = 0.0
    restarts: int = 0
    due: float | None = None  # when to start it again, once dead
    heard: float = 0.0  # when it last answered (or started)
    pinged: bool = False  # asked whether it lives, no answer yet
    pids: list[int] = field(default_factory=list)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def alive(self) -> bool:
        return self.process is not None and self.process.is_alive()


class Pool:
    """`alg run` with [core] workers = N > 1 (the same interface as Daemon: run, step, stop, status)."""

    def __init__(self, host: PluginHost, policy_paths: list[str] | None, use_cthelper: bool = True,
                 kernel: KernelPorts | None = None, notifier: Notifier | None = None,
                 kernel_factory: Callable[[], KernelPorts] | None = None):
        self.host, self.policy_paths, self.use_cthelper = host, policy_paths, use_cthelper
        self.policy = resolve(host, policy_paths)
        self.n = self.policy.core.workers
        self.kernel = kernel or kernel_ports()  # the supervisor's: helper registration, queue counters
        self.kernel_factory = kernel_factory or kernel_ports  # each worker opens its own sockets
        self.notifier = notifier or Notifier()
        self.warn = RateLimitedLog(log, self.policy.core.log_interval)
        self.workers = [Worker(i) for i in range(self.n)]
        self.registered: list[tuple[str, int, int]] = []
        self.status_server: StatusServer | None = None
        self.stopping = False
        self.reload_asked = False
        self.started = time.time()
        self._metrics_due = 0.0
        self._asked = 0  # status requests sent
        self._instance: Any = None
        self._wake_r, self._wake_w = os.pipe()
        self._ctx = multiprocessing.get_context("fork")

    # ------------------------------------------------------------ start / stop
    def start(self) -> None:
        self._instance = claim_namespace()
        if self.use_cthelper and not self.kernel.cthelper.supported():
            raise KernelError(E.EOPNOTSUPP, "cthelper",
                              "this kernel has no nfnetlink_cthelper (CONFIG_NF_CT_NETLINK_HELPER); see `alg doctor`")
        for w in self.workers:  # their queues bound before any helper can queue to them
            self._spawn(w)
        if self.use_cthelper:
            for hp in self._instances():
                self._kernel_register(hp)
                self.registered += [r for r in _entries(hp) if r not in self.registered]
        self._write_state()
        self.status_server = StatusServer(self.policy.core.status_socket, self.status)
        serving = ", ".join(f"{hp.name} (queue {hp.queue})" for hp in self._instances())
        log.info("serving %s with %d workers", serving, self.n)
        self.notifier.ready(f"serving {serving} with {self.n} workers")

    def _instances(self) -> list[HelperPolicy]:
        return [i for hp in self.policy.helpers.values() if hp.enabled for i in instance_policies(hp, self.n)]

    def _kernel_register(self, hp: HelperPolicy) -> None:
        register_helper(self.kernel, self.host, hp, self.policy.core.pair)

    def _spawn(self, w: Worker) -> None:
        """Fork worker w and wait until it has bound its queues (AlgError if it cannot)."""
        mine, theirs = self._ctx.Pipe()
        process = self._ctx.Process(target=serve_shard, name=f"alg-worker-{w.index}",
                                    args=(self.host, self.policy_paths, w.index, self.n, theirs, self.kernel_factory,
                                          os.getpid(), [mine, *(o.conn for o in self.workers if o.conn)],
                                          self.use_cthelper))
        process.start()
        theirs.close()
        w.process, w.conn, w.started, w.due = process, mine, time.monotonic(), None
        w.heard, w.pinged = w.started, False
        w.pids.append(process.pid or 0)
        reply: Any = None
        try:
            if mine.poll(READY_WAIT):
                reply = mine.recv()
        except (EOFError, OSError):
            reply = None
        if not (isinstance(reply, tuple) and reply[0] == "ready"):
            self._end(w)
            why = reply[1] if isinstance(reply, tuple) else "it exited or did not answer"
            raise AlgError(f"worker {w.index} could not start: {why}")
        log.info("worker %d (pid %s) serving, %.0f ms after its start", w.index, w.pid,
                 (time.monotonic() - w.started) * 1e3)

    def _end(self, w: Worker, timeout: float = STOP_WAIT) -> None:
        """Stop worker w: SIGTERM (it drains its queues), SIGKILL past the timeout."""
        if w.process is None:
            return
        if w.process.is_alive():
            w.process.terminate()
            w.process.join(timeout)
            if w.process.is_alive():
                w.process.kill()
                w.process.join(timeout)
                if w.process.is_alive():  # in the kernel, beyond signals: left, not waited for
                    log.error("worker %d (pid %s) does not die (stuck in the kernel?)", w.index, w.pid)
        w.conn.close()
        w.process, w.conn = None, None

    def stop(self) -> None:
        """Remove the helpers (no more packets for the workers), then stop the workers."""
        if self._instance is None:
            return
        self.notifier.stopping()
        remove_helpers(self.kernel.cthelper, self.registered)
        self.registered.clear()
        try:
            os.unlink(state_file())
        except OSError:
            pass
        for w in self.workers:
            if w.process is not None and w.process.is_alive():
                w.process.terminate()  # all drain at once
        for w in self.workers:
            self._end(w)
        if self.status_server is not None:
            self.status_server.close()
            self.status_server = None
        self._instance.close()
        self._instance = None

    def _write_state(self) -> None:
        write_state(self.registered)

    # ------------------------------------------------------------ loop
    def run(self) -> int:
        # `kill -USR1` prints where each process is (the workers inherit it): for a worker that hangs
        faulthandler.register(signal.SIGUSR1, all_threads=True)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGHUP, self._on_signal)
        try:
            self.start()
            while not self.stopping:
                self.step()
        finally:
            self.stop()
        log.info("stopped; helpers removed, workers stopped")
        return 0

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if signum == signal.SIGHUP:
            self.reload_asked = True
        else:
            self.stopping = True
        os.write(self._wake_w, b"x")

    def step(self, timeout: float = 1.0) -> None:
        """Wait for a worker's death, a status request or a signal; restart what is due."""
        if self.reload_asked:
            self.reload_asked = False
            self.reload()
        readers: dict[int, Callable[[], Any]] = {self._wake_r: lambda: os.read(self._wake_r, 64)}
        for w in self.workers:
            if w.process is not None:
                readers[w.process.sentinel] = self._watch(w)
                readers[w.conn.fileno()] = self._listener(w)
        if self.status_server is not None:
            readers[self.status_server.fileno()] = self.status_server.serve
        self.notifier.watchdog()
        if self.notifier.interval is not None:
            timeout = min(timeout, self.notifier.interval)
        dues = [w.due for w in self.workers if w.due is not None]
        dues += [w.heard + (HANG_TIMEOUT if w.pinged else PING_INTERVAL) for w in self.workers if w.alive()]
        if dues:
            timeout = max(0.0, min(timeout, min(dues) - time.monotonic()))
        try:
            ready, _, _ = select.select(list(readers), [], [], timeout)
        except InterruptedError:
            return
        for fd in ready:
            self._guarded(readers[fd])
        now = time.monotonic()
        for w in self.workers:
            if w.due is not None and w.due <= now and not self.stopping:
                self._guarded(self._restarter(w))
            elif w.alive():
                self._guarded(self._pinger(w, now))
        if self.policy.core.metrics_file and now >= self._metrics_due:
            self._metrics_due = now + METRICS_INTERVAL
            self._guarded(self._write_metrics)

    def _guarded(self, work: Callable[[], Any]) -> None:
        try:
            work()
        except Exception as exc:
            self.warn(logging.ERROR, "pool", "%s failed: %s: %s", getattr(work, "__name__", "work"),
                      type(exc).__name__, exc)

    def _watch(self, w: Worker) -> Callable[[], None]:
        return lambda: self._died(w)

    def _restarter(self, w: Worker) -> Callable[[], None]:
        return lambda: self._restart(w)

    def _listener(self, w: Worker) -> Callable[[], None]:
        conn = w.conn

        def hear() -> None:  # an answer to a ping, or a status answer that came too late: it lives
            try:
                # a worker restarted in this turn may have a new pipe on the old one's descriptor
                if conn is not w.conn or not conn.poll(0):
                    return
                conn.recv()
            except (EOFError, OSError):
                return  # it died: its sentinel says so
            w.heard, w.pinged = time.monotonic(), False
        return hear

    def _pinger(self, w: Worker, now: float) -> Callable[[], None]:
        """Ask a silent worker whether its loop still turns; kill one that does not answer: a
        worker stuck in a parse or a netlink call that never returns serves nobody (the
        systemd watchdog hears only the supervisor). Its death restarts it."""
        def ping() -> None:
            if now - w.heard >= HANG_TIMEOUT and w.process is not None:
                log.error("worker %d (pid %s) has not answered for %.0f s: killing it", w.index, w.pid,
                          now - w.heard)
                w.process.kill()
            elif not w.pinged and now - w.heard >= PING_INTERVAL:
                self._asked += 1
                w.conn.send(("ping", self._asked))
                w.pinged = True
        return ping

    def _died(self, w: Worker) -> None:
        """Worker w's process ended: start another at once (after a pause if it died young)."""
        if w.process is None or w.process.is_alive():
            return
        code, young = w.process.exitcode, time.monotonic() - w.started < RESTART_SOON
        w.process.join()
        w.conn.close()
        w.process, w.conn = None, None
        log.error("worker %d (pid %s) died (exit code %s); its helpers stay registered, restarting it%s",
                  w.index, w.pids[-1], code, f" in {RESTART_BACKOFF} s" if young else "")
        w.due = time.monotonic() + (RESTART_BACKOFF if young else 0.0)
        if not young:
            self._restart(w)

    def _restart(self, w: Worker) -> None:
        w.restarts += 1
        try:
            self._spawn(w)
        except AlgError as exc:
            log.error("%s; trying again in %s s", exc, RESTART_BACKOFF)
            w.due = time.monotonic() + RESTART_BACKOFF

    # ------------------------------------------------------------ reload
    def reload(self) -> bool:
        self.notifier.reloading()
        try:
            return self._reload()
        finally:
            self.notifier.ready("reloaded" if not self.stopping else "stopping")

    def _reload(self) -> bool:
        try:
            policy = resolve(self.host, self.policy_paths)
        except Exception as exc:
            log.error("reload refused, keeping the running policy: %s", exc)
            return False
        if layout(policy) != layout(self.policy):
            log.error("reload refused: workers, helper names or queues changed (restart alg for that)")
            return False
        old = {i.name: i for i in self._instances()}
        self.policy = policy
        for hp in self._instances() if self.use_cthelper else ():
            if hp.classes != old[hp.name].classes:
                try:
                    self._kernel_register(hp)
                except KernelError as exc:
                    log.error("reload: helper %s keeps its classes: %s", hp.name, exc)
        for w in self.workers:
            if w.alive():
                os.kill(w.process.pid, signal.SIGHUP)  # each reloads its share (alg.daemon.supervisor)
        self.warn.interval = policy.core.log_interval
        log.info("policy reloaded by %d workers", self.n)
        return True

    # ------------------------------------------------------------ status
    def status(self) -> dict[str, Any]:
        """Every worker's status, merged: counters added, helpers (instances) side by side."""
        self._asked += 1
        asked = []
        for w in self.workers:
            if w.alive():
                try:
                    w.conn.send(("status", self._asked))
                    asked.append(w)
                except OSError:
                    pass
        docs: list[dict[str, Any]] = []
        answered: set[int] = set()
        end = time.monotonic() + STATUS_WAIT
        for w in asked:
            try:
                while w.conn.poll(max(0.0, end - time.monotonic())):
                    number, doc = w.conn.recv()
                    w.heard, w.pinged = time.monotonic(), False
                    if number == self._asked:  # not the late answer to an earlier request
                        docs.append(doc)
                        answered.add(w.index)
                        break
            except (EOFError, OSError, ValueError, TypeError):
                pass
        merged = merge_status(docs)
        merged.update(pid=os.getpid(), uptime=round(time.time() - self.started, 1), workers=[
            {"index": w.index, "pid": w.pid, "alive": w.alive(), "answered": w.index in answered,
             "restarts": w.restarts} for w in self.workers])
        return merged

    def _write_metrics(self) -> None:
        path = self.policy.core.metrics_file
        with open(path + ".tmp", "w") as f:
            f.write(prometheus(self.status()))
        os.replace(path + ".tmp", path)


def merge_status(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """Status documents of workers as one: numbers added (the budgets too: the shares add
    up to the whole), mappings merged key by key, flags true only if true everywhere;
    maxima and means recomputed. Every figure is there even when no worker answered."""
    merged: dict[str, Any] = {
        **to_json(DaemonStats()), **to_json(TableStats(0, 0, 0, 0, 0, 0, Counter(), Counter())),
        "helpers": {}, "queues": {}, "queue_kernel": {}, "natted": 0, "refused_total": 0,
        "conntrack_from_queue": True, "verdict_us_mean": 0.0, "verdict_us_max": 0.0}
    for doc in docs:
        _merge_into(merged, doc)
    if docs:
        merged["verdict_us_max"] = max(d.get("verdict_us_max", 0.0) for d in docs)
        merged["held_max"] = max(d.get("held_max", 0.0) for d in docs)
        merged["verdict_us_mean"] = round(1e6 * merged.get("held", 0.0) / max(1, merged.get("verdicts", 0)), 1)
    return merged


def _merge_into(into: dict[str, Any], doc: dict[str, Any]) -> None:
    for key, value in doc.items():
        have = into.get(key)
        if key not in into:
            into[key] = _copy(value)
        elif isinstance(value, bool):
            into[key] = have and value
        elif isinstance(value, (int, float)) and isinstance(have, (int, float)):
            into[key] = have + value
        elif isinstance(value, dict) and isinstance(have, dict):
            _merge_into(have, value)


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    return value
