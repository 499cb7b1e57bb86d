"""ctnetlink expectations against the host kernel, in alg-nl-* namespaces.

A client in alg-nl-cli opens a TCP connection to port 21 of a server in
alg-nl-srv through alg-nl-fw, where the raw table attaches the in-kernel
`ftp` helper.  Expectations are created / listed / deleted / flushed on that
master through alg.kernel.ctnetlink and compared with `conntrack -L expect`.
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress as I
import os
import subprocess
import sys
import time

import pytest
from pathlib import Path

from alg.daemon.worker import looked_up_view
from alg.errors import KernelError
from alg.expect import Expectation
from alg.kernel.ctnetlink import IPS_CONFIRMED
from alg.kernel.nfqueue import CtTuple
from alg.model import Direction, FlowTuple

pytestmark = pytest.mark.kernel
LAB = Path(__file__).resolve().parents[1] / "tools" / "lab" / "netns.sh"
ENV = dict(os.environ, LAB_NS_CLIENT="alg-nl-cli", LAB_NS_FW="alg-nl-fw", LAB_NS_SERVER="alg-nl-srv")
HOLD = """
import socket, sys, time
if sys.argv[1] == "srv":
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", int(sys.argv[2]))); s.listen(8); print("ready", flush=True)
    conns = [s.accept() for _ in range(int(sys.argv[3]))]; time.sleep(60)
else:
    c = socket.create_connection((sys.argv[2], int(sys.argv[3])), timeout=5)
    print(c.getsockname()[1], flush=True); time.sleep(60)
"""


def sh(cmd: str) -> str:
    r = subprocess.run(["bash", "-c", f"source {LAB}; {cmd}"], env=ENV, capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def in_ns(ns: str, fn):
    """Run fn() with the thread in netns `ns` (sockets opened there stay there)."""
    libc = ctypes.CDLL(None, use_errno=True)
    orig = os.open("/proc/self/ns/net", os.O_RDONLY)
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        assert libc.setns(fd, 0x40000000) == 0, os.strerror(ctypes.get_errno())
        return fn()
    finally:
        libc.setns(orig, 0x40000000)
        os.close(fd)
        os.close(orig)


@pytest.fixture(scope="module")
def net(kernel_ok):
    sh("lab_net_down >/dev/null 2>&1; lab_net_up tcp/21 tcp/2121 >/dev/null && "
       "lab_fw iptables -t raw -A PREROUTING -i c1 -p tcp --dport 21 -j CT --helper ftp && "
       "lab_fw iptables -t nat -A POSTROUTING -o s1 -p tcp --dport 2121 -j MASQUERADE && "
       "lab_fw iptables -t nat -A PREROUTING -i c1 -p tcp --dport 2122 -j DNAT --to-destination 10.0.2.2:2121")
    procs = []
    from alg.kernel.ctnetlink import Ctnetlink, Events
    # With net.netfilter.nf_conntrack_events=2 (the default) the kernel reports a
    # master's expectations only if a listener existed when the master was created.
    events = in_ns("alg-nl-fw", Events)
    try:
        masters = {}
        for port, to in ((21, "10.0.2.2"), (2121, "10.0.2.2"), (21, "10.0.2.2"), (2122, "10.0.1.1")):
            if port not in masters and port != 2122:
                srv = subprocess.Popen(["ip", "netns", "exec", "alg-nl-srv", sys.executable, "-c", HOLD, "srv",
                                        str(port), "2"], stdout=subprocess.PIPE, text=True)
                procs.append(srv)
                assert srv.stdout.readline().strip() == "ready"
            cli = subprocess.Popen(["ip", "netns", "exec", "alg-nl-cli", sys.executable, "-c", HOLD, "cli", to,
                                    str(port)], stdout=subprocess.PIPE, text=True)
            procs.append(cli)
            sport = int(cli.stdout.readline())
            masters["21b" if port in masters else port] = FlowTuple(4, 6, I.ip_address("10.0.1.2"),
                                                                     I.ip_address(to), sport, port)
        time.sleep(0.2)
        ctn = in_ns("alg-nl-fw", Ctnetlink)
        yield ctn, masters, events
        ctn.close()
    finally:
        events.close()
        for p in procs:
            p.kill()
            p.wait()
        sh("lab_net_down >/dev/null 2>&1; true")


def expect(master, dport=50004, **kw):
    d = {"helper": "ftp", "cls": "ftp", "class_id": 0, "l3": 4, "proto": 6, "src": master.src,
         "dst": master.dst, "sport": None,
             "dport": dport, "master": master, "timeout": 300}
    d.update(kw)
    return Expectation(**d)


def conntrack_expect() -> str:
    return sh("lab_fw conntrack -L expect 2>/dev/null")


def test_find_master_and_create_list_delete(net):
    ctn, m, _ = net
    ct = ctn.conntrack(m[21])
    assert ct is not None and ct.orig.flow() == m[21] and ct.reply.flow() == m[21].reversed() and ct.id
    assert ct.status & IPS_CONFIRMED and ct.helper == "ftp"
    assert ctn.conntrack(m[21].reversed()) == ct  # found by either direction's tuple
    ref = m[21]
    ctn.flush()
    e = expect(ref)
    ctn.create(e, ref)
    with pytest.raises(KernelError) as ei:
        ctn.create(e, ref, exclusive=True)
    assert ei.value.errno == errno.EEXIST
    ctn.create(e, ref)  # default: a retransmitted announcement refreshes
    got = ctn.get(e)
    assert got is not None and (got.master, got.tuple.dport, got.helper) == (m[21], 50004, "ftp")
    assert ctn.get(expect(ref, dport=50005)) is None
    ks = ctn.list()
    assert len(ks) == 1
    k = ks[0]
    assert (k.helper, k.class_id, k.master, k.tuple.dport, k.mask.sport) == ("ftp", 0, m[21], 50004, 0)
    assert 290 < k.timeout <= 300
    j = k.to_json()
    assert (j["src"], j["dst"], j["sport"], j["dport"]) == ("10.0.1.2", "10.0.2.2", None, 50004)
    out = conntrack_expect()
    assert "dport=50004" in out and f"master-src=10.0.1.2 master-dst=10.0.2.2 sport={m[21].sport} dport=21" in out
    assert "helper=ftp" in out
    ctn.delete(e)
    assert ctn.list() == [] and "dport=50004" not in conntrack_expect()
    with pytest.raises(KernelError) as ei:
        ctn.delete(e)
    assert ei.value.errno == errno.ENOENT


def test_wildcard_src_prefix_and_flush(net):
    ctn, m, _ = net
    ctn.flush()
    ctn.create(expect(m[21], dport=50010, src=None), m[21])
    assert [k.to_json()["src"] for k in ctn.list()] == [None]
    # the in-kernel ftp helper's policy allows 1 expectation per master: the next one evicts it
    ctn.create(expect(m[21], dport=50011, src_prefix=24), m[21])
    got = {k.tuple.dport: k.to_json() for k in ctn.list()}
    assert list(got) == [50011] and got[50011]["mask"]["src"] == "255.255.255.0"
    assert "mask-src=255.255.255.0" in conntrack_expect()
    ctn.flush()
    assert ctn.list() == []


def test_clash_between_masters(net):
    ctn, m, _ = net
    ctn.flush()
    ctn.create(expect(m[21], dport=50030), m[21])
    with pytest.raises(KernelError) as ei:
        ctn.create(expect(m["21b"], dport=50030), m["21b"], exclusive=True)  # identical tuple, other master
    assert ei.value.errno == errno.EEXIST
    with pytest.raises(KernelError) as ei:
        ctn.create(expect(m["21b"], dport=50030, src=None), m["21b"])  # overlapping (wildcard source)
    assert ei.value.errno == errno.EBUSY and not ei.value.full
    assert [k.master for k in ctn.list()] == [m[21]]
    held = ctn.get(expect(m["21b"], dport=50030))  # asked by its tuple: whoever's it is
    assert held is not None and held.master == m[21]
    ctn.flush()


def test_events(net):
    ctn, m, ev = net
    ctn.flush()
    ev.read()
    ctn.create(expect(m[21], dport=50020), m[21])
    ctn.flush()
    kinds: list = []
    deadline = time.monotonic() + 2
    while ("destroy", 50020) not in kinds and time.monotonic() < deadline:
        time.sleep(0.02)
        kinds += [(x.kind, x.expectation.tuple.dport) for x in ev.read()]
    assert ("new", 50020) in kinds and ("destroy", 50020) in kinds


def _gather(ev, want: set, seconds: float = 2.0) -> list:
    """(kind, dport) of ev's events, until every one of `want` came (or the time is up)."""
    got: list = []
    deadline = time.monotonic() + seconds
    while not want <= set(got) and time.monotonic() < deadline:
        time.sleep(0.02)
        got += [(x.kind, x.tuple_ints[5]) for x in ev.read()]
    return got


def test_the_kernel_keeps_a_sockets_own_creations_out_of_its_events(net):
    """Ctnetlink.events() filters in the kernel the EXP_NEW events of what its own socket created
    (the event's nlmsg_pid); another socket's creations, the kernel's evictions and every delete come."""
    from alg.kernel.ctnetlink import Ctnetlink
    ctn, m, ev = net
    other = in_ns("alg-nl-fw", Ctnetlink)
    own = in_ns("alg-nl-fw", ctn.events)
    try:
        ctn.flush()
        _gather(own, set(), 0.1), ev.read()
        ctn.create(expect(m[21], dport=50040), m[21])
        other.create(expect(m["21b"], dport=50041), m["21b"])
        # the in-kernel ftp helper allows one per master: the kernel evicts 50040 itself
        ctn.create(expect(m[21], dport=50042), m[21])
        ctn.delete(expect(m[21], dport=50042))
        want = {("new", 50041), ("destroy", 50040), ("destroy", 50042)}
        mine = _gather(own, want)
        assert set(mine) == want, mine
        everything = _gather(ev, want | {("new", 50040), ("new", 50042)})
        assert {("new", 50040), ("new", 50042)} <= set(everything), everything  # unfiltered: all of them
        other.create(expect(m["21b"], dport=50043), m["21b"])
        deadline = time.monotonic() + 2
        got: list = []
        while not got and time.monotonic() < deadline:
            got = [x for x in own.read() if x.kind == "new"]
        (x,) = got
        k = x.expectation  # parsed whole on demand: the same facts as the peek
        assert k is not None and (k.tuple._ints, k.master._ints, k.helper) == (x.tuple_ints, x.master_ints, "ftp")
        assert x.master_ints == m["21b"]._ints and x.src_mask == int(k.mask.src) == 0xFFFFFFFF and x.any_sport
    finally:
        own.close()
        other.close()
        ctn.flush()


def test_errors(net):
    ctn, m, _ = net
    with pytest.raises(KernelError) as ei:
        ctn.create(expect(m[21], class_id=3), m[21])  # ftp has one class
    assert ei.value.errno == errno.EINVAL and not ei.value.full
    with pytest.raises(KernelError) as ei:
        ctn.create(expect(m[2121]), m[2121])  # master without helper
    assert ei.value.errno == errno.EOPNOTSUPP
    ghost = FlowTuple(4, 6, I.ip_address("10.0.1.2"), I.ip_address("10.0.2.2"), 1, 21)
    assert ctn.conntrack(ghost) is None
    with pytest.raises(KernelError) as ei:
        ctn.create(expect(ghost), ghost)
    assert ei.value.errno == errno.ENOENT


def view_of(ctn, t: FlowTuple):
    """How the daemon sees a packet with tuple t when its queue cannot hand over the conntrack."""
    raw = CtTuple(t.l3, t.proto, t.src.packed, t.dst.packed, t.sport, t.dport)
    view = looked_up_view(ctn.conntrack(t), raw, "ftp")
    return view.direction is Direction.REPLY, view.tuples()[0], view.key


def test_lookup_behind_nat_in_both_directions(net):
    """The four ways a packet meets its conntrack: each direction, before and after NAT."""
    ctn, m, _ = net
    natted = FlowTuple(4, 6, I.ip_address("10.0.2.1"), I.ip_address("10.0.2.2"), m[2121].sport, 2121)
    ct = ctn.conntrack(natted)
    if ct is not None and ct.orig.flow() == natted:
        pytest.skip("MASQUERADE kept neither address nor port distinct")
    seen = {name: view_of(ctn, t)[:2] for name, t in {
        "original": m[2121], "original after SNAT": natted, "reply before de-SNAT": natted.reversed(),
        "reply after de-SNAT": m[2121].reversed(), "reply without NAT": m[21].reversed()}.items()}
    assert seen == {"original": (False, m[2121]), "original after SNAT": (False, m[2121]),
                    "reply before de-SNAT": (True, m[2121]),
                    "reply after de-SNAT": (True, m[2121]), "reply without NAT": (True, m[21])}
    assert view_of(ctn, natted.reversed())[2] == view_of(ctn, m[2121])[2]  # one flow


def test_lookup_through_dnat_and_snat_gives_the_real_endpoints(net):
    """A port forward (DNAT 10.0.1.1:2122 -> 10.0.2.2:2121) with MASQUERADE: the
    endpoints are neither tuple of the conntrack; each direction's source is one."""
    ctn, m, _ = net
    orig = m[2122]
    ends = FlowTuple(4, 6, orig.src, I.ip_address("10.0.2.2"), orig.sport, 2121)
    after_nat = FlowTuple(4, 6, I.ip_address("10.0.2.1"), ends.dst, orig.sport, 2121)
    if ctn.conntrack(after_nat) is None:
        pytest.skip("MASQUERADE changed the source port")
    keys = set()
    for t, reply in ((orig, False), (after_nat, False), (orig.reversed(), True), (after_nat.reversed(), True)):
        is_reply, seen_ends, key = view_of(ctn, t)
        assert (is_reply, seen_ends) == (reply, ends)
        keys.add(key)
    assert len(keys) == 1 and ctn.conntrack(orig).orig.flow() == orig


ACCEPT_ONE = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(1); s.settimeout(10); print("ready", flush=True)
c, peer = s.accept(); print(peer[0], c.recv(100).decode(), flush=True)
"""
CONNECT = """
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5); c.sendall(b"hello")
"""


def test_a_nat_expectation_sends_its_flow_to_the_inside_endpoint(net):
    """What alg sends for a NATed master (CTA_EXPECT_NAT, expectfn nat-follow-master):
    a connection from the server to the firewall's own address 10.0.2.1:50010 is
    expected, and translated to the client 10.0.1.2:50011, the inside endpoint.
    Without the expectation the same connection is the firewall's own (refused)."""
    ctn, m, _ = net
    ctn.flush()
    e = expect(m[21], src=I.ip_address("10.0.2.2"), dst=I.ip_address("10.0.2.1"), dport=50010,
               nat=(Direction.REPLY, I.ip_address("10.0.1.2"), 50011))

    def connect() -> tuple[int, str]:
        srv = subprocess.Popen(["ip", "netns", "exec", "alg-nl-cli", sys.executable, "-c", ACCEPT_ONE, "50011"],
                               stdout=subprocess.PIPE, text=True)
        try:
            assert srv.stdout.readline().strip() == "ready"
            r = subprocess.run(["ip", "netns", "exec", "alg-nl-srv", sys.executable, "-c", CONNECT, "10.0.2.1",
                                "50010"], capture_output=True, text=True, timeout=20, check=False)
            return r.returncode, (srv.stdout.readline().strip() if r.returncode == 0 else "")
        finally:
            srv.kill()
            srv.wait()

    refused, _ = connect()
    assert refused != 0
    ctn.create(e, m[21])
    out = conntrack_expect()
    assert "dport=50010" in out, out
    assert connect() == (0, "10.0.2.2 hello")  # the source as the master's peer: nat-follow-master's SNAT
    assert "dport=50010" not in conntrack_expect()  # used up


def test_a_request_is_read_without_waiting_and_a_kernel_that_says_nothing_times_out():
    """nfnetlink answers a request within its send, so NfnlSocket reads the answer without
    waiting first (a non-blocking socket: two system calls a request, where a timeout would
    make CPython poll before each). It waits only when nothing came: a request without
    NLM_F_ACK that succeeds gets no answer, and transact gives up after its timeout; the
    socket then serves the next request, the late nothing skipped."""
    from alg.kernel import nlmsg as L
    from alg.kernel.ctnetlink import IPCTNL_MSG_EXP_DELETE, pyroute2_exp_dump
    ns = "alg-nl-quiet"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        s = in_ns(ns, lambda: L.NfnlSocket(timeout=0.3))
        try:
            assert s.sock.gettimeout() == 0.0  # non-blocking: no poll before each send and recv
            seq = s.next_seq()  # an expectation flush (a DELETE naming none) without NLM_F_ACK: no answer
            t0 = time.monotonic()
            with pytest.raises(L.NetlinkError) as ei:
                s.transact(L.message(L.NFNL_SUBSYS_CTNETLINK_EXP, IPCTNL_MSG_EXP_DELETE, L.NLM_F_REQUEST,
                                     2, b"", seq), seq)
            assert ei.value.errno == errno.ETIMEDOUT and time.monotonic() - t0 >= 0.25
            seq = s.next_seq()
            assert s.transact(pyroute2_exp_dump(2, seq=seq), seq) == []  # a dump of none, answered
        finally:
            s.close()
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
