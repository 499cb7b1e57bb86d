"""`alg helpers`, `alg rules` and `alg doctor` cover the TFTP, IRC, SANE and Amanda helpers, whose
names are also the names of in-kernel helpers (nf_conntrack_tftp, _irc, _sane, _amanda)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from alg import doctor
from alg.plugins import load_plugins
from alg.policy import default_policy

NEW = {"tftp": ("udp", 69, "tftp", 1, 300), "irc": ("tcp", 6667, "dcc", 8, 300),
       "sane": ("tcp", 6566, "sane", 1, 300), "amanda": ("udp", 10080, "amanda", 4, 180)}


def alg(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "alg", *args], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_helpers_lists_them_with_the_references_policies():
    listed = {h["name"]: h for h in json.loads(alg("helpers", "--format", "json"))}
    for name, (proto, port, cls, max_expected, timeout) in NEW.items():
        h = listed[name]
        assert (h["protocols"], h["ports"], h["families"]) == ([proto], [port], ["ipv4", "ipv6"]), h
        assert h["classes"] == [{"name": cls, "expect_max": max_expected, "expect_timeout": timeout}]
        assert h["options"] == {"min_port": 1024} and h["source"]["builtin"]


def test_netbios_ns_is_listed_ipv4_only_with_the_kernels_policy():
    h = {h["name"]: h for h in json.loads(alg("helpers", "--format", "json"))}["netbios-ns"]
    assert (h["protocols"], h["ports"], h["families"]) == (["udp"], [137], ["ipv4"])
    assert h["classes"] == [{"name": "netbios-ns", "expect_max": 1, "expect_timeout": 3}]
    assert h["options"]["subnet_only"] is True and h["options"]["subnet_prefix_v4"] == 24


def test_snmp_is_listed_ipv4_only_with_the_kernels_policy():
    h = {h["name"]: h for h in json.loads(alg("helpers", "--format", "json"))}["snmp"]
    assert (h["protocols"], h["ports"], h["families"]) == (["udp"], [161], ["ipv4"])
    assert h["classes"] == [{"name": "snmp", "expect_max": 1, "expect_timeout": 30}]
    assert h["options"]["subnet_only"] is True and h["options"]["subnet_prefix_v4"] == 24


BROADCAST = {"netbios-ns": ("udp", 137), "snmp": ("udp", 161)}
OTHERS = {**BROADCAST, "pptp": ("tcp", 1723)}  # pptp: no options, kernel-named too (nf_conntrack_pptp)


def test_pptp_is_listed_with_the_kernels_policy():
    h = {h["name"]: h for h in json.loads(alg("helpers", "--format", "json"))}["pptp"]
    assert (h["protocols"], h["ports"], h["families"]) == (["tcp"], [1723], ["ipv4", "ipv6"])
    assert h["classes"] == [{"name": "gre", "expect_max": 2, "expect_timeout": 300}]


@pytest.mark.parametrize("name", [*sorted(NEW), *OTHERS])
def test_rules_assign_the_port_and_accept_related(name):
    proto, port, *_ = NEW.get(name) or OTHERS[name]
    text = alg("rules", "--helper", name)
    assert f'-A alg-helpers -p {proto} --dport {port} -m comment --comment "alg {name}" -j CT --helper {name}' in text
    assert f"-m helper --helper {name}" in text


@pytest.mark.parametrize("name", [*sorted(NEW), *OTHERS])
def test_doctor_spots_the_in_kernel_helper_of_the_same_name(tmp_path, name):
    policy = default_policy({n: c.spec for n, c in load_plugins().helpers.items()})
    (tmp_path / f"sys/module/nf_conntrack_{name.replace('-', '_')}").mkdir(parents=True)  # as /sys names it
    checks = {c.name: c for c in doctor.check_clashes(str(tmp_path), list(policy.helpers.values()))}
    assert checks[f"name {name}"].level == doctor.FAIL and f"{name}-alg" in checks[f"name {name}"].fix


def test_conntrackds_tftp_sane_amanda_blocks_import():
    """conntrackd ships tftp, sane and amanda helpers: their Helper blocks map onto alg's (same class names)."""
    from alg.conntrackd import convert
    blocks = (("tftp", "udp", 5, 1, 300), ("sane", "tcp", 6, 1, 300), ("amanda", "udp", 7, 3, 180))
    text = "Helper {\n" + "".join(
        f"Type {h} inet {p} {{\nQueueNum {q}\nPolicy {h} {{\nExpectMax {m}\nExpectTimeout {t}\n}}\n}}\n"
        for h, p, q, m, t in blocks) + "}\n"
    conv = convert(text, "conntrackd.conf", {n: c.spec for n, c in load_plugins().helpers.items()})
    assert conv.refusals == []
    got = {p.name: (p.queue, [(c.name, c.max_expected, c.timeout) for c in p.classes]) for p in conv.policies}
    assert got == {"tftp": (5, [("tftp", 1, 300)]), "sane": (6, [("sane", 1, 300)]),
                   "amanda": (7, [("amanda", 3, 180)])}


def test_h323_is_listed_with_the_kernels_policies_and_shares_no_name_with_its_helpers(tmp_path):
    """alg's h323 takes tcp/1720 and udp/1719; nf_conntrack_h323's helpers are RAS, Q.931 and H.245."""
    h = {h["name"]: h for h in json.loads(alg("helpers", "--format", "json"))}["h323"]
    assert (h["protocols"], h["ports"], h["families"]) == (["tcp", "udp"], [1720, 1719], ["ipv4", "ipv6"])
    assert h["classes"] == [{"name": c, "expect_max": m, "expect_timeout": 240}
                            for c, m in (("h245", 4), ("media", 16), ("t120", 2), ("signalling", 32))]
    text = alg("rules", "--helper", "h323")
    for proto, port in (("tcp", 1720), ("udp", 1719)):
        assert f'-A alg-helpers -p {proto} --dport {port} -m comment --comment "alg h323" -j CT --helper h323' in text
    assert "-m helper --helper h323" in text
    policy = default_policy({n: c.spec for n, c in load_plugins().helpers.items()})
    (tmp_path / "sys/module/nf_conntrack_h323").mkdir(parents=True)
    hp = policy.helpers["h323"]
    (check,) = doctor.check_clashes(str(tmp_path), [hp])
    assert check.level == doctor.OK and "RAS, Q.931, H.245" in check.detail
    from dataclasses import replace
    (check,) = doctor.check_clashes(str(tmp_path), [replace(hp, name="Q.931")])
    assert check.level == doctor.WARN and "nf_conntrack_h323" in check.detail  # a renamed helper: WARN
