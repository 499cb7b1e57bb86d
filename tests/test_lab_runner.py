"""The lab VM runner and network carried in this repository (tools/lab), without booting the VM."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAB = ROOT / "tools" / "lab"
sys.path.insert(0, str(LAB))
import labvm as vm  # noqa: E402

MACHINE_PATHS = ("/" + "work/", "shared" + "/lab")  # (spelt apart: this file is code too)
CODE_SUFFIXES = {".py", ".sh", ".toml", ".service", ".cfg", ".ini"}


def test_check_says_what_is_missing_or_ok():
    r = subprocess.run([str(LAB / "vm-run"), "--check"], capture_output=True, text=True, timeout=60)
    problems = vm.missing(vm.newest_kernel())
    assert r.returncode == (vm.RC_PRECONDITION if problems else 0), r.stderr
    assert ("vm-run: ok: kernel /boot/vmlinuz-" in r.stdout) != bool(problems)
    assert all(p in r.stderr for p in problems)


def test_guest_wrapper_sets_the_environment_loads_modules_and_runs_the_script(tmp_path):
    script = tmp_path / "s.sh"
    script.write_text('echo "args:$1|$2"; echo "in_vm:$LAB_IN_VM scratch:$LAB_SCRATCH extra:$LAB_X '
                      'py:$LAB_HOST_PYTHON pwd:$PWD"; exit 7\n')
    text = vm.guest_wrapper(str(script), ["a b", "c'd"], tmp_path, {"LAB_X": "x y"}, ["nosuchmodule_alg"])
    assert 'modprobe "$m"' in text and "nosuchmodule_alg" in text
    # on the host, without the module list (modprobe would fail here: that is the exit status vm-run reports)
    failing = subprocess.run(["bash", "-c", text], capture_output=True, text=True, cwd=tmp_path)
    assert failing.returncode == vm.RC_MODULE and "modprobe nosuchmodule_alg failed" in failing.stderr
    (tmp_path / vm.STARTED).unlink()
    text = vm.guest_wrapper(str(script), ["a b", "c'd"], tmp_path, {"LAB_X": "x y"}, [])
    r = subprocess.run(["bash", "-c", text.replace("/run/lab", str(tmp_path / "run"))], capture_output=True,
                       text=True, cwd=tmp_path)
    assert r.returncode == 7 and (tmp_path / vm.STARTED).exists()
    assert "args:a b|c'd" in r.stdout
    py, cwd = os.path.realpath(sys.executable), os.getcwd()  # the guest starts where the caller is
    assert f"in_vm:1 scratch:{tmp_path} extra:x y py:{py} pwd:{cwd}" in r.stdout


def test_no_code_names_a_path_of_one_machine():
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], capture_output=True, text=True,
                           cwd=ROOT).stdout.split()
    code = [f for f in files if Path(f).suffix in CODE_SUFFIXES or f in ("dev", ".ci/run", "tools/lab/vm-run")]
    assert "dev" in code and "tests/conftest.py" in code
    offenders = [f for f in code if (ROOT / f).is_file() and any(
        s in (ROOT / f).read_text(errors="replace") for s in MACHINE_PATHS)]
    assert offenders == []


@pytest.mark.kernel
def test_the_lab_network_passes_control_ports_and_drops_the_rest(kernel_ok):
    tag = f"alr{os.getpid() % 100000}"
    script = f"""
LAB_NS_CLIENT={tag}-c LAB_NS_FW={tag}-f LAB_NS_SERVER={tag}-s
source {LAB / 'netns.sh'}
lab_net_up tcp/2021 || exit 1
trap lab_net_down EXIT
lab_srv {sys.executable} -c 'import socket; s = socket.create_server(("0.0.0.0", 2021)); s.accept()[0].close()' &
for _ in $(seq 300); do lab_srv ss -Hltn 'sport = :2021' | grep -q . && break; sleep 0.1; done
lab_cli {sys.executable} -c 'import socket; socket.create_connection(("10.0.2.2", 2021), timeout=3).close()' \\
    && echo control-ok
lab_cli {sys.executable} -c 'import socket; socket.create_connection(("10.0.2.2", 2022), timeout=1)' 2>/dev/null \\
    || echo other-dropped
echo "counts ctl=$(lab_fw_count ctl-tcp-2021 4) drop=$(lab_fw_count drop 4)"
"""
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    assert "control-ok" in r.stdout and "other-dropped" in r.stdout, r.stdout + r.stderr
    counts = dict(kv.split("=") for kv in r.stdout.split("counts ")[1].split())
    assert int(counts["ctl"]) == 1 and int(counts["drop"]) >= 1, r.stdout
    assert f"{tag}-" not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
