#!/usr/bin/env python3
"""Re-record tests/pcaps/{tftp,irc,sane,amanda,netbios-ns,snmp}-rec-* (needs root, the Debian packages in ./dev).

    tools/record-more-helpers.py [NAME...] [--out DIR]

Runs tests/more_helpers_kernel.py's scenario for each NAME (default: all) in
network namespaces alg-rec-{cli,fw,srv} with the kernel's own helper on the
control flow, and writes the fw's client-side capture (`capture.pcap`) and
what the kernel's helper created (`kernel-expect.txt`, `conntrack -E expect`)
into DIR/NAME-rec-<what>/. SOURCE.md, case.toml and the golden file are kept;
regenerate the golden with ALG_REGEN=1 and review the diff.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import more_helpers_kernel as mh  # noqa: E402
from netns import Net  # noqa: E402

CASES = {"tftp": "tftp-rec-tftp-hpa", "irc": "irc-rec-ngircd-dcc", "sane": "sane-rec-saned-test",
         "amanda": "amanda-rec-scripted", "netbios-ns": "netbios-ns-rec-nmblookup",
         "snmp": "snmp-rec-snmpget"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", default=sorted(mh.SCENARIOS))
    ap.add_argument("--out", default=str(ROOT / "tests" / "pcaps"))
    args = ap.parse_args()
    for name in args.names:
        reason = mh.available(name)
        if reason:
            sys.exit(f"{name}: {reason}")
        dest = Path(args.out) / CASES[name]
        dest.mkdir(parents=True, exist_ok=True)
        with Net("alg-rec") as net, tempfile.TemporaryDirectory(prefix=f"alg-rec-{name}-") as tmp:
            pcap, events = mh.run(name, net, Path(tmp))
            shutil.copy(pcap, dest / "capture.pcap")
        new = [line + "\n" for line in events.splitlines() if "[NEW]" in line]
        (dest / "kernel-expect.txt").write_text("".join(new))
        print(f"{name}: {dest}")


if __name__ == "__main__":
    main()
