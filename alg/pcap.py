"""Reading pcap and pcapng files (stdlib only, no scapy): frames with time and link type."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO, Iterator

from .errors import AlgError


class CaptureError(AlgError):
    """The file is not a capture we can read."""


@dataclass(frozen=True, slots=True)
class Frame:
    number: int  # 1-based, as Wireshark counts
    time: float
    linktype: int
    data: bytes


def read_frames(path: str) -> Iterator[Frame]:
    with open(path, "rb") as f:
        magic = f.read(4)
        if len(magic) < 4:
            raise CaptureError(f"{path}: empty or truncated capture")
        if magic == b"\x0a\x0d\x0d\x0a":
            yield from _pcapng(f, path)
        else:
            yield from _pcap(f, magic, path)


_PCAP_MAGIC = {
    b"\xd4\xc3\xb2\xa1": ("<", 1e-6),
    b"\xa1\xb2\xc3\xd4": (">", 1e-6),
    b"\x4d\x3c\xb2\xa1": ("<", 1e-9),
    b"\xa1\xb2\x3c\x4d": (">", 1e-9),
}


def _pcap(f: BinaryIO, magic: bytes, path: str) -> Iterator[Frame]:
    if magic not in _PCAP_MAGIC:
        raise CaptureError(f"{path}: not a pcap or pcapng file")
    endian, scale = _PCAP_MAGIC[magic]
    header = f.read(20)
    if len(header) < 20:
        raise CaptureError(f"{path}: truncated pcap header")
    linktype = struct.unpack(endian + "HHiIII", header)[5] & 0x0FFFFFFF
    rec = struct.Struct(endian + "IIII")
    number = 0
    while True:
        head = f.read(16)
        if len(head) < 16:
            return
        sec, frac, caplen, _ = rec.unpack(head)
        data = f.read(caplen)
        if len(data) < caplen:
            return  # a truncated last record, as tcpdump leaves when killed
        number += 1
        yield Frame(number, sec + frac * scale, linktype, data)


def _pcapng(f: BinaryIO, path: str) -> Iterator[Frame]:
    endian = "<"
    interfaces: list[tuple[int, float]] = []
    number = 0
    f.seek(0)
    while True:
        head = f.read(8)
        if len(head) < 8:
            return
        btype = struct.unpack(endian + "I", head[:4])[0]
        if btype == 0x0A0D0D0A:
            bom = f.read(4)
            endian = "<" if bom == b"\x4d\x3c\x2b\x1a" else ">"
            blen = struct.unpack(endian + "I", head[4:])[0]
            body = f.read(blen - 12)
            interfaces = []
            continue
        blen = struct.unpack(endian + "I", head[4:])[0]
        if blen < 12:
            raise CaptureError(f"{path}: bad pcapng block length {blen}")
        body = f.read(blen - 8)
        if len(body) < blen - 8:
            return
        if btype == 1:  # interface description
            linktype = struct.unpack_from(endian + "H", body)[0]
            interfaces.append((linktype, _tsresol(body[8:-4], endian)))
        elif btype == 6:  # enhanced packet
            iface, th, tl, caplen = struct.unpack_from(endian + "IIII", body)
            linktype, scale = interfaces[iface] if iface < len(interfaces) else (1, 1e-6)
            number += 1
            yield Frame(number, ((th << 32) | tl) * scale, linktype, body[20 : 20 + caplen])
        elif btype == 3:  # simple packet
            linktype, _ = interfaces[0] if interfaces else (1, 1e-6)
            number += 1
            yield Frame(number, 0.0, linktype, body[4:-4])


def _tsresol(options: bytes, endian: str) -> float:
    off = 0
    while off + 4 <= len(options):
        code, length = struct.unpack_from(endian + "HH", options, off)
        if code == 0:
            break
        if code == 9 and length >= 1:
            v = options[off + 4]
            return 2.0 ** -(v & 0x7F) if v & 0x80 else 10.0 ** -v
        off += 4 + ((length + 3) & ~3)
    return 1e-6
