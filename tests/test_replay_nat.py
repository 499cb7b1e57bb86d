"""`alg replay --snat/--dnat`: what a real capture's messages become behind a gateway's NAT.

The captures were recorded on the inside (tests/pcaps/*/SOURCE.md); the options say
what the gateway would do, and the output shows the expectations moved outside
(with the endpoint they are translated back to) and every rewritten packet."""

from __future__ import annotations

import json
from pathlib import Path

from alg.cli import main

PCAPS = Path(__file__).parent / "pcaps"


def replay(capsys, case: str, *args: str) -> list[dict]:
    assert main(["replay", "--no-summary", "--format", "json", *args, str(PCAPS / case / "capture.pcap")]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_active_ftp_behind_masquerade(capsys):
    rows = replay(capsys, "ftp-rec-curl-port-v4", "--snat", "10.0.1.0/24=198.51.100.1")
    (exp,) = [r for r in rows if "rewrite" not in r]
    (rewrite,) = [r["rewrite"] for r in rows if "rewrite" in r]
    assert (exp["src"], exp["dst"], exp["nat"]) == ("10.0.2.2", "198.51.100.1",
                                                    {"dir": "reply", "to": "10.0.1.2", "port": exp["dport"]})
    ((edit,),) = [rewrite]
    assert edit["old"].startswith("10,0,1,2,") and edit["new"] == "198,51,100,1," + edit["old"][len("10,0,1,2,"):]


def test_active_ftp_over_ipv6_behind_snat(capsys):
    plain = replay(capsys, "ftp-rec-lftp-port-v6")
    rows = replay(capsys, "ftp-rec-lftp-port-v6", "--snat", "fd00:1::/64=2001:db8::1")
    exps = [r for r in rows if "rewrite" not in r]
    assert len(exps) == len(plain) > 0 and all(r["dst"] == "2001:db8::1" for r in exps)
    edits = [e for r in rows if "rewrite" in r for e in r["rewrite"]]
    assert edits and all(e["old"].startswith("fd00:1::") and e["new"] == "2001:db8::1" for e in edits if
                         ":" in e["old"])


def test_passive_ftp_from_a_port_forwarded_server(capsys):
    rows = replay(capsys, "ftp-rec-curl-pasv-v4", "--dnat", "198.51.100.1:21=10.0.2.2")
    (exp,) = [r for r in rows if "rewrite" not in r]
    assert (exp["src"], exp["dst"], exp["nat"]["to"]) == ("10.0.1.2", "198.51.100.1", "10.0.2.2")
    (((edit,),),) = [[r["rewrite"]] for r in rows if "rewrite" in r]
    assert edit["old"].startswith("10,0,2,2,") and edit["new"].startswith("198,51,100,1,")


def test_without_nat_rules_nothing_moves_and_a_policy_can_turn_rewriting_off(capsys, tmp_path):
    assert all("nat" not in r for r in replay(capsys, "ftp-rec-curl-port-v4"))
    (tmp_path / "ftp.toml").write_text('helper = "ftp"\nnat = false\n')
    rows = replay(capsys, "ftp-rec-curl-port-v4", "--snat", "10.0.1.0/24=198.51.100.1", "--policy",
                  str(tmp_path / "ftp.toml"))
    assert [r["dst"] for r in rows] == ["10.0.1.2"]


def test_a_bad_mapping_is_a_usage_error(capsys):
    assert main(["replay", "--snat", "10.0.1.0/24", str(PCAPS / "ftp-rec-curl-port-v4" / "capture.pcap")]) == 2
    assert "--snat '10.0.1.0/24': NETWORK=ADDRESS" in capsys.readouterr().err
