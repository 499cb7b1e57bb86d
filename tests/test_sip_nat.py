"""SIP through a masquerading gateway: what the SIP helper names for the core
to rewrite, and what leaves the gateway, on the daemon's packet path against a
kernel in userspace (tests/fakekernel.py), as the kernel's nf_nat_sip does.

The phone 10.0.1.2 (port 5061) is behind the gateway, whose public address is
192.0.2.1; masquerade maps the phone's port to 1024 (so that a port that is
not rewritten shows). The server 10.0.2.2:5060 is outside. The messages are
the SIPp ones of tests/pcaps/sip-sipp-* (a phone's INVITE, REGISTER; the
server's answers as it sends them under NAT: echoing the public address the
gateway wrote in them)."""

from __future__ import annotations

import ipaddress
import struct
from pathlib import Path

import pytest
from fakekernel import SYN, FakeKernel
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alg import Direction, FlowTuple, Length, NatMap, Rewrite, Segment
from alg.daemon import Daemon
from alg.decode import NotDecoded, decode_frame
from alg.nat import checksum
from alg.pcap import read_frames
from alg.plugins import load_plugins
from alg_helpers.sip import SipHelper

HOST = load_plugins()
PCAPS = Path(__file__).parent / "pcaps"
PHONE, SERVER, PUBLIC, PORT = "10.0.1.2", "10.0.2.2", "192.0.2.1", 1024
PHONE6, SERVER6, PUBLIC6 = "fd00:1::2", "fd00:2::2", "2001:db8::1"
ip = ipaddress.ip_address
Q = 5


def _sip_messages(path: Path) -> list[tuple[str, bytes]]:
    """(sender address, payload) of each SIP datagram of a capture, in order."""
    out = []
    for f in read_frames(str(path)):
        try:
            p = decode_frame(f.linktype, f.data)
        except NotDecoded:  # ARP
            continue
        if p.payload and 5060 in (p.sport, p.dport) and b"SIP/2.0" in p.payload[:120]:
            out.append((str(ip(p.src)), p.payload))
    return out


def captured(case: str) -> list[bytes]:
    """The SIP messages of a capture in tests/pcaps, in order."""
    return [m for _src, m in _sip_messages(PCAPS / case / "capture.pcap")]


UDP4 = captured("sip-sipp-udp4")
INVITE, OK = UDP4[0], UDP4[3]  # INVITE with SDP audio 16000, video 16002; its 200 with 20000, 20002
REINVITE = UDP4[5]  # audio moves to 16004, video port 0
REGISTER, REGISTERED = UDP4[-4], UDP4[-3]
AS_SENT = (b"10.0.1.2:5061", b"192.0.2.1:1024")  # the phone's endpoint, inside and outside


def masquerade(sport: int) -> NatMap:
    """The phone's UDP conntrack to the server, its source the public endpoint."""
    return NatMap(FlowTuple(4, 17, ip(PHONE), ip(SERVER), sport, 5060),
                  FlowTuple(4, 17, ip(SERVER), ip(PUBLIC), 5060, PORT))


def daemon(tmp_path: Path, k: FakeKernel, policy: str = "") -> Daemon:
    (tmp_path / "sip.toml").write_text(f'helper = "sip"\nqueue = {Q}\n{policy}')
    (tmp_path / "alg.toml").write_text(f'[core]\nstatus_socket = "{tmp_path}/alg.sock"\n')
    d = Daemon(HOST, [str(tmp_path / "sip.toml"), str(tmp_path / "alg.toml")], kernel=k.ports())
    for slot in d.engine.slots.values():
        d._register(slot)
    d.reconciler = None
    return d


class Call:
    """One SIP conntrack through the fake kernel; `send` returns what left the gateway."""

    def __init__(self, tmp_path: Path, proto: int = 17, l3: int = 4, k: FakeKernel | None = None,
                 d: Daemon | None = None, phone: str = PHONE, sport: int = 5061, dnat: str | None = None,
                 public: str | None = None, port: int = PORT):
        self.k = k or FakeKernel()
        if d is None:
            tmp_path.mkdir(exist_ok=True)
        self.d = d or daemon(tmp_path, self.k)
        server, public = (SERVER, public or PUBLIC) if l3 == 4 else (SERVER6, public or PUBLIC6)
        if dnat:  # the caller outside calls the gateway, which forwards to the server `dnat` inside
            self.cid = self.k.connect("sip", l3, proto, phone, public, sport, 5060, reply_src=dnat)
        else:
            self.cid = self.k.connect("sip", l3, proto, phone, server, sport, 5060, reply_dst=public,
                                      reply_dport=port)
        self.proto, self.seq = proto, [1000, 5000]
        self.created: set[tuple] = set()  # (class, src, dst, dport) of every expectation made
        if proto == 6:
            self.send(False, b"", SYN)
            self.send(True, b"", SYN | 0x10)

    def send(self, reply: bool, data: bytes, flags: int = 0x18) -> bytes:
        self.before = {e.key for e in self.d.engine.table}
        self.k.send(Q, self.cid, reply, data, self.seq[reply], flags)
        self.seq[reply] += len(data) + (1 if flags & SYN else 0)
        self.d.workers[Q].serve()
        self.d.sink.run_due()
        self.created |= {(e.cls, str(e.src), str(e.dst), e.dport) for e in self.d.engine.table
                         if e.key not in self.before}
        v = self.k.queues[Q].verdicts[-1]
        assert v.accept
        self.ct = v.ct
        return data if v.payload is None else _payload(v.payload)

    def expected(self) -> list:
        """The expectations the last message created (on the verdict or over ctnetlink):
        (class, dst, dport, nat)."""
        return sorted((e.cls, str(e.dst), e.dport, e.nat and (int(e.nat[0]), str(e.nat[1]), e.nat[2]))
                      for e in self.d.engine.table if e.key not in self.before)

    def stats(self) -> dict:
        return self.d.engine.stats()["helpers"]["sip"]


def _payload(raw: bytes) -> bytes:
    """The L4 payload of an IPv4 or IPv6 packet, after checking its lengths and checksums."""
    if raw[0] >> 4 == 4:
        ihl = (raw[0] & 0xF) * 4
        assert struct.unpack_from("!H", raw, 2)[0] == len(raw) and checksum(raw[:ihl]) == 0
        proto, pseudo = raw[9], raw[12:20] + struct.pack("!BBH", 0, raw[9], len(raw) - ihl)
    else:
        ihl, proto = 40, raw[6]
        assert struct.unpack_from("!H", raw, 4)[0] == len(raw) - 40
        pseudo = raw[8:40] + struct.pack("!IxxxB", len(raw) - 40, proto)
    assert checksum(pseudo + raw[ihl:]) == 0
    if proto == 17:
        assert struct.unpack_from("!H", raw, ihl + 4)[0] == len(raw) - ihl
        return raw[ihl + 8:]
    return raw[ihl + (raw[ihl + 12] >> 4) * 4:]


def content_length_right(message: bytes) -> bool:
    head, _, body = message.partition(b"\r\n\r\n")
    value = [line.split(b":", 1)[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")]
    return int(value[0]) == len(body)


def relength(message: bytes) -> bytes:
    """The message with its Content-Length (SIPp's, three spaces before it) set to its body's."""
    head, sep, body = message.partition(b"\r\n\r\n")
    at = head.index(b"Content-Length:   ") + 18
    return head[:at] + b"%d" % len(body) + sep + body


def outside(message: bytes) -> bytes:
    """The phone's message as it must leave the gateway: its endpoint and SDP address the public ones."""
    out = message.replace(*AS_SENT).replace(b"IN IP4 10.0.1.2", b"IN IP4 192.0.2.1")
    head, sep, body = out.partition(b"\r\n\r\n")
    old = message.partition(b"\r\n\r\n")[2]
    if len(body) != len(old):
        head = head.replace(b"Content-Length:   %d" % len(old), b"Content-Length:   %d" % len(body))
    return head + sep + body


def as_the_server_sends(message: bytes) -> bytes:
    """A response of the capture's server as it answers the rewritten request."""
    return message.replace(*AS_SENT)


# ---------------------------------------------------------------- calls from behind the gateway
def test_invite_from_a_phone_behind_masquerade_leaves_with_the_public_endpoint(tmp_path):
    c = Call(tmp_path)
    sent = c.send(False, INVITE)
    assert sent == outside(INVITE) and content_length_right(sent)
    assert b"Call-ID: 1-7597@10.0.1.2\r\n" in sent  # not an endpoint: the kernel leaves it too
    assert b"INVITE sip:alice@10.0.2.2:5060 " in sent  # the server's own
    # the far end sends the media to the public address; the kernel translates it to the phone
    assert c.expected() == [("audio", PUBLIC, p, (1, PHONE, p)) for p in (16000, 16001)] + \
                           [("video", PUBLIC, p, (1, PHONE, p)) for p in (16002, 16003)]
    assert c.ct is not None and c.stats()["rewritten"] == 1 and c.stats()["nat_failed"] == 0


def test_the_200_ok_comes_back_with_the_phones_own_endpoint(tmp_path):
    c = Call(tmp_path)
    c.send(False, INVITE)
    got = c.send(True, as_the_server_sends(OK))
    assert got == OK  # Via and From name the phone again; the server's Contact and SDP are its own
    assert c.expected() == [("audio", SERVER, p, (0, SERVER, p)) for p in (20000, 20001)] + \
                           [("video", SERVER, p, (0, SERVER, p)) for p in (20002, 20003)]


def test_received_and_rport_in_the_answer_are_mapped_back():
    """RFC 3581: the server says where the request came from (the public
    endpoint); the phone is told its own, as the kernel does."""
    nat = masquerade(5061)
    h = SipHelper()
    st = h.new_state()
    h.inspect(Segment(INVITE, Direction.ORIGINAL, nat.original, 0.0, nat=nat), st)
    ok = as_the_server_sends(OK).replace(b"branch=", b"received=192.0.2.1;rport=1024;branch=")
    out = h.inspect(Segment(ok, Direction.REPLY, nat.original, 0.0, nat=nat), st)
    named = {ok[a.offset:a.offset + a.length]: (str(a.addr), a.port, a.form.value) for a in out.actions
             if isinstance(a, Rewrite) and a.offset < ok.index(b"Call-ID")}
    assert named == {b"192.0.2.1:1024": (PUBLIC, PORT, "host:port"), b"192.0.2.1": (PUBLIC, None, "addr"),
                     b"1024": (PUBLIC, PORT, "port")}


def test_every_endpoint_the_kernel_rewrites_is_rewritten(tmp_path):
    """One message with each field: a test that fails without any one rewrite."""
    sdp = (b"v=0\r\no=- 1 1 IN IP4 10.0.1.2\r\ns=-\r\nc=IN IP4 10.0.1.2\r\nt=0 0\r\n"
           b"m=audio 16000 RTP/AVP 0\r\nc=IN IP4 10.0.1.2\r\na=rtcp:16101 IN IP4 10.0.1.2\r\n")
    head = (b"INVITE sip:alice@10.0.2.2 SIP/2.0\r\n"
            b"Via: SIP/2.0/UDP 10.0.1.2:5061;maddr=10.0.1.2;branch=z9hG4bK-1\r\n"
            b"Via: SIP/2.0/UDP 10.0.1.2:5061;branch=z9hG4bK-0\r\n"  # not the topmost: left
            b"f: <sip:a@10.0.1.2:5061>;tag=1\r\nt: <sip:b@10.0.2.2>\r\n"
            b"Record-Route: <sip:10.0.1.2:5061;lr>\r\nRoute: <sip:10.0.2.2;lr>\r\n"
            b"i: x\r\nCSeq: 1 INVITE\r\nm: <sip:a@10.0.1.2:5061>, <sip:a@10.0.1.9:5061>\r\n"
            b"c: application/sdp\r\nl: %d\r\n\r\n")
    c = Call(tmp_path)
    sent = c.send(False, head % len(sdp) + sdp)
    sdp_out = sdp.replace(b"IP4 10.0.1.2", b"IP4 192.0.2.1")
    assert sent == (b"INVITE sip:alice@10.0.2.2 SIP/2.0\r\n"
                    b"Via: SIP/2.0/UDP 192.0.2.1:1024;maddr=192.0.2.1;branch=z9hG4bK-1\r\n"
                    b"Via: SIP/2.0/UDP 10.0.1.2:5061;branch=z9hG4bK-0\r\n"
                    b"f: <sip:a@192.0.2.1:1024>;tag=1\r\nt: <sip:b@10.0.2.2>\r\n"
                    b"Record-Route: <sip:192.0.2.1:1024;lr>\r\nRoute: <sip:10.0.2.2;lr>\r\n"
                    b"i: x\r\nCSeq: 1 INVITE\r\nm: <sip:a@192.0.2.1:1024>, <sip:a@10.0.1.9:5061>\r\n"
                    b"c: application/sdp\r\nl: %d\r\n\r\n" % len(sdp_out) + sdp_out)
    assert ("audio", PUBLIC, 16101, (1, PHONE, 16101)) in c.expected()


def test_media_ports_taken_by_another_phone_move_and_the_sdp_says_where(tmp_path):
    """Two phones offer the same ports: the second's expectations move to the
    next free pair outside, and its m= lines name them."""
    first = Call(tmp_path)
    first.send(False, INVITE)
    second = Call(tmp_path, k=first.k, d=first.d, phone="10.0.1.3")
    sent = second.send(False, INVITE.replace(b"10.0.1.2", b"10.0.1.3"))
    assert b"m=audio 16004 RTP/AVP 0\r\n" in sent and b"m=video 16006 RTP/AVP 96\r\n" in sent
    assert second.expected() == [("audio", PUBLIC, p + 4, (1, "10.0.1.3", p)) for p in (16000, 16001)] + \
                                [("video", PUBLIC, p + 4, (1, "10.0.1.3", p)) for p in (16002, 16003)]
    assert content_length_right(sent)


def test_a_retransmission_names_the_same_moved_ports(tmp_path):
    """The first copy may be lost: the retransmitted INVITE must name the
    outside ports its media are expected on, as the first copy did."""
    first = Call(tmp_path)
    first.send(False, INVITE)
    second = Call(tmp_path, k=first.k, d=first.d, phone="10.0.1.3")
    offer = INVITE.replace(b"10.0.1.2", b"10.0.1.3")
    assert second.send(False, offer) == second.send(False, offer)
    assert b"m=audio 16004 RTP/AVP 0\r\n" in second.send(False, offer)
    assert second.stats()["notices"]["retransmission"] == 2


def test_an_a_rtcp_port_moves_with_its_rtp_port(tmp_path):
    first = Call(tmp_path)
    first.send(False, INVITE)
    second = Call(tmp_path, k=first.k, d=first.d, phone="10.0.1.3")
    offer = INVITE.replace(b"10.0.1.2", b"10.0.1.3").replace(b"a=rtpmap:0 PCMU/8000\r\n",
                                                              b"a=rtpmap:0 PCMU/8000\r\na=rtcp:16001\r\n")
    offer = offer.replace(b"Content-Length:   178", b"Content-Length:   191")
    sent = second.send(False, offer)
    assert b"m=audio 16004 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=rtcp:16005\r\n" in sent


def test_a_reinvite_putting_the_call_on_hold_keeps_0_0_0_0(tmp_path):
    """RFC 3264 §8.4: c=0.0.0.0 is no endpoint; a stream with port 0 opens nothing."""
    c = Call(tmp_path)
    c.send(False, INVITE)
    c.send(True, as_the_server_sends(OK))
    sent = c.send(False, REINVITE)
    assert sent == outside(REINVITE) and b"m=video 0 RTP/AVP 96" in sent
    assert c.expected() == [("audio", PUBLIC, p, (1, PHONE, p)) for p in (16004, 16005)]
    hold = REINVITE.replace(b"CSeq: 2", b"CSeq: 3").replace(b"c=IN IP4 10.0.1.2", b"c=IN IP4 0.0.0.0")
    hold = hold.replace(b"a=rtpmap:8 PCMA/8000\r\n", b"a=rtpmap:8 PCMA/8000\r\na=sendonly\r\n")
    hold = hold.replace(b"Content-Length:   150", b"Content-Length:   161")
    sent = c.send(False, hold)
    assert b"c=IN IP4 0.0.0.0\r\n" in sent and b"o=user1 53655765 2353687637 IN IP4 192.0.2.1\r\n" in sent
    assert content_length_right(sent) and c.expected() == []


# ---------------------------------------------------------------- registration and calls to the phone
def test_register_names_the_public_endpoint_and_its_200_the_phones(tmp_path):
    """A call from outside reaches the phone: the registrar sends to the public
    endpoint, which is this conntrack's reply direction."""
    c = Call(tmp_path)
    sent = c.send(False, REGISTER)
    assert sent == REGISTER.replace(*AS_SENT)
    assert b"Contact: <sip:sipp@192.0.2.1:1024;transport=UDP>" in sent
    assert c.send(True, as_the_server_sends(REGISTERED)) == REGISTERED
    assert [e[:2] for e in c.expected()] == [("signalling", PHONE)]


def test_the_registrars_answer_is_read_for_the_phones_binding(tmp_path):
    """The 200 grants what the gateway wrote (the public endpoint): expires=0
    there is the phone's binding ending, not a stranger's."""
    c = Call(tmp_path)
    c.send(False, REGISTER)
    ended = as_the_server_sends(REGISTERED).replace(b"transport=UDP>", b"transport=UDP>;expires=0")
    c.send(True, ended)
    assert c.expected() == []


def test_a_call_from_outside_to_the_registered_phone(tmp_path):
    """The registrar's INVITE comes to the public endpoint (the REGISTER's
    conntrack, reply direction): its Request-URI names the phone again; the
    phone's answer leaves with the public endpoint and media outside."""
    c = Call(tmp_path)
    c.send(False, REGISTER)
    c.send(True, as_the_server_sends(REGISTERED))
    got = c.send(True, INCOMING)
    assert got == INCOMING.replace(b"192.0.2.1:1024", b"10.0.1.2:5061")  # Request-URI and To
    sent = c.send(False, ANSWER)
    assert sent == outside(ANSWER) and b"Contact: <sip:sipp@192.0.2.1:1024;transport=UDP>" in sent
    assert content_length_right(sent)
    assert c.expected() == [("audio", PUBLIC, p, (1, PHONE, p)) for p in (20000, 20001)]


def _sdp(addr: bytes, port: int) -> bytes:
    return (b"v=0\r\no=user1 53655765 2353687637 IN IP4 %s\r\ns=-\r\nc=IN IP4 %s\r\nt=0 0\r\n"
            b"m=audio %d RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n" % (addr, addr, port))


def _with_sdp(head: bytes, body: bytes) -> bytes:
    return head + b"Content-Type: application/sdp\r\nContent-Length:   %d\r\n\r\n" % len(body) + body


# the capture's server calling the phone at the endpoint it registered, and the phone's answer
INCOMING = _with_sdp(b"INVITE sip:sipp@192.0.2.1:1024;transport=UDP SIP/2.0\r\n"
                     b"Via: SIP/2.0/UDP 10.0.2.2:5060;branch=z9hG4bK-7594-9-0\r\n"
                     b"From: alice <sip:alice@10.0.2.2:5060>;tag=7594SIPpTag009\r\n"
                     b"To: sipp <sip:sipp@192.0.2.1:1024>\r\nCall-ID: 9-7594@10.0.2.2\r\nCSeq: 1 INVITE\r\n"
                     b"Contact: <sip:alice@10.0.2.2:5060;transport=UDP>\r\nMax-Forwards: 70\r\n",
                     _sdp(b"10.0.2.2", 20000))
ANSWER = _with_sdp(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 10.0.2.2:5060;branch=z9hG4bK-7594-9-0\r\n"
                   b"From: alice <sip:alice@10.0.2.2:5060>;tag=7594SIPpTag009\r\n"
                   b"To: sipp <sip:sipp@10.0.1.2:5061>;tag=7597SIPpTag019\r\nCall-ID: 9-7594@10.0.2.2\r\n"
                   b"CSeq: 1 INVITE\r\nContact: <sip:sipp@10.0.1.2:5061;transport=UDP>\r\n",
                   _sdp(b"10.0.1.2", 20000))


def test_a_server_behind_a_port_forward_answers_with_the_public_address(tmp_path):
    """DNAT: the caller 198.51.100.7 outside calls 192.0.2.1:5060, forwarded to
    the server 10.0.2.2 inside. The INVITE's Request-URI and To reach the
    server naming it; its answer's Contact and SDP name the public address,
    its media is expected there and translated to it."""
    caller = "198.51.100.7"
    c = Call(tmp_path, phone=caller, dnat=SERVER)
    invite = INVITE.replace(b"10.0.1.2", caller.encode()).replace(b"10.0.2.2", PUBLIC.encode())
    got = c.send(False, relength(invite))
    assert got.startswith(b"INVITE sip:alice@10.0.2.2:5060 SIP/2.0\r\n")
    assert b"To: alice <sip:alice@10.0.2.2:5060>" in got
    assert b"c=IN IP4 198.51.100.7" in got  # the caller's own: no NAT concerns it
    sent = c.send(True, relength(OK.replace(b"10.0.1.2", caller.encode())))
    assert b"Contact: <sip:192.0.2.1:5060;transport=UDP>" in sent and b"c=IN IP4 192.0.2.1\r\n" in sent
    assert b"o=user1 53655765 2353687637 IN IP4 192.0.2.1\r\n" in sent and content_length_right(sent)
    assert b"Via: SIP/2.0/UDP 198.51.100.7:5061;" in sent
    assert c.expected() == [("audio", PUBLIC, p, (0, SERVER, p)) for p in (20000, 20001)] + \
                           [("video", PUBLIC, p, (0, SERVER, p)) for p in (20002, 20003)]


# ---------------------------------------------------------------- TCP, IPv6
def test_sip_over_tcp_two_messages_in_one_segment(tmp_path):
    tcp = captured("sip-sipp-tcp4")
    invite, ringing, ok = tcp[0], tcp[2], tcp[3]
    c = Call(tmp_path, proto=6)
    sent = c.send(False, invite)
    assert sent == outside(invite) and content_length_right(sent)
    assert c.ct is not None  # with the conntrack, so that the kernel moves the sequence numbers
    got = c.send(True, as_the_server_sends(ringing) + as_the_server_sends(ok))
    assert got == ringing + ok
    assert [e[:3] for e in c.expected()] == [("audio", SERVER, 20000), ("audio", SERVER, 20001),
                                             ("video", SERVER, 20002), ("video", SERVER, 20003)]
    ack = c.send(False, tcp[4])
    assert ack == tcp[4].replace(*AS_SENT)
    assert c.stats()["rewritten"] == 3 and c.stats()["nat_failed"] == 0


def test_a_message_over_two_tcp_segments_is_refused_whole(tmp_path):
    """The core edits the packet it is shown: a message whose spans lie in an
    earlier segment is left as it is, all of it, and counted."""
    invite = captured("sip-sipp-tcp4")[0]
    c = Call(tmp_path, proto=6)
    cut = invite.index(b"\r\n\r\n") + 4
    assert c.send(False, invite[:cut]) == invite[:cut]
    assert c.send(False, invite[cut:]) == invite[cut:]
    assert c.stats()["nat_failed"] == 1 and c.stats()["rewritten"] == 0


def test_ipv6_brackets_the_host_and_not_the_sdp_address(tmp_path):
    udp6 = captured("sip-sipp-udp6")
    invite = udp6[0]
    c = Call(tmp_path, l3=6, phone=PHONE6)
    sent = c.send(False, invite)
    assert b"Via: SIP/2.0/UDP [2001:db8::1]:1024;" in sent and b"<sip:sipp@[2001:db8::1]:1024" in sent
    assert b"c=IN IP6 2001:db8::1\r\n" in sent and b"fd00:1::2" not in sent.replace(b"@fd00:1::2\r\n", b"")
    assert b"IN IP6 [2001:db8::1]\r\n" in sent  # SIPp's o= brackets it (RFC 8866 does not): kept so
    assert content_length_right(sent)
    assert ("audio", PUBLIC6, 16000, (1, PHONE6, 16000)) in c.expected()


# ---------------------------------------------------------------- left alone
def test_host_names_are_left_alone():
    nat = masquerade(5061)
    message = INVITE.replace(b"Contact: <sip:sipp@10.0.1.2:5061;", b"Contact: <sip:sipp@phone.example:5061;")
    message = message.replace(b"c=IN IP4 10.0.1.2", b"c=IN IP4 phone.example")
    out = SipHelper().inspect(Segment(message, Direction.ORIGINAL, nat.original, 0.0, nat=nat), SipHelper().new_state())
    named = {message[a.offset:a.offset + a.length] for a in out.actions if isinstance(a, Rewrite)}
    assert b"phone.example" not in b"".join(named) and b"phone.example:5061" not in named
    assert named == {b"10.0.1.2:5061", b"10.0.1.2"}  # Via, From; o=


def test_a_message_full_of_contacts_names_16_at_most():
    contacts = b"Contact: " + b", ".join(b"<sip:a@10.0.1.2:5061>" for _ in range(400)) + b"\r\n"
    message = REGISTER.replace(b"Max-Forwards: 70\r\n", contacts * 20)
    out = SipHelper().inspect(Segment(message, Direction.ORIGINAL, masquerade(5061).original, 0.0,
                                      nat=masquerade(5061)), SipHelper().new_state())
    assert sum(isinstance(a, Rewrite) for a in out.actions) == 16 + 2  # Via, From


def test_nothing_is_named_without_nat():
    h = SipHelper()
    flow = FlowTuple(4, 17, ip(PHONE), ip(SERVER), 5061, 5060)
    out = h.inspect(Segment(INVITE, Direction.ORIGINAL, flow, 0.0), h.new_state())
    assert not [a for a in out.actions if isinstance(a, Rewrite)]


def test_a_malformed_message_is_not_touched(tmp_path):
    c = Call(tmp_path)
    bad = INVITE.replace(b"Content-Length:   178", b"Content-Length:   999")  # longer than the datagram
    assert c.send(False, bad) == bad
    assert c.k.queues[Q].verdicts[-1].payload is None and c.expected() == []


def test_a_datagram_that_would_outgrow_65535_bytes_is_refused_whole(tmp_path):
    pad = b"a=x-pad:" + b"x" * (65535 - 28 - len(INVITE) - 12) + b"\r\n"
    big = INVITE.replace(b"Content-Length:   178", b"Content-Length: %d" % (178 + len(pad))) + pad
    assert 20 + 8 + len(big) == 65535 - 2
    c = Call(tmp_path)
    assert c.send(False, big) == big  # c= and o= would add 2 bytes, the Via and Contact 3 more
    assert c.k.queues[Q].verdicts[-1].payload is None and c.d.stats.rewrite_failed == 1


def test_no_rewriting_where_the_policy_says_nat_false(tmp_path):
    k = FakeKernel()
    c = Call(tmp_path, k=k, d=daemon(tmp_path, k, "nat = false\n"))
    assert c.send(False, INVITE) == INVITE
    assert c.expected()[0][1:3] == (PHONE, 16000)


@pytest.mark.parametrize("form", ["sips", "port-less"])
def test_a_uri_without_port_means_5060(form):
    """The kernel reads a URI without a port as 5060 and writes the port when it maps it."""
    nat = masquerade(5060)
    contact = b"<sips:a@10.0.1.2>" if form == "sips" else b"<sip:a@10.0.1.2>"
    message = REGISTER.replace(b"<sip:sipp@10.0.1.2:5061;transport=UDP>", contact)
    out = SipHelper().inspect(Segment(message, Direction.ORIGINAL, nat.original, 0.0, nat=nat), SipHelper().new_state())
    (r,) = [a for a in out.actions if isinstance(a, Rewrite) and message[a.offset - 8:a.offset] == b"<sip:a@"[-8:]
            or isinstance(a, Rewrite) and message[a.offset - 2:a.offset] == b"a@"]
    assert (message[r.offset:r.offset + r.length], r.port) == (b"10.0.1.2", 5060)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, len(INVITE) - 1), st.binary(max_size=6)), max_size=6),
       st.sampled_from([False, True]))
def test_spans_stay_inside_the_message_and_apart(edits, reply):
    """Whatever a peer sends, the spans named lie inside the bytes given and
    never overlap (the core would refuse the message: no half rewrite)."""
    data = bytearray(INVITE if not reply else as_the_server_sends(OK))
    for at, junk in edits:
        data[at:at + len(junk)] = junk
    h = SipHelper()
    nat = masquerade(5061)
    out = h.inspect(Segment(bytes(data), Direction(int(reply)), nat.original, 0.0, nat=nat), h.new_state())
    spans = sorted((a.offset, a.length) for a in out.actions if isinstance(a, (Rewrite, Length)))
    assert all(0 <= off and off + n <= len(data) for off, n in spans)
    assert all(a[0] + a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False))


# ---------------------------------------------------------------- differential: the kernel's nf_nat_sip
NAT_CASES = Path(__file__).parent / "nat"


def _key(message: bytes) -> tuple:
    """What NAT leaves alone and tells a message from another: the method or
    status code, Call-ID, CSeq, the Via branch."""
    head = message.partition(b"\r\n\r\n")[0].split(b"\r\n")
    first = head[0].split(b" ")
    fields = {line.partition(b":")[0].lower(): line for line in head[1:]}
    return (first[1] if first[0] == b"SIP/2.0" else first[0], fields.get(b"call-id"), fields.get(b"cseq"),
            fields.get(b"via", b"").partition(b"branch=")[2])


@pytest.mark.parametrize("case", ["udp4", "udp6", "tcp4"])
def test_what_alg_writes_is_what_the_kernels_nf_nat_sip_wrote(tmp_path, case):
    """The same SIPp calls through the kernel's nf_nat_sip (recorded on both
    sides of the gateway, tests/nat/README.md): alg, given each message as it
    reached the gateway (in the order it did), writes what the kernel wrote,
    byte for byte. The one difference: the IPv6 INVITEs the kernel dropped
    (SIPp's bracketed o= address), which alg rewrites."""
    d = NAT_CASES / f"sip-sipp-masquerade-{case}"
    fam, proto = int(case[-1]), 6 if case.startswith("tcp") else 17
    phone, server, public = (PHONE, SERVER, "10.0.2.1") if fam == 4 else (PHONE6, SERVER6, "fd00:2::1")
    inside, outside_ = _sip_messages(d / "client.pcap"), _sip_messages(d / "server.pcap")
    kernel = {(src, _key(m)): m for src, m in outside_}  # the phone's as rewritten, the server's as sent
    calls: dict = {}
    created: set = set()
    compared, dropped = 0, []
    for src, m in inside:
        # UDP: one conntrack for all; TCP: SIPp opens a connection per scenario (per Call-ID)
        conn = _key(m)[1] if proto == 6 else None
        if conn not in calls:
            calls[conn] = Call(tmp_path / str(len(calls)), proto, fam, phone=phone, public=public, port=5061)
        c = calls[conn]
        if src == server:  # the server's, as it sent it, must reach the phone as the kernel wrote it
            assert c.send(True, kernel[(server, _key(m))]) == m
        else:
            wrote = c.send(False, m)
            theirs = kernel.get((public, _key(m)))
            if theirs is None:
                dropped.append(m.split(b"\r\n")[0])
                assert b"IN IP6 [" + public.encode() + b"]" in wrote  # the o= the kernel could not parse
                continue
            assert wrote == theirs
        compared += 1
        created |= c.created
    assert compared >= (20 if fam == 4 else 4)
    # the same expectations: the media where the SDP (as rewritten) says, from the other end;
    # the REGISTER's: the kernel's at the public endpoint, alg's the phone's (see the helper)
    classes = ["signalling", "audio", "video", "image"]
    theirs_expected = set()
    for line in (d / "kernel-expect.txt").read_text().splitlines():
        if "[NEW]" in line:
            f: dict[str, str] = {}
            for w in line.split()[2:]:
                f.setdefault(*w.split("=", 1))  # the first src, dst, dport: the expected tuple's
            theirs_expected.add((classes[int(f["class"])], f["src"], f["dst"], int(f["dport"])))
    signalling = ("signalling", server, phone, 5061)
    media = {e for e in theirs_expected if e[0] != "signalling"}
    if fam == 4:
        assert created - {signalling} == media
    else:  # the kernel expected the INVITE's media, then dropped the INVITE (o= did not parse)
        assert media and media <= created
    assert signalling in created and ("signalling", server, public, 5061) in theirs_expected
    assert dropped == ([] if fam == 4 else [b"INVITE sip:alice@[fd00:2::2]:5060 SIP/2.0"] * len(dropped))
    assert (fam == 4) == (not dropped)
