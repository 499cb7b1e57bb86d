"""The daemon's packet path against a kernel in userspace (tests/fakekernel.py):
direction and newness from the conntrack, the flow's record in the helper's
private data, expectations on the verdict or over ctnetlink, adoption, reload.

The attacks here are the ones that defeated the flow table alg kept before it
read each packet's conntrack: forgetting a flow (a flood of other flows, an
idle hour, a restart) turned a mid-stream segment into the start of a stream."""

from __future__ import annotations

import ipaddress
import struct
from pathlib import Path

import pytest
from fakekernel import IP_CT_ESTABLISHED, SYN, FakeKernel

from alg.daemon import Daemon
from alg.flows import FLOW_RECORD_LEN, FlowRecord, RecordFlag
from alg.kernel import nlmsg as L
from alg.kernel.ctnetlink import CTA_EXPECT_HELP_NAME, CTA_EXPECT_TUPLE
from alg.plugins import load_plugins

HOST = load_plugins()
CLIENT, SERVER = "10.0.1.2", "10.0.2.2"


def daemon(tmp_path: Path, kernel: FakeKernel, *files: tuple[str, str]) -> Daemon:
    paths = []
    for name, text in files or (("ftp.toml", 'helper = "ftp"\nqueue = 7\n'),):
        (tmp_path / name).write_text(text)
        paths.append(str(tmp_path / name))
    core = tmp_path / "alg.toml"
    if not core.exists():
        core.write_text(f'[core]\nstatus_socket = "{tmp_path}/alg.sock"\n')
    d = Daemon(HOST, [*paths, str(core)], kernel=kernel.ports())
    for slot in d.engine.slots.values():
        d._register(slot)
    d.reconciler = None
    return d


class Tcp:
    """One TCP connection through the fake kernel, queued to `queue`."""

    def __init__(self, kernel: FakeKernel, d: Daemon, queue: int, helper: str, dport: int, sport: int = 40000,
                 client: str = CLIENT, server: str = SERVER):
        self.k, self.d, self.queue = kernel, d, queue
        self.cid = kernel.connect(helper, 4, 6, client, server, sport, dport)
        self.seq = [1000, 5000]
        self.send(False, b"", SYN)
        self.send(True, b"", SYN | 0x10)

    def send(self, reply: bool, data: bytes, flags: int = 0x18, ctinfo: int | None = None) -> list:
        """Queue one segment, let the daemon serve it; the expectations it created."""
        before = set(self.k.expectations) | {bytes(a) for a in self.k.attached}
        self.k.send(self.queue, self.cid, reply, data, self.seq[reply], flags, ctinfo)
        self.seq[reply] += len(data) + (1 if flags & SYN else 0)
        self.d.workers[self.queue].serve()
        if self.d.reconciler is not None:  # the kernel's events, as the daemon's loop reads them between packets
            self.d.reconciler.read()
        self.d.sink.run_due()
        return [k for k in self.k.expectations if k not in before]


def test_every_packet_gets_a_verdict_whatever_happens(tmp_path):
    k = FakeKernel()
    d = daemon(tmp_path, k)
    cid = k.connect("ftp", 4, 6, CLIENT, SERVER, 40000, 21)
    q = k.queues[7]
    k.send(7, cid, False, b"x", flags=SYN)
    from fakekernel import QueuedPacket
    good = q.waiting[0].payload
    q.waiting += [QueuedPacket(100, b"", 0, None), QueuedPacket(101, b"\x45garbage", 0, None),
                  QueuedPacket(102, b"\x60" + b"\0" * 60, 0, None),
                  QueuedPacket(103, good, 0, "not a conntrack")]  # type: ignore[arg-type]  # a bug on the way
    k._by_packet.update({100: cid, 101: cid, 102: cid, 103: cid})
    d.workers[7].serve()
    assert sorted(v.id for v in q.verdicts) == [1, 100, 101, 102, 103] and all(v.accept for v in q.verdicts)
    assert d.stats.verdicts == 5 and d.stats.decode_errors == 3 and d.stats.queue_errors == 1


def test_pasv_opens_the_data_connection_before_the_verdict(tmp_path):
    k = FakeKernel()
    d = daemon(tmp_path, k)
    c = Tcp(k, d, 7, "ftp", 21)
    assert c.send(True, b"220 ready\r\n") == []
    c.send(False, b"PASV\r\n")
    (key,) = c.send(True, b"227 Entering Passive Mode (10,0,2,2,195,80).\r\n")
    assert key[3] == int(ipaddress.ip_address(SERVER)) and key[5] == 50000
    # the record went to the conntrack with the verdicts: both directions spoke FTP
    rec = FlowRecord.unpack(k.conntracks[c.cid].info)
    assert rec is not None and rec.flags & RecordFlag.KNOWN_ORIGINAL and rec.flags & RecordFlag.KNOWN_REPLY
    assert len(k.conntracks[c.cid].info) == k.priv_len >= FLOW_RECORD_LEN


def slipstream(d: Daemon, c: Tcp, forget) -> list:
    """A browser's HTTP POST to the FTP port; alg forgets the flow (`forget`); the
    POST's body then carries a PORT line towards the client's ssh port."""
    opened = c.send(False, b"POST /upload HTTP/1.1\r\nHost: victim\r\nContent-Length: 40\r\n\r\n")
    forget()
    opened += c.send(False, b"PORT 10,0,1,2,0,22\r\n", ctinfo=IP_CT_ESTABLISHED)
    return opened


def flood(k: FakeKernel, d: Daemon, n: int = 65536) -> None:
    """n other flows through the same queue: the flow table evicts the least recently used."""
    q = k.queues[7]
    for i in range(n):
        cid = k.connect("ftp", 4, 6, f"10.9.{i >> 8 & 255}.{i & 255}", SERVER, 1024 + (i >> 16), 21)
        k.send(7, cid, False, b"", flags=SYN)
        if len(q.waiting) >= 256:
            d.workers[7].serve()
    d.workers[7].serve()


def test_slipstreaming_after_a_flood_of_other_flows_opens_nothing(tmp_path):
    k = FakeKernel()
    d = daemon(tmp_path, k)
    c = Tcp(k, d, 7, "ftp", 21)
    assert slipstream(d, c, lambda: flood(k, d)) == []
    assert len(d.engine.flows) <= 65536 and d.engine.flows.evicted > 0


def test_slipstreaming_after_an_idle_hour_or_a_restart_opens_nothing(tmp_path):
    k = FakeKernel()
    d = daemon(tmp_path, k)
    c = Tcp(k, d, 7, "ftp", 21)
    clock = [0.0]
    d.workers[7].clock = lambda: clock[0]

    def idle_hour():
        clock[0] += 3600

    assert slipstream(d, c, idle_hour) == []
    # a new alg instance (the old one crashed): the conntrack still says given up
    for q in list(d.workers):
        d._unbind(q)
    c.d = daemon(tmp_path, k)
    assert c.send(False, b"PORT 10,0,1,2,0,23\r\n") == []


def test_a_flow_alg_never_saw_begin_is_not_read_from_its_middle(tmp_path):
    k = FakeKernel()
    d = daemon(tmp_path, k)
    cid = k.connect("ftp", 4, 6, CLIENT, SERVER, 40000, 21)
    k.conntracks[cid].ct = k.conntracks[cid].ct.__class__(**{**{f: getattr(k.conntracks[cid].ct, f) for f in (
        "orig", "reply", "id", "helper", "helper_info", "master")}, "status": 8})  # confirmed, seen by nobody
    k.send(7, cid, False, b"PORT 10,0,1,2,0,22\r\n", seq=1, ctinfo=IP_CT_ESTABLISHED)
    d.workers[7].serve()
    assert k.expectations == {} and d.engine.stats()["helpers"]["ftp"]["midstream"] == 1
    assert FlowRecord.unpack(k.conntracks[cid].info).flags & RecordFlag.GIVEN_UP


def test_an_evicted_ftp_flow_resumes_at_its_recorded_boundary(tmp_path):
    k = FakeKernel()
    d = daemon(tmp_path, k)
    c = Tcp(k, d, 7, "ftp", 21)
    c.send(True, b"220 ready\r\n")
    c.send(False, b"USER anonymous\r\n")
    flood(k, d)
    assert d.engine.flows.get((c.cid, k.conntracks[c.cid].ct.orig)) is None  # evicted
    (key,) = c.send(False, b"PORT 10,0,1,2,195,81\r\n")
    assert key[5] == 50001


def test_the_tns_clients_own_redirect_after_an_idle_hour_opens_nothing(tmp_path):
    k = FakeKernel()
    d = daemon(tmp_path, k, ("tns.toml", 'helper = "tns"\nqueue = 8\n'))
    clock = [0.0]
    d.workers[8].clock = lambda: clock[0]
    c = Tcp(k, d, 8, "tns", 1521)
    data = b"(ADDRESS=(PROTOCOL=TCP)(HOST=10.0.1.2)(PORT=22))\0"
    connect = struct.pack(">HHBBH", 8 + 50, 0, 1, 0, 0) + b"\x01\x3b" + b"\0" * 48
    c.send(False, connect)
    clock[0] += 3600
    redirect = struct.pack(">HHBBH", 10 + len(data), 0, 5, 0, 0) + struct.pack(">H", len(data)) + data
    assert c.send(False, redirect) == []  # the client's, in the original direction
    assert k.attached == []


_SDP = b"v=0\r\no=- 1 1 IN IP4 10.0.1.2\r\ns=-\r\nc=IN IP4 10.0.1.2\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"
INVITE = (b"INVITE sip:bob@10.0.2.2 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.1.2:5060;branch=z9hG4bK1\r\n"
          b"From: <sip:alice@10.0.1.2>;tag=1\r\nTo: <sip:bob@10.0.2.2>\r\nCall-ID: a@10.0.1.2\r\n"
          b"CSeq: 1 INVITE\r\nContact: <sip:alice@10.0.1.2:5060>\r\nContent-Type: application/sdp\r\n"
          b"Content-Length: %d\r\n\r\n" % len(_SDP)) + _SDP  # opens its dialog: its first packet has the SDP


def with_reconciler(d: Daemon, k: FakeKernel) -> Daemon:
    d.reconciler = __import__("alg.daemon.reconciler", fromlist=["Reconciler"]).Reconciler(
        k.ports().events(), d.engine, d.sink, d.stats)
    return d


def attach_wait_over(d: Daemon) -> None:
    """The sink's wait for the kernel's word on an attached expectation is over."""
    d.sink._timers = [(0.0, *t[1:]) for t in d.sink._timers]
    d.sink.run_due()


@pytest.mark.parametrize("attach_works", [True, False])
def test_an_expectation_of_a_flows_first_packet_rides_on_its_verdict(tmp_path, attach_works):
    k = FakeKernel(attach_works=attach_works)
    d = with_reconciler(daemon(tmp_path, k, ("sip.toml", 'helper = "sip"\nqueue = 9\n')), k)
    cid = k.connect("sip", 4, 17, CLIENT, SERVER, 5060, 5060)
    k.send(9, cid, False, INVITE)
    d.workers[9].serve()
    assert len(k.attached) == 1 and d.stats.attached == 1
    tup = L.parse_attrs(L.parse_attrs(k.attached[0])[CTA_EXPECT_TUPLE])
    assert tup  # the expected flow's tuple rides on the verdict, without a master
    d.reconciler.read()
    attach_wait_over(d)
    if attach_works:  # the kernel's event confirmed it
        assert d.stats.attach_failed == 0 and len(k.expectations) == 2
    else:  # the kernel did not create it (as it does silently): counted, then created over ctnetlink
        assert d.stats.attach_failed == 1 and len(k.expectations) >= 1


def test_a_withdrawal_later_in_the_batch_does_not_overtake_the_attachment_it_withdraws(tmp_path):
    """Two re-INVITEs of one call in one batch: the first's RTP expectation rides on its verdict,
    the second withdraws it. The verdicts leave at the batch's end, so the delete over ctnetlink
    must not go first (it would find nothing, and the attachment would then open a pinhole alg
    no longer counts): the kernel holds exactly what alg's table holds."""
    k = FakeKernel()
    d = daemon(tmp_path, k, ("sip.toml", 'helper = "sip"\nqueue = 9\n'))
    cid = k.connect("sip", 4, 17, CLIENT, SERVER, 5060, 5060)
    k.send(9, cid, False, INVITE)
    d.workers[9].serve()
    d.sink.run_due()
    for cseq, port in ((2, b"4002"), (3, b"4004")):
        k.send(9, cid, False, INVITE.replace(b"CSeq: 1", b"CSeq: %d" % cseq).replace(b"audio 4000", b"audio " + port))
    d.workers[9].serve()
    d.sink.run_due()
    assert d.stats.attached == 3
    assert sorted(e.dport for e in d.engine.table) == [4004, 4005]
    assert set(k.expectations) == {e.key for e in d.engine.table}
    attach_wait_over(d)
    assert d.stats.attach_failed == 0 and set(k.expectations) == {e.key for e in d.engine.table}


def test_an_expectation_that_gives_a_helper_rides_on_a_confirmed_masters_verdict(tmp_path):
    """A unicast M-SEARCH is answered on its own, confirmed flow; the answer's LOCATION
    expectation must give the description connection the ssdp helper (to read its SUBSCRIBE),
    which the kernel does only for an expectation on a verdict (lab: nat-tns-ssdp.sh)."""
    k = FakeKernel()
    d = daemon(tmp_path, k, ("ssdp.toml", 'helper = "ssdp"\nqueue = 24\n'))
    cid = k.connect("ssdp", 4, 17, CLIENT, SERVER, 40000, 1900)
    k.send(24, cid, False, b'M-SEARCH * HTTP/1.1\r\nHOST: %s:1900\r\nMAN: "ssdp:discover"\r\n'
           b"ST: upnp:rootdevice\r\n\r\n" % SERVER.encode())
    d.workers[24].serve()
    k.send(24, cid, True, b"HTTP/1.1 200 OK\r\nLOCATION: http://%s:49152/desc.xml\r\n\r\n" % SERVER.encode())
    d.workers[24].serve()
    d.sink.run_due()
    assert len(k.attached) == 1 and not k.kernel_created  # on the verdict, not over ctnetlink
    exp = L.parse_attrs(k.attached[0])
    assert exp[CTA_EXPECT_HELP_NAME].rstrip(b"\0") == b"ssdp"


def test_in_a_pair_a_first_packets_expectation_is_made_after_its_verdict(tmp_path):
    """conntrackd replicates an expectation only if it has seen its master, whose event
    comes when the kernel confirms it, after the verdict: `pair = true` makes the INVITE's
    expectation over ctnetlink then, and gives the kernel's class 0 the room of all classes,
    since conntrackd commits every replicated expectation in class 0."""
    k = FakeKernel()
    (tmp_path / "alg.toml").write_text(f'[core]\nstatus_socket = "{tmp_path}/alg.sock"\npair = true\n')
    d = daemon(tmp_path, k, ("sip.toml", 'helper = "sip"\nqueue = 9\n'))
    cid = k.connect("sip", 4, 17, CLIENT, SERVER, 5060, 5060)
    k.send(9, cid, False, INVITE)
    d.workers[9].serve()
    assert k.attached == [] and d.stats.attached == 0
    d.sink.run_due()
    assert len(k.expectations) == 2  # RTP and RTCP, over ctnetlink
    registered = k.helpers["sip"].classes
    assert [c.max_expected for c in registered] == [1 + 4 + 4 + 2, 4, 4, 2]
    assert d.engine.slots["sip"].policy.classes[0].max_expected == 1  # alg's own limit is unchanged

def test_a_reload_to_a_smaller_budget_is_enforced(tmp_path):
    k = FakeKernel()
    d = daemon(tmp_path, k, ("ftp.toml", 'helper = "ftp"\nqueue = 7\n'))
    (tmp_path / "alg.toml").write_text(f'[core]\nstatus_socket = "{tmp_path}/alg.sock"\n'
                                       "expect_budget = 3\nsource_share = 1.0\n")  # one server asks for all
    assert d.reload()
    opened = []
    for i in range(6):
        c = Tcp(k, d, 7, "ftp", 21, sport=41000 + i)
        c.send(True, b"220 ready\r\n")
        opened += c.send(True, b"227 Entering Passive Mode (10,0,2,2,195,%d).\r\n" % (80 + i))
    assert len(opened) == 3 and d.engine.table.budget == 3
    assert d.engine.stats()["helpers"]["ftp"]["classes"]["ftp"]["refused"] == {"budget": 3}


def test_a_reload_gives_existing_flows_the_new_options(tmp_path):
    k = FakeKernel()
    d = daemon(tmp_path, k, ("ftp.toml", 'helper = "ftp"\nqueue = 7\n'))
    c = Tcp(k, d, 7, "ftp", 21)
    c.send(True, b"220 ready\r\n")
    bounce = b"227 Entering Passive Mode (10,0,3,3,195,80).\r\n"  # a third host: refused unless loose
    assert c.send(True, bounce) == []
    (tmp_path / "ftp.toml").write_text('helper = "ftp"\nqueue = 7\n[options]\nloose = true\n')
    assert d.reload()
    assert len(c.send(True, bounce)) == 1  # the same, existing flow


def test_a_reload_the_kernel_refuses_keeps_the_running_policy_whole(tmp_path):
    k = FakeKernel()
    d = daemon(tmp_path, k)
    running = d.engine.slots["ftp"]

    def unchanged():
        assert list(k.queues) == [7] and k.helpers["ftp"].queue == 7
        assert d.engine.slots["ftp"] is running and d.policy.helpers["ftp"].queue == 7

    (tmp_path / "ftp.toml").write_text('helper = "ftp"\nqueue = 9\n')
    k.refuse_queue = {9}  # another program holds queue 9
    assert not d.reload()
    unchanged()
    k.refuse_queue, k.refuse_helper = set(), {"ftp"}  # the kernel will not change the helper (EBUSY)
    assert not d.reload()
    unchanged()  # queue 9 was bound for it, and let go again
    (tmp_path / "ftp.toml").write_text("queue = [")
    assert not d.reload()
    unchanged()
    k.refuse_helper = set()
    (tmp_path / "ftp.toml").write_text('helper = "ftp"\nqueue = 9\n')
    assert d.reload()
    assert list(k.queues) == [9] and k.helpers["ftp"].queue == 9 and d.engine.slots["ftp"].policy.queue == 9
    assert d.registered == [("ftp", 4, 6), ("ftp", 6, 6)]


def test_the_kernels_expectations_of_our_helpers_are_adopted(tmp_path):
    from alg.daemon.reconciler import Reconciler
    from alg.kernel.ctnetlink import KernelExpectation
    from alg.model import FlowTuple
    k = FakeKernel()
    d = daemon(tmp_path, k)
    ip = ipaddress.ip_address
    master = FlowTuple(4, 6, ip(CLIENT), ip(SERVER), 40000, 21)
    held = [KernelExpectation("ftp", 0, FlowTuple(4, 6, ip(CLIENT), ip(SERVER), 0, 50000),
                              FlowTuple(4, 6, ip("255.255.255.255"), ip("255.255.255.255"), 0, 0xFFFF), master,
                              250, 0, 7),
            KernelExpectation("other", 0, FlowTuple(4, 6, ip(CLIENT), ip(SERVER), 0, 50001),
                              FlowTuple(4, 6, ip("255.255.255.255"), ip("255.255.255.255"), 0, 0xFFFF), master,
                              250, 0, 8)]
    r = Reconciler(k.ports().events(), d.engine, d.sink, d.stats)
    assert r.adopt(held) == 1 and len(d.engine.table) == 1 and d.stats.adopted == 1
    (e,) = list(d.engine.table)
    assert (e.cls, e.dport, e.sport, e.kernel_master) == ("ftp", 50000, None, master)


def _tcp(k: FakeKernel, d: Daemon, cid: int) -> Tcp:
    c = Tcp.__new__(Tcp)
    c.k, c.d, c.queue, c.cid, c.seq = k, d, 7, cid, [1000, 5000]
    c.send(False, b"", SYN)
    c.send(True, b"", SYN | 0x10)
    return c


def _segment(raw: bytes) -> bytes:
    """The TCP payload of an IPv4 packet, after checking its lengths and both checksums."""
    from alg.nat import checksum
    ihl = (raw[0] & 0xF) * 4
    assert struct.unpack_from("!H", raw, 2)[0] == len(raw) and checksum(raw[:ihl]) == 0
    pseudo = raw[12:20] + struct.pack("!BBH", 0, 6, len(raw) - ihl)
    assert checksum(pseudo + raw[ihl:]) == 0
    return raw[ihl + (raw[ihl + 12] >> 4) * 4:]


@pytest.mark.parametrize("glue", [True, False])
def test_a_port_forwarded_servers_227_names_the_public_address(tmp_path, glue):
    """DNAT: the client connects to the public 192.0.2.1, the server is 10.0.2.2.
    Its 227 names itself (its own address, not a third host's): the client is
    told the public address, the expectation waits there and is translated to
    the server (CTA_EXPECT_NAT), as nf_nat_ftp does; the rewritten packet goes
    back with its conntrack, so that the kernel adjusts the sequence numbers.
    Without the queue's conntrack glue it cannot: a rewrite that changes the
    length is refused (counted) rather than breaking the connection."""
    k = FakeKernel(glue=glue)
    d = daemon(tmp_path, k)
    c = _tcp(k, d, k.connect("ftp", 4, 6, CLIENT, "192.0.2.1", 40000, 21, reply_src=SERVER))
    c.send(True, b"220 ready\r\n")
    (key,) = c.send(True, b"227 Entering Passive Mode (10,0,2,2,195,80).\r\n")
    e, _master = k.expectations[key]
    ip = ipaddress.ip_address
    assert (e.src, e.dst, e.dport, e.nat) == (ip(CLIENT), ip("192.0.2.1"), 50000, (0, ip(SERVER), 50000))
    v = k.queues[7].verdicts[-1]
    if glue:
        assert _segment(v.payload) == b"227 Entering Passive Mode (192,0,2,1,195,80).\r\n" and v.ct is not None
    else:
        assert v.payload is None and d.stats.rewrite_failed == 1
    stats = d.engine.stats()["helpers"]["ftp"]
    assert stats["natted"] == 1 and stats["rewritten"] == 1


def test_active_ftp_behind_masquerade_port_and_eprt_and_more_commands(tmp_path):
    """SNAT: PORT and EPRT from 10.0.1.2 leave as the gateway's 192.0.2.1, on a
    free outside port; the length changes and the commands after them are
    still read (their offsets in the stream are the client's own)."""
    k = FakeKernel()
    d = daemon(tmp_path, k)
    c = _tcp(k, d, k.connect("ftp", 4, 6, CLIENT, SERVER, 40000, 21, reply_dst="192.0.2.1", reply_dport=61000))
    got = []
    for line in (b"PORT 10,0,1,2,200,10\r\n", b"EPRT |1|10.0.1.2|51211|\r\n"):
        (key,) = c.send(False, line)
        got.append(k.expectations[key][0])
    ip = ipaddress.ip_address
    assert [(e.src, e.dst, e.dport, e.nat) for e in got] == [
        (ip(SERVER), ip("192.0.2.1"), 51210, (1, ip(CLIENT), 51210)),
        (ip(SERVER), ip("192.0.2.1"), 51211, (1, ip(CLIENT), 51211))]
    sent = [_segment(v.payload) for v in k.queues[7].verdicts[-2:]]
    assert sent == [b"PORT 192,0,2,1,200,10\r\n", b"EPRT |1|192.0.2.1|51211|\r\n"]


def test_no_rewriting_where_the_policy_says_nat_false(tmp_path):
    k = FakeKernel()
    d = daemon(tmp_path, k, ("ftp.toml", 'helper = "ftp"\nqueue = 7\nnat = false\n'))
    c = _tcp(k, d, k.connect("ftp", 4, 6, CLIENT, "192.0.2.1", 40000, 21, reply_src=SERVER))
    (key,) = c.send(True, b"227 Entering Passive Mode (10,0,2,2,195,80).\r\n")
    assert key[3] == int(ipaddress.ip_address(SERVER))
    assert k.queues[7].verdicts[-1].payload is None


def test_systemd_hears_ready_watchdog_reload_and_stop(tmp_path):
    import socket

    from alg.daemon.systemd import Notifier
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(tmp_path / "notify"))
    listener.settimeout(2)
    clock = [100.0]
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "2000000"},
                        clock=lambda: clock[0])
    k = FakeKernel()
    (tmp_path / "ftp.toml").write_text('helper = "ftp"\nqueue = 7\n')
    (tmp_path / "alg.toml").write_text(f'[core]\nstatus_socket = "{tmp_path}/alg.sock"\n')
    d = Daemon(HOST, [str(tmp_path / "ftp.toml"), str(tmp_path / "alg.toml")], kernel=k.ports(), notifier=notifier)
    heard = []

    def hear():
        heard.append(listener.recv(4096).decode())
        return heard[-1]

    d.start()
    try:
        assert hear().startswith("READY=1\nSTATUS=serving ftp (queue 7)")
        d.step(0)
        assert hear() == "WATCHDOG=1"
        d.step(0)  # within half the watchdog interval: no second ping
        clock[0] += 1.0
        d.step(0)
        assert hear() == "WATCHDOG=1"
        d.reload()
        assert hear().startswith("RELOADING=1\nMONOTONIC_USEC=") and hear().startswith("READY=1")
    finally:
        d.stop()
    assert hear() == "STOPPING=1"
    assert notifier.interval == 1.0  # pings at half of WatchdogSec
    assert Notifier({}).send("READY=1") is False  # not under systemd: nothing sent


def test_one_declaration_of_each_counter_feeds_status_and_prometheus(tmp_path):
    from alg.daemon.status import prometheus
    from alg.metrics import samples
    k = FakeKernel()
    prom = tmp_path / "alg.prom"
    (tmp_path / "alg.toml").write_text(f'[core]\nstatus_socket = "{tmp_path}/alg.sock"\nmetrics_file = "{prom}"\n')
    d = daemon(tmp_path, k)
    c = Tcp(k, d, 7, "ftp", 21)
    c.send(True, b"220 ready\r\n")
    c.send(True, b"227 Entering Passive Mode (10,0,3,3,195,80).\r\n")  # a third host: refused
    c.send(True, b"227 Entering Passive Mode (10,0,2,2,195,80).\r\n")
    d.step(0)  # the loop writes the metrics file
    got = dict(samples(prom.read_text()))
    st = d.status()
    assert got["alg_verdicts_total"] == st["verdicts"] == 5
    assert got['alg_class_created_total{helper="ftp",class="ftp"}'] == 1
    assert got['alg_helper_notices_total{helper="ftp",code="address-mismatch"}'] == \
        st["helpers"]["ftp"]["notices"]["address-mismatch"] == 1
    assert got["alg_expectations"] == st["expectations"] == 1 and got["alg_expect_budget"] == 4096
    text = prometheus(st)
    assert "# TYPE alg_class_refused_total counter" in text and "# HELP alg_helper_packets_total " in text
    # every figure of the status document is declared once, or is not a figure
    names = {n.split("{")[0] for n, _ in samples(text)}
    for key, value in st.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in (
                "pid", "uptime", "started", "verdict_us_mean", "verdict_us_max", "refused_total", "natted",
                "expect_helper_cap", "expect_source_cap"):
            assert f"alg_{key}" in names or f"alg_{key}_total" in names, key


def test_a_flow_an_expectation_created_is_read_from_its_first_packet(tmp_path):
    """Before its first reply an expected conntrack's packets come as RELATED, not NEW:
    still the start of its stream (SSDP's SUBSCRIBE connection is one such flow)."""
    from alg.kernel.nfqueue import IP_CT_RELATED
    k = FakeKernel()
    d = daemon(tmp_path, k)
    master = k.conntracks[k.connect("ftp", 4, 6, CLIENT, SERVER, 39999, 21)].ct.orig
    cid = k.connect("ftp", 4, 6, CLIENT, SERVER, 40000, 21, master=master)
    c = Tcp.__new__(Tcp)
    c.k, c.d, c.queue, c.cid, c.seq = k, d, 7, cid, [1000, 5000]
    c.send(False, b"", SYN, ctinfo=IP_CT_RELATED)
    c.send(True, b"", SYN | 0x10)
    assert len(c.send(True, b"227 Entering Passive Mode (10,0,2,2,195,80).\r\n")) == 1
    assert d.engine.stats()["helpers"]["ftp"]["midstream"] == 0
    assert k.conntracks[cid].info == bytes(k.priv_len)  # no record written for it: the kernel keeps none


def test_at_debug_level_the_daemon_logs_why(tmp_path, caplog):
    import logging
    caplog.set_level(logging.DEBUG, logger="alg")
    k = FakeKernel()
    d = daemon(tmp_path, k)
    c = Tcp(k, d, 7, "ftp", 21)
    c.send(True, b"220 ready\r\n")
    c.send(True, b"227 Entering Passive Mode (10,0,3,3,195,80).\r\n")  # a third host
    d.step(0)
    assert any("=> ignored (address-mismatch) [options.loose]" in r.getMessage() for r in caplog.records)


def test_lost_expectation_events_are_counted_and_a_missed_end_is_no_clash(tmp_path):
    from alg.daemon.reconciler import Reconciler
    k = FakeKernel()
    d = daemon(tmp_path, k)
    d.reconciler = Reconciler(k.ports().events(), d.engine, d.sink, d.stats)
    first = Tcp(k, d, 7, "ftp", 21, sport=41000)
    first.send(True, b"220 ready\r\n")
    (key,) = first.send(True, b"227 Entering Passive Mode (10,0,2,2,195,80).\r\n")
    k.use(k.expectations[key][0])  # the data connection came: the kernel let the expectation go...
    k.events[:] = [("overflow", None, None)]  # ...and its event was lost with others (ENOBUFS)
    d.reconciler.read()
    assert d.stats.events_lost == 1 and len(d.engine.table) == 1  # alg does not know it ended
    # another session's server names the same passive port: the kernel no longer holds the old one
    second = Tcp(k, d, 7, "ftp", 21, sport=41001)
    second.send(True, b"220 ready\r\n")
    assert second.send(True, b"227 Entering Passive Mode (10,0,2,2,195,80).\r\n") == [key]


def test_passive_ftp_behind_masquerade_keeps_the_servers_endpoint(tmp_path):
    """The server outside names itself in its 227: that endpoint is what the client
    must use, so the text stays; the expectation still carries CTA_EXPECT_NAT (to the
    same endpoint) so that nat-follow-master gives the client's data connection the
    control connection's outside address, whatever the NAT rules say (nf_nat_ftp too)."""
    k = FakeKernel()
    d = daemon(tmp_path, k)
    c = _tcp(k, d, k.connect("ftp", 4, 6, CLIENT, SERVER, 40000, 21, reply_dst="192.0.2.1", reply_dport=61000))
    (key,) = c.send(True, b"227 Entering Passive Mode (10,0,2,2,195,80).\r\n")
    e, _master = k.expectations[key]
    server = ipaddress.ip_address(SERVER)
    assert (e.src, e.dst, e.dport, e.nat) == (ipaddress.ip_address(CLIENT), server, 50000, (0, server, 50000))
    assert k.queues[7].verdicts[-1].payload is None


def test_a_command_split_over_segments_is_rewritten_in_the_packet_that_holds_the_address(tmp_path):
    """'NOOP\\r\\nPO' then 'RT 10,0,1,2,200,10\\r\\n': the PORT message began in the first
    packet, its address is in the second, at that packet's offset 3. An address cut in
    two by the segment boundary cannot be rewritten in either: counted, left as it is."""
    k = FakeKernel()
    d = daemon(tmp_path, k)
    c = _tcp(k, d, k.connect("ftp", 4, 6, CLIENT, SERVER, 40000, 21, reply_dst="192.0.2.1", reply_dport=61000))
    c.send(False, b"NOOP\r\nPO")
    (key,) = c.send(False, b"RT 10,0,1,2,200,10\r\n")
    assert k.expectations[key][0].dst == ipaddress.ip_address("192.0.2.1")
    assert _segment(k.queues[7].verdicts[-1].payload) == b"RT 192,0,2,1,200,10\r\n"
    c.send(False, b"PORT 10,0,1")
    c.send(False, b",2,200,12\r\n")
    assert [v.payload for v in k.queues[7].verdicts[-2:]] == [None, None]
    assert d.engine.stats()["helpers"]["ftp"]["nat_failed"] == 1


def test_a_retransmitted_segment_is_rewritten_as_the_first_time(tmp_path):
    """The kernel adjusted the sequence numbers for the first copy's new length: a
    retransmission must carry the same bytes (alg's stream drops it as already read)."""
    k = FakeKernel()
    d = daemon(tmp_path, k)
    c = _tcp(k, d, k.connect("ftp", 4, 6, CLIENT, SERVER, 40000, 21, reply_dst="192.0.2.1", reply_dport=61000))
    line = b"PORT 10,0,1,2,200,10\r\n"
    c.send(False, line)
    c.seq[0] -= len(line)
    c.send(False, line)
    first, again = k.queues[7].verdicts[-2:]
    assert _segment(again.payload) == _segment(first.payload) == b"PORT 192,0,2,1,200,10\r\n"
    assert again.ct is not None and len(k.expectations) == 1


PASV_227 = b"227 Entering Passive Mode (10,0,2,2,195,%d).\r\n"
# a packet dropped when its expectation cannot be made needs the answer before its verdict:
# the expectations of a confirmed master are then created over ctnetlink (QueueWorker._on_verdict)
OVER_CTNETLINK = "accept_on_pressure = false\n"


def test_expectmax_1s_victim_is_left_to_the_kernels_own_eviction(tmp_path):
    """ExpectMax 1 and the helper registered by alg with it: creating the next expectation,
    the kernel evicts the master's previous one itself (tests/fakekernel.py does as
    __nf_ct_expect_check does), so no EXP_DELETE is sent for it; both tables agree after."""
    for core in ("", OVER_CTNETLINK):  # each 227's expectation on its verdict; over ctnetlink
        k = FakeKernel()
        d, ([first], [second]) = _pasv(tmp_path / f"max1{len(core)}", k, core=core)
        assert k.deleted == [] and d.stats.evicted_by_kernel == 1
        assert len(k.kernel_created) == (0 if not core else 2) and d.stats.attached == (2 if not core else 0)
        assert list(k.expectations) == [second] and [e.key for e in d.engine.table] == [second]
        d.reconciler.read()  # the kernel's destroy event of the first: alg let it go already
        assert [e.key for e in d.engine.table] == [second] and first not in k.expectations
        assert d.engine.stats()["helpers"]["ftp"]["classes"]["ftp"]["evicted"] == 1
        attach_wait_over(d)
        assert d.stats.attach_failed == 0 and list(k.expectations) == [second]


def test_a_confirmed_masters_expectation_on_its_verdict_is_confirmed_by_the_kernels_event(tmp_path):
    """A 227 of a confirmed control connection: its expectation rides on the verdict (no
    ctnetlink round trip while the packet waits), the kernel's EXP_NEW confirms it. Until
    then it is not left to the kernel to evict: an attachment the kernel refused leaves
    nothing to evict, and alg could not know which of two the kernel holds."""
    k = FakeKernel()
    d, ([first],) = _pasv(tmp_path / "confirmed", k, ports=(80,))
    assert k.kernel_created == [] and d.stats.attached == 1 and list(k.expectations) == [first]
    assert d.sink.settled(d.engine.table.get(first))  # its event was read
    k = FakeKernel()
    d, ([first], [second]) = _pasv(tmp_path / "unread", k, events=False)
    assert [e.key for e in k.deleted] == [first] and d.stats.evicted_by_kernel == 0
    assert list(k.expectations) == [second] and d.stats.attached == 2


def test_an_attachment_whose_flow_came_before_its_event_was_read_is_not_made_again(tmp_path):
    """Under load a batch of packets can outlast the wait for an attachment's event: the
    data connection has used the expectation by then. The events are read before the
    attachment is given up, so its end is seen and nothing is created again."""
    k = FakeKernel()
    d, ([first],) = _pasv(tmp_path / "used", k, ports=(80,), events=False)
    with_reconciler(d, k)  # the EXP_NEW waits unread
    k.use(k.expectations[first][0])
    attach_wait_over(d)
    assert d.stats.attach_failed == 0 and k.kernel_created == [] and not k.expectations
    assert d.engine.table.get(first) is None


def test_an_attachment_the_kernel_refused_is_made_over_ctnetlink_and_its_victim_goes(tmp_path):
    """The kernel refuses an attachment silently (here: every one after the first): the
    wait for its event runs out, alg asks ctnetlink, whose create evicts the victim the
    attachment would have; both tables agree."""
    k = FakeKernel()
    d, ([first], [second]) = _pasv(tmp_path / "refused", k)
    assert list(k.expectations) == [second]
    k = FakeKernel()
    real = k.attach

    def only_the_first(e, master):
        if not k.expectations:
            real(e, master)
    k.attach = only_the_first  # type: ignore[method-assign]
    d, ([first], second) = _pasv(tmp_path / "refused2", k)
    assert second == [] and list(k.expectations) == [first] and d.stats.attached == 2
    attach_wait_over(d)
    (key,) = [e.key for e in d.engine.table]
    assert d.stats.attach_failed == 1 and list(k.expectations) == [key] and key != first
    assert [e.key for e in k.kernel_created] == [key] and k.deleted == []


def _pasv(tmp_path: Path, k: FakeKernel, core: str = "", ftp: str = "",
          ports: tuple[int, ...] = (80, 81), cthelper: bool = True, events: bool = True) -> tuple[Daemon, list]:
    """A daemon in its own folder (core: lines for [core], ftp: for ftp.toml), one FTP session
    with a 227 for each of `ports`; the kernel's expectation keys each one created. `events`:
    the kernel's expectation events are read after each packet (else not at all)."""
    tmp_path.mkdir()
    (tmp_path / "alg.toml").write_text(f'[core]\nstatus_socket = "{tmp_path}/alg.sock"\n{core}')
    (tmp_path / "ftp.toml").write_text(f'helper = "ftp"\nqueue = 7\n{ftp}')
    d = Daemon(HOST, [str(tmp_path / "ftp.toml"), str(tmp_path / "alg.toml")], use_cthelper=cthelper,
               kernel=k.ports())
    for slot in d.engine.slots.values():
        d._register(slot)
    if events:
        with_reconciler(d, k)
    c = Tcp(k, d, 7, "ftp", 21)
    c.send(True, b"220 ready\r\n")
    return d, [c.send(True, PASV_227 % port) for port in ports]


def test_a_victim_the_kernel_may_not_evict_is_deleted_as_before(tmp_path):
    """ExpectMax 2 (a used expectation the kernel dropped unseen could make it keep alg's
    victim), a pair (conntrackd commits in class 0 with the room of all) and helpers alg
    did not register (--no-cthelper): the victim is deleted over ctnetlink."""
    k = FakeKernel()
    d, keys = _pasv(tmp_path / "max2", k, ftp="[classes.ftp]\nexpect_max = 2\n", ports=(80, 81, 82))
    assert [e.key for e in k.deleted] == keys[0] and list(k.expectations) == keys[1] + keys[2]
    assert d.stats.evicted_by_kernel == 0

    k = FakeKernel()
    d, (first, second) = _pasv(tmp_path / "pair", k, core="pair = true\n")
    assert [e.key for e in k.deleted] == first and d.stats.evicted_by_kernel == 0

    k = FakeKernel()  # --no-cthelper: the masters' helpers are not alg's to know
    d, (first, second) = _pasv(tmp_path / "queue-only", k, cthelper=False)
    assert not k.helpers and [e.key for e in k.deleted] == first and d.stats.evicted_by_kernel == 0


def test_a_victim_of_a_create_the_kernel_refuses_is_deleted(tmp_path):
    import errno

    from alg.errors import KernelError
    k = FakeKernel()
    real = k.create

    def refuse_the_second(e, master, exclusive=False):
        if k.kernel_created:
            raise KernelError(errno.EINVAL, "exp-new")
        real(e, master, exclusive)
    k.create = refuse_the_second  # type: ignore[method-assign]
    d, (first, second) = _pasv(tmp_path / "refused", k, core=OVER_CTNETLINK)
    assert second == [] and [e.key for e in k.deleted] == first and not k.expectations
    assert d.stats.evicted_by_kernel == 0 and d.stats.kernel_errors["EINVAL"] == 1


def test_a_victim_waiting_for_its_retry_is_deleted_not_left_to_the_kernel(tmp_path):
    """An expectation whose create waits for a retry (ENOENT) may not be in the kernel yet:
    the kernel could not evict it, so ExpectMax's EXP_DELETE goes out for it."""
    import errno

    from alg.errors import KernelError
    k = FakeKernel()
    real_create, real_delete = k.create, k.delete
    asked: list = []

    def late(e, master, exclusive=False):  # the first create finds no master yet
        if not asked:
            asked.append(e)
            raise KernelError(errno.ENOENT, "exp-new")
        real_create(e, master, exclusive)

    def delete(e):
        asked.append(("delete", e.key))
        real_delete(e)
    k.create, k.delete = late, delete  # type: ignore[method-assign]
    d, (first, second) = _pasv(tmp_path / "late", k, core=OVER_CTNETLINK)
    assert first == [] and d.stats.deferred == 1
    assert asked[1] == ("delete", asked[0].key) and d.stats.evicted_by_kernel == 0
    assert list(k.expectations) == second and [e.key for e in d.engine.table] == second


def test_events_of_other_helpers_leave_alg_s_table_alone(tmp_path):
    """An expectation event names its master's helper: one of a helper this process does not
    serve (the kernel's own, another worker's instance) is not alg's, even with the same tuple."""
    from dataclasses import replace

    from alg.daemon.reconciler import Reconciler
    k = FakeKernel()
    d, [[key]] = _pasv(tmp_path / "other", k, ports=(80,))
    d.reconciler = Reconciler(k.ports().events(), d.engine, d.sink, d.stats)
    e = d.engine.table.get(key)
    assert e is not None and e.kernel_master is not None
    k.events.append(("destroy", replace(e, helper="ftp1"), e.kernel_master))
    d.reconciler.read()
    assert d.engine.table.get(key) is e
    k.events.append(("destroy", e, e.kernel_master))
    d.reconciler.read()
    assert d.engine.table.get(key) is None
