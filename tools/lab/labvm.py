#!/usr/bin/env python3
"""The lab VM runner: a bash script run as root in a throw-away VM booting Debian's own kernel.

The host kernel may lack nfnetlink_cthelper (the development machines' does);
Debian's kernel has it, nfnetlink_queue and nf_conntrack_netlink as modules.
The VM is QEMU under virtme-ng (`vng`), the host's root filesystem shared
read-only (9p), /etc /var /tmp /usr copy-on-write, /run a tmpfs.

    tools/lab/vm-run --check                 # preconditions only (no boot, well under a second)
    tools/lab/vm-run --probe                 # boot, load the modules, report (~20-60 s under TCG)
    tools/lab/vm-run [options] SCRIPT [ARGS] # run SCRIPT in the guest; exit with its status

In the guest the script runs in the caller's working directory with
PATH = Debian's system dirs and: LAB_IN_VM=1, LAB_DIR (this folder),
LAB_SCRATCH (a host folder, writable in the guest: keep artefacts there; no
Unix sockets on it, it is 9p), LAB_RUNDIR=/run/lab (tmpfs), LAB_HOST_PYTHON
(the python running this file, usable in the guest), every LAB_* variable of
the caller and the ones named with -e.

Exit status: the script's, or RC_TIMEOUT (124, the time limit), RC_NO_BOOT
(125, the VM never reached the script), RC_SIGNAL (130), RC_DIED (255, the
VM ended during the script without a status), RC_MODULE (97, a module did not
load), RC_PRECONDITION (3, see --check), 2 (usage).

Also a library for pytest (tests/conftest.py, tests/test_lab.py):
`unavailable_reason()` and `start_in_vm()`. Standard library only.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

LAB_DIR = Path(__file__).resolve().parent
PROBE = LAB_DIR / "probe.sh"
MODULES = ("nf_conntrack", "nfnetlink_cthelper", "nfnetlink_queue", "nf_conntrack_netlink")
GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
GUEST_RUNDIR = "/run/lab"
STARTED = ".vm-started"  # written by the guest wrapper: the VM reached the script
RC_PRECONDITION, RC_MODULE, RC_TIMEOUT, RC_NO_BOOT, RC_SIGNAL, RC_DIED = 3, 97, 124, 125, 130, 255
SKIP_CODES = {RC_PRECONDITION: "a precondition is missing", RC_NO_BOOT: "the VM never booted"}
STOP_GRACE = 15  # seconds QEMU gets to exit after SIGTERM before the whole process group is killed
PROBE_OK = "lab probe ok"


def newest_kernel() -> str | None:
    """The newest /boot/vmlinuz-*-amd64 whose modules include netfilter."""
    def version_key(path: str) -> list[int]:
        return [int(x) for x in re.findall(r"\d+", path)]

    for k in sorted(glob.glob("/boot/vmlinuz-*-amd64"), key=version_key, reverse=True):
        if Path(f"/lib/modules/{k.split('vmlinuz-', 1)[1]}/kernel/net/netfilter").is_dir():
            return k
    return None


def missing(kernel: str | None) -> list[str]:
    """What stops the VM from running here, one sentence each."""
    out = []
    if kernel is None:
        out.append("no Debian kernel /boot/vmlinuz-*-amd64 with netfilter modules (tools/lab/setup.sh installs "
                   "linux-image-amd64)")
    elif not os.access(kernel, os.R_OK):
        out.append(f"kernel {kernel} is not readable")
    else:
        version = kernel.split("vmlinuz-", 1)[1]
        for m in MODULES[1:]:
            if not glob.glob(f"/lib/modules/{version}/kernel/net/netfilter/{m}.ko*"):
                out.append(f"kernel {version} has no module {m}")
    for tool, package in (("vng", "pip: virtme-ng"), ("qemu-system-x86_64", "apt: qemu-system-x86"),
                          ("busybox", "apt: busybox-static")):
        if shutil.which(tool) is None:
            out.append(f"{tool} not found ({package}; tools/lab/setup.sh)")
    if os.geteuid() != 0:
        out.append("must run as root (modules and namespaces in the guest)")
    return out


def guest_wrapper(script: str, args: list[str], scratch: Path, env: dict[str, str], modules: list[str]) -> str:
    """The bash the guest runs: it starts with no environment of ours."""
    exports = {"PATH": GUEST_PATH, "LAB_IN_VM": "1", "LAB_RUNDIR": GUEST_RUNDIR, "LAB_DIR": str(LAB_DIR),
               "LAB_SCRATCH": str(scratch), "LAB_HOST_PYTHON": os.path.realpath(sys.executable), **env}
    lines = ["#!/bin/bash"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in exports.items()]
    lines += ['mkdir -p "$LAB_RUNDIR"', f': >"$LAB_SCRATCH/{STARTED}"',
              f"for m in {' '.join(modules)}; do",
              f'  modprobe "$m" || {{ echo "lab vm: modprobe $m failed" >&2; exit {RC_MODULE}; }}', "done",
              f'cd {shlex.quote(os.getcwd())} 2>/dev/null || cd "$LAB_SCRATCH"',
              "exec bash " + " ".join(shlex.quote(a) for a in [script, *args])]
    return "\n".join(lines) + "\n"


def _pump(src, dst) -> None:
    for chunk in iter(lambda: src.read1(65536), b""):
        dst.write(chunk)
        dst.flush()


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM QEMU first so the vng -> virtme-run -> qemu chain unwinds (killing all at once leaves QEMU a
    zombie); SIGKILL the process group only if it has not ended after STOP_GRACE seconds."""
    if proc.poll() is not None:
        return
    for pid in _descendants(proc.pid):
        try:
            if Path(f"/proc/{pid}/comm").read_text().startswith("qemu-system"):
                os.kill(pid, signal.SIGTERM)
        except OSError:
            pass
    try:
        proc.wait(STOP_GRACE)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = Path(stat).read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.split("/")[2]))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def run(script: str, args: list[str], *, timeout: float = 600, scratch: str | None = None, env_names=(),
        kernel: str | None = None, memory: str = "1G", cpus: int = 2, kvm: bool = False, verbose: bool = False,
        keep: bool = False, extra_modules=()) -> int:
    kernel = kernel or newest_kernel()
    problems = missing(kernel)
    if problems:
        for p in problems:
            print(f"vm-run: precondition missing: {p}", file=sys.stderr)
        return RC_PRECONDITION
    assert kernel is not None
    temporary = scratch is None
    where = Path(tempfile.mkdtemp(prefix="lab-vm.") if scratch is None else scratch).resolve()
    where.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k.startswith("LAB_") and k not in ("LAB_DIR", "LAB_SCRATCH")}
    env.update({k: os.environ[k] for k in env_names if k in os.environ})
    wrapper = where / ".vm-guest.sh"
    wrapper.write_text(guest_wrapper(str(Path(script).resolve()), args, where, env, [*MODULES, *extra_modules]))
    (where / STARTED).unlink(missing_ok=True)
    cmd = ["vng", "--run", kernel, "--user", "root", "--force-9p", "--memory", memory, "--cpus", str(cpus),
           "--rwdir", str(where), "--cwd", str(where), "--exec", f"bash {shlex.quote(str(wrapper))}"]
    cmd += [] if kvm else ["--disable-kvm"]
    cmd += ["--verbose"] if verbose else []
    t0 = time.monotonic()
    # QEMU reopens /proc/self/fd/1 and 2 with O_TRUNC: give it pipes, never the caller's files; no stdin
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    pumps = [threading.Thread(target=_pump, args=(s, d), daemon=True)
             for s, d in ((proc.stdout, sys.stdout.buffer), (proc.stderr, sys.stderr.buffer))]
    for t in pumps:
        t.start()
    stopped = None

    def on_signal(signum, frame):  # noqa: ARG001
        nonlocal stopped
        stopped = "signal"
        _stop(proc)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        rc = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        stopped = "timeout"
        _stop(proc)
        rc = proc.returncode
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    for t in pumps:
        t.join(5)
    started = (where / STARTED).exists()
    if stopped == "timeout":
        print(f"vm-run: TIMEOUT after {timeout:.0f} s (VM stopped{'' if started else '; never reached the script'})",
              file=sys.stderr)
        rc = RC_TIMEOUT
    elif stopped == "signal":
        rc = RC_SIGNAL
    elif rc == RC_DIED or rc < 0:
        rc = RC_DIED if started else RC_NO_BOOT
        print(f"vm-run: {'the VM ended during the script' if started else 'the VM never reached the script'} "
              f"(rerun with -v)", file=sys.stderr)
    print(f"vm-run: rc={rc} in {time.monotonic() - t0:.1f} s (kernel {Path(kernel).name}, scratch {where})",
          file=sys.stderr)
    if temporary and not keep and rc == 0:
        shutil.rmtree(where, ignore_errors=True)
    return rc


# ---------------------------------------------------------------- pytest glue
def unavailable_reason(probe: bool = False) -> str | None:
    """None when lab tests can run here, else why not (LAB_SKIP set, a precondition, a failed probe)."""
    if os.environ.get("LAB_SKIP"):
        return "LAB_SKIP is set"
    problems = missing(newest_kernel())
    if problems:
        return "; ".join(problems)
    if probe:
        r = subprocess.run([sys.executable, __file__, "--probe", "-t", "240"], capture_output=True, text=True,
                           timeout=300)
        if r.returncode != 0 or PROBE_OK not in r.stdout:
            return f"VM probe failed (rc {r.returncode}): {(r.stdout + r.stderr).strip().splitlines()[-3:]}"
    return None


class VmRun:
    """A run of this file as a subprocess, started in the background (start_in_vm): the caller goes on
    (the host tests, while the VM runs the lab) and collects it with wait()."""

    def __init__(self, cmd: list[str], env: dict[str, str], timeout: float):
        self.timeout = timeout
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env)
        self._out: tuple[str, str] = ("", "")
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        self._out = self.proc.communicate()

    def wait(self) -> subprocess.CompletedProcess:
        """Its result, once it ends (a VM that cannot start skips the calling test)."""
        self._reader.join(self.timeout + 90)  # vm-run stops the VM at its own -t; this bounds vm-run itself
        if self._reader.is_alive():
            self.stop()
            self._reader.join()
        r = subprocess.CompletedProcess(self.proc.args, self.proc.returncode, *self._out)
        print(r.stdout, r.stderr, sep="")  # shows in pytest's report of a failing test
        if r.returncode in SKIP_CODES:
            import pytest

            pytest.skip(f"lab VM: {SKIP_CODES[r.returncode]}: {r.stderr.strip().splitlines()[-1:]}")
        return r

    def stop(self) -> None:
        """Ends the run early (vm-run stops its VM on SIGTERM)."""
        if self.proc.poll() is None:
            self.proc.terminate()


def start_in_vm(script: str, *args: str, timeout: float = 600, scratch: Path | None = None,
                env: dict[str, str] | None = None) -> VmRun:
    """Start SCRIPT in a fresh VM (this file as a subprocess) and return at once."""
    cmd = [sys.executable, __file__, "-t", str(int(timeout))] + (["-s", str(scratch)] if scratch else [])
    run_env = dict(os.environ)
    for k, v in (env or {}).items():
        run_env[k] = str(v)
        cmd += [] if k.startswith("LAB_") else ["-e", k]
    return VmRun(cmd + [script, *args], run_env, timeout)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="vm-run", description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="report preconditions only, no boot")
    p.add_argument("--probe", action="store_true", help="boot, load the modules, report")
    p.add_argument("-t", "--timeout", type=float, default=float(os.environ.get("LAB_VM_TIMEOUT", 600)))
    p.add_argument("-k", "--kernel", default=os.environ.get("LAB_KERNEL"))
    p.add_argument("-m", "--memory", default=os.environ.get("LAB_VM_MEM", "1G"))
    p.add_argument("-c", "--cpus", type=int, default=int(os.environ.get("LAB_VM_CPUS", 2)))
    p.add_argument("-s", "--scratch", default=os.environ.get("LAB_SCRATCH"),
                   help="host folder writable in the guest (default: a temporary one, removed on success)")
    p.add_argument("-e", "--env", action="append", default=[], metavar="NAME", help="pass this variable in")
    p.add_argument("--modules", default=os.environ.get("LAB_VM_MODULES", ""), help="more modules to load")
    p.add_argument("--keep", action="store_true", help="keep the temporary scratch folder")
    p.add_argument("--kvm", action="store_true", default=os.environ.get("LAB_VM_KVM") == "1",
                   help="use KVM (default TCG: KVM hangs on some hosts)")
    p.add_argument("-v", "--verbose", action="store_true", help="show the guest's boot console")
    p.add_argument("script", nargs="?")
    p.add_argument("args", nargs=argparse.REMAINDER)
    a = p.parse_args(argv)
    if a.check:
        kernel = a.kernel or newest_kernel()
        problems = missing(kernel)
        for problem in problems:
            print(f"vm-run: precondition missing: {problem}", file=sys.stderr)
        if not problems:
            print(f"vm-run: ok: kernel {kernel}, vng {shutil.which('vng')}")
        return RC_PRECONDITION if problems else 0
    script = str(PROBE) if a.probe else a.script
    if not script:
        p.error("a SCRIPT, --check or --probe")
    return run(script, [] if a.probe else a.args, timeout=a.timeout, scratch=a.scratch, env_names=a.env,
               kernel=a.kernel, memory=a.memory, cpus=a.cpus, kvm=a.kvm, verbose=a.verbose, keep=a.keep,
               extra_modules=a.modules.split())


if __name__ == "__main__":
    sys.exit(main())
