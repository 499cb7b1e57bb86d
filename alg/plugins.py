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
from .model import EXPECT_CLASSES_MAX, EXPECT_MAX_MAX, HELPER_NAME_MAX, PROTO_NAMES, RESYNC_LINE, Helper

ENTRY_POINT_GROUP = "alg.helpers"
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


@dataclass
class PluginHost:
    """The loaded plugins and the helper classes they registered."""

    pm: pluggy.PluginManager
    helpers: dict[str, type[Helper]] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)  # helper name -> plugin name
    blocked: dict[str, str] = field(default_factory=dict)  # plugin name -> why

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
        self.pm.register(plugin, name=name)
        self.pm.check_pending()
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
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in blocked or (only and ep.name not in only):
                continue
            if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
                continue
            try:
                pm.register(ep.load(), name=ep.name)
            except Exception as exc:
                host.blocked[ep.name] = f"{type(exc).__name__}: {exc}"
                log.error("plugin %s failed to load: %s", ep.name, exc)
                pm.set_blocked(ep.name)
    for plugin in extra:
        pm.register(plugin, name=getattr(plugin, "__name__", None) or type(plugin).__name__)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(str(exc)) from exc
    host._collect()
    return host
