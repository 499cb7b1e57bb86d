"""Issue 13, written as an attacker would: each test feeds crafted bytes through
the engine (replay's path) or the policy loader and checks that nothing opens,
nothing grows past its bound and every bad value is refused."""

from __future__ import annotations

import ipaddress

import pytest

import alg
from alg.decode import TCP_ACK, TCP_SYN, Packet
from alg.engine import Create, Engine, make_slots
from alg.model import TCP, UDP
from alg.plugins import load_plugins
from alg.policy import CorePolicy, default_policy

HOST = load_plugins()
SPECS = {n: c.spec for n, c in HOST.helpers.items()}
ip = ipaddress.ip_address


def engine(*names: str, core: CorePolicy | None = None, host=HOST) -> Engine:
    policy = default_policy({n: c.spec for n, c in host.helpers.items()})
    return Engine(make_slots([policy.helpers[n] for n in names], host.helpers), core, track_related=True)


def udp(src, dst, sport, dport, payload: bytes) -> Packet:
    return Packet(ip(src).version, UDP, ip(src).packed, ip(dst).packed, sport, dport, payload)


class Conn:
    """A TCP connection as packets: handshake, then data in either direction."""

    def __init__(self, src, dst, sport, dport):
        self.ends = [(src, sport, 1000), (dst, dport, 5000)]
        self.seq = [1000, 5000]

    def pkt(self, side: int, payload: bytes = b"", flags: int = TCP_ACK, skip: int = 0) -> Packet:
        (a, ap, _), (b, bp, _) = self.ends[side], self.ends[1 - side]
        self.seq[side] += skip
        p = Packet(ip(a).version, TCP, ip(a).packed, ip(b).packed, ap, bp, payload, self.seq[side], flags)
        self.seq[side] += len(payload) + (1 if flags & TCP_SYN else 0)
        return p

    def open(self, eng: Engine, now: float = 0.0) -> list:
        return eng.process(self.pkt(0, flags=TCP_SYN), now) + eng.process(self.pkt(1, flags=TCP_SYN | TCP_ACK), now)


def created(decisions) -> list:
    return [d.expectation for d in decisions if isinstance(d, Create)]


def notices(eng: Engine, helper: str) -> dict:
    return eng.stats()["helpers"][helper]["notices"]


# ---------------------------------------------------------------- SSDP pinholes
MSEARCH = b'M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nMAN: "ssdp:discover"\r\nMX: 1\r\nST: ssdp:all\r\n\r\n'
CLIENT, DEVICE, ATTACKER = "192.168.1.20", "192.168.1.30", "203.0.113.66"


def ssdp_answer(location: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=1800\r\nST: ssdp:all\r\nLOCATION: " + location + b"\r\n\r\n"


def subscribe(callback: bytes) -> bytes:
    return (b"SUBSCRIBE /evt HTTP/1.1\r\nHOST: " + DEVICE.encode() + b":1900\r\nCALLBACK: <" + callback +
            b">\r\nNT: upnp:event\r\nTIMEOUT: Second-1800\r\n\r\n")


def test_ssdp_unsolicited_answer_opens_nothing():
    """No M-SEARCH went out: a 200 OK with a LOCATION sent to port 1900 is not an answer."""
    eng = engine("ssdp")
    out = eng.process(udp(ATTACKER, CLIENT, 1900, 1900, ssdp_answer(b"http://203.0.113.66:8080/d.xml")), 0.0)
    out += eng.process(udp(CLIENT, ATTACKER, 1900, 1900, ssdp_answer(b"http://192.168.1.20:22/d.xml")), 0.1)
    assert created(out) == [] and len(eng.table) == 0
    assert notices(eng, "ssdp") == {"unsolicited-answer": 2}


def test_ssdp_answer_to_a_unicast_search_on_its_own_flow_is_read():
    eng = engine("ssdp")
    eng.process(udp(CLIENT, DEVICE, 50000, 1900, MSEARCH), 0.0)
    [e] = created(eng.process(udp(DEVICE, CLIENT, 1900, 50000, ssdp_answer(b"http://192.168.1.30:49152/d")), 0.1))
    assert (e.cls, e.dst, e.dport) == ("location", ip(DEVICE), 49152)


def test_ssdp_subscribe_on_a_connection_nobody_expected_opens_nothing():
    """A web page makes the browser SUBSCRIBE to tcp/1900 with a CALLBACK naming the browser's host:
    replay gives no helper to tcp/1900, and a helper handed that connection anyway (an old
    `CT --helper ssdp` rule on tcp/1900, live) refuses it."""
    for forced in (False, True):
        eng = engine("ssdp")
        conn = Conn(CLIENT, ATTACKER, 40000, 1900)
        slot = eng.slots["ssdp"] if forced else None
        out = eng.process(conn.pkt(0, flags=TCP_SYN), 0.0, slot=slot)
        out += eng.process(conn.pkt(1, flags=TCP_SYN | TCP_ACK), 0.0, slot=slot)
        out += eng.process(conn.pkt(0, subscribe(b"http://192.168.1.20:22/")), 0.1, slot=slot)
        assert created(out) == [] and len(eng.table) == 0, forced
        assert notices(eng, "ssdp") == ({"not-expected": 1} if forced else {})


def test_ssdp_search_answer_location_subscribe_chain_still_works():
    eng = engine("ssdp")
    eng.process(udp(CLIENT, "239.255.255.250", 50000, 1900, MSEARCH), 0.0)
    [loc] = created(eng.process(udp(DEVICE, CLIENT, 1900, 50000, ssdp_answer(b"http://192.168.1.30:49152/d")), 0.1))
    conn = Conn(CLIENT, DEVICE, 40000, 49152)  # admitted by the location expectation: ssdp reads it
    conn.open(eng, 0.2)
    [cb] = created(eng.process(conn.pkt(0, subscribe(b"http://192.168.1.20:49200/cb")), 0.3))
    assert (loc.cls, cb.cls, cb.src, cb.dst, cb.dport) == ("location", "callback", ip(DEVICE), ip(CLIENT), 49200)


def test_rules_assign_ssdp_on_udp_only():
    from alg.rules import iptables, nft

    hp = default_policy(SPECS).helpers["ssdp"]
    text = iptables([hp]) + nft([hp])
    assert "-p udp --dport 1900" in text and "tcp --dport 1900" not in text and "-p tcp" not in text
    assert "tcp dport" not in text and "udp dport { 1900 }" in text


# ---------------------------------------------------------------- FTP resync
BROWSER, EVIL = "192.168.1.20", "198.51.100.7"


def test_ftp_resync_never_lands_in_an_http_body_whose_head_was_lost():
    """NAT Slipstreaming through a lost segment: the POST head (which would stop inspection) is
    never seen; the body's lines read as FTP. Nothing FTP was seen before the hole: give up."""
    eng = engine("ftp")
    conn = Conn(BROWSER, EVIL, 40000, 21)
    conn.open(eng)
    head = b"POST /x HTTP/1.1\r\nHost: evil\r\nContent-Length: 4096\r\n\r\n"
    body = b"x" * 500 + b"\r\nPORT 192,168,1,20,0,22\r\nEPRT |1|192.168.1.20|22|\r\n" + b"y" * 300 + b"\r\n"
    out = []
    for t in range(20):  # the head is lost; the body comes behind the hole and the hole is skipped
        out += eng.process(conn.pkt(0, body, skip=len(head) if t == 0 else 0), 30.0 + t)
    stats = eng.stats()["helpers"]["ftp"]
    assert created(out) == [] and len(eng.table) == 0
    assert stats["gaps"] == 1 and stats["desynced"] == 1


def test_ftp_resync_after_a_hole_in_a_known_ftp_stream_still_reads_commands():
    eng = engine("ftp")
    conn = Conn(BROWSER, EVIL, 40000, 21)
    conn.open(eng)
    eng.process(conn.pkt(1, b"220 ready\r\n"), 0.1)
    eng.process(conn.pkt(0, b"USER anonymous\r\n"), 0.2)
    out = []
    for t in range(20):
        out += eng.process(conn.pkt(0, b"NOOP\r\nPORT 192,168,1,20,39,16\r\n", skip=7 if t == 0 else 0), 30.0 + t)
    assert {(e.dst, e.dport) for e in created(out)} == {(ip(BROWSER), 10000)}


# ---------------------------------------------------------------- expectation economy
class Greedy(alg.Helper):
    """An INVITE-like helper: every datagram asks for one expectation per line `port` of its payload."""

    spec = alg.HelperSpec(name="greedy", protocols=(UDP,), ports=(5060,), classes=(alg.ExpectClass("media", 4, 180),))

    def inspect(self, segment, state):
        ports = [int(x) for x in segment.data.split()]
        return alg.Parsed(len(segment.data), tuple(
            alg.Expect("media", UDP, segment.sender, segment.receiver, None, p) for p in ports))


def with_greedy():
    return load_plugins(extra=[type("P", (), {"alg_register_helpers": alg.hookimpl(
        lambda self, register: register(Greedy))})()])


def test_one_message_asking_thousands_of_ports_takes_expect_max_and_churns_nothing():
    eng = engine("greedy", host=with_greedy())
    msg = b" ".join(b"%d" % p for p in range(10000, 14096))  # 4,096 ports in one message
    out = eng.process(udp("203.0.113.5", "192.168.1.20", 5060, 5060, msg), 0.0)
    assert [type(d).__name__ for d in out] == ["Create"] * 4  # no Delete: nothing admitted then evicted
    assert [d.expectation.dport for d in out] == [10000, 10001, 10002, 10003]
    assert eng.stats()["helpers"]["greedy"]["classes"]["media"]["refused"] == {"per-message": 4092}


def test_one_hostile_host_fills_at_most_its_share_and_ftp_still_gets_its_227():
    eng = engine("greedy", "ftp", host=with_greedy())
    attacker = "203.0.113.5"
    for i in range(410):  # 410 INVITE-like requests of 10 ports each: 4,100 > the budget of 4,096
        msg = b" ".join(b"%d" % (20000 + 4 * i + j) for j in range(4))
        eng.process(udp(attacker, "192.168.1.%d" % (2 + i % 200), 6000 + i, 5060, msg), float(i) / 100)
    held = eng.stats()["expectations_by_helper"]["greedy"]
    assert held <= eng.table.source_cap < eng.table.budget
    refused = eng.stats()["helpers"]["greedy"]["classes"]["media"]["refused"]
    assert refused["source-share"] == 4 * 410 - held
    assert eng.stats()["refused_sources"] == {attacker: 4 * 410 - held}
    # a legitimate passive FTP transfer from another host
    conn = Conn("192.168.1.50", "198.51.100.21", 40000, 21)
    conn.open(eng, 5.0)
    eng.process(conn.pkt(0, b"PASV\r\n"), 5.1)
    [e] = created(eng.process(conn.pkt(1, b"227 Entering Passive Mode (198,51,100,21,78,32)\r\n"), 5.2))
    assert (e.helper, e.dst, e.dport) == ("ftp", ip("198.51.100.21"), 20000)


def test_no_helper_takes_more_than_its_share_when_others_are_enabled():
    eng = engine("greedy", "ftp", host=with_greedy(), core=CorePolicy(expect_budget=100, source_share=1.0))
    for i in range(40):  # 40 senders, so no source share binds: only the helper's
        eng.process(udp("203.0.113.%d" % (i + 1), "192.168.1.20", 5060, 5060, b"1000 1001 1002 1003"), 0.0)
    assert eng.stats()["expectations_by_helper"] == {"greedy": 50}
    assert eng.stats()["helpers"]["greedy"]["classes"]["media"]["refused"] == {"helper-share": 110}


# ---------------------------------------------------------------- configuration
BAD_POLICIES = [  # (file text, line, key): each must stop every command with exit 2 naming file, line and key
    ('helper = "sip"\n[options]\nmax_transactions = -1\n', 3, "max_transactions"),
    ('helper = "sip"\n[options]\nmin_media_port = -5\n', 3, "min_media_port"),
    ('helper = "sip"\n[options]\nmin_media_port = 70000\n', 3, "min_media_port"),
    ('helper = "rpc"\n[options]\nmax_pending = 0\n', 3, "max_pending"),
    ('helper = "rpc"\n[options]\ncall_timeout = -1\n', 3, "call_timeout"),
    ('helper = "ssdp"\n[options]\nsubnet_prefix_v4 = 999\n', 3, "subnet_prefix_v4"),
    ('helper = "mdns"\n[options]\nsubnet_prefix_v6 = 129\n', 3, "subnet_prefix_v6"),
    ('helper = "rpc"\n[options]\nallowed_networks = [1, 167772160]\n', 3, "allowed_networks"),
    ('helper = "tns"\n[options]\nallowed_networks = ["10.0.0.0/33"]\n', 3, "allowed_networks"),
    ('helper = "tns"\n[options]\nallowed_networks = ["not-a-net"]\n', 3, "allowed_networks"),
    ('helper = "tns"\n[options]\nallowed_networks = [["10.0.0.0/8"]]\n', 3, "allowed_networks"),
    ('helper = "ftp"\n[options]\nloose = [true]\n', 3, "loose"),
    ('helper = "ftp"\nprotocols = [["tcp"]]\n', 2, "protocols"),
    ('helper = "ftp"\nfamilies = [{}]\n', 2, "families"),
    ('helper = "ftp"\nports = [[21]]\n', 2, "ports"),
    ('helper = "ftp"\n\nports = ' + "[" * 2000 + "]" * 2000 + "\n", 3, "ports"),
]


@pytest.mark.parametrize("text, line, key", BAD_POLICIES, ids=[f"{k}-{i}" for i, (_, _, k) in enumerate(BAD_POLICIES)])
@pytest.mark.parametrize("command", ["helpers", "rules", "replay", "run"])
def test_every_command_refuses_a_bad_value_naming_file_line_and_key(tmp_path, capsys, monkeypatch, text, line, key,
                                                                    command):
    from alg import daemon

    monkeypatch.setattr(daemon.Daemon, "run", lambda self: pytest.fail("the daemon started with a bad policy"))
    path = tmp_path / "bad.toml"
    path.write_text(text)
    assert run_cli(command, path) == 2
    err = capsys.readouterr().err
    assert f"{path}:{line}" in err and key in err, err


def run_cli(command: str, policy) -> int:
    from alg.cli import main

    pcap = "tests/pcaps/ftp-zeek_ftp-ipv4/capture.pcap"
    return main({"replay": ["replay", "--policy", str(policy), pcap]}.get(command, [command, "--policy", str(policy)]))


@pytest.mark.parametrize("command", ["helpers", "rules", "replay", "run"])
def test_every_command_refuses_two_helpers_on_one_port(tmp_path, capsys, monkeypatch, command):
    """Accepted silently before: the helper whose name sorts first took the traffic."""
    from alg import daemon

    monkeypatch.setattr(daemon.Daemon, "run", lambda self: pytest.fail("the daemon started with a bad policy"))
    (tmp_path / "a.toml").write_text('helper = "ftp"\nname = "ftp-a"\nqueue = 50\n')
    (tmp_path / "b.toml").write_text('helper = "ftp"\nname = "ftp-b"\nqueue = 51\n')
    assert run_cli(command, tmp_path) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'b.toml'}:1" in err and "ports" in err and "tcp port 21" in err, err


def test_two_files_on_one_port_or_queue_blame_the_file(tmp_path):
    from alg.errors import ConfigError
    from alg.policy import load_policy

    (tmp_path / "a.toml").write_text('helper = "ftp"\nname = "ftp-a"\nqueue = 50\n')
    (tmp_path / "b.toml").write_text('helper = "ftp"\nname = "ftp-b"\nqueue = 51\n')
    with pytest.raises(ConfigError) as err:
        load_policy([str(tmp_path)], SPECS, only_listed=True)
    assert err.value.file == str(tmp_path / "b.toml") and err.value.key == "ports" and "tcp port 21" in str(err.value)
    # a file taking a built-in helper's queue is named, not the built-in
    (tmp_path / "b.toml").write_text('helper = "ftp"\nname = "ftp-b"\nqueue = 21\nports = [2121]\n')
    with pytest.raises(ConfigError) as err:
        load_policy([str(tmp_path / "b.toml")], SPECS, only_listed=False)
    assert (err.value.file, err.value.line, err.value.key) == (str(tmp_path / "b.toml"), 3, "queue")


def test_a_plugin_declares_its_option_ranges_and_gets_them_checked(tmp_path):
    from alg.errors import ConfigError
    from alg.policy import load_policy

    class Plug(alg.Helper):
        spec = alg.HelperSpec(name="plug", protocols=(UDP,), ports=(7777,), classes=(alg.ExpectClass("c", 1, 60),),
                              options={"depth": alg.Option(3, "how deep", min=1, max=8)})

    (tmp_path / "p.toml").write_text('helper = "plug"\n[options]\ndepth = 9\n')
    with pytest.raises(ConfigError, match="between 1 and 8") as err:
        load_policy([str(tmp_path / "p.toml")], {"plug": Plug.spec}, only_listed=True)
    assert (err.value.line, err.value.key) == (3, "options.depth")


# ---------------------------------------------------------------- replay's defragmenter
def held_bytes(defrag) -> int:
    """Bytes of fragment data the defragmenter holds, whatever its inner layout."""
    return sum(len(d) for dg in defrag.pending.values() for d in getattr(dg, "parts", dg).values())


def fragment_of(ident: int, offset: int, data: bytes, more: bool = True) -> Packet:
    return Packet(4, UDP, ip("203.0.113.9").packed, ip("192.168.1.20").packed, frag=(ident, offset, more, data))


def test_overlapping_fragments_cannot_pile_up():
    """Four datagrams of fragments each overlapping the last (issue 13: 45 MB held)."""
    from alg.decode import Defragmenter

    defrag, worst = Defragmenter(), 0
    for ident in range(4):
        for k in range(2000):
            assert defrag.feed(fragment_of(ident, 8 * k, b"A" * 1400)) is None
            worst = max(worst, held_bytes(defrag))
    assert worst <= 4 * 65535 and defrag.dropped >= 4 * 1999 // 2


def test_defragmenter_bytes_bound_evicts_the_oldest():
    from alg.decode import Defragmenter

    defrag = Defragmenter(max_bytes=100_000)
    for ident in range(50):  # 50 incomplete datagrams of 60 KB each
        for k in range(40):
            defrag.feed(fragment_of(ident, 1504 * k, b"B" * 1504))
    assert held_bytes(defrag) <= 100_000 and defrag.held == held_bytes(defrag)


def test_duplicate_fragment_is_ignored_and_the_datagram_still_reassembles():
    import struct

    from alg.decode import Defragmenter

    udp_header = struct.pack("!HHHH", 5060, 5060, 8 + 16, 0)
    whole = udp_header + b"0123456789abcdef"
    defrag = Defragmenter()
    assert defrag.feed(fragment_of(7, 0, whole[:16])) is None
    assert defrag.feed(fragment_of(7, 0, whole[:16])) is None  # a retransmitted duplicate
    pkt = defrag.feed(fragment_of(7, 16, whole[16:], more=False))
    assert pkt is not None and pkt.payload == b"0123456789abcdef" and defrag.held == 0


# ---------------------------------------------------------------- ./dev fuzz
def test_the_long_fuzz_run_counts_inputs_and_reports_a_failure():
    import importlib.util

    from hypothesis import given
    from hypothesis import strategies as st

    spec = importlib.util.spec_from_file_location("alg_fuzz", "tools/fuzz.py")
    fuzz = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fuzz)

    def planted(_frames, _payloads):
        @given(st.binary(min_size=1, max_size=8))
        def test(data):
            assert data[0] != 0x42, "planted"
        return test

    fuzz.TARGETS["planted"] = planted
    tried, failures = fuzz.run_target("planted", 5.0, 1, [], {})
    assert tried > 0 and len(failures) == 1 and "planted" in failures[0]
    tried, failures = fuzz.run_target("ssdp", 0.2, 1, [], {})
    assert tried >= fuzz.BATCH and failures == []


def test_installing_a_plugin_does_not_renumber_another_plugins_queue():
    def spec(name):
        return alg.HelperSpec(name=name, protocols=(UDP,), ports=(7000 + len(name),),
                              classes=(alg.ExpectClass("c", 1, 60),))

    before = default_policy({**SPECS, "zzz": spec("zzz")}).helpers["zzz"].queue
    after = default_policy({**SPECS, "aaa": spec("aaa"), "zzz": spec("zzz")}).helpers
    assert after["zzz"].queue == before and after["aaa"].queue != before


# ---------------------------------------------------------------- cost: no backtracking patterns
def _charset(item) -> frozenset[int] | None:
    """The bytes one regex atom matches (None: not a single-byte atom)."""
    from re import _constants as c  # type: ignore[attr-defined]

    categories = {
        c.CATEGORY_DIGIT: set(b"0123456789"), c.CATEGORY_SPACE: set(b" \t\n\r\f\v"),
        c.CATEGORY_WORD: set(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_"),
    }
    categories |= {c.CATEGORY_NOT_DIGIT: set(range(256)) - categories[c.CATEGORY_DIGIT],
                   c.CATEGORY_NOT_SPACE: set(range(256)) - categories[c.CATEGORY_SPACE],
                   c.CATEGORY_NOT_WORD: set(range(256)) - categories[c.CATEGORY_WORD]}
    op, arg = item
    if op is c.LITERAL:
        return frozenset((arg,))
    if op is c.NOT_LITERAL:
        return frozenset(set(range(256)) - {arg})
    if op is c.ANY:
        return frozenset(set(range(256)) - {10})
    if op is c.IN:
        out: set[int] = set()
        negate = False
        for sub_op, sub_arg in arg:
            if sub_op is c.NEGATE:
                negate = True
            elif sub_op is c.LITERAL:
                out.add(sub_arg)
            elif sub_op is c.RANGE:
                out |= set(range(sub_arg[0], sub_arg[1] + 1))
            elif sub_op is c.CATEGORY:
                out |= categories[sub_arg]
        return frozenset(set(range(256)) - out if negate else out)
    return None


def _backtracking(pattern) -> list[str]:
    """Adjacent unbounded repetitions that can match the same byte, and unbounded repetitions
    nested in one another: the shapes that make a regex engine backtrack quadratically or worse."""
    from re import _constants as c  # type: ignore[attr-defined]
    from re import _parser  # type: ignore[attr-defined]

    found: list[str] = []

    def unbounded(item) -> bool:
        return item[0] in (c.MAX_REPEAT, c.MIN_REPEAT) and item[1][1] == c.MAXREPEAT

    def flat(seq) -> list:
        out = []
        for item in seq:
            if item[0] is c.SUBPATTERN:
                out += flat(item[1][3])
            else:
                out.append(item)
        return out

    def contains_unbounded(seq) -> bool:
        for item in flat(seq):
            if unbounded(item):
                return True
            if item[0] in (c.MAX_REPEAT, c.MIN_REPEAT) and contains_unbounded(item[1][2]):
                return True
            if item[0] is c.BRANCH and any(contains_unbounded(b) for b in item[1][1]):
                return True
        return False

    def walk(seq) -> None:
        items = flat(seq)
        for i, item in enumerate(items):
            if item[0] in (c.MAX_REPEAT, c.MIN_REPEAT):
                body = item[1][2]
                if unbounded(item) and contains_unbounded(body):
                    found.append("nested unbounded repetition")
                walk(body)
                if unbounded(item) and len(flat(body)) == 1:
                    mine = _charset(flat(body)[0])
                    for later in items[i + 1:]:  # skip optional atoms (`\r?`) to the next unbounded one
                        if unbounded(later) and len(flat(later[1][2])) == 1:
                            theirs = _charset(flat(later[1][2])[0])
                            if mine is not None and theirs is not None and mine & theirs:
                                found.append("adjacent unbounded repetitions over the same bytes")
                            break
                        if not (later[0] in (c.MAX_REPEAT, c.MIN_REPEAT) and later[1][0] == 0):
                            break
            elif item[0] is c.BRANCH:
                for b in item[1][1]:
                    walk(b)

    walk(_parser.parse(pattern.pattern, pattern.flags))
    return found


def helper_patterns() -> list[tuple[str, object]]:
    import importlib
    import re

    out = []
    for name in ("ftp", "ssdp", "tns", "rpc", "dhcpv6", "mdns", "slp", "_discovery", "sip", "sip.grammar", "sip.sdp"):
        module = importlib.import_module(f"alg_helpers.{name}")
        for attr, value in vars(module).items():
            values = value.values() if isinstance(value, dict) else [value]
            out += [(f"{name}.{attr}", v) for v in values if isinstance(v, re.Pattern)]
    return out


def test_the_lint_catches_the_patterns_that_cost_seconds():
    import re

    assert _backtracking(re.compile(rb"^([A-Za-z-]+):[ \t]*(.*?)[ \t]*\r?$", re.M))  # ssdp's field, landed
    assert _backtracking(re.compile(rb"\(\s*([A-Za-z_]+)\s*=\s*([^()]*?)\s*\)"))  # tns's parameter, landed
    assert _backtracking(re.compile(rb"(?:a+b?)+"))
    assert not _backtracking(re.compile(rb"([A-Z]+) (\S+) HTTP/1\.[01]"))


@pytest.mark.parametrize("name, pattern", helper_patterns(), ids=lambda x: x if isinstance(x, str) else "")
def test_helper_patterns_do_not_backtrack_over_peer_bytes(name, pattern):
    assert _backtracking(pattern) == [], name


def test_long_sdp_address_texts_are_not_kept_in_the_address_cache():
    """The SDP reader caches the readings of short c= and o= address texts; a long one
    (64 KB of a peer's bytes) is read but not kept, so the cache stays small."""
    from alg_helpers.sip import sdp
    before = sdp._literal_cached.cache_info().currsize
    for i in range(50):
        body = b"v=0\r\no=- 1 1 IN IP4 %s\r\ns=-\r\nc=IN IP4 %s\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n" % (
            b"1" * 4000 + b"%d" % i, b"2" * 4000 + b"%d" % i)
        sdp.parse(body)
    assert sdp._literal_cached.cache_info().currsize == before
