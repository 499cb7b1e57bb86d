"""Reading pcap and pcapng files (stdlib only, no scapy): frames with time and link type.

A file that is not a capture, or whose structure is broken (a block length
that cannot be, a block too short for its fields), raises `CaptureError`
naming the file and the byte offset. A capture cut short (tcpdump killed
mid-write, a copy of a file still being written) is not an error: the frames
before the cut are read and `warn` is told where it ends.

NFLOG captures (link type 239: `tcpdump -i nflog:N`, what an iptables/nft
`log group N` rule feeds) carry the IP packet in a TLV; it is unwrapped here
and handed on as a raw IP frame (link type 101).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterator

from .errors import AlgError

LINKTYPE_RAW = 101
LINKTYPE_NFLOG = 239
_NFULA_PAYLOAD = 9  # include/uapi/linux/netfilter/nfnetlink_log.h
MAX_RECORD = 1 << 24  # bytes; larger is a corrupt length, not a packet


class CaptureError(AlgError):
    """The file is not a capture we can read."""


@dataclass(frozen=True, slots=True)
class Frame:
    number: int  # 1-based, as Wireshark counts
    time: float
    linktype: int
    data: bytes


Warn = Callable[[str], None]


def _ignore(_msg: str) -> None:
    pass


def read_frames(path: str, warn: Warn | None = None) -> Iterator[Frame]:
    """The frames of a pcap or pcapng file; `warn` hears of a truncated file."""
    warn = warn or _ignore
    with open(path, "rb") as f:
        magic = f.read(4)
        if len(magic) < 4:
            raise CaptureError(f"{path}: empty or truncated capture")
        frames = _pcapng(f, path, warn) if magic == b"\x0a\x0d\x0d\x0a" else _pcap(f, magic, path, warn)
        for frame in frames:
            if frame.linktype == LINKTYPE_NFLOG:
                payload = nflog_payload(frame.data)
                if payload is not None:
                    frame = Frame(frame.number, frame.time, LINKTYPE_RAW, payload)
            yield frame


_PCAP_MAGIC = {
    b"\xd4\xc3\xb2\xa1": ("<", 1e-6),
    b"\xa1\xb2\xc3\xd4": (">", 1e-6),
    b"\x4d\x3c\xb2\xa1": ("<", 1e-9),
    b"\xa1\xb2\x3c\x4d": (">", 1e-9),
}


def _pcap(f: BinaryIO, magic: bytes, path: str, warn: Warn) -> Iterator[Frame]:
    if magic not in _PCAP_MAGIC:
        raise CaptureError(f"{path}: not a pcap or pcapng file")
    endian, scale = _PCAP_MAGIC[magic]
    header = f.read(20)
    if len(header) < 20:
        raise CaptureError(f"{path}: truncated pcap header")
    linktype = struct.unpack(endian + "HHiIII", header)[5] & 0x0FFFFFFF
    rec = struct.Struct(endian + "IIII")
    number, offset = 0, 24
    while True:
        head = f.read(16)
        if not head:
            return
        if len(head) < 16:
            warn(f"{path}: truncated at offset {offset}: record header cut short after {number} frames")
            return
        sec, frac, caplen, _ = rec.unpack(head)
        if caplen > MAX_RECORD:
            raise CaptureError(f"{path}: offset {offset}: record length {caplen} is not plausible (corrupt file)")
        data = f.read(caplen)
        if len(data) < caplen:  # a truncated last record, as tcpdump leaves when killed
            warn(f"{path}: truncated at offset {offset}: frame {number + 1} has {len(data)} of {caplen} bytes")
            return
        number += 1
        offset += 16 + caplen
        yield Frame(number, sec + frac * scale, linktype, data)


_BOM = {b"\x4d\x3c\x2b\x1a": "<", b"\x1a\x2b\x3c\x4d": ">"}
# minimal block sizes (type, length, fixed fields, trailing length)
_MIN_BLOCK = {0x0A0D0D0A: 28, 1: 20, 6: 32, 3: 16}


def _pcapng(f: BinaryIO, path: str, warn: Warn) -> Iterator[Frame]:
    endian = "<"
    interfaces: list[tuple[int, float]] = []
    number = 0
    offset = 0
    f.seek(0)
    while True:
        head = f.read(8)
        if not head:
            return
        if len(head) < 8:
            warn(f"{path}: truncated at offset {offset}: block header cut short after {number} frames")
            return
        if head[:4] == b"\x0a\x0d\x0d\x0a":  # section header: its byte-order magic sets the endianness
            bom = f.read(4)
            if bom not in _BOM:
                if len(bom) < 4:
                    warn(f"{path}: truncated at offset {offset}: section header cut short")
                    return
                raise CaptureError(f"{path}: offset {offset}: section header with unknown byte-order magic")
            endian = _BOM[bom]
            btype, blen = 0x0A0D0D0A, struct.unpack(endian + "I", head[4:])[0]
            body = bom + f.read(max(0, blen - 12))
        else:
            btype, blen = struct.unpack(endian + "II", head)
            if blen > MAX_RECORD:
                raise CaptureError(f"{path}: offset {offset}: block length {blen} is not plausible (corrupt file)")
            body = f.read(max(0, blen - 8))
        if blen < _MIN_BLOCK.get(btype, 12) or blen % 4:
            raise CaptureError(f"{path}: offset {offset}: block type {btype:#x} with impossible length {blen}")
        if len(body) < blen - 8:
            warn(f"{path}: truncated at offset {offset}: block of {blen} bytes cut short after {number} frames")
            return
        at = offset
        offset += blen
        if btype == 0x0A0D0D0A:
            interfaces = []
        elif btype == 1:  # interface description
            linktype = struct.unpack_from(endian + "H", body)[0]
            interfaces.append((linktype, _tsresol(body[8:-4], endian)))
        elif btype == 6:  # enhanced packet
            iface, th, tl, caplen = struct.unpack_from(endian + "IIII", body)
            if iface >= len(interfaces):
                raise CaptureError(f"{path}: offset {at}: packet of interface {iface}, which was not described")
            if 20 + caplen > len(body) - 4:
                raise CaptureError(f"{path}: offset {at}: packet length {caplen} exceeds its block")
            linktype, scale = interfaces[iface]
            number += 1
            yield Frame(number, ((th << 32) | tl) * scale, linktype, body[20 : 20 + caplen])
        elif btype == 3:  # simple packet
            if not interfaces:
                raise CaptureError(f"{path}: offset {at}: packet before any interface description")
            number += 1
            yield Frame(number, 0.0, interfaces[0][0], body[4:-4])


def _tsresol(options: bytes, endian: str) -> float:
    off = 0
    while off + 4 <= len(options):
        code, length = struct.unpack_from(endian + "HH", options, off)
        if code == 0:
            break
        if code == 9 and length >= 1 and off + 4 < len(options):
            v = options[off + 4]
            return 2.0 ** -(v & 0x7F) if v & 0x80 else 10.0 ** -v
        off += 4 + ((length + 3) & ~3)
    return 1e-6


def nflog_payload(frame: bytes) -> bytes | None:
    """The packet in an NFLOG frame (LINKTYPE_NFLOG), or None.

    Layout (tcpdump's LINKTYPE_NFLOG): family, version, resource id (4 bytes),
    then TLVs of length (header included) and type, 16 bits each in the
    capturing host's byte order, each padded to 4 bytes; NFULA_PAYLOAD holds
    the network-layer packet."""
    for endian in ("<", ">"):
        off = 4
        while off + 4 <= len(frame):
            length, tlv_type = struct.unpack_from(endian + "HH", frame, off)
            if length < 4 or off + length > len(frame):
                break
            if tlv_type & 0x7FFF == _NFULA_PAYLOAD:
                return frame[off + 4 : off + length]
            off += (length + 3) & ~3
    return None
