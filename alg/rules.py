"""`alg rules`: the firewall rules that pair with alg, for iptables-restore or nft -f.

Two kinds of rule per helper:

* Assignment (per protocol and port): the control flow gets the userspace
  helper. iptables: a raw-table `CT --helper` rule in PREROUTING (forwarded and
  incoming traffic) and OUTPUT (what the firewall itself opens). The CT target
  only works on the template before conntrack and the first CT rule a packet
  meets wins, so these are *inserted* at the top of the raw chains: an earlier
  ACCEPT/RETURN or CT rule of yours would otherwise leave the flow without
  helper (if you give these ports a `CT --zone`, add `--zone` to alg's rule
  instead). nft: `ct helper set` needs the conntrack, so the chains hook after
  it (priority filter, as the nftables wiki recommends; priority raw runs
  before conntrack and assigns nothing).
* RELATED accept: the flows the helper's expectations admit. iptables: `-m
  helper --helper NAME` (it looks at the *master's* helper), *inserted* at the
  top of FORWARD and INPUT so a final DROP of yours cannot hide it. nft has no
  such match: `ct helper "NAME"` is the conntrack's *own* helper, which a
  flow created from alg's expectation does not have (the master has it), so
  the best nft can say is `ct state related ct status expected accept`: a
  flow created from some helper's expectation (not only alg's). It is
  inserted into your own filter chains (`--nft-chain`, default `inet filter
  input` and `inet filter forward`): an accept in another table's base chain
  cannot overrule your chain's drop, since every base chain on a hook runs.

Expected-only protocols (`HelperSpec.expected_only`, SSDP's TCP) get no
assignment rule: the helper reads them only on the connections its own
expectations admit, which carry the helper from the expectation.

Families: a helper is registered with the kernel for IPv4 always and for each
of its `families` (alg.daemon), and ip6tables' CT target refuses a helper that
has no IPv6 entry. `--family 4|6` keeps only the helpers of that family (apply
the IPv4 output with iptables-restore, the IPv6 one with ip6tables-restore);
without it the text carries every helper, fit for both tools when all of them
have both families (a note says which do not). nft's ct helper object names
the family (`l3proto ip|ip6|inet`) and single-family helpers' rules match
`meta nfproto`.

Workers (`[core] workers = N`, alg.daemon.pool): each helper is registered
as N kernel helpers NAME0..NAME{N-1}, each on its own queue and read by its
own process, and the assignment spreads new flows over them. A conntrack
keeps the helper it got, so each control flow stays on one worker. nft: a
hash of the addresses picks the instance (`ct helper set jhash ip saddr . ip
daddr mod N map { 0 : "NAME0-udp", ... }`, one rule per family), so a pair of
hosts always meets the same worker. iptables' CT target cannot hash: N rules
`-m statistic --mode nth --every N --packet i -j CT --helper NAMEi` deal the
packets that reach them in turn, and since only a flow's first packet takes
the CT template (the first CT rule met wins; later packets find their
conntrack), that deals the new flows round robin. The RELATED accept names
every instance.

No `--queue-bypass` is needed: the kernel queues a userspace helper's packets
from the conntrack confirm hook with the bypass flag already set, so a queue
nobody reads lets them through (but see `alg cleanup`: such flows are never
confirmed). nft resolves a ct helper object when the file is loaded: start
`alg run` (which registers the helpers) before `nft -f`.
"""

from __future__ import annotations

import re
import subprocess
from typing import Callable

from .errors import AlgError
from .model import PROTO_NAMES
from .policy import HelperPolicy, instance_policies

FAMILY_TOOLS = {4: "iptables-restore", 6: "ip6tables-restore"}
NFT_CHAINS = ("inet filter input", "inet filter forward")
# alg's own iptables chains (per table) and the built-in chains that jump into them, in that order
IPT_CHAINS = {"raw": "alg-helpers", "filter": "alg-related"}
IPT_JUMPS = (("raw", "PREROUTING"), ("raw", "OUTPUT"), ("filter", "FORWARD"), ("filter", "INPUT"))
NFT_TABLE = "inet alg"
NFT_RELATED_COMMENT = "alg related"
NFPROTO = {4: "meta nfproto ipv4 ", 6: "meta nfproto ipv6 "}


def for_family(helpers: list[HelperPolicy], family: int | None) -> list[HelperPolicy]:
    """The helpers whose rules belong to `family` (4, 6, or None: all)."""
    return [hp for hp in helpers if family is None or family in hp.families]


def _family_notes(helpers: list[HelperPolicy], family: int | None) -> list[str]:
    if family is not None:
        return []
    return [f"# note: {hp.name} is IPv{hp.families[0]}-only: apply `alg rules --family {hp.families[0]}` "
            f"with {FAMILY_TOOLS[hp.families[0]]} instead" for hp in helpers if len(set(hp.families)) == 1]


def _jump(table: str, chain: str) -> str:
    return f"-I {chain} 1 -j {IPT_CHAINS[table]}"


def iptables(helpers: list[HelperPolicy], family: int | None = None, jumps: bool = True, workers: int = 1) -> str:
    """iptables-restore input for --noflush: alg's own chains, replaced whole, and the jumps into them.

    Each apply empties and refills alg's chains (a chain declared in
    iptables-restore input is flushed), so their rules never pile up; the
    jumps are inserted at the top of the built-in chains, which a second
    restore would repeat: `alg rules --apply` adds a jump only where
    `iptables -C` finds none."""
    helpers = for_family(helpers, family)
    tables: dict[str, list[str]] = {t: [f"*{t}", f":{c} - [0:0]"] for t, c in IPT_CHAINS.items()}
    notes = _family_notes(helpers, family)
    for hp in helpers:  # a policy has ports (alg.policy refuses an empty list)
        instances = instance_policies(hp, workers)
        for proto in hp.assigned:
            p = PROTO_NAMES[proto]
            for port in hp.ports:
                for i, inst in enumerate(instances):
                    deal = f"-m statistic --mode nth --every {workers} --packet {i} " if workers > 1 else ""
                    tables["raw"].append(f'-A {IPT_CHAINS["raw"]} -p {p} --dport {port} {deal}-m comment '
                                         f'--comment "alg {inst.name}" -j CT --helper {inst.name}')
        for inst in instances:
            tables["filter"].append(f"-A {IPT_CHAINS['filter']} -m conntrack --ctstate RELATED -m helper --helper "
                                    f'{inst.name} -m comment --comment "alg {inst.name} related" -j ACCEPT')
    if jumps:
        for table, chain in IPT_JUMPS:
            tables[table].append(_jump(table, chain))
    tool = FAMILY_TOOLS[family] + " --noflush" if family else \
        "iptables-restore --noflush (and ip6tables-restore --noflush)"
    lines = [f"# alg rules: {tool} < this, once; again: `alg rules --apply` (it replaces alg's chains and",
             "# adds each jump into them only where it is missing); removal: `alg rules --remove`", *notes]
    for t in IPT_CHAINS:
        lines += [*tables[t], "COMMIT"]
    return "\n".join(lines) + "\n"


def _l3(hp: HelperPolicy) -> tuple[str, str]:
    """(ct helper l3proto, rule prefix) for a helper's families."""
    fams = set(hp.families)
    if fams == {4}:
        return "ip", "meta nfproto ipv4 "
    if fams == {6}:
        return "ip6", "meta nfproto ipv6 "
    return "inet", ""


def nft(helpers: list[HelperPolicy], family: int | None = None, chains: tuple[str, ...] = NFT_CHAINS,
        workers: int = 1) -> str:
    """An `nft -f` file: table inet alg (ct helper objects, assignment) and the RELATED accept in `chains`."""
    helpers = for_family(helpers, family)
    fam = NFPROTO.get(family or 0, "")
    lines = ["# alg rules: nft -f this (after `alg run` has registered the helpers)",
             *_family_notes(helpers, family),
             f"table {NFT_TABLE} {{}}", f"delete table {NFT_TABLE}", f"table {NFT_TABLE} {{"]
    assign = []
    for hp in helpers:
        l3proto, prefix = _l3(hp)
        for proto in hp.assigned:
            p = PROTO_NAMES[proto]
            objects = []
            for inst in instance_policies(hp, workers):
                objects.append(f"{inst.name}-{p}")
                lines += [f"\tct helper {objects[-1]} {{", f'\t\ttype "{inst.name}" protocol {p}',
                          f"\t\tl3proto {l3proto}", "\t}"]
            ports = ", ".join(str(x) for x in hp.ports)
            if workers <= 1:
                assign.append(f'\t\t{fam or prefix}{p} dport {{ {ports} }} ct helper set "{objects[0]}"')
                continue
            pick = ", ".join(f'{i} : "{o}"' for i, o in enumerate(objects))
            for l3 in sorted({family} if family else set(hp.families)):
                ip = "ip" if l3 == 4 else "ip6"
                assign.append(f"\t\t{NFPROTO[l3]}{p} dport {{ {ports} }} ct helper set "
                              f"jhash {ip} saddr . {ip} daddr mod {workers} map {{ {pick} }}")
    # ct helper set needs the conntrack: after it (priority filter), never at priority raw
    for hook in ("prerouting", "output"):
        lines += [f"\tchain alg-{hook} {{", f"\t\ttype filter hook {hook} priority filter; policy accept;", *assign,
                  "\t}"]
    lines.append("}")
    if helpers and chains:
        lines += ["# nft cannot match the master's helper (ct helper is the flow's own, which an expected flow",
                  "# lacks): accept what any helper's expectation admits, in your chains, before their drop;",
                  "# applying this file again inserts these once more (`alg rules --nft --apply` does not)"]
        lines += [related_rule(c, family) for c in chains]
    return "\n".join(lines) + "\n"


def related_rule(chain: str, family: int | None) -> str:
    fam = NFPROTO.get(family or 0, "")
    return f'insert rule {chain} {fam}ct state related ct status expected counter accept comment ' \
           f'"{NFT_RELATED_COMMENT}"'


# ---------------------------------------------------------------- applying
Run = Callable[[list[str], str | None], "subprocess.CompletedProcess[str]"]


def run_command(argv: list[str], stdin: str | None = None) -> "subprocess.CompletedProcess[str]":
    return subprocess.run(argv, input=stdin, capture_output=True, text=True)


def _must(r: "subprocess.CompletedProcess[str]", what: str) -> None:
    if r.returncode != 0:
        raise AlgError(f"{what}: {(r.stderr or r.stdout).strip()}")


def _ipt_tools(family: int | None) -> list[tuple[int, str]]:
    return [(f, "iptables" if f == 4 else "ip6tables") for f in ((family,) if family else (4, 6))]


def apply_iptables(helpers: list[HelperPolicy], family: int | None, run: Run = run_command,
                   workers: int = 1) -> None:
    """Replace alg's chains (one restore per table set) and add each missing jump: safe to repeat."""
    for fam, tool in _ipt_tools(family):
        _must(run([f"{tool}-restore", "--noflush"], iptables(helpers, fam, jumps=False, workers=workers)),
              f"{tool}-restore")
        for table, chain in IPT_JUMPS:
            jump = ["-j", IPT_CHAINS[table]]
            if run([tool, "-t", table, "-C", chain, *jump], None).returncode != 0:
                _must(run([tool, "-t", table, "-I", chain, "1", *jump], None), f"{tool} -t {table} -I {chain}")


def remove_iptables(family: int | None, run: Run = run_command) -> None:
    """Delete the jumps into alg's chains and the chains themselves (what is absent is skipped)."""
    for _fam, tool in _ipt_tools(family):
        for table, chain in IPT_JUMPS:
            jump = ["-j", IPT_CHAINS[table]]
            while run([tool, "-t", table, "-C", chain, *jump], None).returncode == 0:
                _must(run([tool, "-t", table, "-D", chain, *jump], None), f"{tool} -t {table} -D {chain}")
        for table, own in IPT_CHAINS.items():
            if run([tool, "-t", table, "-F", own], None).returncode == 0:
                _must(run([tool, "-t", table, "-X", own], None), f"{tool} -t {table} -X {own}")


def _related_handles(chain: str, run: Run) -> list[int] | None:
    """Handles of alg's RELATED rules in one of your nft chains (None: no such chain)."""
    r = run(["nft", "-a", "list", "chain", *chain.split()], None)
    if r.returncode != 0:
        return None
    return [int(m.group(1)) for line in r.stdout.splitlines() if f'comment "{NFT_RELATED_COMMENT}"' in line
            for m in [re.search(r"# handle (\d+)", line)] if m]


def apply_nft(helpers: list[HelperPolicy], family: int | None, chains: tuple[str, ...],
              run: Run = run_command, workers: int = 1) -> None:
    """One nft transaction: alg's table replaced, its RELATED rules in your chains replaced (not added)."""
    text = nft(helpers, family, chains, workers).splitlines()
    deletes = []
    for chain in chains:
        handles = _related_handles(chain, run)
        if handles is None:
            raise AlgError(f"nft: no chain {chain} to put the RELATED accept in (--nft-chain names yours, "
                              f"'none' leaves it out)")
        deletes += [f"delete rule {chain} handle {h}" for h in handles]
    _must(run(["nft", "-f", "-"], "\n".join(deletes + text) + "\n"), "nft -f")


def remove_nft(chains: tuple[str, ...], run: Run = run_command) -> None:
    deletes = [f"table {NFT_TABLE} {{}}", f"delete table {NFT_TABLE}"]
    for chain in chains:
        deletes += [f"delete rule {chain} handle {h}" for h in _related_handles(chain, run) or []]
    _must(run(["nft", "-f", "-"], "\n".join(deletes) + "\n"), "nft -f")
