"""tools/lab/nat_compare.py (the lab's kernel-vs-alg NAT differential) on small hand-made captures."""

from __future__ import annotations

import importlib.util
import re
import struct
import sys
from pathlib import Path

import pytest

from fakekernel import ACK, PSH, SYN, ip_packet

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("nat_compare", ROOT / "tools" / "lab" / "nat_compare.py")
assert _spec and _spec.loader
nat_compare = importlib.util.module_from_spec(_spec)
sys.modules["nat_compare"] = nat_compare  # dataclasses look their module up
_spec.loader.exec_module(nat_compare)

LINKTYPE_RAW = 101
TCP, UDP = 6, 17
GW, OUTSIDE = "203.0.113.1", "203.0.113.20"


def write_pcap(path: Path, packets: list[bytes]) -> Path:
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, LINKTYPE_RAW)]
    for i, p in enumerate(packets):
        out.append(struct.pack("<IIII", i, 0, len(p), len(p)) + p)
    path.write_bytes(b"".join(out))
    return path


def sip(start: str, headers: list[str], body: str = "", length: int | None = None) -> bytes:
    n = len(body.encode()) if length is None else length
    return ("\r\n".join([start, *headers, f"Content-Length: {n}", "", body])).encode()


SDP = "v=0\r\no=phone1 1 1 IN IP4 {a}\r\ns=-\r\nc=IN IP4 {a}\r\nt=0 0\r\nm=audio {p} RTP/AVP 0\r\na=rtcp:{r}\r\n"


def invite(addr: str = GW, port: int = 40000, via_port: int | None = None, media: int = 16000,
           length: int | None = None, call: str = "1-4242@192.168.10.20", rtcp: str = "") -> bytes:
    """A phone's INVITE as the outside end receives it: from the gateway's public address and `port`."""
    body = SDP.format(a=addr, p=media, r=f"{media + 1}{rtcp}")
    return ip_packet(GW, OUTSIDE, UDP, port, 5060, sip(
        f"INVITE sip:outside@{OUTSIDE}:5060 SIP/2.0",
        [f"Via: SIP/2.0/UDP {addr}:{via_port or port};branch=z9hG4bK-1", f"From: <sip:phone1@{OUTSIDE}:5060>;tag=a",
         f"To: <sip:outside@{OUTSIDE}:5060>", f"Call-ID: {call}", "CSeq: 2 INVITE",
         f"Contact: <sip:phone1@{addr}:{via_port or port};transport=UDP>", "Content-Type: application/sdp"],
        body, length))


def ok200(port: int = 40000) -> bytes:
    return ip_packet(OUTSIDE, GW, UDP, 5060, port, sip(
        "SIP/2.0 200 OK", [f"Via: SIP/2.0/UDP {GW}:{port};branch=z9hG4bK-1;received={GW};rport={port}",
                           f"From: <sip:phone1@{OUTSIDE}:5060>;tag=a", f"To: <sip:outside@{OUTSIDE}:5060>;tag=b",
                           "Call-ID: 1-4242@192.168.10.20", "CSeq: 2 INVITE"]))


def run(tmp_path: Path, ref: list[bytes], cand: list[bytes], proto: str, capsys, *flags: str) -> tuple[int, str]:
    a = write_pcap(tmp_path / "ref.pcap", ref)
    b = write_pcap(tmp_path / "cand.pcap", cand)
    rc = nat_compare.main(["--proto", proto, *flags, str(a), str(b)])
    return rc, capsys.readouterr().out


def test_sip_same_rewrites_are_equal_whatever_port_the_masquerade_picked(tmp_path, capsys):
    # the two runs' gateways mapped the phone to different public ports, the payload naming each run's own
    rc, out = run(tmp_path, [invite(port=40000), ok200(40000)], [invite(port=51234), ok200(51234)], "sip", capsys)
    assert rc == 0, out
    assert "0 differ" in out


def test_sip_fields_extracted(tmp_path):
    key, f = nat_compare.sip_message_fields(ok200(40000)[28:], 5060, 40000)
    assert key == "call 001 | cseq 2 INVITE | 200"
    assert f["via sent-by"] == f"{GW}:<dport>" and f["via received"] == GW and f["via rport"] == "<dport>"
    key, f = nat_compare.sip_message_fields(invite()[28:], 40000, 5060)
    assert f["start line"] == f"INVITE sip:outside@{OUTSIDE}:5060 SIP/2.0"
    assert f["contact"] == f"sip:phone1@{GW}:<sport>;transport=UDP"
    assert (f["sdp o= address"], f["sdp c= session"], f["sdp m= 1 port"], f["sdp a=rtcp 1"]) == \
        (GW, f"IN IP4 {GW}", "audio 16000", "16001")
    assert f["content-length matches body"] == "yes"


@pytest.mark.parametrize("cand, field", [
    (invite(addr="192.168.10.20"), "sdp c= session"),           # the SDP left private
    (invite(media=16002), "sdp m= 1 port"),                     # another public media port
    (invite(via_port=5061), "via sent-by"),                     # a port the packet did not come from
    (invite(length=10), "content-length matches body"),          # Content-Length not fixed after a rewrite
])
def test_sip_a_differing_field_fails_and_is_named(tmp_path, capsys, cand, field):
    rc, out = run(tmp_path, [invite()], [cand], "sip", capsys)
    assert rc == 1
    assert re.search(rf"^DIFF call 001 \| cseq 2 INVITE \| INVITE \| {re.escape(field)}: kernel ", out, re.M), out


def test_sip_retransmission_counts_once_and_a_missing_message_is_a_difference(tmp_path, capsys):
    rc, out = run(tmp_path, [invite(), invite(), ok200()], [invite()], "sip", capsys)
    assert rc == 1
    assert "DIFF call 001 | cseq 2 INVITE | 200 | via sent-by: kernel 203.0.113.1:<dport> | alg (absent)" in out
    assert "| INVITE |" not in out  # the retransmitted INVITE is no difference


def test_deliberate_differences_are_listed_not_failed(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(nat_compare, "DELIBERATE", [(re.compile(r"\| via received$"), re.compile(r"\.9$"), "test")])
    b = ok200().replace(f";received={GW}".encode(), b";received=203.0.113.9")  # same length
    rc, out = run(tmp_path, [ok200()], [b], "sip", capsys)
    assert rc == 0, out
    assert "deliberate (test) call 001 | cseq 2 INVITE | 200 | via received" in out
    b = ok200().replace(f";received={GW}".encode(), b";received=203.0.113.8")  # not the value allowed
    rc, out = run(tmp_path, [ok200()], [b], "sip", capsys)
    assert rc == 1 and "DIFF call 001 | cseq 2 INVITE | 200 | via received" in out


def test_the_kernels_private_a_rtcp_against_algs_public_one_is_deliberate(tmp_path, capsys):
    kernel, alg = invite(rtcp=" IN IP4 192.168.10.20"), invite(rtcp=" IN IP4 203.0.113.1")
    rc, out = run(tmp_path, [kernel], [alg], "sip", capsys)
    assert rc == 0, out
    assert "deliberate (nf_nat_sip leaves a=rtcp" in out
    rc, out = run(tmp_path, [alg], [kernel], "sip", capsys)  # the other way round is a regression
    assert rc == 1


def test_a_failing_difference_is_printed_before_the_deliberate_ones_past_the_limit(tmp_path, capsys):
    # call 001's deliberate a=rtcp sorts before call 002's failing a=rtcp and m= port: with --limit 1
    # a failing one must be the one printed
    kernel = [invite(rtcp=" IN IP4 192.168.10.20"), invite(call="2-1@192.168.10.20")]
    alg = [invite(rtcp=" IN IP4 203.0.113.1"), invite(call="2-1@192.168.10.20", media=16002)]
    rc, out = run(tmp_path, kernel, alg, "sip", capsys, "--limit", "1")
    assert rc == 1
    assert out.splitlines()[0].startswith("DIFF call 002 | cseq 2 INVITE | INVITE | sdp a=rtcp 1"), out
    assert "... 2 more" in out and "3 differ, 1 deliberately, 2 not" in out


def ftp_session(port_line: bytes, pasv_line: bytes, retransmit: bool = False, cport: int = 33000,
                after_port: bytes = b"RETR hello.txt\r\nPWD\r\n") -> list[bytes]:
    """A control connection on the public side: client = the gateway's public address."""
    c2s = [b"USER anonymous\r\n", port_line, after_port, b"PASV\r\n"]
    s2c = [b"220 hi\r\n", b"200 PORT command successful.\r\n150 Opening\r\n", b"226 Done\r\n", pasv_line]
    pkts = [ip_packet(GW, OUTSIDE, TCP, cport, 21, seq=999, flags=SYN),
            ip_packet(OUTSIDE, GW, TCP, 21, cport, seq=4999, flags=SYN | ACK)]
    cseq, sseq = 1000, 5000
    for c, s in zip(c2s, s2c, strict=True):
        pkts.append(ip_packet(OUTSIDE, GW, TCP, 21, cport, s, seq=sseq, flags=ACK | PSH))
        pkts.append(ip_packet(GW, OUTSIDE, TCP, cport, 21, c[:3], seq=cseq))  # a segment cut mid-line
        pkts.append(ip_packet(GW, OUTSIDE, TCP, cport, 21, c[3:], seq=cseq + 3))
        if retransmit:
            pkts.append(ip_packet(GW, OUTSIDE, TCP, cport, 21, c, seq=cseq))
        cseq, sseq = cseq + len(c), sseq + len(s)
    return pkts


PORT = b"PORT 203,0,113,1,156,65\r\n"
P227 = b"227 Entering Passive Mode (203,0,113,1,195,80).\r\n"


def test_ftp_fields_reassembled_and_parsed(tmp_path):
    f = nat_compare.ftp_fields(str(write_pcap(tmp_path / "a.pcap", ftp_session(PORT, P227, retransmit=True))))
    assert f["ftp 1 client line 02 PORT"] == f"{GW}:40001"
    assert f["ftp 1 server line 05 227"] == f"{GW}:50000"
    assert [v for k, v in sorted(f.items()) if re.fullmatch(r"ftp 1 client line \d+", k)] == \
        ["USER anonymous", "PORT 203,0,113,1,156,65", "RETR hello.txt", "PWD", "PASV"]


def test_ftp_extended_forms():
    assert nat_compare._ftp_extended(" |1|203.0.113.1|40002|") == f"{GW}:40002"
    assert nat_compare._ftp_extended("Entering Extended Passive Mode (|||50000|)") == ":50000"
    assert nat_compare._ftp_port("Entering Passive Mode (192,168,10,20,195,80).") == "192.168.10.20:50000"


def test_ftp_equal_sessions_pass_a_differing_227_fails(tmp_path, capsys):
    rc, out = run(tmp_path, ftp_session(PORT, P227), ftp_session(PORT, P227, retransmit=True, cport=34000),
                  "ftp", capsys)
    assert rc == 0, out
    private = b"227 Entering Passive Mode (192,168,10,20,195,80).\r\n"
    rc, out = run(tmp_path, ftp_session(PORT, P227), ftp_session(PORT, private), "ftp", capsys)
    assert rc == 1
    assert f"DIFF ftp 1 server line 05 227: kernel {GW}:50000 | alg 192.168.10.20:50000" in out


def test_rewrites_only_lines_up_a_reference_whose_transfers_failed(tmp_path, capsys):
    """conntrackd's sessions (nat.sh): its data connections failed, so its client went on with NOOP where
    alg's transferred; the lines differ, the rewritten endpoints must still agree, in order."""
    failed = ftp_session(PORT, P227, after_port=b"NOOP\r\n")
    assert run(tmp_path, failed, ftp_session(PORT, P227), "ftp", capsys)[0] == 1
    rc, out = run(tmp_path, failed, ftp_session(PORT, P227), "ftp", capsys, "--rewrites-only")
    assert rc == 0 and "ftp: 2 fields, 0 differ" in out, out
    private = b"227 Entering Passive Mode (192,168,10,20,195,80).\r\n"
    rc, out = run(tmp_path, failed, ftp_session(PORT, private), "ftp", capsys, "--rewrites-only")
    assert rc == 1 and f"ftp 1 server rewrite 01 227: kernel {GW}:50000 | alg 192.168.10.20:50000" in out, out


def test_nothing_to_compare_fails(tmp_path, capsys):
    rc, out = run(tmp_path, [invite()], [], "sip", capsys)
    assert rc == 1 and "nothing to compare" in out


def test_unreadable_capture_is_a_usage_error(tmp_path, capsys):
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(b"not a capture at all")
    assert nat_compare.main(["--proto", "ftp", str(bad), str(bad)]) == 2
