"""Sorting a helper's actions in tests: the expectations, the notice codes."""

from __future__ import annotations

from alg import Expect, Notice


def expects(actions) -> list[Expect]:
    return [a for a in actions if isinstance(a, Expect)]


def notices(actions) -> list[str]:
    return [a.code for a in actions if isinstance(a, Notice)]
