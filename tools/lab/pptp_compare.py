#!/usr/bin/env python3
"""Compare the GRE expectations of one PPTP call made by the kernel's nf_conntrack_pptp and by alg's helper.

    pptp_compare.py KERNEL_EVENTS KERNEL_CALL ALG_EVENTS ALG_CALL [--gre KERNEL_GRE ALG_GRE]

tests/lab/scenarios/pptp.sh runs the same VPN session (pptp-linux -> pptpd) through lab-fw twice, once with
the kernel's helper, once with alg's, and keeps for each run `conntrack -E expect` (EVENTS: the [NEW] lines
name the expectations as they were created) and the call's IDs as its control connection carried them
(CALL: "PNS_ID PAC_ID", from the Outgoing-Call-Reply). The call IDs and the control connection's source
port change from run to run, so the fields are compared after naming them: a key equal to the call ID its
position must hold (the receiver's in dstkey, the sender's in srckey) reads `PNS call` / `PAC call`, a key
whose mask is 0 reads `*`, the master's source port reads `control` when it is the control connection's.

Fields, for each direction (PNS -> PAC, PAC -> PNS): proto, src, dst, srckey, dstkey, the mask of each,
timeout at creation (within TIMEOUT_SLACK seconds: the event is read a moment after), flags, class, master,
helper. Every difference is printed; one listed in DELIBERATE (with its reason) does not fail the
comparison, any other does: exit 0 when all differences are deliberate, 1 otherwise or when a run did not
make exactly one expectation per direction, 2 on bad usage.

--gre adds, for information, the GRE conntracks each run left (`conntrack -L -p gre` during the call):
how many and their timeouts (what happens after an expectation is used is not the expectation's field,
and differs on purpose: see the README's PPTP paragraph).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

PPTP_PORT = "1723"
GRE_PROTO = "47"
GRE_KEYS = {"sport": "srckey", "dport": "dstkey"}
TIMEOUT_SLACK = 2
FULL_KEY_MASK = 0xFFFF

# field -> (the kernel's value, alg's value, why alg differs on purpose)
DELIBERATE = {
    "srckey": ("PNS call|PAC call", "*",
               "the GRE tracker takes a packet's source key from a keymap that only nf_conntrack_pptp fills "
               "(no netlink interface): for a userspace helper's call it is 0, so alg masks it out"),
    "mask-srckey": ("0xffff", "0x0", "the same: the source key is a wildcard in alg's expectations"),
    "helper": ("pptp", "alg-pptp",
               "the lab loads nf_conntrack_pptp, which owns the name pptp: alg's helper takes another"),
}


def _tokens(line: str) -> dict[str, str] | None:
    """One [NEW] line of `conntrack -E expect` as fields; repeated names get the prefix of their part."""
    words = line.split()
    if len(words) < 3 or words[0] != "[NEW]":
        return None
    out = {"timeout": words[1]}  # events read from `alg replay` get the [NEW] put before them
    flags = []
    part = ""
    for w in words[2:]:
        if "=" not in w:
            flags.append(w)
            continue
        k, v = w.split("=", 1)
        if k in ("mask-src", "master-src"):
            part = k.split("-")[0] + "-"
            k = "src"
        elif k in ("mask-dst", "master-dst"):
            k = "dst"
        elif k in ("class", "helper", "zone"):  # after the master's tuple, of the expectation itself
            part = ""
        elif k in GRE_KEYS and part != "master-" and out.get("proto") == GRE_PROTO:
            k = GRE_KEYS[k]  # `alg replay` writes a GRE key where conntrack writes a port (alg.Expectation.to_text)
        out[part + k] = v
    out["flags"] = ",".join(flags) or "-"
    return out


def _key(fields: dict[str, str], name: str, role: str, call: dict[str, int]) -> str:
    value, mask = int(fields.get(name, "-1"), 0), int(fields.get("mask-" + name, "0"), 0)
    if mask == 0:
        return "*"
    return f"{role} call" if value == call[role] and mask == FULL_KEY_MASK else hex(value)


def normalise(events: str, call: str, pns: str, pac: str) -> dict[str, dict[str, str]]:
    """The run's expectations by direction ("PNS -> PAC", "PAC -> PNS"), fields named as the docstring says."""
    pns_id, pac_id = (int(x) for x in call.split())
    ids = {"PNS": pns_id, "PAC": pac_id}
    found: dict[str, dict[str, str]] = {}
    for line in events.splitlines():
        f = _tokens(line.strip())
        if f is None or f.get("proto") != GRE_PROTO:
            continue
        ends = {pns: "PNS", pac: "PAC"}
        sender, receiver = ends.get(f.get("src", ""), "?"), ends.get(f.get("dst", ""), "?")
        direction = f"{sender} -> {receiver}"
        if direction in found:
            raise ValueError(f"two expectations for {direction}")
        master = f"{f.get('master-src')}->{f.get('master-dst')}:{f.get('master-dport')}"
        if (f.get("master-src"), f.get("master-dst"), f.get("master-dport")) == (pns, pac, PPTP_PORT):
            master = "control"
        found[direction] = {
            "proto": f["proto"], "src": sender, "dst": receiver,
            "srckey": _key(f, "srckey", sender, ids), "dstkey": _key(f, "dstkey", receiver, ids),
            "mask-src": f.get("mask-src", "?"), "mask-dst": f.get("mask-dst", "?"),
            "mask-srckey": hex(int(f.get("mask-srckey", "-1"), 0)),
            "mask-dstkey": hex(int(f.get("mask-dstkey", "-1"), 0)),
            "timeout": f["timeout"], "flags": f["flags"], "class": f.get("class", "?"), "master": master,
            "helper": f.get("helper", "?"),
        }
    return found


def _same(field: str, kernel: str, alg: str) -> bool:
    if field == "timeout":
        return abs(int(kernel) - int(alg)) <= TIMEOUT_SLACK
    return kernel == alg


def compare(kernel: dict[str, dict[str, str]], alg: dict[str, dict[str, str]]) -> tuple[list[str], bool]:
    """Report lines, and whether every difference is deliberate."""
    lines, ok = [], True
    for direction in ("PNS -> PAC", "PAC -> PNS"):
        k, a = kernel.get(direction), alg.get(direction)
        if k is None or a is None:
            lines.append(f"MISSING   {direction}: kernel {'yes' if k else 'no'}, alg {'yes' if a else 'no'}")
            ok = False
            continue
        for field, kv in k.items():
            av = a.get(field, "?")
            if _same(field, kv, av):
                lines.append(f"same      {direction} {field}: {kv}")
                continue
            want = DELIBERATE.get(field)
            if want and kv in want[0].split("|") and av == want[1]:
                lines.append(f"DELIBERATE {direction} {field}: kernel {kv}, alg {av} ({want[2]})")
            else:
                lines.append(f"DIFFERS   {direction} {field}: kernel {kv}, alg {av}")
                ok = False
    return lines, ok


def gre_conntracks(listing: str) -> list[str]:
    """`conntrack -L -p gre`: one summary per GRE conntrack (timeout, keys both ways, status)."""
    out = []
    for line in listing.splitlines():
        words = line.split()
        if len(words) > 2 and words[0] == "gre":
            keys = [w for w in words if w.startswith(("srckey=", "dstkey="))]
            status = [w for w in words if w.isupper() and "=" not in w]
            out.append(f"timeout {words[2]} s, {' '.join(keys)} {' '.join(status)}".rstrip())
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("kernel_events", type=Path)
    ap.add_argument("kernel_call")
    ap.add_argument("alg_events", type=Path)
    ap.add_argument("alg_call")
    ap.add_argument("--pns", default="10.0.1.2", help="the PNS's (client's) address")
    ap.add_argument("--pac", default="10.0.2.2", help="the PAC's (server's) address")
    ap.add_argument("--gre", nargs=2, type=Path, metavar=("KERNEL_GRE", "ALG_GRE"))
    args = ap.parse_args(argv)
    try:
        kernel = normalise(args.kernel_events.read_text(), args.kernel_call, args.pns, args.pac)
        alg = normalise(args.alg_events.read_text(), args.alg_call, args.pns, args.pac)
    except (OSError, ValueError) as e:
        print(f"pptp_compare: {e}", file=sys.stderr)
        return 2 if isinstance(e, OSError) else 1
    lines, ok = compare(kernel, alg)
    print("\n".join(lines))
    if args.gre:
        for who, path in zip(("kernel", "alg"), args.gre, strict=True):
            found = gre_conntracks(path.read_text()) if path.exists() else []
            print(f"GRE conntracks ({who}): {len(found)}")
            for g in found:
                print(f"    {g}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
