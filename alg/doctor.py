"""`alg doctor`: is this kernel and firewall ready for alg, and is alg healthy?

Each check says ok, warn or fail, and what to do. `root` points at an
alternative /proc and /sys tree for tests. Every check is printed whatever
the others found: one the caller may not run (netlink and the firewall
tables need CAP_NET_ADMIN) fails with that reason instead of stopping the
rest. The kernel is asked through callables wrapped by :func:`ask`, so the
check functions themselves are pure and tested with fake answers.
"""

from __future__ import annotations

import errno as E
import math
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from .errors import AlgError
from .model import PROTO_NUMBERS
from .policy import HelperPolicy, port_clashes

if TYPE_CHECKING:
    from .kernel.nfqueue import QueueStats

OK, WARN, FAIL = "ok", "warn", "fail"
HEADROOM_WARN = 0.8
NEEDS_ADMIN = "needs CAP_NET_ADMIN (run as root)"
CAP_NET_ADMIN = 12
GLUE = "CONFIG_NETFILTER_NETLINK_GLUE_CT"


@dataclass
class Check:
    name: str
    level: str
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.level:<4}  {self.name}: {self.detail}"
        return text + (f"\n      fix: {self.fix}" if self.fix else "")


@dataclass
class Answer:
    """What asking the kernel (or a tool) gave: a value, or the errno and message that stopped it."""

    value: Any = None
    errno: int = 0
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.errno and not self.error

    @property
    def denied(self) -> bool:
        return self.errno in (E.EPERM, E.EACCES)


def ask(fn: Callable[[], Any]) -> Answer:
    """Run one probe; a refusal becomes an Answer instead of an exception."""
    try:
        return Answer(fn())
    except (AlgError, OSError) as exc:
        return Answer(None, getattr(exc, "errno", None) or E.EIO, str(exc))


def has_net_admin() -> bool:
    """Whether this process holds CAP_NET_ADMIN (effective set, /proc/self/status CapEff)."""
    for line in (_read("/", "/proc/self/status") or "").splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    return os.geteuid() == 0


def _read(root: str, path: str) -> str | None:
    try:
        with open(os.path.join(root, path.lstrip("/"))) as f:
            return f.read()
    except OSError:
        return None


def _module_present(root: str, module: str) -> bool:
    if os.path.isdir(os.path.join(root, "sys/module", module)):
        return True
    release = os.uname().release
    builtin = _read(root, f"/lib/modules/{release}/modules.builtin") or ""
    return any(line.rsplit("/", 1)[-1] == f"{module}.ko" for line in builtin.split())


def kernel_config(root: str = "/") -> tuple[dict[str, str], str] | None:
    """The running kernel's build options ("y", "m" or "n") and where they were read, if available."""
    # gzip here, shlex and subprocess where used: every alg command imports this module (alg.ha, for its
    # sub-command, uses its checks), and most never read a kernel config nor run iptables-save
    import gzip

    for path in ("proc/config.gz", f"boot/config-{os.uname().release}"):
        full = os.path.join(root, path)
        try:
            opener: Any = gzip.open if path.endswith(".gz") else open
            with opener(full, "rt") as f:
                text = f.read()
        except OSError:
            continue
        out = {}
        for line in text.splitlines():
            m = re.match(r"(CONFIG_\w+)=(\S+)$", line) or re.match(r"# (CONFIG_\w+) is not set", line)
            if m:
                out[m.group(1)] = m.group(2) if m.lastindex == 2 else "n"
        return out, "/" + path
    return None


def _denied(name: str) -> Check:
    return Check(name, FAIL, NEEDS_ADMIN, "run `alg doctor` as root (or with CAP_NET_ADMIN)")


def _unanswered(name: str, answer: Answer, what: str, fix: str) -> list[Check]:
    """The one check to print instead of per-helper ones when ``answer`` did not come (else [])."""
    if answer.denied:
        return [_denied(name)]
    return [] if answer.ok else [Check(name, WARN, f"cannot read {what} ({answer.error})", fix)]


def check_features(root: str, cthelper: Answer, ctnetlink: Answer) -> list[Check]:
    """``cthelper``/``ctnetlink``: whether the kernel answered a cthelper dump / an expectation dump."""
    out = []
    queue = os.path.exists(os.path.join(root, "proc/net/netfilter/nfnetlink_queue")) or _module_present(
        root, "nfnetlink_queue")
    out.append(Check("nfnetlink_queue", OK if queue else FAIL, "NFQUEUE available" if queue else "missing",
                     "" if queue else "modprobe nfnetlink_queue"))
    if ctnetlink.denied:
        out.append(_denied("nf_conntrack_netlink"))
    else:
        ct = ctnetlink.ok
        out.append(Check("nf_conntrack_netlink", OK if ct else FAIL,
                         "ctnetlink answers" if ct else f"no answer ({ctnetlink.error})",
                         "" if ct else "modprobe nf_conntrack_netlink"))
    if cthelper.denied:
        out.append(_denied("nfnetlink_cthelper"))
        return out
    cth = cthelper.ok and bool(cthelper.value)
    out.append(Check(
        "nfnetlink_cthelper", OK if cth else FAIL,
        "userspace helpers can be registered" if cth else
        "this kernel cannot register userspace helpers (no CONFIG_NF_CT_NETLINK_HELPER, or the module is not "
        f"loaded; it also needs {GLUE}): `CT --helper` rules for alg's helpers fail",
        "" if cth else "modprobe nfnetlink_cthelper; on a kernel without it use a distribution kernel "
        "(Debian, Ubuntu, RHEL ship it) or the in-kernel helpers"))
    return out


def check_glue(config: tuple[dict[str, str], str] | None, probe: Answer) -> Check:
    """NFQUEUE's conntrack glue: NFQA_CT/NFQA_EXP on verdicts (alg.kernel.nfqueue.conntrack_glue is ``probe``)."""
    name = "nfqueue conntrack glue"
    if probe.ok:
        have, how = bool(probe.value), "the kernel's answer to NFQA_CFG_F_CONNTRACK"
    elif config is not None:
        have, how = config[0].get(GLUE, "n") == "y", config[1]
    elif probe.denied:
        return _denied(name)
    else:
        return Check(name, WARN, f"cannot tell ({probe.error}) and no kernel config to read",
                     f"check that the kernel is built with {GLUE}=y")
    if have:
        return Check(name, OK, f"verdicts can carry conntrack and expectations (NFQA_CT/NFQA_EXP; {GLUE}, "
                               f"from {how})")
    return Check(name, FAIL, f"no {GLUE} (from {how}): queued packets come without their conntrack, so alg asks "
                             "ctnetlink for each one (slower, and no flow record survives alg's table), the kernel "
                             "ignores NFQA_CT/NFQA_EXP on a verdict (an expectation of a flow's first packet is made "
                             "after the verdict, racing the peer), and nfnetlink_cthelper needs it",
                 f"use a kernel built with {GLUE}=y (Debian, Ubuntu and RHEL kernels are; it is not a module) "
                 "and load nf_conntrack_netlink")


# modules whose in-kernel helpers are not named after them (nf_conntrack_h323_main.c registers
# RAS, Q.931 and H.245): alg's h323 shares no name with them, a policy naming its helper Q.931 would
KERNEL_HELPER_NAMES = {"nf_conntrack_h323": ("RAS", "Q.931", "H.245")}


def _kernel_module(name: str) -> str:
    """The module that would register an in-kernel helper of this name (netbios-ns: nf_conntrack_netbios_ns)."""
    for module, names in KERNEL_HELPER_NAMES.items():
        if name in names:
            return module
    return f"nf_conntrack_{name.replace('-', '_')}"


def check_clashes(root: str, helpers: list[HelperPolicy]) -> list[Check]:
    out = []
    for hp in helpers:
        module = _kernel_module(hp.name)
        if module in KERNEL_HELPER_NAMES and hp.name not in KERNEL_HELPER_NAMES[module]:
            out.append(Check(f"name {hp.name}", OK, f"no in-kernel helper of that name ({module}'s are "
                             f"{', '.join(KERNEL_HELPER_NAMES[module])})"))
        elif _module_present(root, module):
            out.append(Check(f"name {hp.name}", FAIL if hp.name == hp.helper else WARN,
                             f"the in-kernel helper {hp.name!r} ({module}) is present: a userspace helper of "
                             "that name cannot be registered while it is loaded",
                             f'rename it in the policy (name = "{hp.name}-alg") or `rmmod {module}` and blacklist '
                             "it"))
        else:
            out.append(Check(f"name {hp.name}", OK, "no in-kernel helper of that name"))
    return out


def check_nat(root: str, helpers: list[HelperPolicy]) -> list[Check]:
    """Whether NATed flows get their payloads rewritten (policy `nat`, alg.nat)."""
    if not _module_present(root, "nf_nat"):
        return [Check("nat", OK, "nf_nat is not loaded: this box translates no flow, there is nothing to rewrite")]
    off = [hp.name for hp in helpers if not hp.nat]
    out = [Check("nat", OK, "nf_nat is loaded (its expectfn nat-follow-master with it): NATed flows of "
                 + (", ".join(hp.name for hp in helpers if hp.nat) or "no helper") + " are rewritten")]
    if off:
        out.append(Check("nat off", WARN, f"{', '.join(off)}: nat = false, so behind NAT their peers advertise "
                         "addresses the far side cannot reach (expectations stay on the inside address)",
                         "remove `nat = false` from those policy files unless another box rewrites them"))
    return out


def check_port_claims(helpers: list[HelperPolicy]) -> Check:
    """Two enabled helpers on one protocol and port: only one can take the flow."""
    clashes = port_clashes(helpers)
    if not clashes:
        return Check("ports", OK, "no protocol and port is claimed by two helpers")
    return Check("ports", FAIL, "; ".join(clashes), "set enabled = false or other ports in one of their policy files")


@dataclass(frozen=True)
class CtRule:
    """A firewall rule that gives a flow a conntrack helper (iptables raw CT --helper / nft ct helper set)."""

    helper: str
    proto: int | None  # None: any protocol
    ports: tuple[tuple[int, int], ...] | None  # destination port ranges; None: any port
    where: str

    def covers(self, proto: int, port: int) -> bool:
        return (self.proto is None or self.proto == proto) and (
            self.ports is None or any(lo <= port <= hi for lo, hi in self.ports))


def _proto(name: str) -> int | None:
    return int(name) if name.isdigit() else PROTO_NUMBERS.get(name.lower(), -1)


def _ports(spec: str, sep: str) -> tuple[tuple[int, int], ...]:
    """'21', '2000:2100' (iptables) / '2000-2100' (nft), comma lists; an open end runs to 65535."""
    out = []
    for part in spec.strip("{} ").split(","):
        lo, _, hi = part.strip().partition(sep)
        if lo.isdigit() or hi.isdigit():
            out.append((int(lo or 0), int(hi or 65535) if _ else int(lo)))
    return tuple(out)


_XT_PROTO = ("-p", "--protocol")
_XT_PORTS = ("--dport", "--destination-port", "--dports", "--destination-ports")


_RAW_HOOKS = ("PREROUTING", "OUTPUT")  # the raw table's built-in chains: where a CT rule can act


def parse_iptables_save(text: str) -> list[CtRule]:
    """CT --helper rules of the raw table in iptables-save / ip6tables-save output, in the built-in
    chains or in a chain reached from them (alg's own `alg-helpers`): a rule nothing jumps to is dead."""
    import shlex

    rules, table = [], ""
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
        if table != "raw" or not line.startswith("-A "):
            continue
        try:
            tok = shlex.split(line)
        except ValueError:
            continue
        rules.append(tok)
    jumps: dict[str, set[str]] = {}
    for tok in rules:
        for flag in ("-j", "-g"):
            if flag in tok[:-1]:
                jumps.setdefault(tok[1], set()).add(tok[tok.index(flag) + 1])
    reached, todo = set(_RAW_HOOKS), list(_RAW_HOOKS)
    while todo:
        for chain in jumps.get(todo.pop(), ()):
            if chain not in reached:
                reached.add(chain)
                todo.append(chain)
    out = []
    for tok in rules:
        if tok[1] not in reached:
            continue
        j = tok.index("-j") if "-j" in tok else len(tok)
        target = tok[j + 1:]
        if target[:1] != ["CT"] or "--helper" not in target[:-1]:
            continue
        proto: int | None = None
        ports: tuple[tuple[int, int], ...] | None = None
        negated = False
        for i, t in enumerate(tok[:j - 1]):
            if t == "!" and tok[i + 1] in _XT_PROTO + _XT_PORTS:
                negated = True  # "all but these": cannot be said to cover a port
            elif t in _XT_PROTO:
                proto = _proto(tok[i + 1])
            elif t in _XT_PORTS:
                ports = _ports(tok[i + 1], ":")
        if not negated:
            out.append(CtRule(target[target.index("--helper") + 1], proto, ports, f"iptables raw {tok[1]}"))
    return out


_NFT_PORTS = re.compile(r"\b(tcp|udp|sctp|dccp|th) dport (\{[^}]*\}|\S+)")


def parse_nft(text: str) -> list[CtRule]:
    """`ct helper set` rules in `nft list ruleset` output, resolved to the helper their object names."""
    objects: dict[tuple[str, str], tuple[str, int | None]] = {}
    pending: list[tuple[str, str, str]] = []
    table = chain = obj = ""
    for raw in text.splitlines():
        line = raw.strip()
        if m := re.match(r"table (\S+ \S+) \{", line):
            table = m.group(1)
        elif m := re.match(r"ct helper (\S+) \{", line):
            obj = m.group(1).strip('"')
        elif m := re.match(r"chain (\S+) \{", line):
            chain = m.group(1)
        elif line == "}":  # closes the innermost open block
            if obj:
                obj = ""
            elif chain:
                chain = ""
            else:
                table = ""
        elif obj and (m := re.match(r'type "([^"]+)" protocol (\w+)', line)):
            objects[(table, obj)] = (m.group(1), _proto(m.group(2)))
        elif chain and "ct helper set " in line:
            pending.append((table, chain, line))
    out = []
    for table, chain, line in pending:
        for name in _nft_helper_objects(line):
            if (table, name) not in objects:
                continue  # a name nft could not resolve: not a rule we can read
            helper, proto = objects[(table, name)]
            pm = _NFT_PORTS.search(line)
            if pm and "!=" not in line:
                proto = proto if pm.group(1) == "th" else _proto(pm.group(1))
                out.append(CtRule(helper, proto, _ports(pm.group(2), "-"), f"nft {table} {chain}"))
            elif " dport " not in line:
                out.append(CtRule(helper, proto, None, f"nft {table} {chain}"))
    return out


def _nft_helper_objects(line: str) -> list[str]:
    """The ct helper objects a `ct helper set` rule may give: one name, or every value of the
    map that picks among a helper's instances (`jhash ... mod N map { 0 : "ftp0-tcp", ... }`)."""
    head, sep, pairs = line.partition(" map {")
    if sep:
        return [v.strip().strip('"') for _k, _c, v in (p.partition(":") for p in pairs.split("}")[0].split(","))]
    m = re.search(r'ct helper set "?([^"\s]+)"?', head)
    return [m.group(1)] if m else []


def check_rules(helpers: list[HelperPolicy], rules: Answer) -> list[Check]:
    """Per helper: a CT rule naming exactly it on one of its ports (``rules.value``: list[CtRule])."""
    unread = _unanswered("rules", rules, "the ruleset", "install iptables (iptables-save) or nftables (nft)")
    if unread:
        return unread
    out = []
    for hp in helpers:
        mine = [r for r in rules.value if r.helper == hp.name]
        hits = [r for r in mine if any(r.covers(p, port) for p in hp.assigned for port in hp.ports)]
        fix = f"alg rules --helper {hp.name} --apply (iptables), or alg rules --nft --helper {hp.name} --apply"
        ports = ", ".join(str(p) for p in hp.ports)
        if hits:
            out.append(Check(f"rules {hp.name}", OK, f"{hits[0].where} assigns it ({len(hits)} rules on its ports)"))
        elif mine:
            out.append(Check(f"rules {hp.name}", WARN, f"{mine[0].where} assigns it, but on none of its ports "
                                                      f"({ports}): alg sees none of that traffic", fix))
        else:
            out.append(Check(f"rules {hp.name}", WARN,
                             f"no raw-table CT rule assigns helper {hp.name!r} (a RELATED accept or another "
                             "helper's name does not count): alg sees none of its traffic", fix))
    return out


def check_queues(helpers: list[HelperPolicy], queues: Answer, registered: set[str] | None) -> list[Check]:
    """NFQUEUE health per helper queue from /proc/net/netfilter/nfnetlink_queue (``queues.value``:
    alg.kernel.nfqueue.proc_queues()); ``registered``: helpers the kernel has enabled (None: unknown)."""
    unread = _unanswered("queues", queues, "/proc/net/netfilter/nfnetlink_queue", "modprobe nfnetlink_queue")
    if unread:
        return unread
    out = []
    for hp in helpers:
        name = f"queue {hp.queue} ({hp.name})"
        q: QueueStats | None = queues.value.get(hp.queue)
        if q is None:
            if registered is not None and hp.name in registered:
                out.append(Check(name, WARN, f"helper {hp.name!r} is enabled in the kernel but nobody reads queue "
                                             f"{hp.queue}: its flows pass unhelped and are never confirmed",
                                 "start alg (systemctl start alg), or `alg cleanup` if it is not meant to run"))
            else:
                out.append(Check(name, OK, "not bound (alg is not running)"))
            continue
        detail = (f"bound by netlink port {q.portid}, {q.total} waiting, {q.id_sequence} queued so far, "
                  f"{q.dropped} dropped (queue full), {q.user_dropped} dropped (reader's socket buffer full)")
        if q.dropped or q.user_dropped:
            out.append(Check(name, WARN, detail + ": those packets went through unseen by alg",
                             f"raise queue_len in the policy of {hp.name} (now {hp.queue_len})"
                             + ("; user drops mean alg reads too slowly: see `alg status` for slow verdicts"
                                if q.user_dropped else "")))
        else:
            out.append(Check(name, OK, detail))
    return out


def check_headroom(expect_max: int | None, count: int | None, denied: bool = False) -> Check:
    if count is None and denied:
        return _denied("expectation table")
    if expect_max is None or count is None:
        return Check("expectation table", WARN, "cannot read nf_conntrack_expect_max or the live count")
    used = count / expect_max if expect_max else 1.0
    detail = f"{count} of {expect_max} expectations in use ({used:.0%})"
    if used >= HEADROOM_WARN:
        hashsize = max(1, math.ceil(expect_max * 2 / 4))
        return Check("expectation table", WARN, detail + ": kernel helpers and alg will be refused soon",
                     f"echo 'options nf_conntrack expect_hashsize={hashsize}' > /etc/modprobe.d/alg.conf "
                     f"(nf_conntrack_expect_max becomes {hashsize * 4}; reload nf_conntrack or reboot)")
    return Check("expectation table", OK, detail)


def check_daemon(status: dict[str, Any] | None) -> list[Check]:
    from .daemon import refusal_fix

    if status is None:
        return [Check("daemon", WARN, "no alg daemon answers on the status socket", "alg run (or systemctl start alg)")]
    out = [Check("daemon", OK, f"pid {status['pid']}, {status['verdicts']} verdicts, "
                                 f"{status['queue_errors']} queue errors")]
    for name, h in status["helpers"].items():
        for cname, c in h["classes"].items():
            for reason, n in {**c["refused"], **c["kernel_failed"]}.items():
                out.append(Check(f"pressure {name}/{cname}", WARN, f"{n} expectations refused ({reason})",
                                 refusal_fix(reason)))
    return out


def ruleset() -> Answer:
    """Helper-assigning rules from iptables-save, ip6tables-save and nft (Answer.value: list[CtRule])."""
    import shutil
    import subprocess

    if not has_net_admin():
        return Answer(None, E.EPERM, NEEDS_ADMIN)
    found: list[CtRule] = []
    read = []
    for cmd, parse in ((["iptables-save", "-t", "raw"], parse_iptables_save),
                       (["ip6tables-save", "-t", "raw"], parse_iptables_save),
                       (["nft", "list", "ruleset"], parse_nft)):
        if shutil.which(cmd[0]):
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode == 0:
                found += parse(r.stdout)
                read.append(cmd[0])
    return Answer(found) if read else Answer(None, E.ENOENT, "neither iptables-save nor nft could be run")


def sysctl_int(root: str, name: str) -> int | None:
    text = _read(root, "/proc/sys/" + name.replace(".", "/"))
    return int(text) if text and text.strip().isdigit() else None
