"""packaging/alg.service: the sandbox a netlink helper daemon allows, paths where pip puts alg, a unit systemd reads."""

from __future__ import annotations

import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

from alg.daemon import STATE_DIR
from alg.policy import CorePolicy

UNIT = Path(__file__).resolve().parents[1] / "packaging" / "alg.service"


def parse(text: str) -> dict[str, dict[str, list[str]]]:
    """systemd's unit syntax: [Section], KEY=VALUE (a key may repeat), # and ; comments."""
    out: dict[str, dict[str, list[str]]] = {}
    section = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = out.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        assert section is not None and _, line
        section.setdefault(key.strip(), []).append(value.strip())
    return out


@pytest.fixture(scope="module")
def service():
    return parse(UNIT.read_text())["Service"]


def test_sandbox_keeps_only_what_the_daemon_needs(service):
    assert service["CapabilityBoundingSet"] == ["CAP_NET_ADMIN"]  # netlink to netfilter; no other privilege
    assert set(service["RestrictAddressFamilies"][0].split()) == {"AF_NETLINK", "AF_UNIX"}
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "PrivateTmp": "yes",
                       "ProtectHome": "yes", "PrivateDevices": "yes", "ProtectKernelModules": "yes",
                       "ProtectKernelTunables": "yes", "RestrictNamespaces": "yes"}.items():
        assert service[key] == [value], key


def test_the_daemon_tells_systemd_when_it_is_ready_and_that_it_lives(service):
    # alg.daemon.systemd.Notifier sends READY=1 after start and WATCHDOG=1 from the loop
    # (tests/test_daemon_path.py checks what it sends)
    assert service["Type"] == ["notify"] and service["NotifyAccess"] == ["main"]
    assert int(service["WatchdogSec"][0]) >= 10  # a loop turn is never near it (select wakes at half)
    assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    # the supervisor of [core] workers > 1 stops its workers after removing the helpers (alg.daemon.pool)
    assert service["KillMode"] == ["mixed"]


def test_the_daemon_writes_only_where_the_unit_lets_it(service):
    writable = [Path("/run") / d for d in service["RuntimeDirectory"]] + [Path(p) for p in service["ReadWritePaths"]]
    for path in (Path(STATE_DIR), Path(CorePolicy().status_socket).parent):
        assert any(path == w or w in path.parents for w in writable), path


def test_commands_are_where_pip_puts_the_console_script(service):
    scripts = sysconfig.get_path("scripts", "posix_prefix", {"base": "/usr/local", "platbase": "/usr/local"})
    alg = f"{scripts}/alg"
    commands = [c.lstrip("-@:+!") for key in ("ExecStartPre", "ExecStart", "ExecStopPost") for c in service[key]]
    assert commands and all(c.split()[0] == alg for c in commands), commands
    assert any("run --policy /etc/alg" in c for c in service["ExecStart"])
    assert "systemctl edit" in UNIT.read_text()  # and it says what to do when alg is installed elsewhere


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_systemd_reads_the_unit_without_complaint():
    r = subprocess.run(["systemd-analyze", "verify", str(UNIT)], capture_output=True, text=True, timeout=60)
    complaints = [line for line in (r.stdout + r.stderr).splitlines()
                  if line.strip() and "/usr/local/bin/alg is not executable" not in line]  # (not installed here)
    assert complaints == []
