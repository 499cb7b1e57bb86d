"""The counters, declared once: what `alg status` shows and Prometheus scrapes.

Each statistic is a field of a stats dataclass declared with `counter()` or
`gauge()` (its help text, and for a `Counter` field the label its keys go
under). `to_json` renders a stats object for the status socket;
`alg.daemon.status.prometheus` renders a whole status document in the Prometheus text exposition format,
walking the same declarations, so the two cannot drift apart. Counters only
go up (Prometheus' `rate()` relies on it).

Families: `alg_<field>` for the daemon's own figures, `alg_helper_<field>`
with label `helper`, `alg_class_<field>` with labels `helper` and `class`;
counters end in `_total`.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any, Iterator

COUNTER, GAUGE = "counter", "gauge"


def counter(help: str, label: str | None = None) -> Any:
    """A field that only goes up; with `label`, a Counter of values by that label."""
    return dataclasses.field(default_factory=Counter if label else int,
                             metadata={"kind": COUNTER, "help": help, "label": label})


def gauge(help: str, default: Any = 0, label: str | None = None) -> Any:
    """A field that goes up and down; with `label`, a Counter of values by that label."""
    meta = {"kind": GAUGE, "help": help, "label": label}
    if label:
        return dataclasses.field(default_factory=Counter, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def declared(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if "kind" in f.metadata]


def to_json(stats: Any) -> dict[str, Any]:
    """The declared fields of a stats object (Counters as dicts)."""
    return {f.name: dict(v) if isinstance(v := getattr(stats, f.name), Counter) else v for f in declared(type(stats))}


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class PrometheusText:
    """Samples gathered by family, rendered in the text exposition format."""

    def __init__(self) -> None:
        self.families: dict[str, tuple[str, str, list[str]]] = {}

    def family(self, name: str, kind: str, help: str) -> list[str]:
        return self.families.setdefault(name + "_total" if kind == COUNTER else name, (kind, help, []))[2]

    def sample(self, name: str, kind: str, help: str, labels: dict[str, str], value: float) -> None:
        lines = self.family(name, kind, help)
        if kind == COUNTER:
            name += "_total"
        where = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items())
        lines.append(f"{name}{{{where}}} {value}" if where else f"{name} {value}")

    def fields(self, prefix: str, cls: type, values: dict[str, Any], labels: dict[str, str]) -> None:
        for f in declared(cls):
            v = values.get(f.name)
            if v is None:
                continue
            kind, help, label = f.metadata["kind"], f.metadata["help"], f.metadata["label"]
            if label:
                self.family(prefix + f.name, kind, help)  # declared even before its first sample
                for key, n in sorted(v.items()):
                    self.sample(prefix + f.name, kind, help, {**labels, label: key}, n)
            else:
                self.sample(prefix + f.name, kind, help, labels, v)

    def render(self) -> str:
        out = []
        for name, (kind, help, lines) in self.families.items():
            out += [f"# HELP {name} {help}", f"# TYPE {name} {kind}", *lines]
        return "\n".join(out) + "\n"


def samples(text: str) -> Iterator[tuple[str, float]]:
    """(name with labels, value) of each sample in a Prometheus text (for tests and tools)."""
    for line in text.splitlines():
        if line and not line.startswith("#"):
            cut = line.rindex("}") + 1 if "}" in line else line.index(" ")
            yield line[:cut], float(line[cut:])
