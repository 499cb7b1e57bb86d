"""The plugin contract: the hooks a plugin may implement.

This module is the plugin author's reference. A plugin is any importable
module (or object) with functions decorated by `alg.hookimpl`, published
through the `alg.helpers` entry-point group in its packaging metadata::

    # pyproject.toml of a third-party plugin
    [project.entry-points."alg.helpers"]
    tftp = "alg_tftp"

    # alg_tftp.py
    import alg

    class TftpHelper(alg.Helper):
        spec = alg.HelperSpec(name="tftp", protocols=(alg.UDP,), ports=(69,),
                              classes=(alg.ExpectClass("default", 1, 300),))
        def inspect(self, segment, state):
            ...
            return alg.Parsed(len(segment.data), (alg.Expect(...),))

    @alg.hookimpl
    def alg_register_helpers(register):
        register(TftpHelper)

alg's own helpers load exactly this way. Hooks are few and coarse: none is
called per packet (the per-packet path is a dictionary lookup and a direct
call to the helper's `inspect`). Every hook here is documented and exercised
by the test suite; a misspelt hook name in a plugin fails loudly at load
(`PluginManager.check_pending`).

Environment: `ALG_BLOCK_PLUGINS=a,b` blocks the named entry points;
`ALG_PLUGINS=a,b` loads only those.

The author's guide (queues, policies, the test harness, what is stable) is
docs/plugins.md; `alg new-helper NAME` writes a package to start from.
"""

from __future__ import annotations

from typing import Any, Callable

import pluggy

PROJECT = "alg"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def alg_register_helpers(register: Callable[[type], None]) -> None:
    """Register helper classes by calling `register(HelperSubclass)`.

    Called once at start-up (and again on reload). Each class must carry a
    valid `spec` (`alg.HelperSpec`): a name of at most 15 characters, unique
    across plugins, at least one protocol, port and expectation class, at
    most `alg.EXPECT_CLASSES_MAX` (4) classes with ExpectMax 1 to
    `alg.EXPECT_MAX_MAX` (255): what nfnetlink_cthelper accepts. A bad class
    raises `PluginError` for that plugin only.

    TCP helpers say how they recover from a lost segment: `HelperSpec(resync=
    alg.RESYNC_LINE)` for line-based protocols, or override `Helper.resync`
    (see `alg.model`); by default the direction with the hole is no longer
    inspected. Either way the helper's `gaps` (and `desynced`) counters show it.
    """


@hookspec
def alg_expectation_event(event: Any) -> None:
    """Observe the fate of an expectation request.

    `event` is an `alg.ExpectationEvent`: `kind` is one of 'created',
    'refused', 'evicted', 'removed', 'failed', 'used' (its flow came; live,
    also when someone deleted it in the kernel); it carries the expectation and,
    for refusals and failures, the reason. Called after the verdict of the
    packet that caused it, never while a packet waits. Keep it cheap; an
    exception here is logged and ignored.
    """


@hookspec
def alg_add_commands(subparsers: Any) -> None:
    """Add sub-commands to the `alg` command line.

    `subparsers` is argparse's sub-parser action; set `func=callable(args) ->
    int` with `set_defaults` on the parser you add.
    """
