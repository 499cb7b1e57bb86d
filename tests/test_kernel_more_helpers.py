"""Differential: the kernel's tftp, irc, sane, amanda, netbios-ns and snmp helpers are the oracle for alg's.

tests/more_helpers_kernel.py runs real clients and servers (and the probes)
across a firewall namespace whose raw table hands the control flow to the
kernel's helper of the same name. `alg replay --format json` on the fw's
capture must derive exactly the kernel's expectations (tuple, mask, master,
helper, class index, timeout within 2 s) on the real traffic; on the probes,
each side must create what its `Probe` says, and where they differ the probe
says why (alg refuses low ports, malformed messages, and so on, on purpose).
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import more_helpers_kernel as mh
from netns import Net
from test_kernel_ftp_differential import normalise_alg, normalise_kernel, parse_kernel

pytestmark = pytest.mark.kernel


def _key(d: dict) -> str:
    return json.dumps(d, sort_keys=True)


def _masked(d: dict) -> dict:
    """The source under its mask: the kernel's broadcast helper names the broadcast address, alg the
    asker's; under the subnet's mask both are the subnet."""
    src, mask = ipaddress.ip_address(d["src"]), ipaddress.ip_address(d["mask"]["src"])
    return {**d, "src": str(ipaddress.ip_address(int(src) & int(mask)))}


def _alg(e: dict) -> dict:
    """alg's wildcard source (null) as conntrack prints it (the unspecified address)."""
    if e["src"] is None:
        e = {**e, "src": "0.0.0.0" if e["l3"] == "ipv4" else "::"}
    return _masked(normalise_alg(e))


def _kernel(k: dict) -> dict:
    return _masked(normalise_kernel(k))


@pytest.mark.parametrize("name", sorted(mh.SCENARIOS))
def test_kernel_helper_equals_replay(kernel_ok: None, name: str) -> None:
    reason = mh.available(name)
    if reason:
        pytest.skip(reason)
    sc = mh.SCENARIOS[name]
    prefix = f"alg-mh{name[:2]}{os.getpid() % 100:02d}"  # parallel runs do not share namespaces
    with Net(prefix) as net, tempfile.TemporaryDirectory(prefix=f"alg-{name}-") as tmp:
        pcap, raw = mh.run(name, net, Path(tmp))
        out = subprocess.run([sys.executable, "-m", "alg", "replay", "--format", "json", "--helper", name, pcap],
                             check=True, capture_output=True, text=True).stdout
    kernel = [k for k in map(parse_kernel, raw.splitlines()) if k]
    ours = [json.loads(line) for line in out.splitlines()]
    probe_ports = {str(p.sport) for p in sc.probes}
    k_probe = [k for k in kernel if k["master"]["sport"] in probe_ports]
    a_probe = [e for e in ours if str(e["master"]["sport"]) in probe_ports]
    k_real = [k for k in kernel if k not in k_probe]
    a_real = [e for e in ours if e not in a_probe]
    assert k_real, f"the kernel's {name} helper created nothing on the real traffic:\n{raw}"
    for k in k_real:
        k.setdefault("helper", name)
    assert sorted(map(_key, map(_alg, a_real))) == sorted(map(_key, map(_kernel, k_real)))
    from alg.plugins import load_plugins
    spec = load_plugins().helpers[name].spec
    timeouts = {_key(_kernel(k)): (k["class"], k["timeout"]) for k in k_real}
    for e in a_real:
        k_class, k_timeout = timeouts[_key(_alg(e))]
        assert str(spec.class_id(e["class"])) == k_class
        assert k_timeout is not None and 0 <= e["timeout"] - k_timeout <= 2, (e["timeout"], k_timeout)
    for p in sc.probes:
        got_k = sorted((k["dst"], int(k["dport"])) for k in k_probe if k["master"]["sport"] == str(p.sport))
        got_a = sorted((e["dst"], e["dport"]) for e in a_probe if e["master"]["sport"] == p.sport)
        assert got_k == sorted(p.kernel), (p.argv, got_k, raw)
        assert got_a == sorted(p.alg), (p.argv, got_a)
        assert (p.kernel == p.alg) or p.why, p.argv
