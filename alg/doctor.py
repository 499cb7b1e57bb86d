"""`alg doctor`: is this kernel and firewall ready for alg, and is alg healthy?

Each check says ok, warn or fail, and what to do. `root` points at an
alternative /proc and /sys tree for tests.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any, Callable

from .policy import HelperPolicy

OK, WARN, FAIL = "ok", "warn", "fail"
HEADROOM_WARN = 0.8


@dataclass
class Check:
    name: str
    level: str
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.level:<4}  {self.name}: {self.detail}"
        return text + (f"\n      fix: {self.fix}" if self.fix else "")


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


def check_features(root: str, cthelper_ok: Callable[[], bool], ctnetlink_ok: Callable[[], bool]) -> list[Check]:
    out = []
    queue = _read(root, "/proc/net/netfilter/nfnetlink_queue") is not None or _module_present(root,
                                                                                              "nfnetlink_queue")
    out.append(Check("nfnetlink_queue", OK if queue else FAIL, "NFQUEUE available" if queue else "missing",
                     "" if queue else "modprobe nfnetlink_queue"))
    ct = ctnetlink_ok()
    out.append(Check("nf_conntrack_netlink", OK if ct else FAIL, "ctnetlink answers" if ct else "no answer",
                     "" if ct else "modprobe nf_conntrack_netlink"))
    cth = cthelper_ok()
    out.append(Check(
        "nfnetlink_cthelper", OK if cth else FAIL,
        "userspace helpers can be registered" if cth else
        "this kernel cannot register userspace helpers (no CONFIG_NF_CT_NETLINK_HELPER, or the module is not "
        "loaded; it also needs CONFIG_NETFILTER_NETLINK_GLUE_CT): `CT --helper` rules for alg's helpers fail",
        "" if cth else "modprobe nfnetlink_cthelper; on a kernel without it use a distribution kernel "
        "(Debian, Ubuntu, RHEL ship it) or the in-kernel helpers"))
    return out


def check_clashes(root: str, helpers: list[HelperPolicy]) -> list[Check]:
    out = []
    for hp in helpers:
        module = f"nf_conntrack_{hp.name}"
        if _module_present(root, module):
            out.append(Check(f"name {hp.name}", FAIL if hp.name == hp.helper else WARN,
                             f"the in-kernel helper {hp.name!r} ({module}) is present: a userspace helper of "
                             "that name cannot be registered while it is loaded",
                             f'rename it in the policy (name = "{hp.name}-alg") or `rmmod {module}` and blacklist '
                             "it"))
        else:
            out.append(Check(f"name {hp.name}", OK, "no in-kernel helper of that name"))
    return out


def check_rules(helpers: list[HelperPolicy], ruleset: str | None) -> list[Check]:
    if ruleset is None:
        return [Check("rules", WARN, "cannot read the ruleset (iptables-save / nft missing?)")]
    out = []
    for hp in helpers:
        found = f"--helper {hp.name}" in ruleset or f'type "{hp.name}"' in ruleset
        out.append(Check(f"rules {hp.name}", OK if found else WARN,
                         "a CT --helper rule assigns it" if found else "no rule assigns this helper: alg sees none "
                         "of its traffic", "" if found else f"alg rules --helper {hp.name} | iptables-restore -n"))
    return out


def check_headroom(expect_max: int | None, count: int | None) -> Check:
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


def ruleset() -> str | None:
    texts = []
    for cmd in (["iptables-save"], ["ip6tables-save"], ["nft", "list", "ruleset"]):
        if shutil.which(cmd[0]):
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode == 0:
                texts.append(r.stdout)
    return "\n".join(texts) if texts else None


def sysctl_int(root: str, name: str) -> int | None:
    text = _read(root, "/proc/sys/" + name.replace(".", "/"))
    return int(text) if text and text.strip().isdigit() else None
