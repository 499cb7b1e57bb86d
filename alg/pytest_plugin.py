"""alg's test harness as a pytest plugin (entry point `pytest11`: loaded wherever alg is installed).

Fixtures, for a helper package's tests (see `alg.testing` for the case-folder format)::

    def test_read_request(alg_helper, alg_feed):
        helper = alg_helper("tftp")                    # the loaded helper, default options
        actions = alg_feed(helper, [(alg.Direction.ORIGINAL, b"...")], alg.testing.flow(...))

    @pytest.mark.parametrize("case", alg.testing.case_dirs(CASES), ids=lambda p: p.name)
    def test_capture(alg_case, case):
        alg_case(case)                                 # replay, compare with expected.jsonl

`pytest --alg-regen` (or ALG_REGEN=1) rewrites the golden files (review the diff).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.getgroup("alg").addoption("--alg-regen", action="store_true",
                                     help="alg: rewrite each case's expected.jsonl from replay")


@pytest.fixture
def alg_host() -> Any:
    """The plugin host with every installed helper (`alg.plugins.PluginHost`)."""
    from alg.plugins import load_plugins

    return load_plugins()


@pytest.fixture
def alg_helper(alg_host: Any) -> Callable[..., Any]:
    """`alg_helper(name, **options)`: an instance of a loaded helper, as the engine makes it."""
    def make(name: str, **options: Any) -> Any:
        if name not in alg_host.helpers:
            raise LookupError(f"no helper {name!r} is loaded (loaded: {', '.join(sorted(alg_host.helpers))}; "
                              f"blocked: {alg_host.blocked or 'none'}): is its package installed?")
        return alg_host.helpers[name](options)
    return make


@pytest.fixture
def alg_feed() -> Callable[..., Any]:
    """`alg.testing.feed`: drive a helper sans-IO, return its actions."""
    from alg.testing import feed

    return feed


@pytest.fixture
def alg_case(request: pytest.FixtureRequest, alg_host: Any) -> Callable[[Path], Any]:
    """`alg_case(folder)`: replay a case folder and assert its golden file (see alg.testing)."""
    from alg.testing import check_case

    regen = bool(request.config.getoption("--alg-regen") or os.environ.get("ALG_REGEN"))
    return lambda case: check_case(Path(case), alg_host, regen=regen)
