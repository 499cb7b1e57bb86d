"""`./dev demo`: show what alg does on a bundled capture (the live demonstration
replaces this once the daemon lands)."""

from __future__ import annotations

import sys
from pathlib import Path

from .cli import main as alg_main

CAPTURE = Path(__file__).resolve().parents[1] / "tests" / "pcaps" / "ftp-zeek_ftp-ipv4" / "capture.pcap"


def main(argv: list[str]) -> int:
    capture = argv[0] if argv else str(CAPTURE)
    print(f"alg replay {capture}: the expectations an FTP session asks for (as `conntrack -L expect`)\n",
          flush=True)
    return alg_main(["replay", "--stats", capture])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
