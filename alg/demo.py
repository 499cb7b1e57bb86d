"""`./dev demo`: alg live, as the helper daemon of a firewall.

A client and a server namespace with a stateful firewall namespace between
them that drops every NEW flow but FTP control connections; alg runs in the
firewall as its userspace `ftp` helper (nfnetlink_cthelper + NFQUEUE), real
FTP transfers go through, their data connections pass as RELATED, and with
alg stopped they are dropped. This is tests/lab/scenarios/ftp.sh: directly
on this machine's kernel when it has nfnetlink_cthelper, otherwise in the
lab VM with Debian's kernel (tools/lab).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = ROOT / "tests" / "lab" / "scenarios" / "ftp.sh"


def lab_dir() -> Path:
    lab = Path(os.environ.get("LAB_DIR") or ROOT / "tools" / "lab")
    if not (lab / "netns.sh").exists():
        raise SystemExit(f"alg demo: no lab at {lab} (tools/lab of this repository, or LAB_DIR)")
    return lab


def kernel_has_cthelper() -> bool:
    from .kernel.cthelper import Cthelper

    try:
        with Cthelper() as c:
            return c.supported()
    except Exception:
        return False


def main() -> int:
    lab = lab_dir()
    alg = str(Path(sys.executable).with_name("alg"))
    scratch = Path(tempfile.mkdtemp(prefix="alg-demo-"))
    env = dict(os.environ, ALG_ROOT=str(ROOT), ALG=alg, LAB_DIR=str(lab), LAB_SCRATCH=str(scratch))
    if kernel_has_cthelper():
        print(f"alg demo: this kernel ({os.uname().release}) has nfnetlink_cthelper: running on it directly\n",
              flush=True)
        rc = subprocess.run(["bash", str(SCENARIO)], env=env).returncode
    else:
        print(f"alg demo: this kernel ({os.uname().release}) lacks nfnetlink_cthelper, which userspace helpers "
              "need;\nbooting the lab VM with Debian's kernel to run the firewall there (about 1-3 minutes)\n",
              flush=True)
        rc = subprocess.run([str(lab / "vm-run"), "-s", str(scratch), "-e", "ALG_ROOT", "-e", "ALG",
                             str(SCENARIO)], env=env).returncode
    exp = scratch / "ftp" / "alg-exp.txt"
    if exp.exists():
        print("\nthe expectation alg created for the passive transfer (conntrack -L expect in the firewall):")
        print(exp.read_text().strip())
    status = scratch / "ftp" / "status.txt"
    if status.exists():
        print("\nalg status at the end of the transfers:")
        print(status.read_text().strip())
    print(f"\nlogs: {scratch}/ftp/")
    return rc


if __name__ == "__main__":
    sys.exit(main())
