"""The `alg` command line. Exit codes: 0 ok, 1 runtime failure, 2 bad usage or configuration."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from typing import Callable, Sequence

from .errors import AlgError, ConfigError, PluginError
from .model import PROTO_NAMES
from .plugins import PluginHost, load_plugins
from .policy import FAMILY_NAMES, Policy, default_policy, load_policy, policy_file_text, port_clashes

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse exits 2 already; keep the message short
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def resolve_policy(host: PluginHost, paths: Sequence[str] | None, *, only_listed: bool) -> Policy:
    specs = {n: c.spec for n, c in host.helpers.items()}
    if not paths:
        return default_policy(specs)
    return load_policy(paths, specs, only_listed=only_listed)


def cmd_replay(args: argparse.Namespace, host: PluginHost) -> int:
    from .engine import Engine, make_slots
    from .nat import NatRules
    from .pcap import CaptureError
    from .replay import Progress, ReplayResult, replay_found, rewrite_row, row, summary

    policy = resolve_policy(host, args.policy, only_listed=False)
    helpers = [h for h in policy.helpers.values() if not args.helper or h.name in args.helper]
    missing = set(args.helper or ()) - {h.name for h in helpers}
    if missing:
        print(f"alg replay: no helper named {', '.join(sorted(missing))} "
              f"(have: {', '.join(sorted(policy.helpers))})", file=sys.stderr)
        return EXIT_USAGE
    engine = Engine(make_slots(helpers, host.helpers), policy.core, track_related=True)
    rules = NatRules()
    try:
        for text in args.snat or ():
            rules.add_snat(text)
        for text in args.dnat or ():
            rules.add_dnat(text)
    except ValueError as exc:
        print(f"alg replay: {exc}", file=sys.stderr)
        return EXIT_USAGE
    engine.nat_rules = rules if rules else None
    progress = Progress(sys.stderr if sys.stderr.isatty() else None)
    result = ReplayResult()
    out = sys.stdout

    def show_rewrite(path: str, frame: int, payload: bytes, m) -> None:
        out.write(rewrite_row(path, frame, payload, m, args.format) + "\n")

    def explain(path: str, x) -> None:
        out.write((json.dumps(x.to_json() | {"file": path}, sort_keys=True) if args.format == "json"
                   else x.to_text()) + "\n")

    try:
        # each expectation is printed as it is found: an interrupted replay keeps what it found
        for path, e in replay_found(engine, args.pcap, result, progress,
                                    warn=lambda msg: print(f"alg replay: warning: {msg}", file=sys.stderr),
                                    explain=explain if args.explain else None,
                                    rewritten=show_rewrite if rules else None):
            result.expectations.append(e)
            if not args.explain:
                out.write(row(e, args.format, path) + "\n")
            out.flush()
            for ev in engine.take_events():
                host.hook.alg_expectation_event(event=ev)
    except (OSError, CaptureError) as exc:
        progress.clear()
        print(f"alg replay: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    for ev in engine.take_events():
        host.hook.alg_expectation_event(event=ev)
    stats = engine.stats()
    out.flush()  # explanations before the summary, on one terminal
    if args.stats:
        json.dump({"frames": result.frames, "undecodable": result.undecodable, "not_ip": result.not_ip,
                   "not_decoded": dict(result.not_decoded), "related_flows": result.related_flows,
                   "port_hints": [{"helper": h, "proto": p, "port": port, "flows": n}
                                  for (h, p, port), n in sorted(result.port_hints.items())], **stats},
                  sys.stderr, indent=1)
        sys.stderr.write("\n")
    if args.summary or (args.summary is None and sys.stderr.isatty()):
        sys.stderr.write(summary(result, stats))
    return EXIT_OK


def helper_info(host: PluginHost, policy: Policy) -> list[dict]:
    out = []
    for _name, hp in sorted(policy.helpers.items()):
        cls = host.helpers[hp.helper]
        out.append({
            "name": hp.name,
            "helper": hp.helper,
            "plugin": host.origin.get(hp.helper),
            "source": host.source(hp.helper).to_json(),
            "enabled": hp.enabled,
            "protocols": [PROTO_NAMES[p] for p in hp.protocols],
            "families": [FAMILY_NAMES[f] for f in hp.families],
            "ports": list(hp.ports),
            "queue": hp.queue,
            "queue_len": hp.queue_len,
            "classes": [{"name": c.name, "expect_max": c.max_expected, "expect_timeout": c.timeout}
                        for c in hp.classes],
            "options": dict(hp.options),
            "doc": (cls.__module__ and (sys.modules[cls.__module__].__doc__ or "").strip().splitlines() or [""])[0],
        })
    return out


def cmd_helpers(args: argparse.Namespace, host: PluginHost) -> int:
    policy = resolve_policy(host, args.policy, only_listed=False)
    info = helper_info(host, policy)
    if args.format == "json":
        json.dump(info, sys.stdout, indent=1, default=str)
        print()
        return EXIT_OK
    for h in info:
        classes = ", ".join(f"{c['name']} {c['expect_max']}/{c['expect_timeout']}s" for c in h["classes"])
        print(f"{h['name']:<10} {'/'.join(h['protocols']):<8} ports {','.join(map(str, h['ports'])):<12} "
              f"queue {h['queue']:<4} {classes}  [{host.source(h['helper'])}]")
    for name, why in host.blocked.items():
        print(f"blocked plugin {name}: {why}")
    for clash in port_clashes(policy.helpers.values()):
        print(f"warning: {clash}")
    return EXIT_OK


def cmd_policy(args: argparse.Namespace, host: PluginHost) -> int:
    """A helper's default policy file: `alg policy NAME > /etc/alg/NAME.toml` enables it."""
    names = sorted(host.helpers) if args.all else args.name
    if not names:
        print("alg policy: name a helper, or --all (helpers: " + ", ".join(sorted(host.helpers)) + ")",
              file=sys.stderr)
        return EXIT_USAGE
    unknown = [n for n in names if n not in host.helpers]
    if unknown:
        print(f"alg policy: no helper named {', '.join(unknown)} (have: {', '.join(sorted(host.helpers))})",
              file=sys.stderr)
        return EXIT_USAGE
    texts = {n: policy_file_text(host.helpers[n].spec, str(host.source(n))) for n in names}
    if args.output:
        os.makedirs(args.output, exist_ok=True)
        for n, text in texts.items():
            path = os.path.join(args.output, f"{n}.toml")
            if os.path.exists(path) and not args.force:
                print(f"alg policy: {path} exists (kept; --force replaces it)", file=sys.stderr)
                continue
            with open(path, "w") as f:
                f.write(text)
            print(f"alg policy: wrote {path}", file=sys.stderr)
        return EXIT_OK
    sys.stdout.write("\n".join(texts.values()))
    return EXIT_OK


Command = Callable[[argparse.Namespace, PluginHost], int]


def build_parser(host: PluginHost | None = None) -> argparse.ArgumentParser:
    p = _Parser(prog="alg", description="Userspace conntrack helpers (ALGs) for Netfilter")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    r = sub.add_parser(
        "replay", help="derive expectations from captures",
        description="Derive the expectations the helpers would create from pcap/pcapng captures; each is printed "
                    "as soon as it is found. Several captures are read in the order given as one stream: flows "
                    "and expectations carry over from one file to the next (rotated captures of one session, "
                    "e.g. tcpdump -C/-G); frame numbers restart with each file, and JSON rows name it (`file`).")
    r.add_argument("pcap", nargs="+", metavar="PCAP", help="capture files (pcap, pcapng; Ethernet, Linux cooked, "
                   "raw IP, loopback, PPP or NFLOG link types; VLAN tags, PPPoE, MPLS, GRE, ERSPAN, IP-in-IP and "
                   "VXLAN are peeled off)")
    r.add_argument("--format", choices=("text", "json"), default="text")
    r.add_argument("--helper", action="append", metavar="NAME", help="only this helper (repeatable)")
    r.add_argument("--policy", action="append", metavar="FILE|DIR", help="policy overrides (repeatable)")
    r.add_argument("--stats", action="store_true", help="counters as JSON on stderr")
    r.add_argument("--explain", action="store_true",
                   help="instead of the expectations, one line (or JSON object) per control message a helper acted "
                        "on: what it found, what was decided (expected, refused and why, ignored) and the policy "
                        "setting that decides it")
    r.add_argument("--snat", action="append", metavar="NETWORK=ADDRESS",
                   help="as if the gateway masqueraded flows from NETWORK as ADDRESS (e.g. 192.168.1.0/24=198.51.100.1;"
                        " repeatable): the expectations move outside and each rewritten packet is shown")
    r.add_argument("--dnat", action="append", metavar="PUBLIC[:PORT]=INSIDE[:PORT]",
                   help="as if a port forward sent flows for PUBLIC to INSIDE (the capture shows INSIDE; e.g. "
                        "198.51.100.1:21=192.168.1.20; repeatable)")
    r.add_argument("--summary", action=argparse.BooleanOptionalAction, default=None,
                   help="a summary for a person on stderr at the end: flows and expectations per helper, refusals "
                        "by reason, frames not decoded, the helpers' protocols on ports the policy does not list "
                        "(default: when stderr is a terminal)")
    r.set_defaults(func=cmd_replay)

    h = sub.add_parser("helpers", help="list loaded helpers and their policies")
    h.add_argument("--format", choices=("text", "json"), default="text")
    h.add_argument("--policy", action="append", metavar="FILE|DIR")
    h.set_defaults(func=cmd_helpers)

    po = sub.add_parser(
        "policy", help="print a helper's default policy file (to enable it under the daemon's --policy DIR)",
        description="Print the default policy of the named helpers, built-in or from a plugin. The daemon "
                    "started with --policy DIR runs the helpers that DIR holds a file for: "
                    "`alg policy NAME > /etc/alg/NAME.toml` (or `alg policy NAME -o /etc/alg`) enables one.")
    po.add_argument("name", nargs="*", metavar="NAME")
    po.add_argument("--all", action="store_true", help="every loaded helper")
    po.add_argument("-o", "--output", metavar="DIR", help="write NAME.toml files into DIR instead")
    po.add_argument("--force", action="store_true", help="with -o: replace existing files")
    po.set_defaults(func=cmd_policy)

    from . import conntrackd, ha, scaffold
    conntrackd.add_command(sub)
    ha.add_command(sub)
    scaffold.add_command(sub)

    try:
        daemon_cli = importlib.import_module("alg.daemon_cli")
    except ImportError:  # the daemon commands need the kernel adapters' libraries
        daemon_cli = None
    if daemon_cli is not None:
        daemon_cli.add_commands(sub)
    if host is not None:
        host.hook.alg_add_commands(subparsers=sub)
    return p


class JournalFormatter(logging.Formatter):
    """Under systemd, a leading <N> gives each stderr line its syslog priority
    (sd-daemon(3)), so `journalctl -p err` finds alg's errors."""

    PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}

    def format(self, record: logging.LogRecord) -> str:
        return f"<{self.PRIORITY.get(record.levelno, 6)}>{super().format(record)}"


def configure_logging(verbose: bool) -> None:
    """Levels and messages only: journald adds the time, the host and the pid."""
    try:
        st = os.fstat(sys.stderr.fileno())
        to_journal = os.environ.get("JOURNAL_STREAM") == f"{st.st_dev}:{st.st_ino}"  # set by systemd
    except (OSError, ValueError):  # stderr is no file (captured)
        to_journal = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter((JournalFormatter if to_journal else logging.Formatter)("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])


def main(argv: Sequence[str] | None = None) -> int:
    try:
        host = load_plugins()
    except PluginError as exc:
        print(f"alg: {exc}", file=sys.stderr)
        return EXIT_USAGE
    parser = build_parser(host)
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    try:
        return int(args.func(args, host) or 0)
    except ConfigError as exc:
        print(f"alg: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except AlgError as exc:
        print(f"alg: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except BrokenPipeError:
        return EXIT_OK
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
