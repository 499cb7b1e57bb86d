"""Hand-built H.225.0 / H.245 messages in aligned PER (X.691), for the H.323 helper's tests.

A tiny writer (bits, alignment, length determinants, open types) and one builder per message the
helper reads; each builder follows the ASN.1 of H.225.0 v4+ / H.245 field by field (the comments
name the fields), so that a test can also break one field on purpose.
"""

from __future__ import annotations

import ipaddress
import struct

H225_OID = bytes.fromhex("0008914a0004")  # itu-t(0) recommendation(0) h(8) 2250 version(4)


class W:
    def __init__(self) -> None:
        self.bits: list[int] = []

    def put(self, value: int, n: int) -> "W":
        self.bits += [(value >> (n - 1 - i)) & 1 for i in range(n)]
        return self

    def align(self) -> "W":
        while len(self.bits) % 8:
            self.bits.append(0)
        return self

    def octets(self, data: bytes) -> "W":
        self.align()
        for b in data:
            self.put(b, 8)
        return self

    def length(self, n: int) -> "W":
        self.align()
        return self.put(n, 8) if n < 128 else self.put(0x8000 | n, 16)

    def open(self, inner: bytes) -> "W":
        return self.length(len(inner)).octets(inner)

    def small(self, n: int) -> "W":
        return self.put(n, 7)

    def word(self, v: int) -> "W":
        return self.octets(struct.pack("!H", v))

    def done(self) -> bytes:
        self.align()
        return bytes(int("".join(map(str, self.bits[i:i + 8])), 2) for i in range(0, len(self.bits), 8))


def h225_address(w: W, addr: str, port: int) -> W:
    ip = ipaddress.ip_address(addr)
    if ip.version == 4:  # TransportAddress CHOICE (ext, 7 root): ipAddress SEQUENCE {ip, port}
        return w.put(0, 1).put(0, 3).octets(ip.packed).word(port)
    return w.put(0, 1).put(3, 3).put(0, 1).octets(ip.packed).word(port)  # ip6Address SEQUENCE ext


def h245_address(w: W, addr: str, port: int) -> W:
    ip = ipaddress.ip_address(addr)
    w.put(0, 1).put(0, 1)  # TransportAddress CHOICE ext: unicastAddress
    w.put(0, 1).put(0 if ip.version == 4 else 2, 3)  # UnicastAddress ext: iPAddress / iP6Address
    return w.put(0, 1).octets(ip.packed).word(port)  # SEQUENCE ext {network, tsapIdentifier}


def h2250(media: tuple | None = None, control: tuple | None = None, session: int = 1) -> bytes:
    """H2250LogicalChannelParameters (ext, 10 optional root fields)."""
    w = W().put(0, 1)
    w.put(0, 1).put(0, 1).put(media is not None, 1).put(0, 1).put(control is not None, 1).put(0, 5)
    w.octets(bytes([session]))  # sessionID INTEGER (0..255)
    if media:
        h245_address(w, *media)
    if control:
        h245_address(w, *control)
    return w.done()


def olc(media: tuple | None = None, control: tuple | None = None, reverse: tuple | None = None,
        t120: tuple | None = None, w: W | None = None) -> bytes:
    """OpenLogicalChannel: forward g711Alaw64k (or T.120 data) over H.225.0, optional reverse, separateStack."""
    w = (w or W()).put(t120 is not None, 1).put(reverse is not None, 1)
    w.word(100)  # forwardLogicalChannelNumber (1..65535) - 1
    w.put(0, 1).put(0, 1)  # forwardLogicalChannelParameters: ext, portNumber absent
    if t120 is None:
        w.put(0, 1).put(3, 3).put(0, 1).put(1, 4).octets(b"\x13")  # audioData g711Alaw64k 20 frames
    else:  # data: DataApplicationCapability {application t120 separateLANStack, maxBitRate}
        w.put(0, 1).put(4, 3).put(0, 1).put(0, 1).put(1, 4).put(1, 1).small(3).open(b"")
        w.put(1, 2).octets(b"\x10\x00")
    w.put(1, 1).small(0).open(h2250(media, control))  # multiplexParameters: h2250 (extension 0)
    if reverse is not None:  # reverseLogicalChannelParameters {dataType, multiplexParameters h2250}
        w.put(0, 1).put(1, 1).put(0, 1).put(3, 3).put(0, 1).put(1, 4).octets(b"\x13")
        w.put(1, 1).small(0).open(h2250(*reverse))
    if t120 is not None:  # extension additions: separateStack (0)
        w.small(0).put(1, 1).open(network_access(*t120))
    return w.done()


def network_access(addr: str, port: int) -> bytes:
    """NetworkAccessParameters {networkAddress localAreaAddress, associateConference}."""
    w = W().put(0, 1).put(0, 2).put(0, 1).put(2, 2)
    h245_address(w, addr, port)
    return w.put(0, 1).done()


def olca(media: tuple | None = None, control: tuple | None = None, w: W | None = None) -> bytes:
    """OpenLogicalChannelAck with forwardMultiplexAckParameters h2250LogicalChannelAckParameters."""
    w = (w or W()).put(1, 1).put(0, 1).word(100)
    w.small(1).put(0b01, 2)  # two additions known, forwardMultiplexAckParameters (1) present
    ack = W().put(0, 1)  # CHOICE ext, one root alternative (no index bits): h2250LogicalChannelAckParameters
    ack.put(0, 1).put(0, 1).put(1, 1).put(media is not None, 1).put(control is not None, 1).put(0, 1)
    ack.put(0, 8)  # sessionID (1..255)
    if media:
        h245_address(ack, *media)
    if control:
        h245_address(ack, *control)
    w.open(ack.done())
    return w.done()


def request_olc(**kw) -> bytes:
    """MultimediaSystemControlMessage request openLogicalChannel."""
    return olc(w=W().put(0, 1).put(0, 2).put(0, 1).put(3, 4), **kw)


def response_olca(**kw) -> bytes:
    """MultimediaSystemControlMessage response openLogicalChannelAck."""
    return olca(w=W().put(0, 1).put(1, 2).put(0, 1).put(5, 5), **kw)


def endpoint(w: W, vendor: bool = True) -> W:
    """EndpointType {vendor {H221 vendor, productId}, terminal {}, mc, undefinedNode}."""
    w.put(0, 1).put(0, 1).put(vendor, 1).put(0, 1).put(0, 1).put(0, 1).put(1, 1)
    if vendor:
        w.put(0, 1).put(0b10, 2).put(0, 1).octets(b"\xb5\x00").word(0x5066)  # VendorIdentifier, H221
        w.octets(bytes([len(b"alg") - 1]) + b"alg")  # productId OCTET STRING (1..256)
    w.put(0, 1).put(0, 1)  # terminal TerminalInfo: ext, nonStandardData absent
    return w.put(0, 1).put(0, 1)  # mc, undefinedNode


def head(body: int, tunnel: bool = False) -> W:
    """H323-UserInformation {h323-uu-pdu {h323-message-body CHOICE index ...: the body follows."""
    return W().put(0, 1).put(0, 1).put(tunnel, 1).put(0, 1).put(0, 1).put(body, 3)


def uuie(w: W, tunnel: list[bytes] | None = None) -> bytes:
    """Ends an H323-UserInformation begun with `head`: the h245Control tunnel, if any."""
    if tunnel is not None:  # additions: h4501SupplementaryService, h245Tunneling, h245Control
        w.small(2).put(0b011, 3).open(W().put(1, 1).done())
        items = W().length(len(tunnel))
        for item in tunnel:
            items.open(item)
        w.open(items.done())
    return w.done()


def setup(h245: tuple | None = None, fast: list[bytes] | None = None, alias: str = "alice") -> bytes:
    w = head(0).put(fast is not None, 1)
    w.put(h245 is not None, 1).put(1, 1).put(0, 5)  # h245Address, sourceAddress; no others
    w.length(len(H225_OID)).octets(H225_OID)
    if h245:
        h225_address(w, *h245)
    w.length(1).put(0, 1).put(1, 1).octets(bytes([len(alias) - 1]) + alias.encode("utf-16-be"))  # h323-ID
    endpoint(w)
    w.put(0, 1).octets(b"\x11" * 16).put(0, 1).put(0, 2).put(0, 1).put(0, 2)  # activeMC, conferenceID, goal, type
    if fast is not None:  # additions 0-6: fastStart is the 7th
        fast_start(w, fast, 6)
    return uuie(w)


def fast_start(w: W, items: list[bytes], index: int) -> W:
    """The extension additions of a UUIE up to fastStart (the `index`th), only it present."""
    w.small(index).put(1, index + 1)
    seq = W().length(len(items))
    for item in items:
        seq.open(item)
    return w.open(seq.done())


def connect(h245: tuple | None = None, fast: list[bytes] | None = None) -> bytes:
    w = head(2).put(fast is not None, 1).put(h245 is not None, 1).length(len(H225_OID)).octets(H225_OID)
    if h245:
        h225_address(w, *h245)
    endpoint(w, vendor=False).octets(b"\x22" * 16)
    if fast is not None:  # additions: callIdentifier, h245SecurityMode, tokens, cryptoTokens, fastStart
        fast_start(w, fast, 4)
    return uuie(w)


def facility(alternative: tuple | None = None, reason: int = 1, h245: tuple | None = None,
             tunnel: list[bytes] | None = None) -> bytes:
    w = head(6, tunnel is not None).put(h245 is not None, 1).put(alternative is not None, 1).put(0, 2)
    w.length(len(H225_OID)).octets(H225_OID)
    if alternative:
        h225_address(w, *alternative)
    w.put(0, 1).put(reason, 2)  # reason CHOICE ext: callForwarded = 1, undefinedReason = 3
    if h245:  # additions 0-5 absent, h245Address (6)
        w.small(6).put(0b0000001, 7).open(h225_address(W(), *h245).done())
    return uuie(w, tunnel)


def q931(user_info: bytes, message_type: int = 0x05, crv: bytes = b"\x00\x01") -> bytes:
    """A Q.931 message (bearer capability, display, User-user IE) in a TPKT."""
    body = bytes([0x08, len(crv)]) + crv + bytes([message_type])
    body += b"\xa1"  # a single-octet IE (sending complete)
    body += b"\x04\x03\x88\x93\xa5" + b"\x28\x05alice"  # bearer capability, display
    body += b"\x7e" + struct.pack("!H", len(user_info) + 1) + b"\x05" + user_info
    return tpkt(body)


def tpkt(body: bytes) -> bytes:
    return struct.pack("!BBH", 3, 0, len(body) + 4) + body


def ras(index: int) -> W:
    return W().put(0, 1).put(index, 5)  # RasMessage CHOICE (ext, 25 root)


def rrq(addresses: list[tuple], ras_address: tuple = ("10.0.1.2", 1719)) -> bytes:
    """RegistrationRequest: callSignalAddress list, rasAddress, terminalType, endpointVendor."""
    w = ras(3).put(0, 1).put(0, 3).word(7).length(len(H225_OID)).octets(H225_OID).put(1, 1)
    w.length(len(addresses))
    for a in addresses:
        h225_address(w, *a)
    h225_address(w.length(1), *ras_address)
    endpoint(w)
    return w.put(0, 1).put(0, 2).put(0, 1).octets(b"\xb5\x00").word(0x5066).done()  # endpointVendor


def acf(address: tuple) -> bytes:
    w = ras(10).put(0, 1).put(0, 2).word(8).put(1, 2).octets(b"\x02\x80").put(0, 1).put(0, 1)  # bandWidth 640
    return h225_address(w, *address).done()


def lcf(address: tuple) -> bytes:
    """LocationConfirm: callSignalAddress, rasAddress (the located endpoint's, on 1719)."""
    w = h225_address(ras(19).put(0, 1).put(0, 1).word(9), *address)
    return h225_address(w, address[0], 1719).done()


def gcf(address: tuple) -> bytes:
    w = ras(1).put(0, 1).put(0, 2).word(1).length(len(H225_OID)).octets(H225_OID)
    return h225_address(w, *address).done()


def urq() -> bytes:
    return ras(6).put(0, 1).put(0, 3).word(10).length(0).done()
