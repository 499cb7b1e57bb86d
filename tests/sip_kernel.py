"""Compare alg's SIP expectations with the ones the kernel's nf_conntrack_sip
created on the same traffic (`conntrack -E expect` output)."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

CLASS_NAMES = {0: "signalling", 1: "audio", 2: "video", 3: "image"}
_LINE = re.compile(
    r"\[NEW\]\s+\d+\s+proto=(?P<proto>\d+)\s+src=(?P<src>\S+)\s+dst=(?P<dst>\S+)\s+sport=(?P<sport>\d+)\s+"
    r"dport=(?P<dport>\d+)\s+mask-src=(?P<msrc>\S+)\s.*?master-src=(?P<ms>\S+)\s+master-dst=(?P<md>\S+)\s+"
    r"sport=(?P<msp>\d+)\s+dport=(?P<mdp>\d+)(?:\s+(?P<flags>[A-Z,]+))?\s+class=(?P<cls>\d+)\s+helper=(?P<helper>\S+)")


def _a(text: str) -> str:
    return str(ipaddress.ip_address(text))


def kernel_expectations(text: str) -> set[tuple]:
    """The set of expectations the kernel created ([NEW] events)."""
    out = set()
    for line in text.splitlines():
        m = _LINE.search(line)
        if not m:
            continue
        wildcard_src = int(ipaddress.ip_address(m["msrc"])) == 0
        out.add((CLASS_NAMES[int(m["cls"])], int(m["proto"]), None if wildcard_src else _a(m["src"]), _a(m["dst"]),
                 int(m["dport"]), (_a(m["ms"]), _a(m["md"]), int(m["msp"]), int(m["mdp"]))))
    return out


def alg_expectations(expectations) -> set[tuple]:
    out = set()
    for e in expectations:
        m = e.master
        out.add((e.cls, e.proto, None if e.src is None else str(e.src), str(e.dst), e.dport,
                 (str(m.src), str(m.dst), m.sport, m.dport)))
    return out


def by_class(s: set[tuple]) -> dict[str, set[tuple]]:
    out: dict[str, set[tuple]] = {}
    for t in s:
        out.setdefault(t[0], set()).add(t)
    return out


def replay_case(capture: Path, policy_options: dict | None = None):
    from alg.engine import Engine, make_slots
    from alg.plugins import load_plugins
    from alg.policy import default_policy
    from alg.replay import replay
    from dataclasses import replace

    host = load_plugins()
    specs = {n: c.spec for n, c in host.helpers.items()}
    pol = default_policy(specs)
    sip = pol.helpers["sip"]
    if policy_options:
        sip = replace(sip, options={**sip.options, **policy_options})
    engine = Engine(make_slots([sip], host.helpers), pol.core, track_related=True)
    return replay(engine, [str(capture)]), engine
