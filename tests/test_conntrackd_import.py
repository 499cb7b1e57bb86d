"""`alg import-conntrackd`: conntrackd.conf Helper sections (tests/conntrackd/) become alg policy files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from alg.conntrackd import convert
from alg.plugins import load_plugins
from alg.policy import load_policy

HERE = Path(__file__).parent / "conntrackd"


@pytest.fixture(scope="module")
def specs():
    return {n: c.spec for n, c in load_plugins().helpers.items()}


def lines_with(path: Path, text: str) -> list[int]:
    return [n for n, line in enumerate(path.read_text().splitlines(), 1) if text in line]


def alg_import(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "alg", "import-conntrackd", *map(str, args)], capture_output=True,
                          text=True)


@pytest.mark.parametrize("conf, queues", [("lab-anchor.conf", {"rpc": 1, "ftp": 0}), ("manual-ftp.conf", {"ftp": 5})])
def test_whole_files_convert_and_load(tmp_path, specs, conf, queues):
    r = alg_import(HERE / conf, "-o", tmp_path)
    assert r.returncode == 0, r.stderr
    policy = load_policy([str(tmp_path)], specs, only_listed=True)
    assert {n: hp.queue for n, hp in policy.helpers.items()} == queues
    for hp in policy.helpers.values():
        [cls] = hp.classes
        assert (cls.max_expected, cls.timeout) == (1, 300)
        assert hp.families == (4,)  # `inet` only
    if conf == "lab-anchor.conf":
        assert policy.helpers["rpc"].protocols == (17,) and policy.helpers["rpc"].queue_len == 10240
        assert "section General is not about helpers" in r.stderr
    else:
        assert policy.helpers["ftp"].queue_len == 1024  # no QueueLen: alg's default


def test_the_conntrack_tools_example_maps_all_but_ssdps_single_policy(tmp_path, specs):
    path = HERE / "helper-example.conf"
    r = alg_import(path, "-o", tmp_path)
    ssdp_policies = lines_with(path, "Policy ssdp")
    assert r.returncode == 2 and not list(tmp_path.iterdir())  # refused: nothing written
    refused = [line for line in r.stderr.splitlines() if line.startswith("refused: ")]
    assert refused == [f"refused: {path}:{n}: ssdp: Policy ssdp: alg's ssdp has the classes search, location, "
                       f"callback, each with its own ExpectMax (name one)" for n in ssdp_policies]
    # --partial writes the rest
    r = alg_import(path, "-o", tmp_path, "--partial")
    assert r.returncode == 2
    policy = load_policy([str(tmp_path)], specs, only_listed=True)
    assert sorted(policy.helpers) == ["dhcpv6", "ftp", "mdns", "rpc", "slp", "tns"]
    rpc = policy.helpers["rpc"]
    assert (set(rpc.protocols), rpc.queue) == ({6, 17}, 1)  # tcp on 1 and udp on 2: alg serves rpc on 1
    [udp_queue] = lines_with(path, "QueueNum 2")
    assert f"{path}:{udp_queue}: rpc inet udp: QueueNum 2 differs" in r.stderr
    assert policy.helpers["dhcpv6"].families == (6,)
    mdns, slp = policy.helpers["mdns"], policy.helpers["slp"]  # one-class helpers: Policy NAME is that class
    assert (mdns.classes[0].max_expected, mdns.classes[0].timeout, mdns.queue) == (8, 30, 5)
    assert (slp.classes[0].max_expected, slp.classes[0].timeout) == (8, 16)
    assert "Setup: alg registers its helpers itself" in r.stderr


@pytest.mark.parametrize("text, line, message", [
    ("Helper {\n Type rtsp inet tcp {\n QueueNum 1\n }\n}\n", 2, "alg has no helper 'rtsp'"),
    ("Helper {\n Type ftp inet udp {\n }\n}\n", 2, "layer 4 'udp' is not one alg's ftp serves (tcp)"),
    ("Helper {\n Type dhcpv6 inet udp {\n }\n}\n", 2, "layer 3 'inet' is not one alg's dhcpv6 serves (inet6)"),
    ("Helper {\n Type ftp inet tcp {\n  QueueSize 5\n }\n}\n", 3, "QueueSize: not a Type keyword"),
    ("Helper {\n Type ftp inet tcp {\n  Policy ftp {\n   ExpectMax 300\n  }\n }\n}\n", 4,
     "ExpectMax 300: alg takes 1 to 255"),
    ("Helper {\n Type ftp inet tcp {\n  QueueNum many\n }\n}\n", 3, "QueueNum takes one number"),
    ("Helper {\n Type ftp inet tcp {\n  QueueNum 1\n}\n", 1, "this block is never closed"),
    ("Helper {\n}\n}\n", 3, "'}' closes no block"),
    ("General {\n}\n", 1, "no Helper section"),
    ("Helper {\n Type rpc inet tcp {\n  Policy rpc {\n   ExpectMax 1\n  }\n }\n"
     " Type rpc inet udp {\n  Policy rpc {\n   ExpectMax 2\n  }\n }\n}\n", 8,
     "Policy rpc (2/300 s) differs from line 3's (1/300 s): alg has one policy per helper"),
])
def test_what_cannot_be_mapped_is_refused_with_its_line(specs, text, line, message):
    result = convert(text, "c.conf", specs)
    assert any(r.startswith(f"c.conf:{line}: ") and message in r for r in result.refusals), result.refusals


def test_printed_files_without_output_dir():
    r = alg_import(HERE / "manual-ftp.conf")
    assert r.returncode == 0 and "queue = 5" in r.stdout and r.stdout.startswith("# imported from conntrackd.conf")
    assert alg_import(HERE / "nosuch.conf").returncode == 2
