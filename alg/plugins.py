"""Plugin host: a small typed facade over pluggy's PluginManager.

Loading is an explicit factory (`load_plugins`), never an import side
effect. Built-in helpers and third-party ones come through the same
entry-point group, `alg.helpers`.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
from dataclasses import dataclass, field
from typing import Iterable

import pluggy

from . import hookspecs
from .errors import PluginError
from .policy import default_queue
from .model import EXPECT_CLASSES_MAX, EXPECT_MAX_MAX, HELPER_NAME_MAX, PROTO_NAMES, RESYNC_LINE, Helper

ENTRY_POINT_GROUP = "alg.helpers"
OWN_DISTRIBUTION = "alg"  # its entry points are the built-in helpers
QUEUE_MAX = 65535  # NFQUEUE numbers are 16 bits
log = logging.getLogger("alg.plugins")


def validate_helper_class(cls: object) -> None:
    if not (isinstance(cls, type) and issubclass(cls, Helper)):
        raise PluginError(f"{cls!r} is not a subclass of alg.Helper")
    spec = getattr(cls, "spec", None)
    if spec is None:
        raise PluginError(f"{cls.__name__} has no spec")
    if not spec.name or len(spec.name) > HELPER_NAME_MAX or not spec.name.isascii():
        raise PluginError(f"helper name {spec.name!r}: 1 to {HELPER_NAME_MAX} ASCII characters")
    if not spec.protocols or any(p not in PROTO_NAMES for p in spec.protocols):
        raise PluginError(f"helper {spec.name}: protocols must be TCP and/or UDP")
    if not spec.classes:
        raise PluginError(f"helper {spec.name}: at least one expectation class")
    # nfnetlink_cthelper: more than NF_CT_MAX_EXPECT_CLASSES classes is EOVERFLOW,
    # a max_expected above NF_CT_EXPECT_MAX_CNT is EINVAL
    if len(spec.classes) > EXPECT_CLASSES_MAX:
        raise PluginError(f"helper {spec.name}: at most {EXPECT_CLASSES_MAX} expectation classes (the kernel's "
                          f"limit), not {len(spec.classes)}")
    names = [c.name for c in spec.classes]
    if len(set(names)) != len(names):
        raise PluginError(f"helper {spec.name}: duplicate class names {names}")
    for c in spec.classes:
        if not 1 <= c.max_expected <= EXPECT_MAX_MAX or c.timeout < 1:
            raise PluginError(f"helper {spec.name}: class {c.name}: max_expected 1-{EXPECT_MAX_MAX} and a positive "
                              f"timeout, not {c.max_expected} / {c.timeout}")
    if spec.resync not in (None, RESYNC_LINE):
        raise PluginError(f"helper {spec.name}: resync must be None or {RESYNC_LINE!r}, not {spec.resync!r}")
    if any(not 0 < p < 65536 for p in spec.ports):
        raise PluginError(f"helper {spec.name}: ports must be 1-65535")
    if spec.queue is not None and (isinstance(spec.queue, bool) or not isinstance(spec.queue, int)
                                   or not 0 <= spec.queue <= QUEUE_MAX):
        raise PluginError(f"helper {spec.name}: queue must be an NFQUEUE number 0-{QUEUE_MAX} or None "
                          f"(derived from the name), not {spec.queue!r}")


def hook_names() -> list[str]:
    return sorted(n for n in dir(hookspecs) if n.startswith("alg_"))


@dataclass(frozen=True)
class Source:
    """Where a plugin comes from: alg itself, an installed distribution, or a run-time registration."""

    plugin: str  # the entry-point (or registration) name
    distribution: str | None = None
    version: str | None = None
    builtin: bool = False

    def __str__(self) -> str:
        if self.builtin:
            return "built-in"
        if self.distribution:
            return f"{self.distribution} {self.version}"
        return f"registered at run time ({self.plugin})"

    def to_json(self) -> dict[str, object]:
        return {"plugin": self.plugin, "builtin": self.builtin, "distribution": self.distribution,
                "version": self.version}


def _entry_point_source(ep: importlib.metadata.EntryPoint, seen: dict[int, tuple[str, str]]) -> Source:
    """`seen`: name and version by distribution, read once each: every read of `metadata` (and
    `version`) parses the whole METADATA file again, alg's README included, once per entry point."""
    dist = getattr(ep, "dist", None)
    name = version = None
    if dist is not None:
        if id(dist) not in seen:
            meta = dist.metadata
            seen[id(dist)] = (meta["Name"], meta["Version"])
        name, version = seen[id(dist)]
    return Source(ep.name, name, version, builtin=name is not None and name.lower() == OWN_DISTRIBUTION)


@dataclass
class PluginHost:
    """The loaded plugins and the helper classes they registered."""

    pm: pluggy.PluginManager
    helpers: dict[str, type[Helper]] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)  # helper name -> plugin name
    blocked: dict[str, str] = field(default_factory=dict)  # plugin name -> why
    sources: dict[str, Source] = field(default_factory=dict)  # plugin name -> where it comes from

    def source(self, helper: str) -> Source:
        plugin = self.origin[helper]
        return self.sources.get(plugin) or Source(plugin)

    @property
    def hook(self):  # noqa: ANN201 - pluggy's HookRelay
        return self.pm.hook

    def _collect(self) -> None:
        self.helpers.clear()
        self.origin.clear()
        # in registration order: built-ins and entry points first, so a late
        # plugin cannot take over a name that is already in use
        for name, plugin in list(self.pm.list_name_plugin()):
            impl = getattr(plugin, "alg_register_helpers", None)
            if plugin is None or impl is None or self.pm.is_blocked(name):
                continue
            found: list[type[Helper]] = []
            try:
                impl(register=found.append)
                for cls in found:
                    validate_helper_class(cls)
                    if cls.spec.name in self.helpers:
                        raise PluginError(
                            f"helper name {cls.spec.name!r} already registered by {self.origin[cls.spec.name]}"
                        )
                    queue = default_queue(cls.spec)
                    other = next((n for n, c in self.helpers.items() if default_queue(c.spec) == queue), None)
                    if other is not None:
                        raise PluginError(f"helper {cls.spec.name}: default queue {queue} is already helper "
                                          f"{other}'s ({self.origin[other]}): declare another in "
                                          f"HelperSpec(queue=...)")
            except Exception as exc:  # a broken plugin is blocked, the rest goes on
                self.block(name, f"{type(exc).__name__}: {exc}")
                continue
            for cls in found:
                self.helpers[cls.spec.name] = cls
                self.origin[cls.spec.name] = name

    def block(self, name: str, why: str) -> None:
        log.error("plugin %s blocked: %s", name, why)
        self.blocked[name] = why
        plugin = self.pm.get_plugin(name)
        if plugin is not None:
            self.pm.unregister(plugin)
        self.pm.set_blocked(name)

    def register(self, plugin: object, name: str | None = None) -> None:
        """Add a plugin object at run time (tests, embedding) and re-collect."""
        _register(self.pm, plugin, name)
        _check_pending(self.pm)
        self._collect()

    def unregister(self, name: str) -> None:
        plugin = self.pm.get_plugin(name)
        if plugin is not None:
            self.pm.unregister(plugin)
        self._collect()


def _split_env(name: str) -> set[str]:
    return {x.strip() for x in os.environ.get(name, "").split(",") if x.strip()}


def load_plugins(extra: Iterable[object] = (), entry_points: bool = True) -> PluginHost:
    """Make a plugin manager, load the `alg.helpers` entry points and `extra`."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    host = PluginHost(pm)
    if entry_points:
        only, blocked = _split_env("ALG_PLUGINS"), _split_env("ALG_BLOCK_PLUGINS")
        dists: dict[int, tuple[str, str]] = {}  # the entry points' distributions, alive while this runs
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in blocked or (only and ep.name not in only):
                continue
            if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
                continue
            try:
                pm.register(ep.load(), name=ep.name)
            except Exception as exc:  # noqa: BLE001 - a broken plugin is blocked, the rest goes on
                host.blocked[ep.name] = f"{type(exc).__name__}: {exc}"
                log.error("plugin %s failed to load: %s", ep.name, exc)
                pm.set_blocked(ep.name)
            host.sources[ep.name] = _entry_point_source(ep, dists)
    for plugin in extra:
        _register(pm, plugin, getattr(plugin, "__name__", None) or type(plugin).__name__)
    _check_pending(pm)
    host._collect()
    return host


def _register(pm: pluggy.PluginManager, plugin: object, name: str | None) -> None:
    """pluggy's register, its errors as PluginError naming what is wrong."""
    if pm.is_registered(plugin):
        raise PluginError(f"plugin {name or plugin!r} is already loaded as {pm.get_name(plugin)!r} "
                          f"(an installed entry point of group {ENTRY_POINT_GROUP!r}): do not pass it again")
    if name is not None and pm.get_plugin(name) is not None:
        raise PluginError(f"a plugin named {name!r} is already loaded: register this one under another name")
    try:
        pm.register(plugin, name=name)
    except (ValueError, pluggy.PluginValidationError) as exc:
        raise PluginError(f"plugin {name or plugin!r}: {exc} (hooks: {', '.join(hook_names())})") from exc


def _check_pending(pm: pluggy.PluginManager) -> None:
    """A hook implementation no hookspec matches (a misspelling) fails loudly, naming the valid hooks."""
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"{exc} (valid hooks: {', '.join(hook_names())})") from exc
