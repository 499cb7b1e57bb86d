"""PPTP on the capture recorded from real peers (tests/pcaps/pptp-rec-pptpd-pptp-linux: pptp-linux and pptpd with
their pppd, through the lab VM's firewall running the kernel's nf_conntrack_pptp):

* the kernel differential on that capture: alg's expectations (replay) against the kernel's own
  (kernel-expect.txt, `conntrack -E expect` during the recording), field by field through the lab's comparator
  tools/lab/pptp_compare.py: equal except the differences it lists as deliberate;
* the call's own GRE packets, as the capture has them, are the follow-up flows alg's expectations match (replay
  peels GRE as a tunnel, so they are handed to the engine as the kernel's GRE tracker keys them);
* the comparator itself: a difference it does not list fails it.
"""

from __future__ import annotations

import ipaddress
import struct
from pathlib import Path

import pptp_compare  # tools/lab (conftest puts it on sys.path)

from alg import GRE
from alg.decode import Packet, decode_frame
from alg.engine import Create, Engine, make_slots
from alg.pcap import read_frames
from alg.plugins import load_plugins
from alg.policy import default_policy
from alg.replay import ReplayResult, replay_found

CASE = Path(__file__).parent / "pcaps" / "pptp-rec-pptpd-pptp-linux"
PNS, PAC = "10.0.1.2", "10.0.2.2"
ETH_IPV4 = 14  # Ethernet header, then IPv4 (the capture's link type is Ethernet)
PPTP_MAGIC = 0x1A2B3C4D
OCRP = 8  # Outgoing-Call-Reply (RFC 2637 §2.8)
GRE_V1_KEY = 0x2001  # K bit, version 1 (RFC 2637 §4.1)


def _ipv4(frame: bytes) -> tuple[int, bytes, bytes, bytes]:
    """protocol, source, destination, payload of an Ethernet + IPv4 frame."""
    ip = frame[ETH_IPV4:]
    ihl = (ip[0] & 0xF) * 4
    return ip[9], ip[12:16], ip[16:20], ip[ihl:struct.unpack_from("!H", ip, 2)[0]]


def _call_ids() -> str:
    """"PNS_ID PAC_ID" from the capture's Outgoing-Call-Reply, read here with struct (not with alg's helper)."""
    for f in read_frames(str(CASE / "capture.pcap"), lambda m: None):
        proto, _, _, payload = _ipv4(f.data)
        if proto == 6:
            data = payload[(payload[12] >> 4) * 4:]
            if len(data) >= 16 and struct.unpack_from("!IH", data, 4) == (PPTP_MAGIC, OCRP):
                pac, pns = struct.unpack_from("!HH", data, 12)
                return f"{pns} {pac}"
    raise AssertionError("no Outgoing-Call-Reply in the capture")


def _engine() -> Engine:
    host = load_plugins()
    policy = default_policy({n: c.spec for n, c in host.helpers.items()})
    return Engine(make_slots([policy.helpers["pptp"]], host.helpers), policy.core, track_related=True)


def test_alg_equals_the_kernel_on_the_recorded_call_but_the_deliberate_differences() -> None:
    engine = _engine()
    found = [e for _p, e in replay_found(engine, [str(CASE / "capture.pcap")], ReplayResult())]
    alg_events = "\n".join("[NEW] " + e.to_text() for e in found)
    kernel = pptp_compare.normalise((CASE / "kernel-expect.txt").read_text(), _call_ids(), PNS, PAC)
    ours = pptp_compare.normalise(alg_events, _call_ids(), PNS, PAC)
    lines, ok = pptp_compare.compare(kernel, ours)
    assert ok, "\n".join(lines)
    deliberate = sorted(line.split(":")[0] for line in lines if line.startswith("DELIBERATE"))
    assert deliberate == sorted(f"DELIBERATE {d} {f}" for d in ("PNS -> PAC", "PAC -> PNS")
                                for f in ("srckey", "mask-srckey"))  # the helper is named pptp in both here
    assert kernel["PNS -> PAC"]["dstkey"] == ours["PNS -> PAC"]["dstkey"] == "PAC call"
    assert kernel["PAC -> PNS"]["dstkey"] == ours["PAC -> PNS"]["dstkey"] == "PNS call"


def test_the_recorded_calls_gre_is_what_alg_expects() -> None:
    engine = _engine()
    made, gre_seen = [], 0
    for f in read_frames(str(CASE / "capture.pcap"), lambda m: None):
        proto, src, dst, payload = _ipv4(f.data)
        if proto == GRE:
            flags, _ptype, _length, key = struct.unpack_from("!HHHH", payload)
            assert flags & GRE_V1_KEY == GRE_V1_KEY
            gre_seen += 1  # keyed as the kernel's tracker keys it without the keymap: source key 0
            engine.process(Packet(4, GRE, src, dst, 0, key, payload), f.time, f.number)
            continue
        out = engine.process(decode_frame(f.linktype, f.data), f.time, f.number)
        made += [d.expectation for d in out if isinstance(d, Create)]
    assert {(str(e.src), str(e.dst)) for e in made} == {(PNS, PAC), (PAC, PNS)}
    assert gre_seen > 10 and engine.related_flows == 2  # one flow per direction, every packet of it matched


def test_the_comparator_fails_on_a_difference_it_does_not_list() -> None:
    kernel_text = (CASE / "kernel-expect.txt").read_text()
    kernel = pptp_compare.normalise(kernel_text, _call_ids(), PNS, PAC)
    for old, new in (("class=0", "class=1"), ("dstkey=0x1ba7 mask", "dstkey=0x1ba8 mask"),
                     ("mask-src=255.255.255.255", "mask-src=255.255.255.0")):
        other = pptp_compare.normalise(kernel_text.replace(old, new), _call_ids(), PNS, PAC)
        lines, ok = pptp_compare.compare(kernel, other)
        assert not ok and any(line.startswith("DIFFERS") for line in lines), (old, lines)
    lines, ok = pptp_compare.compare(kernel, {})
    assert not ok and sum(line.startswith("MISSING") for line in lines) == 2


def test_the_comparator_names_the_call_ids_and_the_control_connection() -> None:
    got = pptp_compare.normalise((CASE / "kernel-expect.txt").read_text(), _call_ids(), PNS, PAC)
    assert _call_ids() == "7079 0"
    assert got["PNS -> PAC"]["srckey"] == "PNS call" and got["PAC -> PNS"]["srckey"] == "PAC call"
    assert got["PNS -> PAC"]["master"] == "control" and got["PNS -> PAC"]["timeout"] == "300"
    assert pptp_compare.gre_conntracks(
        "gre      47 177 src=10.0.2.2 dst=10.0.1.2 srckey=0x0 dstkey=0x1ba7 src=10.0.1.2 dst=10.0.2.2 "
        "srckey=0x1ba7 dstkey=0x0 [ASSURED] mark=0 use=1") == [
        "timeout 177 s, srckey=0x0 dstkey=0x1ba7 srckey=0x1ba7 dstkey=0x0 [ASSURED]"]
    assert ipaddress.ip_address(PNS) in ipaddress.ip_network("10.0.1.0/24")
