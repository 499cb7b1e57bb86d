"""Amanda: opens the data, message and index connections of a backup (udp/10080).

The Amanda backup server asks a client's amandad (udp/10080, `bsd` and
`bsdudp` authentication) to run a service with a REQ datagram; for
`sendbackup` the client answers with a REP whose body names the TCP ports it
listens on for the backup's streams, one line:

    Amanda 3.5 REP HANDLE 000-00000001 SEQ 1700000002
    CONNECT DATA 50001 MESG 50002 INDEX 50003
    OPTIONS features=...;

and the server connects to each. The helper reads amandad's side (the
reply direction of the flow the server opened) and opens
`tcp server:* -> client:port` per stream: DATA, MESG, INDEX and STATE (the
kernel's list; conntrackd reads the first three).

Checks:
* the datagram must be an Amanda packet (`Amanda <major>.<minor> REP|PREP
  HANDLE ...` on its first line) and the CONNECT line a line of its own,
  ended by a newline (the kernel looks for `CONNECT ` anywhere in any
  datagram of the flow);
* a stream port must be decimal and 1-65535 (the kernel keeps the low 16
  bits of a five-digit number: `DATA 70000` opens 4464 there) and not below
  `min_port` (default 1024; stricter than both references);
* a stream whose port is refused does not stop the others (the kernel stops
  at the first bad one in its DATA, MESG, INDEX, STATE order).
No address is advertised: the expectation names the two ends of the UDP
flow, so nothing can point it elsewhere.

Not done: the kernel and conntrackd also stretch the UDP master's timeout
to 300 s on every reply (amandad's replies can be slow); a sans-IO helper
cannot, so raise `nf_conntrack_udp_timeout_stream` where backups wait long
between REQ and REP. Amanda's `bsdtcp`/`ssh` authentications run over one
TCP connection and need no helper.

Policy: class `amanda` (conntrackd's name; the kernel's class 0), 4
expectations per master (the kernel's; conntrackd 3), 180 s (both).
NAT rewriting: not yet (offsets of each port are reported).
"""

from __future__ import annotations

import alg
from alg import TCP, UDP, Direction, Expect, ExpectClass, HelperSpec, Notice, Parsed

from ._ports import min_port_option, port_refusal

AMANDA_PORT = 10080
STREAMS = (b"DATA", b"MESG", b"INDEX", b"STATE")  # nf_conntrack_amanda.c's search[] order
REPLIES = frozenset((b"REP", b"PREP"))  # common-src/packet.c's packet types that carry a service's answer
_CONNECT = b"CONNECT "
MAX_PORT_DIGITS = 5


class AmandaHelper(alg.Helper):
    spec = HelperSpec(
        name="amanda",
        protocols=(UDP,),
        ports=(AMANDA_PORT,),
        classes=(ExpectClass("amanda", 4, 180),),
        options=min_port_option("stream"),
        max_buffer=65536,
        queue=31,
        doc="amandad's REP `CONNECT DATA n MESG n INDEX n` -> tcp server:* -> client:n (each)",
        knobs={"low-port": "options.min_port"},
    )

    @staticmethod
    def looks_like(payload: bytes) -> bool:
        """An Amanda packet: `Amanda <version> <type> HANDLE`."""
        return payload.startswith(b"Amanda ") and b" HANDLE " in payload[:80]

    def inspect(self, segment: alg.Segment, state: None) -> alg.Outcome:
        data = segment.data
        if segment.direction is not Direction.REPLY:
            return Parsed(len(data))  # the server's REQ names nothing we open
        head_end = data.find(b"\n")
        head = data[:head_end].split(b" ") if head_end > 0 else []
        if len(head) < 4 or head[0] != b"Amanda" or head[3] != b"HANDLE":
            return Parsed(len(data), (Notice("malformed", repr(data[:40])),))
        if head[2] not in REPLIES:
            return Parsed(len(data))
        nl = data.find(b"\n" + _CONNECT, head_end)  # a body line that starts with CONNECT (one search in C)
        if nl < 0:
            return Parsed(len(data))  # a reply without streams (sendsize, selfcheck)
        at = nl + 1
        end = data.find(b"\n", at)
        if end < 0:
            return Parsed(len(data), (Notice("malformed", "CONNECT line without its end"),))
        return Parsed(len(data), self._streams(data, at + len(_CONNECT), end, segment))

    def _streams(self, data: bytes, start: int, end: int, seg: alg.Segment) -> tuple:
        out: list = []
        words = _words(data, start, end)
        seen: set[int] = set()
        for (name, _), (value, value_at) in zip(words[::2], words[1::2], strict=False):  # a last name alone: no port
            if name not in STREAMS:
                continue
            if not value.isdigit() or len(value) > MAX_PORT_DIGITS:
                out.append(Notice("malformed", f"{name.decode()} port {value[:12]!r}"))
                continue
            port = int(value)
            refused = port_refusal(port, self.options, name.decode())
            if refused:
                out.append(refused)
            elif port not in seen:
                seen.add(port)
                out.append(Expect("amanda", TCP, seg.receiver, seg.sender, None, port,
                                  where=((value_at, len(value)),)))
        return tuple(out)


def _words(data: bytes, start: int, end: int) -> list[tuple[bytes, int]]:
    """The space-separated words of data[start:end] with their offsets."""
    out = []
    at = start
    for word in data[start:end].rstrip(b"\r").split(b" "):
        if word:
            out.append((word, at))
        at += len(word) + 1
    return out


@alg.hookimpl
def alg_register_helpers(register):
    register(AmandaHelper)
