"""Policy files: defaults, overrides, and errors that name file, line and key (exit 2)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from alg.cli import main
from alg.errors import ConfigError
from alg.plugins import load_plugins
from alg.policy import CorePolicy, default_helper_policy, load_policy

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def specs():
    host = load_plugins()
    return {n: c.spec for n, c in host.helpers.items()}


def write(tmp_path: Path, text: str, name: str = "ftp.toml") -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_shipped_policies_equal_the_helpers_defaults(specs):
    """policies/*.toml document the defaults; they must not drift from the code."""
    policy = load_policy([str(ROOT / "policies")], specs, only_listed=True)
    shipped = {p.stem for p in (ROOT / "policies").glob("*.toml")} - {"alg"}
    assert shipped <= set(specs)
    for name in shipped:
        hp = policy.helpers[name]
        want = default_helper_policy(specs[name])
        assert (hp.classes, hp.ports, hp.protocols, hp.families, dict(hp.options), hp.queue, hp.max_buffer) == (
            want.classes, want.ports, want.protocols, want.families, dict(want.options), want.queue,
            want.max_buffer), name


def test_override_class_and_option(tmp_path, specs):
    path = write(tmp_path, 'helper = "ftp"\nports = [21, 2121]\n[classes.ftp]\nexpect_max = 3\n'
                           '[options]\nloose = true\n')
    hp = load_policy([path], specs, only_listed=True).helpers["ftp"]
    assert hp.ports == (21, 2121)
    assert hp.classes[0].max_expected == 3 and hp.classes[0].timeout == 300
    assert hp.options["loose"] is True


def test_renamed_helper_replaces_the_default_and_two_files_give_two_instances(tmp_path, specs):
    write(tmp_path, 'helper = "ftp"\nname = "ftp-alg"\n', "ftp.toml")
    policy = load_policy([str(tmp_path)], specs, only_listed=False)
    assert "ftp-alg" in policy.helpers and "ftp" not in policy.helpers  # e.g. to avoid the in-kernel "ftp"
    write(tmp_path, 'helper = "ftp"\nname = "ftp-2121"\nports = [2121]\nqueue = 60\n', "ftp2.toml")
    policy = load_policy([str(tmp_path)], specs, only_listed=True)
    assert set(policy.helpers) == {"ftp-alg", "ftp-2121"}


@pytest.mark.parametrize("text, line, key", [
    ('helper = "ftp"\nqueue = "twenty"\n', 2, "queue"),
    ('helper = "ftp"\n\n[classes.ftp]\nexpect_max = 0\n', 4, "expect_max"),
    ('helper = "ftp"\n[classes.data]\nexpect_max = 2\n', 2, "data"),
    ('helper = "ftp"\n[options]\nlose = true\n', 3, "lose"),
    ('helper = "ftp"\n[options]\nloose = "yes"\n', 3, "loose"),
    ('helper = "ftp"\nname = "a-name-longer-than-15"\n', 2, "name"),
    ('helper = "ftp"\nports = [0]\n', 2, "ports"),
    ('helper = "ftp"\nprotocols = ["udp"]\n', 2, "protocols"),
    ('helper = "nosuch"\n', 1, "helper"),
    ('name = "x"\n', None, "helper"),
    ('helper = "ftp"\nqueu = 3\n', 2, "queu"),
    ('helper = "ftp"\nqueue = [\n', 2, None),  # TOML syntax error: line from the parser
    # nfnetlink_cthelper refuses max_expected > NF_CT_EXPECT_MAX_CNT (255) with EINVAL
    ('helper = "ftp"\n[classes.ftp]\nexpect_max = 256\n', 3, "expect_max"),
    ('helper = "ftp"\nports = []\n', 2, "ports"),
    # dotted keys and inline tables: the line of the key all the same
    ('helper = "ftp"\nclasses.ftp.expect_max = 300\n', 2, "expect_max"),
    ('helper = "ftp"\n[classes]\nftp.expect_timeout = 0\n', 3, "expect_timeout"),
    ('helper = "ftp"\n\nclasses = { ftp = { expect_max = 1, expect_timeout = -1 } }\n', 3, "expect_timeout"),
    ('helper = "ftp"\n[classes]\nftp = { expect_max = 2, expect_timeout = "x" }\n', 3, "expect_timeout"),
    ('helper = "ftp"\noptions.lose = true\n', 2, "lose"),
    ('helper = "ftp"\nclasses."data".expect_max = 2\n', 2, "data"),
])
def test_bad_file_names_file_line_and_key(tmp_path, specs, text, line, key):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_policy([path], specs, only_listed=True)
    e = err.value
    assert e.file == path
    if line is not None:
        assert e.line == line
    if key is not None:
        assert e.key.split(".")[-1] == key
        assert key in str(e)
    assert path in str(e)


def test_expect_max_at_the_kernels_limit_is_accepted(tmp_path, specs):
    path = write(tmp_path, 'helper = "ftp"\n[classes.ftp]\nexpect_max = 255\n')
    assert load_policy([path], specs, only_listed=True).helpers["ftp"].classes[0].max_expected == 255


def test_queue_clash_between_files(tmp_path, specs):
    write(tmp_path, 'helper = "ftp"\nname = "ftpa"\nqueue = 50\n', "a.toml")
    write(tmp_path, 'helper = "ftp"\nname = "ftpb"\nqueue = 50\n', "b.toml")
    with pytest.raises(ConfigError, match="queue 50"):
        load_policy([str(tmp_path)], specs, only_listed=True)


def test_core_policy_errors(tmp_path, specs):
    path = write(tmp_path, "[core]\nexpect_budget = -1\n", "alg.toml")
    with pytest.raises(ConfigError) as err:
        load_policy([path], specs, only_listed=False)
    assert (err.value.line, err.value.key) == (2, "core.expect_budget")
    path = write(tmp_path, "[core]\nworkers = 1\npair = \"yes\"\n", "alg.toml")
    with pytest.raises(ConfigError) as err:
        load_policy([path], specs, only_listed=False)
    assert (err.value.line, err.value.key) == (3, "core.pair")


def test_the_shipped_core_policy_is_the_default(specs):
    assert load_policy([str(ROOT / "policies" / "alg.toml")], specs, only_listed=False).core == \
        replace(CorePolicy(), source=str(ROOT / "policies" / "alg.toml"))


def test_cli_exits_2_naming_file_line_and_key(tmp_path, capsys):
    path = write(tmp_path, 'helper = "ftp"\n[classes.ftp]\nexpect_timeout = "long"\n')
    pcap = ROOT / "tests/pcaps/ftp-zeek_ftp-ipv4/capture.pcap"
    assert main(["replay", "--policy", path, str(pcap)]) == 2
    err = capsys.readouterr().err
    assert path in err and ":3" in err and "expect_timeout" in err


def test_missing_policy_path_exits_2(tmp_path, capsys):
    assert main(["helpers", "--policy", str(tmp_path / "none.toml")]) == 2
    assert "none.toml" in capsys.readouterr().err


def test_alg_policy_prints_each_helpers_default_file(tmp_path, capsys, specs):
    """What `alg policy NAME` prints loads back as exactly the helper's defaults (and enables it)."""
    for name in specs:
        assert main(["policy", name]) == 0
        path = write(tmp_path, capsys.readouterr().out, f"{name}.toml")
        hp = load_policy([path], specs, only_listed=True).helpers[name]
        want = default_helper_policy(specs[name])
        assert (hp.classes, hp.ports, hp.protocols, hp.families, dict(hp.options), hp.queue, hp.max_buffer,
                hp.enabled) == (want.classes, want.ports, want.protocols, want.families, dict(want.options),
                                want.queue, want.max_buffer, True), name
    assert main(["policy", "ftp"]) == 0 and "loose = false  # " in capsys.readouterr().out  # options documented
    out = tmp_path / "etc"
    assert main(["policy", "--all", "-o", str(out)]) == 0
    assert sorted(p.stem for p in out.iterdir()) == sorted(specs)
    assert set(load_policy([str(out)], specs, only_listed=True).helpers) == set(specs)
    (out / "ftp.toml").write_text("# mine\n")
    assert main(["policy", "ftp", "-o", str(out)]) == 0 and (out / "ftp.toml").read_text() == "# mine\n"
    assert main(["policy", "nosuch"]) == 2 and "no helper named nosuch" in capsys.readouterr().err


def test_port_clashes_name_protocol_port_and_helpers(tmp_path, specs):
    from alg.policy import port_clashes
    from alg import doctor

    # policy files are refused at load (test_policy's clash test); two plugins whose
    # defaults claim one port meet here: `helpers` warns, `doctor` fails
    from dataclasses import replace

    from alg.policy import default_policy
    policy = default_policy(specs)
    policy.helpers = {"ftp": policy.helpers["ftp"],
                      "ftp2": replace(policy.helpers["ftp"], name="ftp2", queue=90, ports=(21, 2121))}
    assert port_clashes(policy.helpers.values()) == [
        "tcp/21 is claimed by helpers ftp, ftp2: only one can take it; disable the others or change their ports "
        "in a policy file (alg policy NAME)"]
    check = doctor.check_port_claims(list(policy.helpers.values()))
    assert check.level == doctor.FAIL and "tcp/21" in check.detail
    del policy.helpers["ftp"]
    assert port_clashes(policy.helpers.values()) == []
    assert doctor.check_port_claims(list(policy.helpers.values())).level == doctor.OK
