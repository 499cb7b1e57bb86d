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

No `--queue-bypass` is needed: the kernel queues a userspace helper's packets
from the conntrack confirm hook with the bypass flag already set, so a queue
nobody reads lets them through (but see `alg cleanup`: such flows are never
confirmed). nft resolves a ct helper object when the file is loaded: start
`alg run` (which registers the helpers) before `nft -f`.
"""

from __future__ import annotations

from .model import PROTO_NAMES
from .policy import HelperPolicy

FAMILY_TOOLS = {4: "iptables-restore", 6: "ip6tables-restore"}
NFT_CHAINS = ("inet filter input", "inet filter forward")


def for_family(helpers: list[HelperPolicy], family: int | None) -> list[HelperPolicy]:
    """The helpers whose rules belong to `family` (4, 6, or None: all)."""
    return [hp for hp in helpers if family is None or family in hp.families]


def _family_notes(helpers: list[HelperPolicy], family: int | None) -> list[str]:
    if family is not None:
        return []
    return [f"# note: {hp.name} is IPv{hp.families[0]}-only: apply `alg rules --family {hp.families[0]}` "
            f"with {FAMILY_TOOLS[hp.families[0]]} instead" for hp in helpers if len(set(hp.families)) == 1]


def iptables(helpers: list[HelperPolicy], family: int | None = None) -> str:
    """iptables-restore input; apply with --noflush (rules are inserted at the top of each chain)."""
    helpers = for_family(helpers, family)
    pos: dict[str, int] = {}

    def insert(chain: str, rule: str) -> str:
        pos[chain] = pos.get(chain, 0) + 1
        return f"-I {chain} {pos[chain]} {rule}"

    raw = ["*raw"]
    flt = ["*filter"]
    notes = _family_notes(helpers, family)
    for hp in helpers:  # a policy has ports (alg.policy refuses an empty list)
        for proto in hp.assigned:
            p = PROTO_NAMES[proto]
            for port in hp.ports:
                for chain in ("PREROUTING", "OUTPUT"):
                    raw.append(insert(chain, f'-p {p} --dport {port} -m comment --comment "alg {hp.name}" '
                                             f"-j CT --helper {hp.name}"))
        for chain in ("FORWARD", "INPUT"):
            flt.append(insert(chain, f"-m conntrack --ctstate RELATED -m helper --helper {hp.name} "
                                     f'-m comment --comment "alg {hp.name} related" -j ACCEPT'))
    tool = FAMILY_TOOLS[family] + " --noflush" if family else \
        "iptables-restore --noflush (and ip6tables-restore --noflush)"
    return "\n".join([f"# alg rules: {tool} < this", *notes, *raw, "COMMIT", *flt, "COMMIT"]) + "\n"


def _l3(hp: HelperPolicy) -> tuple[str, str]:
    """(ct helper l3proto, rule prefix) for a helper's families."""
    fams = set(hp.families)
    if fams == {4}:
        return "ip", "meta nfproto ipv4 "
    if fams == {6}:
        return "ip6", "meta nfproto ipv6 "
    return "inet", ""


def nft(helpers: list[HelperPolicy], family: int | None = None, chains: tuple[str, ...] = NFT_CHAINS) -> str:
    """An `nft -f` file: table inet alg (ct helper objects, assignment) and the RELATED accept in `chains`."""
    helpers = for_family(helpers, family)
    fam = {4: "meta nfproto ipv4 ", 6: "meta nfproto ipv6 "}.get(family or 0, "")
    lines = ["# alg rules: nft -f this (after `alg run` has registered the helpers)",
             *_family_notes(helpers, family),
             "table inet alg {}", "delete table inet alg", "table inet alg {"]
    assign = []
    for hp in helpers:
        l3proto, prefix = _l3(hp)
        for proto in hp.assigned:
            p = PROTO_NAMES[proto]
            lines += [f"\tct helper {hp.name}-{p} {{", f'\t\ttype "{hp.name}" protocol {p}', f"\t\tl3proto {l3proto}",
                      "\t}"]
            ports = ", ".join(str(x) for x in hp.ports)
            assign.append(f'\t\t{fam or prefix}{p} dport {{ {ports} }} ct helper set "{hp.name}-{p}"')
    # ct helper set needs the conntrack: after it (priority filter), never at priority raw
    for hook in ("prerouting", "output"):
        lines += [f"\tchain alg-{hook} {{", f"\t\ttype filter hook {hook} priority filter; policy accept;", *assign,
                  "\t}"]
    lines.append("}")
    if helpers and chains:
        lines += ["# nft cannot match the master's helper (ct helper is the flow's own, which an expected flow",
                  "# lacks): accept what any helper's expectation admits, in your chains, before their drop;",
                  "# applying this file again inserts these once more"]
        lines += [f'insert rule {c} {fam}ct state related ct status expected counter accept comment "alg related"'
                  for c in chains]
    return "\n".join(lines) + "\n"
