"""Run a Python module under a sampling profiler, and print where its CPU time went.

    python benchmarks/sample_profile.py OUT MODULE [ARG...]   (as `python -m MODULE ARG...`)
    python benchmarks/sample_profile.py OUT SCRIPT.py [ARG...]

Every INTERVAL seconds of the process's CPU time (ITIMER_PROF: user and system time, so a
system call's cost is charged to the Python line that made it), a signal handler records the
interrupted Python stack. At exit, OUT gets the functions most often on top of the stack (their
own time) and most often anywhere on it (their cumulative time), as shares of all samples.

Why not cProfile: it reads the clock twice per call, and in the lab VM the clock source is the
HPET, whose reads are system calls (1.5 us each, benchmarks/lab_ftp_load.sh prints it). Under
cProfile alg spent 95% of its CPU time in the kernel, and the shares of its functions said more
about the profiler than about alg. Sampling costs one stack walk every INTERVAL (the kernel
checks CPU timers at its tick: with HZ=250 samples come at most every 4 ms).
"""

from __future__ import annotations

import atexit
import os
import runpy
import signal
import sys
from collections import Counter
from types import FrameType

INTERVAL = 0.001  # CPU seconds between samples (the kernel's tick bounds it from below)
TOP = 40


def _where(frame: FrameType) -> str:
    code = frame.f_code
    return f"{os.path.basename(code.co_filename)}:{code.co_firstlineno}({code.co_name})"


class Sampler:
    def __init__(self) -> None:
        self.own: Counter[str] = Counter()
        self.cumulative: Counter[str] = Counter()
        self.samples = 0

    def tick(self, _signum: int, frame: FrameType | None) -> None:
        if frame is None:
            return
        self.samples += 1
        self.own[_where(frame)] += 1
        seen = set()
        f: FrameType | None = frame
        while f is not None:  # (a recursive function counted once a sample)
            seen.add(_where(f))
            f = f.f_back
        self.cumulative.update(seen)

    def report(self, top: int = TOP) -> str:
        n = max(self.samples, 1)
        lines = [f"{self.samples} samples of {INTERVAL * 1e3:g} ms of CPU time or more; share of samples, own "
                 "(on top of the stack) and cumulative (anywhere on it):"]
        for name, own in self.own.most_common(top):
            lines.append(f"  {100 * own / n:5.1f}% {100 * self.cumulative[name] / n:5.1f}%  {name}")
        lines.append("cumulative only:")
        for name, cum in self.cumulative.most_common(top):
            lines.append(f"  {100 * cum / n:5.1f}%  {name}")
        return "\n".join(lines) + "\n"


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    out, module = sys.argv[1], sys.argv[2]
    sampler = Sampler()

    def write() -> None:
        signal.setitimer(signal.ITIMER_PROF, 0)  # (a sample taken while the counts are read changes them)
        with open(out, "w") as f:
            f.write(sampler.report())

    atexit.register(write)
    signal.signal(signal.SIGPROF, sampler.tick)
    signal.setitimer(signal.ITIMER_PROF, INTERVAL, INTERVAL)
    sys.argv = [module, *sys.argv[3:]]
    if module.endswith(".py"):
        sys.path.insert(0, os.path.dirname(os.path.abspath(module)))
        runpy.run_path(module, run_name="__main__")
    else:
        runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
