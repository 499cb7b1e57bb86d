"""Firewall pairs: alg on both nodes, conntrackd (sync mode) replicating conntracks and expectations.

alg does no replication of its own. conntrackd in sync mode (FTFW over a
dedicated link) sends the primary's conntracks, and with `ExpectationSync`
the expectations of the helpers it names, to the backup, which commits them
on fail-over (`conntrackd -c`). This module holds what alg adds to that:

* `alg conntrackd-sync`: the conntrackd.conf `Sync` section for the enabled
  helpers of the policy (the dedicated link's interface and addresses as
  arguments), with `ExpectationSync` listing their kernel names.
* the pair's checks for `alg doctor --pair` (and `--conntrackd-conf FILE`).

Facts the checks stand on (kernel 6.1 and conntrack-tools 1.4.7 sources,
measured in the lab scenario tests/lab/scenarios/pair.sh):

* conntrackd replicates an expectation from the kernel's EXP_NEW/DESTROY
  events when a name of its ExpectationSync list is a case-insensitive prefix
  of the expectation's helper name (its master's helper), and only with its
  master (which its General `Filter` must not drop: the masters of alg's
  helpers are TCP and UDP flows).
* A replicated master names its helper; the backup's kernel looks the helper
  up when the master is committed and refuses the master (EOPNOTSUPP), and so
  its expectations, when no helper of that name, family and protocol is
  registered. alg must run on the backup too, helpers registered while passive.
* The kernel sends conntrack and expectation events only for conntracks that
  carry the event extension. With net.netfilter.nf_conntrack_events = 2 (the
  default) a conntrack gets it only when a listener exists at its creation, so
  a master made while conntrackd was not running is never replicated by
  events, nor are its expectations: set it to 1 on both nodes.
"""

from __future__ import annotations

import argparse
import errno as E
import ipaddress
import socket
import sys
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from .conntrackd import Node, Refused, parse
from .doctor import FAIL, OK, WARN, Answer, Check
from .model import PROTO_NAMES
from .policy import HelperPolicy

SYNC_PORT = 3780  # conntrackd's default port for sync messages
SOCKET_BUFFER = 1249280  # the conntrack-tools examples' SndSocketBuffer / RcvSocketBuffer
IFNAME_MAX = 15  # IFNAMSIZ - 1
EVENTS_ALL, EVENTS_LISTENER = 1, 2  # net.netfilter.nf_conntrack_events: always / only while a listener exists
L3_NAMES = {4: "inet", 6: "inet6"}


@dataclass(frozen=True)
class SyncLink:
    """The dedicated link: this node's interface and address, the peer's address."""

    interface: str
    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    peer: ipaddress.IPv4Address | ipaddress.IPv6Address
    port: int = SYNC_PORT

    def __post_init__(self) -> None:
        if not 0 < len(self.interface) <= IFNAME_MAX or "/" in self.interface or any(c.isspace() for c in
                                                                                      self.interface):
            raise ValueError(f"interface {self.interface!r}: not an interface name (1 to {IFNAME_MAX} characters)")
        if self.address.version != self.peer.version:
            raise ValueError(f"{self.address} and {self.peer}: one family for both ends of the link")
        if self.address == self.peer:
            raise ValueError(f"{self.address}: the peer's address must be the other node's")
        if not 0 < self.port < 65536:
            raise ValueError(f"port {self.port}: 1 to 65535")


def sync_names(helpers: Iterable[HelperPolicy]) -> list[str]:
    """The ExpectationSync list: the kernel names of the enabled helpers, in the policy's order."""
    return list(dict.fromkeys(hp.name for hp in helpers if hp.enabled))


def sync_section(helpers: Iterable[HelperPolicy], link: SyncLink) -> str:
    """conntrackd.conf's Sync section: FTFW over UDP on the dedicated link, with the helpers' expectations."""
    helpers = [hp for hp in helpers if hp.enabled]
    names = sync_names(helpers)
    protos = sorted({PROTO_NAMES[p] for hp in helpers for p in hp.protocols})
    v = "IPv6" if link.address.version == 6 else "IPv4"
    lines = [
        "# conntrackd.conf Sync section for alg's helpers (printed by `alg conntrackd-sync`).",
        f"# ExpectationSync names the kernel names of the enabled helpers ({', '.join(names) or 'none'});",
        "# conntrackd takes each as a case-insensitive prefix of an expectation's helper name.",
        "# The masters are replicated with them: the General section's Filter must accept "
        f"{', '.join(p.upper() for p in protos) or 'their protocols'}.",
        "# Both nodes: net.netfilter.nf_conntrack_events = 1, and `alg run` with this policy (the",
        "# backup's kernel refuses a replicated master whose helper is not registered there).",
        "Sync {",
        "\tMode FTFW {",
        "\t\t# the backup keeps the states aside and commits them on fail-over (conntrackd -c)",
        "\t\tDisableExternalCache Off",
        "\t}",
        "\tUDP {",
        f"\t\t{v}_address {link.address}",
        f"\t\t{v}_Destination_Address {link.peer}",
        f"\t\tPort {link.port}",
        f"\t\tInterface {link.interface}",
        f"\t\tSndSocketBuffer {SOCKET_BUFFER}",
        f"\t\tRcvSocketBuffer {SOCKET_BUFFER}",
        "\t\tChecksum on",
        "\t}",
    ]
    if names:
        lines += ["\tOptions {", "\t\tExpectationSync {", *(f"\t\t\t{n}" for n in names), "\t\t}", "\t}"]
    return "\n".join(lines + ["}"]) + "\n"


# ------------------------------------------------------------------ conntrackd.conf as the checks read it
@dataclass
class SyncConf:
    """What the pair's checks need from a conntrackd.conf."""

    unix_path: str | None = None
    mode: str | None = None  # FTFW | NOTRACK | ALARM; None: no Sync section
    expectation_sync: list[str] | None = None  # None: off; ["*"]: On (every helper)
    accept: list[str] | None = None  # Filter's Protocol Accept list, lower case; None: no such list
    ignore: list[str] | None = None  # Protocol Ignore


def _child(parent: Node | list[Node] | None, key: str, args: list[str] | None = None) -> Node | None:
    """The first block or statement named `key` (conntrackd's keywords are case-insensitive) in a block."""
    nodes = parent.children if isinstance(parent, Node) else parent
    return next((n for n in nodes or () if n.key.lower() == key.lower()
                 and (args is None or [a.lower() for a in n.args] == args)), None)


def _words(block: Node) -> list[str]:
    """A list block's entries, one or several a line (`Protocol Accept { TCP UDP }`)."""
    return [w for c in block.children or () for w in (c.key, *c.args)]


def read_sync_conf(text: str) -> SyncConf:
    """The parts of a conntrackd.conf the pair depends on (Refused: the file does not parse)."""
    tree = parse(text)
    conf = SyncConf()
    general = _child(tree, "General")
    unix = _child(general, "UNIX")
    path = _child(unix, "Path")
    if path is not None and path.args:
        conf.unix_path = path.args[0]
    filt = _child(general, "Filter")
    for logic, attr in (("accept", "accept"), ("ignore", "ignore")):
        node = _child(filt, "Protocol", [logic])
        if node is not None:
            setattr(conf, attr, [w.lower() for w in _words(node)])
    sync = _child(tree, "Sync")
    if sync is None:
        return conf
    mode = _child(sync, "Mode")
    conf.mode = mode.args[0].upper() if mode is not None and mode.args else "?"
    options = _child(sync, "Options")
    es = _child(options, "ExpectationSync")
    if es is not None:
        if es.children is not None:
            conf.expectation_sync = _words(es)
        elif [a.lower() for a in es.args] == ["on"]:
            conf.expectation_sync = ["*"]
    return conf


def synced_by(patterns: list[str], name: str) -> str | None:
    """The ExpectationSync entry that takes helper `name`'s expectations (conntrackd's prefix match)."""
    for p in patterns:
        if p == "*" or name.lower().startswith(p.lower()):
            return p
    return None


# ------------------------------------------------------------------ the pair's checks (pure)
def check_events(value: int | None) -> Check:
    name = "pair: conntrack events"
    fix = "sysctl -w net.netfilter.nf_conntrack_events=1 (and in /etc/sysctl.d, on both nodes)"
    if value is None:
        return Check(name, WARN, "cannot read net.netfilter.nf_conntrack_events", fix)
    if value == EVENTS_ALL:
        return Check(name, OK, "nf_conntrack_events = 1: every conntrack and expectation is reported")
    if value == EVENTS_LISTENER:
        return Check(name, WARN, "nf_conntrack_events = 2: only conntracks created while a listener exists report "
                                 "events; a master made while conntrackd was down is never replicated, nor are "
                                 "its expectations (and alg's reconciler misses them)", fix)
    return Check(name, FAIL, f"nf_conntrack_events = {value}: no events, conntrackd replicates nothing", fix)


def check_pair_mode(pair: bool) -> Check:
    name = "pair: [core] pair"
    if pair:
        return Check(name, OK, "expectations are made where conntrackd can replicate them, and the kernel's "
                               "class 0 has room for what it commits")
    return Check(name, WARN, "off: the expectations of a flow's first packet (a SIP INVITE, a TFTP request) ride on "
                             "its verdict and conntrackd drops them (their master is not confirmed yet), and it "
                             "commits the rest in class 0, where the kernel keeps only class 0's expect_max",
                 "pair = true in the [core] table of alg.toml, on both nodes")


def check_registered(helpers: list[HelperPolicy], listed: Answer) -> list[Check]:
    """Each enabled helper registered for each family and protocol, with at least its classes
    (``listed.value``: alg.kernel.cthelper.Cthelper.list()); a registration is global to the kernel."""
    if listed.denied:
        return [Check("pair: helpers", FAIL, "needs CAP_NET_ADMIN (run as root)", "run `alg doctor` as root")]
    if not listed.ok or listed.value is None:
        why = listed.error or "no nfnetlink_cthelper"
        return [Check("pair: helpers", FAIL, f"cannot list the kernel's userspace helpers ({why})",
                      "modprobe nfnetlink_cthelper")]
    have = {(h["name"], h["l3"], h["proto"]): h for h in listed.value}
    out = []
    for hp in helpers:
        if not hp.enabled:
            continue
        missing, short = [], []
        for l3 in sorted({4, *hp.families}):
            for proto in hp.protocols:
                entry = f"{L3_NAMES.get(l3, l3)} {PROTO_NAMES.get(proto, proto)}"
                h = have.get((hp.name, l3, proto))
                if h is None:
                    missing.append(entry)
                elif len(h["classes"]) < len(hp.classes):
                    short.append(f"{entry} ({len(h['classes'])} of {len(hp.classes)} classes)")
        name = f"pair: helper {hp.name}"
        if missing or short:
            out.append(Check(name, FAIL, "not registered here: " + ", ".join(missing + short) + ": a replicated "
                             "master of this helper cannot be committed on this node (EOPNOTSUPP), nor its "
                             "expectations", "start `alg run` with the same policy on this node (also while it is "
                                             "the backup)"))
        else:
            out.append(Check(name, OK, "registered for every family and protocol of the policy: replicated "
                                       "masters and expectations can be committed"))
    return out


def check_conntrackd(conf: SyncConf | None, where: str, helpers: list[HelperPolicy], reach: Answer) -> list[Check]:
    """The conntrackd.conf at `where` (None: unreadable) and whether its UNIX socket answered (``reach``)."""
    if conf is None:
        return [Check("conntrackd", FAIL, f"{where}: cannot read or parse it", "give the conntrackd.conf in use")]
    out = []
    if conf.unix_path is None:
        out.append(Check("conntrackd socket", FAIL, f"{where}: no General {{ UNIX {{ Path ... }} }}",
                         "conntrackd needs it for -c/-f/-R/-B on fail-over"))
    elif reach.ok:
        out.append(Check("conntrackd socket", OK, f"conntrackd answers on {conf.unix_path}"))
    else:
        out.append(Check("conntrackd socket", FAIL, f"nothing answers on {conf.unix_path} ({reach.error})",
                         f"start conntrackd -C {where} (in this network namespace)"))
    if conf.mode is None:
        return out + [Check("conntrackd sync", FAIL, f"{where}: no Sync section: nothing is replicated",
                            "alg conntrackd-sync --interface IF --address A --peer B >> conntrackd.conf")]
    out.append(Check("conntrackd sync", OK if conf.mode == "FTFW" else WARN, f"Mode {conf.mode}",
                     "" if conf.mode == "FTFW" else "FTFW resends lost messages; use it on a dedicated link"))
    patterns = conf.expectation_sync or []
    for hp in (h for h in helpers if h.enabled):
        by = synced_by(patterns, hp.name)
        name = f"ExpectationSync {hp.name}"
        if by is not None:
            out.append(Check(name, OK, "its expectations are replicated" + (
                " (ExpectationSync On)" if by == "*" else f" (entry {by!r})")))
        else:
            out.append(Check(name, FAIL, "its expectations are not replicated: after a fail-over the flows they "
                                         "announced are NEW on the backup (dropped)",
                             f"add {hp.name} to Sync {{ Options {{ ExpectationSync {{ ... }} }} }} "
                             "(alg conntrackd-sync prints it)"))
        protos = [PROTO_NAMES[p] for p in hp.protocols]
        dropped = [p for p in protos if (conf.accept is not None and p not in conf.accept)
                   or (conf.ignore is not None and p in conf.ignore)]
        if dropped:
            out.append(Check(f"Filter {hp.name}", FAIL, f"General Filter drops {', '.join(dropped).upper()}: "
                             f"{hp.name}'s masters, and with them its expectations, are not replicated",
                             f"accept {', '.join(dropped).upper()} in Filter {{ Protocol Accept {{ ... }} }}"))
    return out


def unix_reachable(path: str, timeout: float = 1.0) -> Answer:
    """Whether something accepts connections on the UNIX stream socket `path` (conntrackd's control socket)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
        return Answer(True)
    except OSError as exc:
        return Answer(None, exc.errno or E.EIO, exc.strerror or str(exc))
    finally:
        s.close()


def pair_checks(helpers: list[HelperPolicy], pair: bool, events: int | None, listed: Answer, conf_path: str | None,
                reach: Callable[[str], Answer] = unix_reachable) -> list[Check]:
    """Every check of `alg doctor --pair` (with conf_path: --conntrackd-conf)."""
    checks = [check_events(events), check_pair_mode(pair), *check_registered(helpers, listed)]
    if conf_path is None:
        return checks
    try:
        with open(conf_path, encoding="utf-8", errors="replace") as f:
            conf: SyncConf | None = read_sync_conf(f.read())
    except (OSError, Refused):
        conf = None
    answer = reach(conf.unix_path) if conf is not None and conf.unix_path else Answer(None, E.ENOENT, "no path")
    return checks + check_conntrackd(conf, conf_path, helpers, answer)


# ------------------------------------------------------------------ the command
def cmd_sync(args: argparse.Namespace, host: Any) -> int:
    from .cli import resolve_policy

    try:
        link = SyncLink(args.interface, ipaddress.ip_address(args.address), ipaddress.ip_address(args.peer),
                        args.port)
    except ValueError as exc:
        print(f"alg conntrackd-sync: {exc}", file=sys.stderr)
        return 2
    policy = resolve_policy(host, args.policy, only_listed=True)
    helpers = list(policy.helpers.values())
    if not sync_names(helpers):
        print("alg conntrackd-sync: the policy enables no helper: nothing to replicate", file=sys.stderr)
        return 2
    sys.stdout.write(sync_section(helpers, link))
    return 0


def add_command(sub: Any) -> None:
    p = sub.add_parser(
        "conntrackd-sync", help="print conntrackd.conf's Sync section for a firewall pair (ExpectationSync)",
        description="Print the conntrackd.conf Sync section of one node of a firewall pair: FTFW over UDP on the "
                    "dedicated link, and ExpectationSync listing the enabled helpers of the policy (as `alg run "
                    "--policy` runs them), so that their expectations survive a fail-over. Add a General section "
                    "(see README, High availability); check the node with `alg doctor --conntrackd-conf FILE`.")
    p.add_argument("--interface", required=True, metavar="IF", help="the dedicated link's interface on this node")
    p.add_argument("--address", required=True, metavar="ADDR", help="this node's address on that link")
    p.add_argument("--peer", required=True, metavar="ADDR", help="the other node's address on that link")
    p.add_argument("--port", type=int, default=SYNC_PORT, help=f"UDP port (default {SYNC_PORT})")
    p.add_argument("--policy", action="append", metavar="DIR|FILE", help="policy files (default: built-in)")
    p.set_defaults(func=cmd_sync)
