"""SANE: opens the data connection of a network scan (saned, tcp/6566).

The SANE network protocol (SANE standard, chapter "Network Protocol"): a
client (scanimage, xsane, simple-scan through the `net` backend) talks to
saned on port 6566 in remote procedure calls made of 4-byte big-endian
words. To scan it calls SANE_NET_START (procedure 7, one word: the device
handle); saned answers with a status word, the port of a data socket it
opened, the byte order and a resource string, and the client connects to
that port for the image. The helper opens `tcp client:* -> server:port`.

What is read, as nf_conntrack_sane and conntrackd's sane do: on the
client's side, a segment that is exactly the 8-byte SANE_NET_START request
arms the helper, any other request disarms it (the protocol's other calls
carry strings and option values whose framing the helper does not follow);
on saned's side, the reply after an armed request: status SANE_STATUS_GOOD
(0), then the port word, whose upper half must be zero. The request may
come in smaller pieces (they are joined up to its 8 bytes); the reply's
first 8 bytes too.

The port is saned's own: no address is advertised, the expectation names
the control connection's two ends, so nothing can point it elsewhere.
Stricter than both references: a port below `min_port` (default 1024;
saned binds an ephemeral port, or one of its `data_portrange`) opens
nothing (`low-port`); port 0 neither (`bad-port`; the kernel expects port 0).

Policy: class `sane` (conntrackd's name; the kernel's class 0), 1
expectation per control connection, 300 s (both references);
`priv_data_len` 4 (conntrackd's struct nf_ct_sane_master) so alg can take
over a helper that `nfct add helper sane inet tcp` registered. NAT: not
needed on the client's side; a DNATed saned works since no address is sent.
"""

from __future__ import annotations

import struct

import alg
from alg import TCP, Direction, Expect, ExpectClass, HelperSpec, Notice, Parsed

from ._ports import min_port_option, port_refusal

SANE_PORT = 6566
SANE_NET_START = 7  # procedure number (SANE standard, "Network Protocol")
SANE_STATUS_GOOD = 0
_WORD = struct.Struct("!I")
_START_REQUEST = struct.Struct("!II")  # procedure, handle
_START_REPLY = struct.Struct("!IHH")  # status, zero, port (the port word's two halves)
_START_WORD = _WORD.pack(SANE_NET_START)


class SaneState:
    __slots__ = ("armed",)

    def __init__(self) -> None:
        self.armed = False  # SANE_NET_START asked: its reply names the data port


class SaneHelper(alg.Helper):
    spec = HelperSpec(
        name="sane",
        protocols=(TCP,),
        ports=(SANE_PORT,),
        classes=(ExpectClass("sane", 1, 300),),
        options=min_port_option("data"),
        priv_data_len=4,  # conntrackd's struct nf_ct_sane_master
        max_buffer=65536,  # bounds a whole segment before the helper reads it: saned's replies reach 8 KiB and more
        queue=30,
        doc="SANE_NET_START's reply names saned's data port -> tcp client:* -> server:port",
        knobs={"low-port": "options.min_port"},
    )

    @staticmethod
    def looks_like(payload: bytes) -> bool:
        """SANE_NET_INIT (procedure 0) with a version code word: a client's first call."""
        return len(payload) >= 12 and payload[:4] == b"\0\0\0\0" and payload[4] == 1

    def new_state(self) -> SaneState:
        return SaneState()

    def inspect(self, segment: alg.Segment, state: SaneState) -> alg.Outcome:
        data = segment.data
        if segment.direction is Direction.ORIGINAL:
            if len(data) < _START_REQUEST.size and _START_WORD.startswith(data[:4]):
                return alg.NEED_DATA  # maybe the start of SANE_NET_START: wait for its 8 bytes
            state.armed = len(data) == _START_REQUEST.size and data[:4] == _START_WORD
            return Parsed(len(data))
        if not state.armed:
            return Parsed(len(data))
        if len(data) < _START_REPLY.size:
            return alg.NEED_DATA
        state.armed = False
        status, zero, port = _START_REPLY.unpack_from(data)
        if status != SANE_STATUS_GOOD:
            return Parsed(len(data), (Notice("start-failed", f"SANE status {status}"),))
        if zero:
            return Parsed(len(data), (Notice("malformed", f"port word {zero << 16 | port:#x}"),))
        refused = port_refusal(port, self.options, "data")
        if refused:
            return Parsed(len(data), (refused,))
        where = ((_START_REPLY.size - 2, 2),)
        return Parsed(len(data), (Expect("sane", TCP, segment.receiver, segment.sender, None, port, where=where),))


@alg.hookimpl
def alg_register_helpers(register):
    register(SaneHelper)
