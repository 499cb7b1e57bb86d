"""The runtime needs no C compiler: scapy and NetfilterQueue are test-only, and the replay path runs without them."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMPILED_OR_TEST_ONLY = ("scapy", "netfilterqueue")

# refuse the imports, as on a machine where only the runtime dependencies are installed
BLOCK = """
import sys
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0].lower() in {blocked!r}:
            raise ImportError("not installed: " + name)
sys.meta_path.insert(0, Refuse())
from alg.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_runtime_dependencies_are_pure_python():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {d.split(">")[0].split("=")[0].split("[")[0].strip().lower() for d in deps}
    assert names == {"pyroute2", "pluggy"}, names  # both pure-Python wheels
    assert not names & set(COMPILED_OR_TEST_ONLY)


def test_replay_helpers_policy_and_rules_run_without_scapy_or_netfilterqueue():
    code = BLOCK.format(blocked=set(COMPILED_OR_TEST_ONLY))
    pcap = ROOT / "tests/pcaps/ftp-ndpi_ftp/capture.pcap"
    for args in (["replay", "--format", "json", str(pcap)], ["helpers"], ["policy", "ftp"], ["rules"],
                 ["rules", "--nft"]):
        r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT)
        assert r.returncode == 0, (args, r.stderr[-2000:])
        assert r.stdout, args
    r = subprocess.run([sys.executable, "-c", code, "replay", "--format", "json", str(pcap)], capture_output=True,
                       text=True, cwd=ROOT)
    assert r.stdout.count('"helper": "ftp"') == 2
