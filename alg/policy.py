"""Policy files: one TOML file per helper, plus an optional `alg.toml` for the core.

The knobs are conntrackd.conf's (QueueNum, QueueLen, ExpectMax,
ExpectTimeout) plus ours. A helper file::

    helper = "ftp"            # which registered helper implementation
    name = "ftp"              # kernel helper name (<= 15 chars); must not clash
    enabled = true
    queue = 20                # NFQUEUE number (conntrackd: QueueNum)
    queue_len = 1024          # conntrackd: QueueLen
    protocols = ["tcp"]
    families = ["ipv4", "ipv6"]
    ports = [21]
    max_buffer = 65536        # bytes buffered per flow direction (TCP)
    max_flows = 65536         # flows tracked by this helper, oldest evicted
    nat = true                # rewrite what peers advertise on NATed flows (as the kernel's NAT helpers)

    [classes.default]         # one table per expectation class
    expect_max = 1            # conntrackd: ExpectMax (1-255, the kernel's limit)
    expect_timeout = 300      # conntrackd: ExpectTimeout (seconds)

    [options]                 # the helper's own knobs, e.g. FTP's loose
    loose = false

and `alg.toml`::

    [core]
    expect_budget = 4096      # expectations alg keeps at once, all helpers
    expect_per_message = 64   # what one message may ask for (and at most ExpectMax per class)
    helper_share = 0.5        # of the budget one helper may hold (when more than one is enabled)
    source_share = 0.25       # of the budget the messages of one host may hold
    accept_on_pressure = true # verdict when an expectation cannot be made
    status_socket = "/run/alg/alg.sock"
    log_interval = 10         # seconds between repeated warnings of one kind
    metrics_file = ""         # Prometheus text rewritten every 15 s (node_exporter's textfile collector)
    memory_budget_mb = 256    # what alg's flows may hold; past it the least recently used are evicted
    workers = 1               # processes serving the queues; N > 1: N kernel instances of each helper
    pair = false              # one of a firewall pair whose expectations conntrackd replicates

Every problem raises `ConfigError` naming file, line and key.
"""

from __future__ import annotations

import os
import re
import tomllib
import zlib
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Mapping

from .errors import ConfigError
from .model import EXPECT_MAX_MAX, HELPER_NAME_MAX, PROTO_NAMES, PROTO_NUMBERS, ExpectClass, HelperSpec

FAMILIES = {"ipv4": 4, "ipv6": 6}
FAMILY_NAMES = {v: k for k, v in FAMILIES.items()}

# Default NFQUEUE numbers. The built-in helpers have fixed ones; a plugin's
# helper takes `HelperSpec.queue` when it declares one, else a number derived
# from its name (CRC-32) in PLUGIN_QUEUES: the same on every machine, whichever
# other plugins are installed. Two helpers on one default queue are refused
# when the plugins load (alg.plugins); a policy file's `queue` overrides all.
DEFAULT_QUEUES = {"ftp": 20, "sip": 21, "rpc": 22, "tns": 23, "ssdp": 24, "dhcpv6": 25, "mdns": 26, "slp": 27}
PLUGIN_QUEUES = range(1024, 8192)
# With [core] workers = N > 1 every enabled helper is registered N times (alg.daemon.pool):
# instance i is named NAME + str(i) and reads queue `queue + i * INSTANCE_QUEUE_STRIDE`.
# The stride keeps the built-in queues' instances (20-27, 4116-4123, ...) clear of one
# another; a plugin queue whose instances meet another queue is refused when loaded.
INSTANCE_QUEUE_STRIDE = 4096
MAX_WORKERS = 16  # the built-in queues' instances fit below 65536 up to here


@dataclass(frozen=True)
class HelperPolicy:
    helper: str  # implementation (HelperSpec.name)
    name: str  # kernel helper name
    enabled: bool
    queue: int
    queue_len: int
    protocols: tuple[int, ...]
    families: tuple[int, ...]
    ports: tuple[int, ...]
    classes: tuple[ExpectClass, ...]
    options: Mapping[str, Any]
    max_buffer: int
    max_flows: int = 65536
    nat: bool = True  # rewrite the payloads of NATed flows (see alg.nat)
    source: str = "<built-in>"
    expected_only: tuple[int, ...] = ()  # HelperSpec.expected_only: no port assignment for these protocols

    @property
    def assigned(self) -> tuple[int, ...]:
        """The protocols a `CT --helper` rule (and replay's port choice) gives this helper."""
        return tuple(p for p in self.protocols if p not in self.expected_only)

    def expect_class(self, name: str) -> ExpectClass:
        for c in self.classes:
            if c.name == name:
                return c
        raise KeyError(name)

    def kernel_classes(self, pair: bool) -> tuple[ExpectClass, ...]:
        """The classes as registered in the kernel. In a firewall pair conntrackd commits
        every replicated expectation in class 0 (measured with conntrack-tools 1.4.7, the
        lab's pair scenario), and the kernel evicts past a class's max_expected: there
        class 0 gets the room of all classes. alg still holds each class to its own
        expect_max; the kernel's limit is the backstop."""
        if not pair or len(self.classes) < 2:
            return self.classes
        room = min(EXPECT_MAX_MAX, sum(c.max_expected for c in self.classes))
        return (replace(self.classes[0], max_expected=room), *self.classes[1:])

    def class_id(self, name: str) -> int:
        for i, c in enumerate(self.classes):
            if c.name == name:
                return i
        raise KeyError(name)


@dataclass(frozen=True)
class CorePolicy:
    expect_budget: int = 4096
    expect_per_message: int = 64  # expectations one message may ask for (beyond: refused, counted)
    helper_share: float = 0.5  # of the budget one helper may hold when others are enabled
    source_share: float = 0.25  # of the budget one sender address may hold
    accept_on_pressure: bool = True
    status_socket: str = "/run/alg/alg.sock"
    log_interval: float = 10.0
    metrics_file: str = ""  # where the daemon writes its counters in the Prometheus text format ("": nowhere)
    memory_budget_mb: int = 256  # MiB alg's flows may hold (flow, buffers, helper state); past it: LRU eviction
    workers: int = 1  # processes serving the queues (alg.daemon.pool); 1: one process, as before
    pair: bool = False  # conntrackd replicates the expectations (ExpectationSync): see kernel_classes
    source: str = "<built-in>"


@dataclass
class Policy:
    core: CorePolicy = field(default_factory=CorePolicy)
    helpers: dict[str, HelperPolicy] = field(default_factory=dict)  # by kernel name


def default_queue(spec: HelperSpec) -> int:
    """The helper's NFQUEUE number when no policy file sets one (see PLUGIN_QUEUES)."""
    if spec.queue is not None:
        return spec.queue
    if spec.name in DEFAULT_QUEUES:
        return DEFAULT_QUEUES[spec.name]
    return PLUGIN_QUEUES.start + zlib.crc32(spec.name.encode()) % len(PLUGIN_QUEUES)


def default_helper_policy(spec: HelperSpec, queue: int | None = None) -> HelperPolicy:
    return HelperPolicy(
        helper=spec.name,
        name=spec.name,
        enabled=True,
        queue=default_queue(spec) if queue is None else queue,
        queue_len=1024,
        protocols=spec.protocols,
        families=spec.families,
        ports=spec.ports,
        classes=spec.classes,
        options={k: o.default for k, o in spec.options.items()},
        max_buffer=spec.max_buffer,
        expected_only=spec.expected_only,
    )


def default_policy(specs: Mapping[str, HelperSpec]) -> Policy:
    policy = Policy()
    for name in sorted(specs):
        policy.helpers[name] = default_helper_policy(specs[name])
    return policy


def port_clashes(helpers: Iterable[HelperPolicy]) -> list[str]:
    """Protocol/port pairs claimed by more than one enabled helper, one sentence each.

    Only one helper can take a flow: the kernel assigns the first `CT --helper`
    rule a packet meets, replay the first helper by name."""
    claims: dict[tuple[int, int], list[str]] = {}
    for hp in helpers:
        if hp.enabled:
            for proto in hp.protocols:
                for port in hp.ports:
                    claims.setdefault((proto, port), []).append(hp.name)
    return [f"{PROTO_NAMES[proto]}/{port} is claimed by helpers {', '.join(names)}: only one can take it; "
            f"disable the others or change their ports in a policy file (alg policy NAME)"
            for (proto, port), names in sorted(claims.items()) if len(names) > 1]


# ---------------------------------------------------------------- loading
class _Locator:
    """Finds the line of a key in TOML text (tomllib keeps no positions).

    A key can be set in its table (`[classes.ftp]` then `expect_max = 2`),
    as a dotted key (`classes.ftp.expect_max = 2`, or `ftp.expect_max = 2`
    under `[classes]`) or in an inline table (`ftp = { expect_max = 2 }`).
    """

    _table = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]")
    _simple = r"""(?:"[^"]*"|'[^']*'|[A-Za-z0-9_-]+)"""  # a bare or quoted key part
    _key = re.compile(rf"^\s*({_simple}(?:\s*\.\s*{_simple})*)\s*=")
    _part = re.compile(r"""\s*("([^"]*)"|'([^']*)'|[A-Za-z0-9_-]+)\s*(?:\.|$)""")

    def __init__(self, path: str, text: str):
        self.path = path
        self.lines = text.splitlines()

    @classmethod
    def _path(cls, dotted: str) -> tuple[str, ...]:
        return tuple(m.group(2) if m.group(2) is not None else m.group(3) if m.group(3) is not None
                     else m.group(1) for m in cls._part.finditer(dotted))

    def line(self, table: tuple[str, ...], key: str | None) -> int | None:
        want = table + ((key,) if key is not None else ())
        current: tuple[str, ...] = ()
        for n, text in enumerate(self.lines, 1):
            m = self._table.match(text)
            if m:
                current = self._path(m.group(1))
                if key is None and current == table:
                    return n
                continue
            m = self._key.match(text)
            if not m:
                continue
            path = current + self._path(m.group(1))
            if path[:len(want)] == want:
                return n  # the key itself, or a dotted key inside the wanted table
            rest = want[len(path):]
            if path == want[:len(path)] and rest and re.search(
                    r"[{,]\s*" + r"\s*\.\s*".join(f"\"?{re.escape(r)}\"?" for r in rest) + r"\s*=", text[m.end():]):
                return n  # inside an inline table on this line
        return None

    def error(self, message: str, table: tuple[str, ...] = (), key: str | None = None) -> ConfigError:
        dotted = ".".join(table + ((key,) if key else ())) or None
        return ConfigError(message, self.path, self.line(table, key) or self.line(table, None), dotted)


def _read(path: str) -> tuple[dict[str, Any], _Locator]:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise ConfigError(exc.strerror or str(exc), path) from exc
    text = raw.decode("utf-8", "replace")
    loc = _Locator(path, text)
    try:
        return tomllib.loads(text), loc
    except RecursionError:
        # tomllib recurses once per nested array or inline table: blame the most nested line
        n = max(range(len(loc.lines)), key=lambda i: loc.lines[i].count("[") + loc.lines[i].count("{"))
        m = loc._key.match(loc.lines[n])
        raise ConfigError("value nested too deeply", path, n + 1, m.group(1).strip() if m else None) from None
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"line (\d+)", str(exc))
        line = int(m.group(1)) if m else max(1, len(loc.lines))  # "at end of document"
        raise ConfigError(f"not valid TOML: {exc}", path, line) from exc


def _get(doc: Mapping[str, Any], key: str, kind: type | tuple[type, ...], loc: _Locator, table=(), default=None):
    if key not in doc:
        return default
    value = doc[key]
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise loc.error(f"must be {names}, not {type(value).__name__} {value!r}", table, key)
    return value


def _int_in(doc, key, lo, hi, loc, table=(), default=None):
    value = _get(doc, key, int, loc, table, default)
    if value is not None and not lo <= value <= hi:
        raise loc.error(f"must be between {lo} and {hi}, not {value}", table, key)
    return value


_HELPER_KEYS = {"helper", "name", "enabled", "queue", "queue_len", "protocols", "families", "ports",
                "max_buffer", "max_flows", "nat", "classes", "options"}
_CORE_KEYS = {"expect_budget", "expect_per_message", "helper_share", "source_share", "accept_on_pressure",
              "status_socket", "log_interval", "metrics_file", "memory_budget_mb", "workers", "pair"}


def parse_helper_policy(path: str, specs: Mapping[str, HelperSpec], doc=None, loc=None) -> HelperPolicy:
    if doc is None:
        doc, loc = _read(path)
    assert loc is not None
    for key in doc:
        if key not in _HELPER_KEYS:
            raise loc.error(f"unknown key (known: {', '.join(sorted(_HELPER_KEYS))})", (), key)
    impl = _get(doc, "helper", str, loc)
    if impl is None:
        raise loc.error("missing: which helper this file configures, e.g. helper = \"ftp\"", (), "helper")
    if impl not in specs:
        raise loc.error(f"no such helper {impl!r} (loaded: {', '.join(sorted(specs))})", (), "helper")
    spec = specs[impl]
    base = default_helper_policy(spec)
    name = _get(doc, "name", str, loc, default=base.name)
    if not name or len(name) > HELPER_NAME_MAX or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise loc.error(f"kernel helper name: 1 to {HELPER_NAME_MAX} of [A-Za-z0-9_.-], not {name!r}", (), "name")

    def names(key: str, table: Mapping[str, int], allowed: tuple[int, ...], default: tuple[int, ...]):
        values = _get(doc, key, list, loc, default=None)
        if values is None:
            return default
        out = []
        for v in values:
            if not isinstance(v, str) or v not in table or table[v] not in allowed:
                ok = [k for k, n in table.items() if n in allowed]
                raise loc.error(f"{v!r} is not one of {ok}", (), key)
            out.append(table[v])
        if not out:
            raise loc.error("must not be empty", (), key)
        return tuple(out)

    protocols = names("protocols", PROTO_NUMBERS, spec.protocols, spec.protocols)
    families = names("families", FAMILIES, spec.families, spec.families)
    ports = _get(doc, "ports", list, loc, default=list(spec.ports))
    if not ports:  # no `CT --helper` rule would be generated, replay would pick no flow
        raise loc.error("must not be empty (to switch a helper off: enabled = false)", (), "ports")
    for p in ports:
        if isinstance(p, bool) or not isinstance(p, int) or not 0 < p < 65536:
            raise loc.error(f"ports must be integers 1-65535, not {p!r}", (), "ports")
    classes = list(spec.classes)
    class_doc = _get(doc, "classes", dict, loc, default={})
    known = {c.name: i for i, c in enumerate(classes)}
    for cname, cdoc in class_doc.items():
        table = ("classes", cname)
        if cname not in known:
            raise loc.error(f"helper {impl} has no class {cname!r} (classes: {', '.join(known)})", table)
        if not isinstance(cdoc, dict):
            raise loc.error("must be a table", ("classes",), cname)
        for key in cdoc:
            if key not in ("expect_max", "expect_timeout"):
                raise loc.error("unknown key (known: expect_max, expect_timeout)", table, key)
        old = classes[known[cname]]
        classes[known[cname]] = ExpectClass(
            cname,
            # nfnetlink_cthelper refuses more (EINVAL, NF_CT_EXPECT_MAX_CNT)
            _int_in(cdoc, "expect_max", 1, EXPECT_MAX_MAX, loc, table, old.max_expected),
            _int_in(cdoc, "expect_timeout", 1, 86400 * 7, loc, table, old.timeout),
        )
    options = dict(base.options)
    for key, value in _get(doc, "options", dict, loc, default={}).items():
        opt = spec.options.get(key)
        if opt is None:
            raise loc.error(f"helper {impl} has no option {key!r} (options: {', '.join(spec.options) or 'none'})",
                            ("options",), key)
        problem = opt.problem(value)  # type, range and check as the helper declares them
        if problem is not None:
            raise loc.error(problem, ("options",), key)
        options[key] = value
    return replace(
        base,
        name=name,
        enabled=_get(doc, "enabled", bool, loc, default=True),
        queue=_int_in(doc, "queue", 0, 65535, loc, default=base.queue),
        queue_len=_int_in(doc, "queue_len", 1, 1 << 20, loc, default=base.queue_len),
        protocols=protocols,
        families=families,
        ports=tuple(ports),
        classes=tuple(classes),
        options=options,
        max_buffer=_int_in(doc, "max_buffer", 512, 1 << 24, loc, default=base.max_buffer),
        max_flows=_int_in(doc, "max_flows", 1, 1 << 24, loc, default=base.max_flows),
        nat=_get(doc, "nat", bool, loc, default=True),
        source=path,
    )


def parse_core_policy(path: str) -> CorePolicy:
    doc, loc = _read(path)
    for key in doc:
        if key != "core":
            raise loc.error("unknown table (alg.toml has only [core])", (), key)
    core = _get(doc, "core", dict, loc, default={})
    t = ("core",)
    for key in core:
        if key not in _CORE_KEYS:
            raise loc.error(f"unknown key (known: {', '.join(sorted(_CORE_KEYS))})", t, key)
    d = CorePolicy()
    interval = _get(core, "log_interval", (int, float), loc, t, d.log_interval)
    if isinstance(interval, bool) or interval <= 0:
        raise loc.error("must be positive", t, "log_interval")
    shares = {}
    for key in ("helper_share", "source_share"):
        value = _get(core, key, (int, float), loc, t, getattr(d, key))
        if isinstance(value, bool) or not 0 < value <= 1:
            raise loc.error(f"must be a fraction of the budget, above 0 and at most 1, not {value!r}", t, key)
        shares[key] = float(value)
    return CorePolicy(
        expect_budget=_int_in(core, "expect_budget", 1, 1 << 24, loc, t, d.expect_budget),
        expect_per_message=_int_in(core, "expect_per_message", 1, 65535, loc, t, d.expect_per_message),
        **shares,
        accept_on_pressure=_get(core, "accept_on_pressure", bool, loc, t, d.accept_on_pressure),
        status_socket=_get(core, "status_socket", str, loc, t, d.status_socket),
        log_interval=float(interval),
        metrics_file=_get(core, "metrics_file", str, loc, t, d.metrics_file),
        memory_budget_mb=_int_in(core, "memory_budget_mb", 1, 1 << 20, loc, t, d.memory_budget_mb),
        workers=_int_in(core, "workers", 1, MAX_WORKERS, loc, t, d.workers),
        pair=_get(core, "pair", bool, loc, t, d.pair),
        source=path,
    )


def policy_files(paths: Iterable[str]) -> list[str]:
    out: list[str] = []
    for p in paths:
        if os.path.isdir(p):
            out += sorted(os.path.join(p, f) for f in os.listdir(p) if f.endswith(".toml"))
        elif os.path.exists(p):
            out.append(p)
        else:
            raise ConfigError("no such file or directory", p)
    return out


def load_policy(paths: Iterable[str], specs: Mapping[str, HelperSpec], *, only_listed: bool) -> Policy:
    """Policy from files (and directories of *.toml).

    only_listed=True (the daemon given --policy): exactly the helpers the files
    name run. False (replay): the files override built-in defaults.
    """
    policy = Policy() if only_listed else default_policy(specs)
    seen: dict[str, str] = {}
    for path in policy_files(paths):
        if os.path.basename(path) == "alg.toml":
            policy.core = parse_core_policy(path)
            continue
        doc, loc = _read(path)
        hp = parse_helper_policy(path, specs, doc, loc)
        if hp.name in seen:
            raise loc.error(f"helper name {hp.name!r} is already used by {seen[hp.name]}", (), "name")
        seen[hp.name] = path
        if not only_listed and hp.name != hp.helper:
            policy.helpers.pop(hp.helper, None)
        policy.helpers[hp.name] = hp
    _check_unique(policy)
    _check_instances(policy)
    return policy


def _blame(hp: HelperPolicy, others: list[HelperPolicy], message: str, key: str) -> ConfigError:
    """A clash between helpers, blamed on one read from a file (a built-in default has neither)."""
    culprit = next((h for h in [hp, *others] if h.source != "<built-in>"), None)
    if culprit is None:
        return ConfigError(message)
    _doc, loc = _read(culprit.source)
    return loc.error(message, (), key)


def _check_unique(policy: Policy) -> None:
    """Two enabled helpers must not share a queue, nor a (family, protocol, port): the raw-table rule
    that comes first would take the traffic and the other would silently see nothing."""
    queues: dict[int, HelperPolicy] = {}
    ports: dict[tuple[int, int, int], HelperPolicy] = {}
    for hp in policy.helpers.values():
        if not hp.enabled:
            continue
        other = queues.setdefault(hp.queue, hp)
        if other is not hp:
            raise _blame(hp, [other], f"queue {hp.queue} is used by both {other.name} ({other.source}) and "
                                      f"{hp.name} ({hp.source})", "queue")
        for family in hp.families:
            for proto in hp.assigned:
                for port in hp.ports:
                    other = ports.setdefault((family, proto, port), hp)
                    if other is not hp:
                        raise _blame(hp, [other], f"{PROTO_NAMES[proto]} port {port} (IPv{family}) is assigned to "
                                                  f"both {other.name} ({other.source}) and {hp.name} ({hp.source})",
                                     "ports")


def instance_policies(hp: HelperPolicy, workers: int) -> list[HelperPolicy]:
    """The kernel helpers that serve `hp` with `workers` processes: itself when one,
    else NAME0..NAME{N-1}, instance i on queue `queue + i * INSTANCE_QUEUE_STRIDE`."""
    if workers <= 1:
        return [hp]
    return [replace(hp, name=f"{hp.name}{i}", queue=hp.queue + i * INSTANCE_QUEUE_STRIDE) for i in range(workers)]


def _check_instances(policy: Policy) -> None:
    """With workers > 1: each instance's name within the kernel's limit, its queue a valid
    number used by no other instance (the same reasons as _check_unique)."""
    workers = policy.core.workers
    if workers <= 1:
        return
    queues: dict[int, str] = {}
    for hp in policy.helpers.values():
        if not hp.enabled:
            continue
        for inst in instance_policies(hp, workers):
            if len(inst.name) > HELPER_NAME_MAX:
                raise _blame(hp, [], f"with workers = {workers} helper {hp.name} is registered as {inst.name}, "
                                     f"longer than the kernel's {HELPER_NAME_MAX} characters: shorten its name",
                             "name")
            if inst.queue > 65535:
                raise _blame(hp, [], f"with workers = {workers} helper {hp.name} needs queue {inst.queue} "
                                     f"(queue + i * {INSTANCE_QUEUE_STRIDE}): give it a queue below "
                                     f"{65536 - (workers - 1) * INSTANCE_QUEUE_STRIDE}", "queue")
            other = queues.setdefault(inst.queue, inst.name)
            if other != inst.name:
                raise _blame(hp, [], f"with workers = {workers} queue {inst.queue} would serve both {other} and "
                                     f"{inst.name}: move {hp.name} to another queue", "queue")


def render_helper_policy(hp: HelperPolicy) -> str:
    """The policy as a TOML file (what `policies/*.toml` hold)."""
    lines = [
        f'helper = "{hp.helper}"',
        f'name = "{hp.name}"',
        f"enabled = {str(hp.enabled).lower()}",
        f"queue = {hp.queue}",
        f"queue_len = {hp.queue_len}",
        "protocols = [" + ", ".join(f'"{PROTO_NAMES[p]}"' for p in hp.protocols) + "]",
        "families = [" + ", ".join(f'"{FAMILY_NAMES[f]}"' for f in hp.families) + "]",
        "ports = [" + ", ".join(str(p) for p in hp.ports) + "]",
        f"max_buffer = {hp.max_buffer}",
        f"max_flows = {hp.max_flows}",
        f"nat = {str(hp.nat).lower()}",
    ]
    for c in hp.classes:
        lines += ["", f"[classes.{c.name}]", f"expect_max = {c.max_expected}", f"expect_timeout = {c.timeout}"]
    if hp.options:
        lines += ["", "[options]"]
        for k, v in hp.options.items():
            lines.append(f"{k} = " + (str(v).lower() if isinstance(v, bool) else repr(v) if not isinstance(v, str)
                                      else f'"{v}"'))
    return "\n".join(lines) + "\n"


def policy_file_text(spec: HelperSpec, source: str) -> str:
    """A helper's default policy as a commented file (`alg policy NAME`)."""
    head = [f"# alg policy for helper {spec.name} ({source}): its defaults. Put it in the directory the",
            "# daemon reads (alg run --policy DIR) to enable the helper; enabled = false turns it off.",
            "# Keys: see `alg.policy` (conntrackd.conf: QueueNum = queue, QueueLen = queue_len,",
            "# ExpectMax = expect_max, ExpectTimeout = expect_timeout)."]
    head += [f"# {line}" for line in spec.doc.strip().splitlines()[:1]]
    body = render_helper_policy(default_helper_policy(spec)).splitlines()
    docs = {f"{k} = ": o.doc for k, o in spec.options.items() if o.doc}
    for i, line in enumerate(body):
        doc = next((d for k, d in docs.items() if line.startswith(k)), None)
        if doc:
            body[i] = f"{line}  # {doc.splitlines()[0]}"
    return "\n".join(head + body) + "\n"
