"""The plugin contract: third-party helpers load like built-ins, bad ones are blocked."""

from __future__ import annotations

import ast
import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest

import alg
from alg import hookspecs
from alg.errors import PluginError
from alg.plugins import load_plugins

ROOT = Path(__file__).resolve().parents[1]


class EchoHelper(alg.Helper):
    """A test helper: every UDP datagram `PORT n` expects udp receiver -> sender:n."""

    spec = alg.HelperSpec(name="echo", protocols=(alg.UDP,), ports=(7,), classes=(alg.ExpectClass("data", 2, 60),))

    def inspect(self, segment, state):
        if segment.data.startswith(b"PORT "):
            port = int(segment.data[5:].strip())
            return alg.Parsed(len(segment.data), (alg.Expect("data", alg.UDP, segment.receiver, segment.sender,
                                                             None, port),))
        return alg.Parsed(len(segment.data))


class EchoPlugin:
    @alg.hookimpl
    def alg_register_helpers(self, register):
        register(EchoHelper)


def test_every_hook_is_documented():
    specs = [f for name, f in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("alg_")]
    assert specs
    for f in specs:
        assert f.__doc__ and len(f.__doc__.strip()) > 40, f.__name__
        assert f.__name__ in hookspecs.__doc__ or f.__name__ in Path(hookspecs.__file__).read_text()


def test_every_hook_is_exercised_by_this_suite():
    """Each hookspec name appears in a test other than this file's list."""
    text = "".join(p.read_text() for p in Path(__file__).parent.glob("test_*.py"))
    for name, _ in inspect.getmembers(hookspecs, inspect.isfunction):
        if name.startswith("alg_"):
            assert f"def {name}(" in text, name


def test_builtin_helpers_load_through_the_entry_point_group():
    host = load_plugins()
    assert "ftp" in host.helpers
    assert host.origin["ftp"] == "ftp"  # registered under its entry-point name, like any plugin
    assert not host.blocked


def test_helpers_folder_is_not_a_top_level_helpers_module(tmp_path):
    import alg_helpers.ftp
    assert Path(alg_helpers.ftp.__file__).resolve() == ROOT / "helpers" / "ftp.py"
    # what `pip install .` installs: setuptools' own build (the wheel's content and
    # metadata, without needing the `wheel` package), into a temporary folder
    out = tmp_path / "build"
    out.mkdir()
    r = subprocess.run([sys.executable, "-W", "ignore", "-c", "import setuptools; setuptools.setup()", "-q",
                        "egg_info", "-e", str(out), "build_py", "-d", str(out / "lib")],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    installed = {p.name for p in (out / "lib").iterdir()}
    assert installed == {"alg", "alg_helpers"}, installed
    assert (out / "lib" / "alg_helpers" / "ftp.py").exists() and (out / "lib" / "alg" / "py.typed").exists()
    info = out / "alg.egg-info"
    assert (info / "top_level.txt").read_text().split() == ["alg", "alg_helpers"]
    entry_points = (info / "entry_points.txt").read_text()
    assert "= helpers." not in entry_points and "= alg_helpers.ftp" in entry_points
    meta = (info / "PKG-INFO").read_text()
    assert "License: GPL-2.0-or-later" in meta and "License-File: LICENSE" in meta
    licence = (ROOT / "LICENSE").read_text()
    assert "or (at your option) any later version" in licence.splitlines()[0]
    assert "GNU GENERAL PUBLIC LICENSE" in licence and "Version 2, June 1991" in licence


def test_third_party_plugin_registers_and_replays(tmp_path):
    host = load_plugins(extra=[EchoPlugin()])
    assert host.helpers["echo"] is EchoHelper
    from scapy.all import IP, UDP, Raw, wrpcap
    pcap = tmp_path / "echo.pcap"
    wrpcap(str(pcap), [IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=4000, dport=7) / Raw(b"PORT 5000\n"),
                       IP(src="10.0.0.2", dst="10.0.0.1") / UDP(sport=9999, dport=5000) / Raw(b"data")])
    from alg.engine import Engine, make_slots
    from alg.policy import default_policy
    from alg.replay import replay
    policy = default_policy({n: c.spec for n, c in host.helpers.items()})
    engine = Engine(make_slots([policy.helpers["echo"]], host.helpers), track_related=True)
    result = replay(engine, [str(pcap)])
    [e] = result.expectations
    assert (str(e.src), str(e.dst), e.sport, e.dport, e.helper, e.cls) == ("10.0.0.2", "10.0.0.1", None, 5000,
                                                                          "echo", "data")
    assert result.related_flows == 1


def test_expectation_events_reach_observers(tmp_path):
    seen = []

    class Observer:
        @alg.hookimpl
        def alg_expectation_event(self, event):
            seen.append(event.kind)

    host = load_plugins(extra=[Observer()])
    from alg.cli import cmd_replay, build_parser
    args = build_parser().parse_args(["replay", str(ROOT / "tests/pcaps/ftp-zeek_ftp-ipv4/capture.pcap")])
    assert cmd_replay(args, host) == 0
    assert seen.count("created") == 4


def test_add_commands_hook(capsys):
    class Commands:
        @alg.hookimpl
        def alg_add_commands(self, subparsers):
            p = subparsers.add_parser("hello")
            p.set_defaults(func=lambda args, host: print("hello from a plugin") or 0)

    host = load_plugins(extra=[Commands()])
    from alg.cli import build_parser
    args = build_parser(host).parse_args(["hello"])
    assert args.func(args, host) == 0
    assert "hello from a plugin" in capsys.readouterr().out


def test_misspelt_hook_fails_loudly():
    class Typo:
        @alg.hookimpl
        def alg_register_helper(self, register):  # missing "s"
            pass

    with pytest.raises(PluginError, match="alg_register_helper"):
        load_plugins(extra=[Typo()])


@pytest.mark.parametrize("bad_name", ["", "a-name-over-15-chars"])
def test_bad_descriptor_blocks_only_that_plugin(bad_name):
    class Bad(alg.Helper):
        spec = alg.HelperSpec(name=bad_name, protocols=(alg.UDP,), ports=(9,), classes=(alg.ExpectClass("x", 1, 1),))

    class BadPlugin:
        @alg.hookimpl
        def alg_register_helpers(self, register):
            register(Bad)

    host = load_plugins(extra=[BadPlugin()])
    assert "ftp" in host.helpers and bad_name not in host.helpers
    assert any("name" in why for why in host.blocked.values())


def _register(helper_cls):
    class P:
        @alg.hookimpl
        def alg_register_helpers(self, register):
            register(helper_cls)
    return load_plugins(extra=[P()])


def test_more_classes_or_a_larger_max_than_the_kernel_takes_is_blocked():
    # nfnetlink_cthelper: NF_CT_MAX_EXPECT_CLASSES (4) classes, max_expected <= NF_CT_EXPECT_MAX_CNT (255)
    five = tuple(alg.ExpectClass(f"c{i}", 1, 1) for i in range(5))

    class Five(alg.Helper):
        spec = alg.HelperSpec(name="five", protocols=(alg.UDP,), ports=(9,), classes=five)

    class Big(alg.Helper):
        spec = alg.HelperSpec(name="big", protocols=(alg.UDP,), ports=(9,), classes=(alg.ExpectClass("x", 256, 1),))

    class Four(alg.Helper):
        spec = alg.HelperSpec(name="four", protocols=(alg.UDP,), ports=(9,), classes=five[:3] + (
            alg.ExpectClass("c3", 255, 1),))

    for cls, why in ((Five, "at most 4 expectation classes"), (Big, "max_expected 1-255")):
        host = _register(cls)
        assert cls.spec.name not in host.helpers
        assert any(why in w for w in host.blocked.values()), host.blocked
    assert "four" in _register(Four).helpers


def test_name_clash_with_a_builtin_is_blocked():
    class Ftp2(alg.Helper):
        spec = alg.HelperSpec(name="ftp", protocols=(alg.TCP,), ports=(21,), classes=(alg.ExpectClass("d", 1, 1),))

    class Clash:
        @alg.hookimpl
        def alg_register_helpers(self, register):
            register(Ftp2)

    host = load_plugins(extra=[Clash()])
    assert host.helpers["ftp"] is not Ftp2
    assert any("already registered" in why for why in host.blocked.values())


def test_block_and_pick_plugins_by_environment():
    env = {"ALG_BLOCK_PLUGINS": "ftp", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "alg", "helpers", "--format", "json"], capture_output=True,
                         text=True, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "ftp" not in {h["name"] for h in json.loads(out.stdout)}
    env = {"ALG_PLUGINS": "ftp", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "alg", "helpers", "--format", "json"], capture_output=True,
                         text=True, env=env, cwd=ROOT)
    assert {h["name"] for h in json.loads(out.stdout)} == {"ftp"}


def test_layers_point_one_way():
    """Only alg/kernel/ imports netfilterqueue and pyroute2; helpers use only alg's public API;
    the pure core imports no I/O library."""
    io_libs = {"netfilterqueue", "pyroute2", "socket", "scapy", "subprocess"}
    for path in list((ROOT / "alg").rglob("*.py")) + list((ROOT / "helpers").rglob("*.py")):
        rel = path.relative_to(ROOT)
        tree = ast.parse(path.read_text())
        mods = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                mods.add(node.module.split(".")[0])
        if rel.parts[0] == "helpers":
            assert not mods & (io_libs | {"time", "os", "threading"}), rel
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("alg."):
                    raise AssertionError(f"{rel}: helpers import only `alg` itself, not {node.module}")
        elif "kernel" not in rel.parts:
            assert not mods & {"netfilterqueue", "pyroute2", "scapy"}, rel


def _helper(name: str, ports=(9,), queue=None, cls_name="x"):
    return type(f"H_{name}", (alg.Helper,), {"spec": alg.HelperSpec(
        name=name, protocols=(alg.UDP,), ports=ports, classes=(alg.ExpectClass(cls_name, 1, 1),), queue=queue)})


def test_plugin_queues_are_stable_whatever_else_is_installed():
    from alg.policy import PLUGIN_QUEUES, default_policy
    a, b = _helper("tftp2"), _helper("aaa")  # "aaa" sorts first: it must not shift tftp2's queue
    alone = load_plugins(extra=[_plugin(a)])
    both = load_plugins(extra=[_plugin(b), _plugin(a)])
    q = default_policy({n: c.spec for n, c in alone.helpers.items()}).helpers["tftp2"].queue
    assert q in PLUGIN_QUEUES
    assert default_policy({n: c.spec for n, c in both.helpers.items()}).helpers["tftp2"].queue == q
    assert default_policy({n: c.spec for n, c in both.helpers.items()}).helpers["ftp"].queue == 20
    declared = load_plugins(extra=[_plugin(_helper("mine", queue=300))])
    assert default_policy({n: c.spec for n, c in declared.helpers.items()}).helpers["mine"].queue == 300


def test_a_plugin_on_a_queue_already_taken_is_blocked():
    host = load_plugins(extra=[_plugin(_helper("late", queue=20))])  # ftp's
    assert "late" not in host.helpers and "ftp" in host.helpers
    [why] = host.blocked.values()
    assert "default queue 20 is already helper ftp's" in why and "HelperSpec(queue=...)" in why
    assert any("queue must be an NFQUEUE number" in w
               for w in load_plugins(extra=[_plugin(_helper("neg", queue=-1))]).blocked.values())


def _plugin(cls):
    class P:
        @alg.hookimpl
        def alg_register_helpers(self, register):
            register(cls)
    P.__name__ = f"plugin_{cls.spec.name}"
    return P()


def test_helpers_say_where_they_come_from(capsys):
    host = load_plugins(extra=[_plugin(EchoHelper)])
    assert str(host.source("ftp")) == "built-in" and host.source("ftp").distribution == "alg"
    assert str(host.source("echo")) == "registered at run time (plugin_echo)"
    from alg.cli import build_parser, cmd_helpers
    assert cmd_helpers(build_parser().parse_args(["helpers", "--format", "json"]), host) == 0
    info = {h["name"]: h for h in json.loads(capsys.readouterr().out)}
    assert info["ftp"]["source"]["builtin"] and info["ftp"]["source"]["version"] == alg.__version__
    assert info["echo"]["source"] == {"plugin": "plugin_echo", "builtin": False, "distribution": None, "version": None}


def test_helpers_warn_of_two_helpers_on_one_port(capsys):
    host = load_plugins(extra=[_plugin(_helper("echo2", ports=(7,))), _plugin(EchoHelper)])
    from alg.cli import build_parser, cmd_helpers
    assert cmd_helpers(build_parser().parse_args(["helpers"]), host) == 0
    out = capsys.readouterr().out
    assert "warning: udp/7 is claimed by helpers echo, echo2: only one can take it" in out


def test_registering_an_installed_plugin_again_is_a_plugin_error():
    import alg_helpers.ftp
    with pytest.raises(PluginError, match=r"already loaded as 'ftp'"):
        load_plugins(extra=[alg_helpers.ftp])
    host = load_plugins()
    with pytest.raises(PluginError, match="already loaded"):
        host.register(alg_helpers.ftp)


def test_plugin_errors_name_the_valid_hooks():
    class Typo:
        @alg.hookimpl
        def alg_register_helper(self, register):
            pass

    with pytest.raises(PluginError) as err:
        load_plugins(extra=[Typo()])
    assert "valid hooks: alg_add_commands, alg_expectation_event, alg_register_helpers" in str(err.value)


def test_harness_and_engine_name_the_valid_classes(caplog):
    from alg.testing import feed, flow

    class Wrong(alg.Helper):
        spec = alg.HelperSpec(name="wrong", protocols=(alg.UDP,), ports=(9,),
                              classes=(alg.ExpectClass("data", 1, 9), alg.ExpectClass("ctl", 1, 9)))

        def inspect(self, segment, state):
            return alg.Parsed(len(segment.data), (alg.Expect("media", alg.UDP, None, segment.sender, None, 5),))

    f = flow("udp", "10.0.0.1", 1000, "10.0.0.2", 9)
    with pytest.raises(AssertionError, match=r"class 'media' is not one of this helper's classes \['data', 'ctl'\]"):
        feed(Wrong(), [(alg.Direction.ORIGINAL, b"x")], f)
    with pytest.raises(AssertionError, match="neither alg.TCP"):
        feed(type("W2", (Wrong,), {"inspect": lambda self, s, st: alg.Parsed(1, (
            alg.Expect("data", 99, None, s.sender, None, 5),))})(), [(alg.Direction.ORIGINAL, b"x")], f)
    from alg.engine import Engine, make_slots
    from alg.policy import default_helper_policy
    from scapy.all import IP, UDP, Raw
    from alg.decode import decode_ip
    engine = Engine(make_slots([default_helper_policy(Wrong.spec)], {"wrong": Wrong}))
    pkt = bytes(IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1000, dport=9) / Raw(b"x"))
    with caplog.at_level("ERROR"):
        engine.process(decode_ip(pkt), 0.0)
    assert "class 'media' is not one of this helper's classes ['data', 'ctl']" in caplog.text


def test_the_plugin_guide_documents_every_hook_and_public_name():
    guide = (ROOT / "docs" / "plugins.md").read_text()
    hooks = [n for n, _ in inspect.getmembers(hookspecs, inspect.isfunction) if n.startswith("alg_")]
    missing = [n for n in hooks + list(alg.__all__) if f"`{n}" not in guide and f"alg.{n}" not in guide
               and f"{n}`" not in guide]
    assert missing == []
    from alg import testing
    assert all(f"`{n}" in guide for n in ("feed", "flow", "split_variants", "check_outcome", "check_case",
                                          "case_dirs", "replay_case") if hasattr(testing, n))
    assert "docs/plugins.md" in (ROOT / "README.md").read_text()  # linked from the README


def test_cli_start_up_imports_only_what_the_command_needs():
    """`alg status` (and rules, doctor) start without the engine and the rules: a
    Python start with alg's imports is what a lab scenario waits for, seconds each under TCG."""
    def imported(*args: str) -> set[str]:
        r = subprocess.run([sys.executable, "-X", "importtime", *args], capture_output=True, text=True, cwd=ROOT)
        assert r.returncode == 0, r.stderr[-2000:]
        return {ln.rsplit("|", 1)[-1].strip() for ln in r.stderr.splitlines() if ln.startswith("import time:")}

    mods = imported("-m", "alg", "status", "--help") - imported("-c", "pass")  # what site imports aside
    assert {"alg.cli", "alg.plugins", "alg.policy"} <= mods
    assert not mods & {"alg.engine", "alg.decode", "alg.flows", "alg.expect", "alg.rules", "subprocess"}
