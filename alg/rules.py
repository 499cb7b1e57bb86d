"""`alg rules`: the firewall rules that pair with alg, for iptables-restore or nft -f.

Per helper and port: a raw-table `CT --helper` rule gives the control flow
the userspace helper (PREROUTING for forwarded and incoming traffic, OUTPUT
for what the firewall itself opens), and a filter rule accepts the RELATED
flows that helper's expectations admit. No `--queue-bypass` is needed: the
kernel queues a userspace helper's packets from the conntrack confirm hook
with the bypass flag already set, so a queue nobody reads lets them through
(but see `alg cleanup`: such flows are never confirmed).
"""

from __future__ import annotations

from .model import PROTO_NAMES
from .policy import HelperPolicy


def iptables(helpers: list[HelperPolicy]) -> str:
    """iptables-restore input (the same text works for ip6tables-restore); apply with --noflush."""
    raw = ["*raw"]
    flt = ["*filter"]
    for hp in helpers:
        for proto in hp.protocols:
            p = PROTO_NAMES[proto]
            for port in hp.ports:
                for chain in ("PREROUTING", "OUTPUT"):
                    raw.append(f'-A {chain} -p {p} --dport {port} -m comment --comment "alg {hp.name}" '
                               f"-j CT --helper {hp.name}")
        for chain in ("FORWARD", "INPUT"):
            flt.append(f"-A {chain} -m conntrack --ctstate RELATED -m helper --helper {hp.name} "
                       f'-m comment --comment "alg {hp.name} related" -j ACCEPT')
    return "\n".join(["# alg rules: iptables-restore --noflush < this (and ip6tables-restore --noflush)",
                      *raw, "COMMIT", *flt, "COMMIT"]) + "\n"


def nft(helpers: list[HelperPolicy]) -> str:
    """An `nft -f` file: table inet alg with ct helper objects."""
    lines = ["# alg rules: nft -f this", "table inet alg {"]
    for hp in helpers:
        for proto in hp.protocols:
            p = PROTO_NAMES[proto]
            lines += [f'\tct helper {hp.name}-{p} {{', f'\t\ttype "{hp.name}" protocol {p}', "\t\tl3proto inet",
                      "\t}"]
    for hook, prio in (("prerouting", "raw"), ("output", "raw")):
        lines += [f"\tchain alg-{hook} {{", f"\t\ttype filter hook {hook} priority {prio}; policy accept;"]
        for hp in helpers:
            for proto in hp.protocols:
                p = PROTO_NAMES[proto]
                ports = ", ".join(str(x) for x in hp.ports)
                lines.append(f'\t\t{p} dport {{ {ports} }} ct helper set "{hp.name}-{p}"')
        lines.append("\t}")
    lines.append("}")
    # an accept in this table cannot overrule a drop in yours: add it to your own filter chains
    lines.append("# in your forward/input filter chains, before the drop: ct state related accept")
    return "\n".join(lines) + "\n"
