#!/usr/bin/env python3
"""Compare what two NAT helpers wrote into the payloads, from captures taken on the public side.

    nat_compare.py --proto ftp|sip REFERENCE.pcap CANDIDATE.pcap [--limit N]

tests/lab/scenarios/nat.sh runs the same FTP sessions and SIP calls through the kernel's NAT helpers
(nf_nat_ftp, nf_nat_sip: the reference) and through alg (the candidate) and captures both on the public
side of the gateway, where the rewritten messages arrive. This script extracts the fields a NAT helper
rewrites, keyed so that the same message of the same session lines up in both captures, and prints
every field that differs. Exit 0 when every difference is listed in DELIBERATE below, 1 otherwise (or
when a capture holds nothing to compare), 2 on bad usage or an unreadable capture.

FTP (control connections to port 21, in the order they opened; each direction reassembled by TCP
sequence number, so a retransmission counts once): every line of the conversation, and the address and
port of PORT, EPRT, 227 and 229 parsed. Lines after a rewritten one show whether the connection stayed in
step.

SIP (UDP to or from port 5060): one record per message, keyed by call (the number SIPp puts before the
first "-" of its Call-IDs), CSeq and method or status code; a retransmission counts once. Fields: the
request or status line, the top Via's sent-by, received and rport, Contact, From and To URIs, the SDP's
o= address, c=, each m= port and a=rtcp, and whether Content-Length equals the body's length.
A port equal to the packet's own UDP source or destination port (other than 5060) is written as
<sport>/<dport>: the ports the gateway's masquerade picks differ from run to run, what must agree is that
the payload names the port the packet really came from.
"""

from __future__ import annotations

import argparse
import ipaddress
import re
import sys
from dataclasses import dataclass
from pathlib import Path

try:
    from alg.decode import TCP, UDP, DecodeError, decode_frame
    from alg.pcap import CaptureError, read_frames
except ImportError:  # run from a checkout with another python: alg is two folders up
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from alg.decode import TCP, UDP, DecodeError, decode_frame
    from alg.pcap import CaptureError, read_frames

FTP_PORT = 21
SIP_PORT = 5060
SEQ_MOD = 1 << 32

# Differences kept on purpose: (field key pattern, what alg's value must then be, why). A difference
# whose key matches, with alg's value matching the second pattern, is printed as deliberate and does not
# fail the comparison; any other value there is still a difference.
DELIBERATE: list[tuple[re.Pattern[str], re.Pattern[str], str]] = [
    # the phone's INVITE says a=rtcp:16001 IN IP4 192.168.10.20 (RFC 3605 with an address); nf_nat_sip
    # rewrites o=, c= and m= but has no a=rtcp handling and forwards the private address, which the far
    # end cannot reach (issue 12 asks alg for a=rtcp): alg's must name the gateway's public address
    (re.compile(r"\| sdp a=rtcp \d+$"), re.compile(r"^\d+ IN IP4 203\.0\.113\.1$"),
     "nf_nat_sip leaves a=rtcp's private address; alg rewrites it to the public one"),
]

Fields = dict[str, str]


@dataclass(frozen=True, slots=True)
class Segment:
    src: str
    dst: str
    sport: int
    dport: int
    seq: int
    flags: int
    payload: bytes


def _addr(raw: bytes) -> str:
    return str(ipaddress.ip_address(raw))


def _packets(path: str, proto: int) -> list[Segment]:
    out = []
    for frame in read_frames(path):
        try:
            pkt = decode_frame(frame.linktype, frame.data)
        except (DecodeError, ValueError):
            continue
        if pkt.proto != proto or pkt.frag is not None:
            continue
        out.append(Segment(_addr(pkt.src), _addr(pkt.dst), pkt.sport, pkt.dport, pkt.seq, pkt.tcp_flags,
                           pkt.payload))
    return out


# ------------------------------------------------------------------------------------------- FTP
_TCP_SYN = 0x02


def _reassemble(segments: list[Segment]) -> bytes:
    """One direction's bytes by sequence number: retransmitted and overlapping bytes once."""
    if not segments:
        return b""
    syn = next((s for s in segments if s.flags & _TCP_SYN), None)
    isn = (syn.seq + 1) % SEQ_MOD if syn else segments[0].seq
    pieces = sorted(((s.seq - isn) % SEQ_MOD, s.payload) for s in segments if s.payload)
    out = bytearray()
    for off, data in pieces:
        if off + len(data) <= len(out):
            continue  # a retransmission of bytes already placed
        out += data[max(0, len(out) - off):]  # past a gap (bytes the capture lost) too: go on
    return bytes(out)


def _lines(data: bytes) -> list[str]:
    return [line.decode("latin-1").rstrip("\r") for line in data.split(b"\n") if line.strip()]


_FTP_PORT_ARGS = re.compile(r"(\d+),(\d+),(\d+),(\d+),(\d+),(\d+)")


def _ftp_port(args: str) -> str:
    m = _FTP_PORT_ARGS.search(args)
    if not m:
        return f"unparsed {args!r}"
    n = [int(x) for x in m.groups()]
    return f"{n[0]}.{n[1]}.{n[2]}.{n[3]}:{n[4] * 256 + n[5]}"


def _ftp_extended(args: str) -> str:
    """RFC 2428: |proto|address|port| after EPRT, inside the parentheses of a 229."""
    start = args.find("(")
    body = args[start + 1: args.rfind(")")] if start >= 0 else args.strip()
    if len(body) < 2:
        return f"unparsed {args!r}"
    parts = body.split(body[0])
    if len(parts) != 5:
        return f"unparsed {args!r}"
    return f"{parts[2]}:{parts[3]}"


# the rewritten lines: command verb or reply code -> parser of the rest of the line
_FTP_FIELDS = {"PORT": _ftp_port, "EPRT": _ftp_extended, "227": _ftp_port, "229": _ftp_extended}


def ftp_fields(path: str) -> Fields:
    conns: dict[tuple[str, int, str, int], list[Segment]] = {}
    for s in _packets(path, TCP):
        if FTP_PORT in (s.sport, s.dport):
            key = (s.src, s.sport, s.dst, s.dport) if s.dport == FTP_PORT else (s.dst, s.dport, s.src, s.sport)
            conns.setdefault(key, []).append(s)  # dicts keep the order the connections opened in
    fields: Fields = {}
    for c, (key, segs) in enumerate(conns.items(), 1):
        client = (key[0], key[1])
        for side, segs_dir in (("client", [s for s in segs if (s.src, s.sport) == client]),
                               ("server", [s for s in segs if (s.src, s.sport) != client])):
            for i, line in enumerate(_lines(_reassemble(segs_dir)), 1):
                fields[f"ftp {c} {side} line {i:02d}"] = line
                verb, _, rest = line.partition(" ")
                parse = _FTP_FIELDS.get(verb.upper())
                if parse:
                    fields[f"ftp {c} {side} line {i:02d} {verb.upper()}"] = parse(rest)
    return fields


def rewrites_only(fields: Fields) -> Fields:
    """The parsed PORT/EPRT/227/229 fields alone, numbered in order per connection and side: a
    reference whose data connections failed goes on with other commands (NOOP where the other
    transferred), so its lines do not line up, but the rewritten endpoints still must."""
    out: Fields = {}
    count: dict[str, int] = {}
    for key, value in fields.items():
        conn, _, rest = key.partition(" line ")
        verb = rest.partition(" ")[2]
        if verb:
            count[conn] = count.get(conn, 0) + 1
            out[f"{conn} rewrite {count[conn]:02d} {verb}"] = value
    return out


# ------------------------------------------------------------------------------------------- SIP
_COMPACT = {"v": "via", "m": "contact", "l": "content-length", "i": "call-id", "f": "from", "t": "to"}
_CALL_NUMBER = re.compile(r"(\d+)-")


def _headers(head: bytes) -> tuple[str, list[tuple[str, str]]]:
    lines = head.decode("latin-1").split("\r\n")
    hdrs = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            name = name.strip().lower()
            hdrs.append((_COMPACT.get(name, name), value.strip()))
    return lines[0], hdrs


def _port_norm(value: str, sport: int, dport: int) -> str:
    """`host:port` inside value with the packet's own (non-5060) ports named, not numbered."""
    def name(m: re.Match[str]) -> str:
        port = int(m.group(2))
        if port != SIP_PORT and port == sport:
            return f"{m.group(1)}:<sport>"
        if port != SIP_PORT and port == dport:
            return f"{m.group(1)}:<dport>"
        return m.group(0)
    return re.sub(r"([0-9A-Za-z.\]]+):(\d{1,5})\b", name, value)


def _uri(value: str) -> str:
    if "<" in value:
        return value[value.find("<") + 1: value.find(">")] if ">" in value else value
    return value.split(";", 1)[0].strip()


def _via(value: str, sport: int, dport: int) -> Fields:
    first = value.split(",", 1)[0]
    sent, *params = first.split(";")
    proto_by = sent.split(None, 1)
    out = {"via sent-by": _port_norm(proto_by[1].strip() if len(proto_by) > 1 else sent, sport, dport)}
    p = {k.strip().lower(): v.strip() for k, _, v in (x.partition("=") for x in params)}
    out["via received"] = p.get("received", "-")
    rport = p.get("rport", "-")
    if rport.isdigit() and int(rport) in (sport, dport):
        rport = "<sport>" if int(rport) == sport else "<dport>"
    out["via rport"] = rport
    return out


def _sdp(body: str) -> Fields:
    out: Fields = {}
    media = 0
    for line in body.split("\r\n"):
        kind, _, value = line.partition("=")
        if kind == "o":
            out["sdp o= address"] = value.split()[-1] if value.split() else value
        elif kind == "c":
            out[f"sdp c= {'session' if media == 0 else f'media {media}'}"] = value
        elif kind == "m":
            media += 1
            words = value.split()
            out[f"sdp m= {media} port"] = f"{words[0]} {words[1]}" if len(words) > 1 else value
        elif kind == "a" and value.startswith("rtcp:"):
            out[f"sdp a=rtcp {media}"] = value[len("rtcp:"):]
    return out


def sip_message_fields(payload: bytes, sport: int, dport: int) -> tuple[str, Fields] | None:
    """The message's key (call, CSeq, method or status) and its rewritable fields; None: not SIP."""
    head, sep, body = payload.partition(b"\r\n\r\n")
    if not sep:
        return None
    start, hdrs = _headers(head)
    first = dict(reversed(hdrs))  # the first of each header
    if "call-id" not in first or "cseq" not in first:
        return None
    m = _CALL_NUMBER.match(first["call-id"])
    call = f"call {int(m.group(1)):03d}" if m else f"call-id {first['call-id']}"
    words = start.split()
    kind = f"{words[1]}" if start.startswith("SIP/2.0") and len(words) > 1 else words[0] if words else "?"
    key = f"{call} | cseq {first['cseq']} | {kind}"
    f: Fields = {"start line": _port_norm(start, sport, dport)}
    if "via" in first:
        f.update(_via(first["via"], sport, dport))
    for name in ("contact", "from", "to"):
        if name in first:
            f[name] = _port_norm(_uri(first[name]), sport, dport)
    # its value follows from the body, compared field by field: what must agree is that it is right
    length = first.get("content-length", "-")
    f["content-length matches body"] = "yes" if length.isdigit() and int(length) == len(body) else \
        f"no (says {length}, body {len(body)} bytes)"
    if body:
        f.update(_sdp(body.decode("latin-1")))
    return key, f


def sip_fields(path: str) -> Fields:
    fields: Fields = {}
    seen: set[str] = set()
    for s in _packets(path, UDP):
        if SIP_PORT not in (s.sport, s.dport):
            continue
        parsed = sip_message_fields(s.payload, s.sport, s.dport)
        if parsed is None:
            continue
        key, f = parsed
        if key in seen:
            continue  # a retransmission (or a second message on the same key: the first one speaks)
        seen.add(key)
        fields.update({f"{key} | {name}": value for name, value in f.items()})
    return fields


# ------------------------------------------------------------------------------------------- compare
EXTRACT = {"ftp": ftp_fields, "sip": sip_fields}


def deliberate(key: str, candidate: str | None) -> str | None:
    for pattern, value, reason in DELIBERATE:
        if pattern.search(key) and candidate is not None and value.search(candidate):
            return reason
    return None


def compare(ref: Fields, cand: Fields) -> list[tuple[str, str | None, str | None, str | None]]:
    """Every differing field: (key, reference value, candidate value, deliberate reason or None)."""
    out = []
    for key in sorted(ref.keys() | cand.keys()):
        a, b = ref.get(key), cand.get(key)
        if a != b:
            out.append((key, a, b, deliberate(key, b)))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--proto", choices=sorted(EXTRACT), required=True)
    p.add_argument("--limit", type=int, default=40, help="differences printed (all are counted)")
    p.add_argument("--rewrites-only", action="store_true",
                   help="ftp: compare the rewritten endpoints alone, in order (not every line)")
    p.add_argument("reference", help="capture through the kernel's NAT helper")
    p.add_argument("candidate", help="capture through alg")
    a = p.parse_args(argv)
    try:
        ref, cand = EXTRACT[a.proto](a.reference), EXTRACT[a.proto](a.candidate)
        if a.rewrites_only:
            ref, cand = rewrites_only(ref), rewrites_only(cand)
    except (OSError, CaptureError) as exc:
        print(f"nat_compare: {exc}", file=sys.stderr)
        return 2
    if not ref or not cand:
        print(f"nothing to compare: {len(ref)} {a.proto} fields in {a.reference}, {len(cand)} in {a.candidate}")
        return 1
    diffs = compare(ref, cand)
    failing = [d for d in diffs if d[3] is None]
    # the failing ones first: a long list of deliberate ones must not hide them past the limit
    for i, (key, x, y, why) in enumerate(failing + [d for d in diffs if d[3] is not None]):
        if i < a.limit:
            tag = f"deliberate ({why})" if why else "DIFF"
            ref_v, cand_v = ("(absent)" if v is None else v for v in (x, y))
            print(f"{tag} {key}: kernel {ref_v} | alg {cand_v}")
    if len(diffs) > a.limit:
        print(f"... {len(diffs) - a.limit} more")
    print(f"{a.proto}: {len(ref.keys() | cand.keys())} fields, {len(diffs)} differ, "
          f"{len(diffs) - len(failing)} deliberately, {len(failing)} not")
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main())
