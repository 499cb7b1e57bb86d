"""`alg new-helper`: the package it writes installs, its tests pass, and alg sees it as an installed plugin.

The package is pip-installed into a throw-away venv that sees this environment's packages (alg, pytest,
setuptools) through a .pth file: --no-deps and --no-build-isolation keep it offline and fast."""

from __future__ import annotations

import json
import site
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from alg.scaffold import generate


def run(*cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300, **kw)


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory):
    """A venv with two generated plugins installed: (its python, the folder holding the packages)."""
    root = tmp_path_factory.mktemp("plugins")
    env = root / "venv"
    venv.create(env, with_pip=False)
    py = env / "bin" / "python"
    purelib = run(py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip()
    here = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (Path(purelib) / "outer.pth").write_text("".join(f"import site; site.addsitedir({p!r})\n" for p in here))
    for name, port in (("toyp", 7777), ("aaatoy", 7778)):
        pkg = generate(name, port, str(root))
        r = run(py, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index", pkg)
        assert r.returncode == 0, r.stderr[-3000:]
    return py, root


def test_generated_package_passes_its_own_tests(plugin_env):
    py, root = plugin_env
    r = run(py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests", cwd=root / "alg-toyp")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "7 passed" in r.stdout, r.stdout  # 3 unit tests, 3 bad ports, the policy, the capture case


def test_installed_plugin_shows_its_distribution_and_a_stable_queue(plugin_env):
    py, _ = plugin_env
    r = run(py, "-m", "alg", "helpers", "--format", "json")
    assert r.returncode == 0, r.stderr
    info = {h["name"]: h for h in json.loads(r.stdout)}
    assert info["toyp"]["source"] == {"plugin": "toyp", "builtin": False, "distribution": "alg-toyp",
                                      "version": "0.1.0"}
    assert info["ftp"]["source"]["builtin"] and info["ftp"]["queue"] == 20
    # the queue does not depend on the other plugin: the same as when alone (ALG_PLUGINS picks the entry points)
    alone = run(py, "-m", "alg", "helpers", "--format", "json", env={"ALG_PLUGINS": "toyp", "PATH": "/usr/bin"})
    assert json.loads(alone.stdout)[0]["queue"] == info["toyp"]["queue"]
    from alg.policy import PLUGIN_QUEUES
    assert info["toyp"]["queue"] in PLUGIN_QUEUES and info["aaatoy"]["queue"] in PLUGIN_QUEUES
    text = run(py, "-m", "alg", "helpers").stdout
    assert "[alg-toyp 0.1.0]" in text and "[built-in]" in text


def test_installed_plugin_replays_and_prints_its_policy(plugin_env):
    py, root = plugin_env
    case = root / "alg-toyp" / "tests" / "cases" / "toyp-example"
    r = run(py, "-m", "alg", "replay", "--format", "json", case / "capture.pcap")
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert r.returncode == 0 and [row.pop("file") for row in rows] == [str(case / "capture.pcap")]
    assert rows == [json.loads(line) for line in (case / "expected.jsonl").read_text().splitlines()]
    pol = run(py, "-m", "alg", "policy", "toyp")
    assert pol.returncode == 0 and "ports = [7777]" in pol.stdout and "(alg-toyp 0.1.0)" in pol.stdout


def test_passing_an_installed_plugin_again_is_a_plugin_error(plugin_env):
    py, _ = plugin_env
    code = ("import alg_toyp\nfrom alg.plugins import load_plugins\nfrom alg.errors import PluginError\n"
            "try:\n    load_plugins(extra=[alg_toyp])\nexcept PluginError as e:\n    print('PluginError', e)\n")
    r = run(py, "-c", code)
    assert r.stdout.startswith("PluginError") and "already loaded as 'toyp'" in r.stdout, r.stdout + r.stderr


def test_new_helper_refuses_bad_names_and_existing_ones(tmp_path):
    for args in (["Bad-Name"], ["ftp"], ["x" * 16]):
        r = run(sys.executable, "-m", "alg", "new-helper", *args, "--dir", tmp_path)
        assert r.returncode == 2 and r.stderr, args
    assert list(tmp_path.iterdir()) == []
