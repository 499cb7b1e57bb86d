"""The lab's NAT gateway (tools/lab/nat-netns.sh) and the kernel-reference phases of
tests/lab/scenarios/nat.sh, on the host kernel (network namespaces; its nf_nat_ftp and nf_nat_sip).
The alg phases need the lab VM's cthelper (tests/test_lab.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAB = ROOT / "tools" / "lab"
pytestmark = pytest.mark.kernel


def _names(tag: str) -> dict[str, str]:
    return {"LAB_NS_CLIENT": f"{tag}-p", "LAB_NS_FW": f"{tag}-g", "LAB_NS_SERVER": f"{tag}-o"}


def test_the_public_side_reaches_the_private_one_only_through_the_gateways_mappings(kernel_ok):
    tag = f"anat{os.getpid() % 100000}"
    py = sys.executable
    script = f"""
source {LAB / 'netns.sh'}; source {LAB / 'nat-netns.sh'}
lab_nat_up --forward tcp/2121 || exit 1
trap lab_nat_down EXIT
lab_pub ip route get $LAB_PRIV4 >/dev/null 2>&1 && echo public-routes-to-private
# what each side sees as its peer's address
serve='import socket, sys; s = socket.create_server(("", int(sys.argv[1]))); print(sys.argv[2], s.accept()[1][0])'
dial='import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])).close()'
lab_pub {py} -c "$serve" 2020 public-sees &
lab_priv {py} -c "$serve" 2121 private-sees &
for _ in $(seq 300); do  # both listening (a loaded machine starts Python slowly)
    lab_pub ss -Hltn 'sport = :2020' | grep -q . && lab_priv ss -Hltn 'sport = :2121' | grep -q . && break
    sleep 0.1
done
lab_priv {py} -c "$dial" 203.0.113.20 2020 3
lab_pub {py} -c "$dial" 203.0.113.1 2121 3
lab_pub {py} -c "$dial" 203.0.113.1 2122 1 2>/dev/null || echo unforwarded-dropped
wait
lab_nat_source SNAT && lab_fw iptables -t nat -S POSTROUTING | grep -q 'SNAT --to-source 203.0.113.1' && echo snat
echo "counts out=$(lab_nat_count out) fwd=$(lab_nat_count fwd-tcp-2121) in-drop=$(lab_nat_count in-drop)"
"""
    env = {**os.environ, **_names(tag)}
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60, env=env)
    out = r.stdout
    assert "public-routes-to-private" not in out, out + r.stderr
    assert "public-sees 203.0.113.1" in out and "private-sees 203.0.113.20" in out, out + r.stderr
    assert "unforwarded-dropped" in out and "snat" in out, out + r.stderr
    counts = dict(kv.split("=") for kv in out.split("counts ")[1].split())
    assert int(counts["out"]) == 1 and int(counts["fwd"]) == 1 and int(counts["in-drop"]) >= 1, out
    assert f"{tag}-" not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


@pytest.mark.skipif(not (shutil.which("vsftpd") and shutil.which("sipp") and shutil.which("tcpdump")),
                    reason="needs vsftpd, sipp and tcpdump")
def test_the_kernels_nat_helpers_pass_the_scenarios_reference_phases(kernel_ok, tmp_path):
    """Phases (a) and (b) with 2 phones: the kernel's helpers are the reference alg is held to, so the
    scenario must find them passing (and its checks must be satisfiable) before it judges alg."""
    tag = f"knat{os.getpid() % 100000}"
    env = {**os.environ, **_names(tag), "ALG_ROOT": str(ROOT), "ALG": str(ROOT / ".venv" / "bin" / "alg"),
           "LAB_DIR": str(LAB), "LAB_SCRATCH": str(tmp_path), "LAB_RUNDIR": str(tmp_path / "run"),
           "LAB_HOST_PYTHON": sys.executable, "NAT_PHASES": "kernel", "PHONES": "2", "NAT_HOLD_MS": "6000"}
    r = subprocess.run(["bash", str(ROOT / "tests" / "lab" / "scenarios" / "nat.sh")], capture_output=True,
                       text=True, timeout=240, env=env)
    out = r.stdout
    assert r.returncode == 0 and "FAIL" not in out, out + r.stderr
    assert out.count("PASS kernel ftp") == 3 and out.count("PASS kernel sip") == 4, out
    assert (tmp_path / "nat" / "ftp-kernel.pcap").stat().st_size > 0
    assert f"{tag}-" not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
