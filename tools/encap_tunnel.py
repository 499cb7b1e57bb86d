#!/usr/bin/env python3
"""A userspace point-to-point tunnel for recording encapsulated captures (root).

The development host's kernel has no 8021q, ipip, sit, ip_gre, MPLS routing
or PPP modules, so `tools/record-encap.sh` carries real traffic (vsftpd and
curl, in two network namespaces) through this instead: every IP packet the
kernel routes into the TUN device is wrapped in the chosen encapsulation and
sent as an Ethernet frame on the underlay interface (where tcpdump records
it); frames arriving there in the same encapsulation are unwrapped and
written back to the TUN device. Each side builds fixed headers, so
unwrapping is stripping a known prefix.

    encap_tunnel.py MODE UNDERLAY TUN LOCAL_MAC PEER_MAC LOCAL_IP4 PEER_IP4 LOCAL_IP6 PEER_IP6 [tap]

With `tap` the overlay device is a TAP (Ethernet) device, for clients that
refuse a device without a hardware address (ISC dhclient): its Ethernet
header is dropped on the way in and made up on the way out, so only IP
(IPv6 neighbour discovery included, not ARP) crosses.

Modes: vlan (802.1Q), qinq (802.1ad + 802.1Q), mpls (two labels), pppoe
(session stage, PPP IPv4/IPv6), gre (with a key), ipip (IPv4 or IPv6 in
IPv4: protocol 4 / 41, i.e. 6in4), ip6 (IPv4 or IPv6 in IPv6), erspan2 and
erspan3 (GRE carrying the packet in an Ethernet frame). Not part of alg.
"""

from __future__ import annotations

import fcntl
import os
import select
import socket
import struct
import sys

TUNSETIFF, IFF_TUN, IFF_TAP, IFF_NO_PI = 0x400454CA, 0x0001, 0x0002, 0x1000
ETH_IP = {b"\x08\x00", b"\x86\xdd"}
ETH_P_ALL = 0x0003
INNER_MACS = bytes.fromhex("020000000b02020000000b01")  # the mirrored frame's dst, src (ERSPAN)


def checksum(data: bytes) -> int:
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    return ~(s + (s >> 16)) & 0xFFFF


def ipv4(src: bytes, dst: bytes, proto: int, payload: bytes) -> bytes:
    head = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0x4000, 64, proto, 0, src, dst)
    return head[:10] + struct.pack("!H", checksum(head)) + head[12:] + payload


def ipv6(src: bytes, dst: bytes, nxt: int, payload: bytes) -> bytes:
    return struct.pack("!IHBB16s16s", 0x60000000, len(payload), nxt, 64, src, dst) + payload


class Tunnel:
    def __init__(self, mode: str, mac: bytes, peer: bytes, ip4: tuple[bytes, bytes], ip6: tuple[bytes, bytes]):
        self.mode, self.mac, self.peer, self.ip4, self.ip6 = mode, mac, peer, ip4, ip6
        self.seq = 0
        self.hlen = len(self.wrap(b"\x45" + bytes(19))) - 20  # our headers are the same for any packet

    def wrap(self, pkt: bytes) -> bytes:
        v6 = pkt[0] >> 4 == 6
        etype = struct.pack("!H", 0x86DD if v6 else 0x0800)
        eth = self.peer + self.mac
        m = self.mode
        if m == "vlan":
            return eth + b"\x81\x00" + struct.pack("!H", 100) + etype + pkt
        if m == "qinq":
            return eth + b"\x88\xa8" + struct.pack("!H", 200) + b"\x81\x00" + struct.pack("!H", 100) + etype + pkt
        if m == "mpls":  # label 1000, then label 2000 with bottom of stack; TTL 64
            return eth + b"\x88\x47" + struct.pack("!II", 1000 << 12 | 64, 2000 << 12 | 0x100 | 64) + pkt
        if m == "pppoe":  # ver 1 type 1, code 0 (session data), session 0x0042, length, PPP protocol
            ppp = (b"\x00\x57" if v6 else b"\x00\x21") + pkt
            return eth + b"\x88\x64" + struct.pack("!BBHH", 0x11, 0, 0x0042, len(ppp)) + ppp
        if m == "gre":  # key present (K), protocol = inner ethertype
            return eth + b"\x08\x00" + ipv4(*self.ip4, 47, b"\x20\x00" + etype + struct.pack("!I", 0x1234) + pkt)
        if m == "ipip":
            return eth + b"\x08\x00" + ipv4(*self.ip4, 41 if v6 else 4, pkt)
        if m == "ip6":
            return eth + b"\x86\xdd" + ipv6(*self.ip6, 41 if v6 else 4, pkt)
        frame = INNER_MACS + etype + pkt
        self.seq += 1
        if m == "erspan2":  # GRE with S; ERSPAN II: ver 1 | vlan 0, cos 0 en 3 t 0 | session 7, index 0
            gre = struct.pack("!HHI", 0x1000, 0x88BE, self.seq) + struct.pack("!HHI", 0x1000, 0x1807, 0)
            return eth + b"\x08\x00" + ipv4(*self.ip4, 47, gre + frame)
        if m == "erspan3":  # GRE with S; ERSPAN III: ver 2, session 7, timestamp, sgt, hw id, O set
            head = struct.pack("!HHIHH", 0x2000, 0x0007, self.seq * 1000, 0, 0x0001)
            platform = struct.pack("!II", 0x0C000000, 0)  # platform sub-header (type 3)
            gre = struct.pack("!HHI", 0x1000, 0x22EB, self.seq)
            return eth + b"\x08\x00" + ipv4(*self.ip4, 47, gre + head + platform + frame)
        raise SystemExit(f"unknown mode {m}")

    def unwrap(self, frame: bytes) -> bytes | None:
        """The packet in a frame from the peer (the underlay carries nothing else:
        record-encap.sh turns IPv6 off on it), or None."""
        if frame[:6] != self.mac or frame[6:12] != self.peer:
            return None
        if self.mode in ("vlan", "qinq"):  # AF_PACKET hands the frame over with its outer tag taken off
            off = 12
            while frame[off:off + 2] in (b"\x81\x00", b"\x88\xa8"):
                off += 4
            return frame[off + 2:] or None
        return frame[self.hlen:] or None


def main() -> None:
    mode, underlay, tun_name, mac, peer, l4, p4, l6, p6 = sys.argv[1:10]
    tap = sys.argv[10:] == ["tap"]
    tunnel = Tunnel(mode, bytes.fromhex(mac.replace(":", "")), bytes.fromhex(peer.replace(":", "")),
                    (socket.inet_aton(l4), socket.inet_aton(p4)),
                    (socket.inet_pton(socket.AF_INET6, l6), socket.inet_pton(socket.AF_INET6, p6)))
    tun = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(tun, TUNSETIFF, struct.pack("16sH22x", tun_name.encode(), (IFF_TAP if tap else IFF_TUN) | IFF_NO_PI))
    tap_mac = b""
    raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    raw.bind((underlay, 0))
    print("ready", flush=True)
    while True:
        ready, _, _ = select.select([tun, raw], [], [])
        if tun in ready:
            pkt = os.read(tun, 65535)
            if tap:
                tap_mac = pkt[6:12]
                if pkt[12:14] not in ETH_IP:
                    continue
                pkt = pkt[14:]
            raw.send(tunnel.wrap(pkt))
        if raw in ready:
            frame, addr = raw.recvfrom(65535)
            if addr[2] == socket.PACKET_OUTGOING:
                continue
            inner = tunnel.unwrap(frame)
            if inner is not None and inner[0] >> 4 in (4, 6):
                if tap:
                    etype = b"\x86\xdd" if inner[0] >> 4 == 6 else b"\x08\x00"
                    inner = (tap_mac or b"\xff" * 6) + INNER_MACS[:6] + etype + inner
                try:
                    os.write(tun, inner)
                except OSError:  # t0 not up yet, or not a packet of ours: dropped, as a link would
                    pass


if __name__ == "__main__":
    main()
