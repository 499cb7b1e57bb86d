"""Each helper's own cost per message on a capture recorded from real clients and servers, beside a
bytes-level read of the same messages (issue 14, goal 1: a helper should cost at most such a read).

The helpers other than SIP (bench_sip.py has that one): ftp, rpc, tns, ssdp, dhcpv6, mdns, slp. For
each, its capture (tests/pcaps/<case>/, SOURCE.md says how it was recorded) is replayed once through
the engine with that helper alone, and every segment the engine shows the helper is kept, with the
flow state it was shown with. Then, in rounds:

  helper     a fresh state per flow, then inspect() on every kept segment in capture order (what
             the helper itself does: parse, policy-free decisions, building the model's objects;
             no engine, no flow table, no I/O)
  bytes-level read  the same payloads through a few lines of Python that pick out only what the
             helper acts on (FTP's 227/229/PORT/EPRT endpoint, RPC's header and GETPORT answer,
             TNS's (HOST=)(PORT=), SSDP's LOCATION/CALLBACK URL, DHCPv6's message type and
             transaction, mDNS's header, SLP's header), nothing checked, nothing built: a floor

Best of --rounds; the ratio is printed, nothing asserted.

    .venv/bin/python benchmarks/bench_helpers.py [--rounds 7] [--repeat 200]
"""

from __future__ import annotations

import argparse
import logging
import struct
import time
from pathlib import Path
from typing import Any, Callable

from alg.engine import Engine, make_slots
from alg.plugins import load_plugins
from alg.policy import default_policy
from alg.replay import replay

ROOT = Path(__file__).resolve().parents[1]


def read_ftp(p: bytes) -> Any:
    head = p[:4]
    if head == b"227 ":
        inner = p[p.index(b"(") + 1:p.index(b")")]
        return [int(x) for x in inner.split(b",")]
    if head == b"229 ":
        return int(p.split(b"|")[3])
    if head in (b"PORT", b"EPRT"):
        return p[5:].rstrip().split(b"," if head == b"PORT" else p[5:6])
    return head


def read_rpc(p: bytes) -> Any:  # over UDP: no record mark
    xid, kind = struct.unpack_from("!II", p)
    if kind == 0:  # call: program, version, procedure
        return xid, struct.unpack_from("!III", p, 12)
    return xid, struct.unpack_from("!I", p, len(p) - 4)[0]  # a GETPORT answer's port closes the reply


def read_tns(p: bytes) -> Any:
    kind = p[4]
    i = p.find(b"(PORT=")
    if i < 0:
        return kind
    j = p.find(b"(HOST=")
    return kind, int(p[i + 6:p.index(b")", i)]), p[j + 6:p.index(b")", j)] if j >= 0 else None


def read_ssdp(p: bytes) -> Any:
    low = p.lower()
    for name in (b"\r\nlocation:", b"\r\ncallback:"):
        i = low.find(name)
        if i >= 0:
            url = p[i + len(name):p.index(b"\r\n", i + 2)].strip(b" <>")
            return url.split(b"/")[2].rsplit(b":", 1)
    return p[:8]


def read_dhcpv6(p: bytes) -> Any:
    return p[0], p[1:4]


def read_mdns(p: bytes) -> Any:
    return struct.unpack_from("!HHHHHH", p)


def read_slp(p: bytes) -> Any:
    return p[0], p[1], int.from_bytes(p[2:5], "big"), struct.unpack_from("!H", p, 10)[0]


# helper -> (its recorded capture, the bytes-level read of one payload)
CASES: dict[str, tuple[str, Callable[[bytes], Any]]] = {
    "ftp": ("ftp-rec-lftp-pasv-v4", read_ftp),
    "rpc": ("rpc-rec-getport-udp", read_rpc),
    "tns": ("tns-rec-redirect", read_tns),
    "ssdp": ("ssdp-rec-async-upnp-client", read_ssdp),
    "dhcpv6": ("dhcpv6-rec-dnsmasq-dhclient", read_dhcpv6),
    "mdns": ("mdns-rec-avahi-dig", read_mdns),
    "slp": ("slp-rec-scripted", read_slp),
}


def shown_segments(name: str, capture: Path) -> tuple[Any, list[tuple[int, Any]]]:
    """Helper `name` (an instance with the default policy's options) and what the engine showed it
    replaying `capture`: (flow index, segment) in order."""
    host = load_plugins()
    policy = default_policy({n: c.spec for n, c in host.helpers.items()})
    slots = make_slots([h for h in policy.helpers.values() if h.name == name], host.helpers)
    helper = slots[name].helper
    cls = type(helper)
    shown: list[tuple[int, Any]] = []
    flows: dict[int, int] = {}
    inspect = cls.inspect

    def recording(self: Any, segment: Any, state: Any) -> Any:
        shown.append((flows.setdefault(id(state), len(flows)), segment))
        return inspect(self, segment, state)

    cls.inspect = recording
    try:
        replay(Engine(slots, policy.core), [str(capture)])
    finally:
        cls.inspect = inspect
    return helper, shown


def helper_passes(helper: Any, shown: list[tuple[int, Any]], repeat: int) -> None:
    """The helper on every kept segment, `repeat` times over, a fresh state per flow each pass."""
    flows = 1 + max(i for i, _ in shown)
    for _ in range(repeat):
        states = [helper.new_state() for _ in range(flows)]
        for i, segment in shown:
            helper.inspect(segment, states[i])


def read_passes(read: Callable[[bytes], Any], payloads: list[bytes], repeat: int) -> None:
    for _ in range(repeat):
        for p in payloads:
            try:
                read(p)
            except (ValueError, IndexError, struct.error):
                pass  # a message the read does not know: it still cost its look


def best(rounds: int, work: Callable[..., None], *args: Any) -> float:
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        work(*args)
        times.append(time.perf_counter() - t)
    return min(times)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--repeat", type=int, default=200, help="passes over the capture's messages per round")
    a = ap.parse_args(argv)
    logging.disable(logging.WARNING)  # the replay's notes (an RPC clash in the capture) are not the figures
    print(f"{'helper':8} {'capture':30} {'messages':>8} {'helper us':>10} {'bytes-level us':>15} {'ratio':>7}")
    for name, (case, read) in CASES.items():
        capture = next(p for p in (ROOT / "tests" / "pcaps" / case).iterdir() if p.suffix in (".pcap", ".pcapng"))
        helper, shown = shown_segments(name, capture)
        if not shown:
            raise SystemExit(f"{name}: the engine showed the helper nothing of {case}")
        n = len(shown) * a.repeat
        h = best(a.rounds, helper_passes, helper, shown, a.repeat) / n * 1e6
        r = best(a.rounds, read_passes, read, [s.data for _, s in shown], a.repeat) / n * 1e6
        print(f"{name:8} {case:30} {len(shown):8} {h:10.2f} {r:15.2f} {h / r:6.1f}x")


if __name__ == "__main__":
    main()
