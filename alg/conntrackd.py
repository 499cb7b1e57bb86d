"""`alg import-conntrackd`: conntrackd.conf's `Helper` section as alg policy files.

conntrackd (conntrack-tools) runs userspace helpers from a section like::

    Helper {
        Setup yes
        Type ftp inet tcp {          # helper name, layer 3 (inet|inet6), layer 4 (tcp|udp)
            QueueNum 0               # NFQUEUE number
            QueueLen 10240           # packets waiting for a verdict
            Policy ftp {             # an expectation class (optional: the helper's defaults)
                ExpectMax 1
                ExpectTimeout 300
            }
        }
    }

One `Type` block per helper, family and protocol; alg has one policy file per
helper, so the blocks of one helper merge: protocols and families are the
union, QueueLen the largest. What maps exactly becomes a key; what maps
without changing behaviour is reported as a note; what alg cannot do as
written is refused with its line, and then nothing is written:

* mapped: QueueNum -> `queue`, QueueLen -> `queue_len`, `Policy NAME` ->
  `[classes.NAME]` with ExpectMax -> `expect_max`, ExpectTimeout ->
  `expect_timeout`; `Type ... inet` -> `families` ipv4, `inet6` -> ipv6.
* noted: blocks of one helper on different queues (alg serves a helper on
  one queue: the first block's; rules name helpers, not queues, so nothing
  else changes); `Setup` (alg always registers its helpers); the sections
  other than Helper (sync, statistics: not alg's job); ports (conntrackd.conf
  names none: they are in your `CT --helper` rules, and the files keep the
  helper's default ports, shown by `alg helpers`).
* refused: a helper alg does not have, a family or protocol it does not
  serve, a class it does not have, values out of the kernel's range, two
  blocks of one helper with different values for one class (alg has one
  policy per helper), unknown keywords, unbalanced braces.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Mapping

from .model import EXPECT_MAX_MAX, HELPER_NAME_MAX, PROTO_NUMBERS, ExpectClass, HelperSpec
from .policy import FAMILIES, HelperPolicy, default_helper_policy, render_helper_policy

L3_FAMILIES = {"inet": FAMILIES["ipv4"], "inet6": FAMILIES["ipv6"]}
QUEUE_NUM_MAX = 65535  # NFQUEUE numbers are 16 bits
QUEUE_LEN_MAX = 1 << 20  # what alg.policy accepts for queue_len
EXPECT_TIMEOUT_MAX = 86400 * 7  # what alg.policy accepts for expect_timeout
TYPE_KEYS = ("QueueNum", "QueueLen")
POLICY_KEYS = ("ExpectMax", "ExpectTimeout")


@dataclass
class Node:
    """A statement (`KEY args`) or a block (`KEY args { ... }`) with the line it starts on."""

    key: str
    args: list[str]
    line: int
    children: list[Node] | None = None  # None: a statement, not a block


class Refused(Exception):
    def __init__(self, line: int, message: str):
        super().__init__(message)
        self.line = line


def parse(text: str) -> list[Node]:
    """conntrackd.conf's shape: `#` comments, words, and `{ }` blocks; one statement per line."""
    root: list[Node] = []
    stack: list[tuple[list[Node], int]] = [(root, 0)]
    for n, raw in enumerate(text.splitlines(), 1):
        words: list[str] = []
        line = raw.split("#", 1)[0]
        for token in line.replace("{", " { ").replace("}", " } ").split():
            if token == "{":
                if not words:
                    raise Refused(n, "'{' without a keyword before it")
                children: list[Node] = []
                stack[-1][0].append(Node(words[0], words[1:], n, children))
                stack.append((children, n))
                words = []
            elif token == "}":
                if words:
                    stack[-1][0].append(Node(words[0], words[1:], n))
                    words = []
                if len(stack) == 1:
                    raise Refused(n, "'}' closes no block")
                stack.pop()
            else:
                words.append(token)
        if words:
            stack[-1][0].append(Node(words[0], words[1:], n))
    if len(stack) > 1:
        raise Refused(stack[-1][1], "this block is never closed")
    return root


def _int(node: Node, lo: int, hi: int) -> int:
    if len(node.args) != 1 or not node.args[0].isdigit():
        raise Refused(node.line, f"{node.key} takes one number, not {' '.join(node.args) or 'nothing'}")
    value = int(node.args[0])
    if not lo <= value <= hi:
        raise Refused(node.line, f"{node.key} {value}: alg takes {lo} to {hi}")
    return value


@dataclass
class _Merged:
    """The Type blocks of one helper, merged."""

    name: str
    line: int
    protocols: list[int] = field(default_factory=list)
    families: list[int] = field(default_factory=list)
    queue: int | None = None
    queue_line: int = 0
    queue_len: int | None = None
    classes: dict[str, tuple[ExpectClass, int]] = field(default_factory=dict)  # name -> (class, line)


@dataclass
class Conversion:
    policies: list[HelperPolicy]
    notes: list[str]
    refusals: list[str]


def convert(text: str, path: str, specs: Mapping[str, HelperSpec]) -> Conversion:
    notes: list[str] = []
    refusals: list[str] = []

    def refuse(line: int, message: str) -> None:
        refusals.append(f"{path}:{line}: {message}")

    try:
        tree = parse(text)
    except Refused as exc:
        refuse(exc.line, str(exc))
        return Conversion([], notes, refusals)
    merged: dict[str, _Merged] = {}
    broken: set[str] = set()
    sections = [n for n in tree if n.children is not None and n.key == "Helper"]
    for other in tree:
        if other.key != "Helper":
            notes.append(f"{path}:{other.line}: section {other.key} is not about helpers: not imported")
    if not sections:
        refuse(1, "no Helper section")
    for section in sections:
        for node in section.children or []:
            try:
                if node.key == "Setup" and node.children is None:
                    notes.append(f"{path}:{node.line}: Setup: alg registers its helpers itself (no `nfct add "
                                 f"helper` needed; remove such commands)")
                elif node.key == "Type" and node.children is not None:
                    _type_block(node, specs, merged, notes, path)
                else:
                    raise Refused(node.line, f"{node.key}: not a Helper keyword alg knows (Setup, Type)")
            except Refused as exc:
                refuse(exc.line, str(exc))
                if node.key == "Type" and node.args:
                    broken.add(node.args[0])  # none of that helper: half of its blocks would mislead
    policies = []
    for m in merged.values():
        if m.name in broken:
            continue
        base = default_helper_policy(specs[m.name])
        classes = tuple(m.classes[c.name][0] if c.name in m.classes else c for c in base.classes)
        policies.append(HelperPolicy(
            helper=m.name, name=m.name, enabled=True,
            queue=base.queue if m.queue is None else m.queue,
            queue_len=base.queue_len if m.queue_len is None else m.queue_len,
            protocols=tuple(p for p in base.protocols if p in m.protocols),
            families=tuple(f for f in base.families if f in m.families),
            ports=base.ports, classes=classes, options=base.options, max_buffer=base.max_buffer,
            max_flows=base.max_flows, source=f"{path}:{m.line}"))
        notes.append(f"{path}:{m.line}: {m.name}: ports {', '.join(map(str, base.ports))} (the helper's default; "
                     f"conntrackd.conf has none: compare with your CT --helper rules)")
    return Conversion(policies, notes, refusals)


def _type_block(node: Node, specs: Mapping[str, HelperSpec], merged: dict[str, _Merged], notes: list[str],
                path: str) -> None:
    if len(node.args) != 3:
        raise Refused(node.line, f"Type takes NAME L3 L4 (e.g. Type ftp inet tcp), not {' '.join(node.args)}")
    name, l3, l4 = node.args
    spec = specs.get(name)
    if spec is None or len(name) > HELPER_NAME_MAX:
        raise Refused(node.line, f"alg has no helper {name!r} (helpers: {', '.join(sorted(specs))})")
    if l3 not in L3_FAMILIES or L3_FAMILIES[l3] not in spec.families:
        ok = [k for k, v in L3_FAMILIES.items() if v in spec.families]
        raise Refused(node.line, f"{name}: layer 3 {l3!r} is not one alg's {name} serves ({', '.join(ok)})")
    if l4 not in PROTO_NUMBERS or PROTO_NUMBERS[l4] not in spec.protocols:
        ok = [k for k, v in PROTO_NUMBERS.items() if v in spec.protocols]
        raise Refused(node.line, f"{name}: layer 4 {l4!r} is not one alg's {name} serves ({', '.join(ok)})")
    m = merged.setdefault(name, _Merged(name, node.line))
    for acc, value in ((m.families, L3_FAMILIES[l3]), (m.protocols, PROTO_NUMBERS[l4])):
        if value not in acc:
            acc.append(value)
    for child in node.children or []:
        if child.key == "QueueNum" and child.children is None:
            queue = _int(child, 0, QUEUE_NUM_MAX)
            if m.queue is None:
                m.queue, m.queue_line = queue, child.line
            elif queue != m.queue:
                notes.append(f"{path}:{child.line}: {name} {l3} {l4}: QueueNum {queue} differs from line "
                             f"{m.queue_line}'s {m.queue}: alg serves all of {name} on queue {m.queue}")
        elif child.key == "QueueLen" and child.children is None:
            m.queue_len = max(m.queue_len or 0, _int(child, 1, QUEUE_LEN_MAX))
        elif child.key == "Policy" and child.children is not None:
            cls = _policy_block(child, _class_for(child, name, spec))
            seen = m.classes.get(cls.name)
            if seen is not None and seen[0] != cls:
                raise Refused(child.line, f"{name}: Policy {cls.name} ({cls.max_expected}/{cls.timeout} s) "
                                          f"differs from line {seen[1]}'s ({seen[0].max_expected}/"
                                          f"{seen[0].timeout} s): alg has one policy per helper")
            m.classes.setdefault(cls.name, (cls, child.line))
        else:
            raise Refused(child.line, f"{child.key}: not a Type keyword alg knows ({', '.join(TYPE_KEYS)}, Policy)")


def _class_for(node: Node, helper: str, spec: HelperSpec) -> ExpectClass:
    """The alg class a `Policy NAME` block sets: the class of that name, or a
    one-class helper's class when NAME is the helper's (conntrackd names a
    helper's only policy after the helper)."""
    known = {c.name: c for c in spec.classes}
    wanted = node.args[0] if len(node.args) == 1 else None
    if wanted in known:
        return known[wanted]
    if wanted == helper and len(spec.classes) == 1:
        return spec.classes[0]
    raise Refused(node.line, f"{helper}: Policy {' '.join(node.args)}: alg's {helper} has the classes "
                             f"{', '.join(known)}, each with its own ExpectMax (name one)")


def _policy_block(node: Node, default: ExpectClass) -> ExpectClass:
    values = {"ExpectMax": default.max_expected, "ExpectTimeout": default.timeout}
    for child in node.children or []:
        if child.key == "ExpectMax" and child.children is None:
            # nfnetlink_cthelper refuses more (NF_CT_EXPECT_MAX_CNT)
            values["ExpectMax"] = _int(child, 1, EXPECT_MAX_MAX)
        elif child.key == "ExpectTimeout" and child.children is None:
            values["ExpectTimeout"] = _int(child, 1, EXPECT_TIMEOUT_MAX)
        else:
            raise Refused(child.line, f"{child.key}: not a Policy keyword alg knows ({', '.join(POLICY_KEYS)})")
    return ExpectClass(default.name, values["ExpectMax"], values["ExpectTimeout"])


def file_text(hp: HelperPolicy) -> str:
    return f"# imported from conntrackd.conf ({hp.source}) by alg import-conntrackd\n" + render_helper_policy(hp)


def cmd_import(args: argparse.Namespace, host: Any) -> int:
    try:
        with open(args.file, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError as exc:
        print(f"alg import-conntrackd: {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    result = convert(text, args.file, {n: c.spec for n, c in host.helpers.items()})
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    for refusal in result.refusals:
        print(f"refused: {refusal}", file=sys.stderr)
    if result.refusals and not args.partial:
        print(f"alg import-conntrackd: {len(result.refusals)} refused, nothing written (--partial writes the "
              f"rest)", file=sys.stderr)
        return 2
    if args.output:
        os.makedirs(args.output, exist_ok=True)
        for hp in result.policies:
            path = os.path.join(args.output, f"{hp.name}.toml")
            if os.path.exists(path) and not args.force:
                print(f"alg import-conntrackd: {path} exists (kept; --force replaces it)", file=sys.stderr)
                continue
            with open(path, "w") as f:
                f.write(file_text(hp))
            print(f"alg import-conntrackd: wrote {path}", file=sys.stderr)
    else:
        sys.stdout.write("\n".join(file_text(hp) for hp in result.policies))
    return 2 if result.refusals else 0


def add_command(sub: Any) -> None:
    p = sub.add_parser("import-conntrackd", help="convert conntrackd.conf's Helper section into alg policy files",
                       description=(__doc__ or "").split("\n\n")[0] + " What cannot be mapped is refused with its "
                       "line number (exit 2, nothing written unless --partial).")
    p.add_argument("file", metavar="CONNTRACKD.CONF")
    p.add_argument("-o", "--output", metavar="DIR", help="write NAME.toml files into DIR (default: print them)")
    p.add_argument("--force", action="store_true", help="with -o: replace existing files")
    p.add_argument("--partial", action="store_true", help="write what maps even when something is refused")
    p.set_defaults(func=cmd_import)
