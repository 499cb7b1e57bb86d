"""The daemon's sub-commands: run, status, rules, doctor, cleanup."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

# doctor and rules are imported by their commands: `alg status` and `alg run` need neither
from .errors import AlgError
from .plugins import PluginHost
from .policy import instance_policies, port_clashes

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def _policy(host: PluginHost, args: argparse.Namespace):
    """The policy as the daemon resolves it (exactly the listed helpers), without importing the daemon:
    `rules` and `cleanup` must not need the queue binding."""
    from .cli import resolve_policy

    return resolve_policy(host, args.policy, only_listed=True)


def cmd_run(args: argparse.Namespace, host: PluginHost) -> int:
    from .daemon import Daemon, resolve
    from .daemon.pool import Pool

    # bad policy: ConfigError, exit 2; [core] workers > 1: a supervisor and its worker processes
    serve = Pool if resolve(host, args.policy).core.workers > 1 else Daemon
    daemon = serve(host, args.policy, use_cthelper=not args.no_cthelper)
    try:
        return daemon.run()  # stops (removes what it registered) on its way out, however it leaves
    except AlgError as exc:
        print(f"alg run: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except Exception as exc:
        logging.getLogger("alg.daemon").exception("alg run failed: %s", exc)
        return EXIT_FAILURE


def cmd_status(args: argparse.Namespace, host: PluginHost) -> int:
    from .daemon import read_status

    st = read_status(args.socket or _policy(host, args).core.status_socket)
    if args.format == "prometheus":
        from .daemon.status import prometheus
        sys.stdout.write(prometheus(st))
        return EXIT_OK
    if args.format == "json":
        json.dump(st, sys.stdout, indent=1)
        print()
        return EXIT_OK
    print(f"alg pid {st['pid']} up {st['uptime']} s: {st['verdicts']} verdicts ({st['dropped']} dropped; "
          f"held {st['verdict_us_mean']} us on average, at most {st['verdict_us_max']} us), "
          f"{st['decode_errors']} undecodable, {st['queue_errors']} queue errors, "
          f"{st['expectations']}/{st['expect_budget']} expectations, "
          f"{st['natted']} NATed flows, {st['unresolved']} packets without conntrack, "
          f"{st['attached']} expectations on a verdict ({st['attach_failed']} not taken), {st['adopted']} adopted"
          + (f", {st['events_lost']} expectation events lost" if st["events_lost"] else "")
          + ("" if st.get("conntrack_from_queue", True) else
             "; queues without conntrack (no CONFIG_NETFILTER_NETLINK_GLUE_CT): looked up per packet"))
    for w in st.get("workers", []):  # [core] workers > 1: the supervisor's worker processes
        print(f"worker {w['index']}: pid {w['pid']}, restarts {w['restarts']}"
              + ("" if w["alive"] else ", not running (being restarted)")
              + ("" if w["answered"] or not w["alive"] else ", did not answer: counters incomplete"))
    if st["kernel_errors"]:
        print("kernel errors: " + ", ".join(f"{k} {v}" for k, v in st["kernel_errors"].items()))
    for name, h in st["helpers"].items():
        print(f"helper {name} (queue {st['queues'].get(name)}): packets {h['packets']}, flows {h['flows']}, "
              f"parse errors {h['parse_errors']}, internal errors {h['internal_errors']}, "
              f"stream gaps {h['gaps']} ({h['desynced']} given up), met mid-stream {h['midstream']}"
              + (", notices " + ", ".join(f"{k} {v}" for k, v in h["notices"].items()) if h["notices"] else ""))
        q = st.get("queue_kernel", {}).get(name)
        if q:
            print(f"  queue: {q['waiting']} waiting, dropped by the kernel: {q['dropped_full']} queue full "
                  f"(raise queue_len), {q['dropped_socket']} socket full")
        for cname, c in h["classes"].items():
            refused = ", ".join(f"{k} {v}" for k, v in c["refused"].items()) or "0"
            failed = ", ".join(f"{k} {v}" for k, v in c["kernel_failed"].items()) or "0"
            print(f"  class {cname}: created {c['created']}, used {c['used']}, refused {refused}, "
                  f"evicted {c['evicted']}, removed {c['removed']}, kernel failed {failed}, "
                  f"adopted {c.get('adopted', 0)}")
    return EXIT_OK


def cmd_rules(args: argparse.Namespace, host: PluginHost) -> int:
    from . import rules

    policy = _policy(host, args)
    helpers = [h for h in policy.helpers.values() if h.enabled and (not args.helper or h.name in args.helper)]
    if args.helper and {h.name for h in helpers} != set(args.helper):
        print(f"alg rules: no helper named {', '.join(sorted(set(args.helper) - {h.name for h in helpers}))}",
              file=sys.stderr)
        return EXIT_USAGE
    family = int(args.family) if args.family else None
    workers = policy.core.workers  # N > 1: N instances of each helper, new flows spread over them
    chains = tuple(c for c in (args.nft_chain or rules.NFT_CHAINS) if c != "none")
    if args.remove:
        (rules.remove_nft(chains) if args.nft else rules.remove_iptables(family))
        return EXIT_OK
    clashes = port_clashes(helpers)
    if clashes:  # the kernel would give the port to whichever rule comes first
        for clash in clashes:
            print(f"alg rules: {clash} (or pick with --helper)", file=sys.stderr)
        return EXIT_USAGE
    if args.apply:
        (rules.apply_nft(helpers, family, chains, workers=workers) if args.nft
         else rules.apply_iptables(helpers, family, workers=workers))
    elif args.nft:
        sys.stdout.write(rules.nft(helpers, family, chains, workers))
    else:
        sys.stdout.write(rules.iptables(helpers, family, workers=workers))
    return EXIT_OK


def cmd_doctor(args: argparse.Namespace, host: PluginHost) -> int:
    """Print every check; one the caller may not run fails with the reason (exit 1 if any failed)."""
    from . import doctor
    from .daemon import read_status
    from .kernel.cthelper import Cthelper
    from .kernel.ctnetlink import Ctnetlink
    from .kernel.nfqueue import conntrack_glue, proc_queues

    policy = _policy(host, args)
    # with [core] workers = N the kernel knows each helper as its N instances (alg.daemon.pool)
    helpers = [i for h in policy.helpers.values() if h.enabled for i in instance_policies(h, policy.core.workers)]

    def cthelper_list() -> list[dict[str, Any]] | None:
        with Cthelper() as c:
            return c.list() if c.supported() else None

    def exp_count() -> int:
        with Ctnetlink() as c:
            return len(c.list())

    listed = doctor.ask(cthelper_list)  # value None: the kernel has no nfnetlink_cthelper
    cthelper = doctor.Answer(listed.value is not None, listed.errno, listed.error)
    count = doctor.ask(exp_count)
    queues = doctor.ask(proc_queues)
    free = next(q for q in range(65535, 0, -1) if q not in (queues.value or {}))
    checks = doctor.check_features("/", cthelper, count)
    checks.append(doctor.check_glue(doctor.kernel_config(), doctor.ask(lambda: conntrack_glue(free))))
    checks += doctor.check_clashes("/", helpers)
    checks += doctor.check_nat("/", helpers)
    checks.append(doctor.check_port_claims(helpers))
    checks += doctor.check_rules(helpers, doctor.ruleset())
    registered = {h["name"] for h in listed.value or [] if h["enabled"]} if listed.ok else None
    checks += doctor.check_queues(helpers, queues, registered)
    checks.append(doctor.check_headroom(doctor.sysctl_int("/", "net.netfilter.nf_conntrack_expect_max"),
                                        count.value, count.denied))
    try:
        status = read_status(policy.core.status_socket, timeout=1.0)
    except AlgError:
        status = None
    checks += doctor.check_daemon(status)
    if args.pair or args.conntrackd_conf:
        from .ha import pair_checks
        checks += pair_checks(helpers, policy.core.pair, doctor.sysctl_int("/", "net.netfilter.nf_conntrack_events"),
                              listed, args.conntrackd_conf)
    for c in checks:
        print(c.line())
    return EXIT_FAILURE if any(c.level == doctor.FAIL for c in checks) else EXIT_OK


def cmd_cleanup(args: argparse.Namespace, host: PluginHost) -> int:
    """Remove helpers a dead instance left enabled (from its state file, else the policy)."""
    from .daemon import remove_helpers, shared_entries, state_file
    from .kernel.cthelper import Cthelper

    registered: list = []
    try:
        with open(state_file()) as f:
            state = json.load(f)
        pid = state.get("pid")
        if pid and pid != os.getpid() and os.path.exists(f"/proc/{pid}") and not args.force:
            print(f"alg cleanup: alg pid {pid} is still running (use --force)", file=sys.stderr)
            return EXIT_FAILURE
        registered = state.get("helpers", [])
    except (OSError, ValueError):
        pass
    if not registered:
        policy = _policy(host, args)
        n = policy.core.workers
        registered = [(i.name, l3, p) for h in policy.helpers.values() for i in instance_policies(h, n)
                      for l3 in sorted({4, *h.families}) for p in h.protocols]
    shared = shared_entries()  # another namespace's live daemon serves these (registrations are global)
    registered = [r for r in registered if tuple(r) not in shared]
    try:
        with Cthelper() as c:
            if not c.supported():
                print("alg cleanup: no nfnetlink_cthelper on this kernel: nothing to clean")
                return EXIT_OK
            problems = remove_helpers(c, registered)
    except (AlgError, OSError) as exc:
        print(f"alg cleanup: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    for p in problems:
        print(f"alg cleanup: {p}", file=sys.stderr)
    try:
        os.unlink(state_file())
    except OSError:
        pass
    print(f"alg cleanup: {len(registered) - len(problems)} helper entries disabled and removed")
    return EXIT_FAILURE if problems else EXIT_OK


def add_commands(sub: Any) -> None:
    def with_policy(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--policy", action="append", metavar="DIR|FILE", help="policy files (default: built-in)")
        return p

    r = with_policy(sub.add_parser("run", help="run the helper daemon (foreground)"))
    r.add_argument("--no-cthelper", action="store_true",
                   help="do not register helpers: read queues fed by your own NFQUEUE rules (kernels without "
                        "nfnetlink_cthelper; masters need an in-kernel helper)")
    r.set_defaults(func=cmd_run)
    s = with_policy(sub.add_parser("status", help="counters of the running daemon"))
    s.add_argument("--format", choices=("text", "json", "prometheus"), default="text",
                   help="prometheus: the Prometheus text format (or [core] metrics_file, rewritten by the daemon)")
    s.add_argument("--socket", help="status socket (default from the policy)")
    s.set_defaults(func=cmd_status)
    ru = with_policy(sub.add_parser("rules", help="print the firewall rules that pair with alg"))
    g = ru.add_mutually_exclusive_group()
    g.add_argument("--iptables", action="store_true", help="iptables-restore input (default)")
    g.add_argument("--nft", action="store_true", help="an nft -f file")
    ru.add_argument("--helper", action="append", metavar="NAME")
    ru.add_argument("--family", choices=("4", "6"),
                    help="only the helpers of this family, for iptables-restore (4) or ip6tables-restore (6) "
                         "(default: every helper, one text for both)")
    ru.add_argument("--nft-chain", action="append", metavar="'FAMILY TABLE CHAIN'",
                    help="your filter chain that gets the RELATED accept inserted (repeatable; default: "
                         "'inet filter input' and 'inet filter forward'; 'none': no such rule)")
    act = ru.add_mutually_exclusive_group()
    act.add_argument("--apply", action="store_true",
                     help="apply them here instead of printing; safe to repeat: alg's own chains (iptables) or "
                          "table (nft) are replaced, and the jumps / RELATED accepts added only where missing")
    act.add_argument("--remove", action="store_true", help="remove what --apply added")
    ru.set_defaults(func=cmd_rules)
    d = with_policy(sub.add_parser("doctor", help="check kernel, rules and expectation headroom"))
    d.add_argument("--pair", action="store_true",
                   help="also check this node of a firewall pair: conntrack events, helpers registered (README, "
                        "High availability)")
    d.add_argument("--conntrackd-conf", metavar="FILE",
                   help="with --pair: conntrackd's configuration (its UNIX socket answers, Sync, ExpectationSync "
                        "covers the helpers, Filter keeps their masters); implies --pair")
    d.set_defaults(func=cmd_doctor)
    c = with_policy(sub.add_parser("cleanup", help="remove helpers a crashed instance left enabled"))
    c.add_argument("--force", action="store_true")
    c.set_defaults(func=cmd_cleanup)
