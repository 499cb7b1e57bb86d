"""ASN.1 aligned PER (X.691) reader for the H.225/H.245 subset the H.323 helper reads.

Schemas are small node objects (`Seq`, `Choice`, `SeqOf`, leaves) built once at
import from the ASN.1 of H.225.0 and H.245 (see h225.py, h245.py). `decode(node,
data)` walks the encoding and returns the values of the fields the schema keeps:
a `Seq` gives a dict of its present fields, a `Choice` a (name, value) pair, a
`SeqOf` a list, an `OctStr` its bytes when `keep` is set; what is not needed is
walked only far enough to find where the next field starts (PER has no tags:
a root component must be understood to be skipped, an extension addition or
an extension alternative is an open type, skipped by its length).

Bounded: every read checks the end of the input (`Malformed`), every node walked
costs one step of MAX_STEPS, the schemas are not recursive (depth is that of the
schema), and a SEQUENCE OF costs at least a step per item: a count of 16,383 NULLs
stops at the budget, not at the count. `Seq(stop_after=...)` ends the walk after a
field (the kernel's STOP: what follows is not needed and may be costly to walk);
an open type around it resumes after its length, elsewhere the decode ends there
with what was read so far (`Stopped.partial`).

Where the kernel's decoder (nf_conntrack_h323_asn1.c) and X.691 differ on
alignment, the kernel's reading is followed (it is what real endpoints met).
"""

from __future__ import annotations

from typing import Any

# nodes walked per message: a Setup with two fastStart channels walks 74, nDPI's capture at most 30;
# the bound keeps a 64 KB message of tiny items to a few ms (benchmarks/bench_hostile.py h323)
MAX_STEPS = 4096
BYTE, WORD, CONS, UNCO, SEMI, FIXD = "byte", "word", "cons", "unco", "semi", "fixd"  # size kinds


class Malformed(ValueError):
    """The encoding ends early, names an alternative the schema has not, or exceeds a bound."""


class Stopped(Exception):
    """Decoding stopped on purpose after a field (`Seq.stop_after`); `partial` holds what was read."""

    def __init__(self, partial: Any) -> None:
        super().__init__()
        self.partial = partial


class Reader:
    __slots__ = ("data", "pos", "end", "steps")

    def __init__(self, data: bytes, start: int = 0, end: int | None = None) -> None:
        self.data = data
        self.pos = start * 8  # in bits
        self.end = (len(data) if end is None else end) * 8
        self.steps = 0

    def step(self) -> None:
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise Malformed(f"more than {MAX_STEPS} ASN.1 nodes")

    def bits(self, n: int) -> int:
        if n == 0:
            return 0
        if self.pos + n > self.end:
            raise Malformed("encoding ends early")
        first, last = self.pos >> 3, (self.pos + n - 1) >> 3
        chunk = int.from_bytes(self.data[first:last + 1], "big")
        shift = (last + 1) * 8 - (self.pos + n)
        self.pos += n
        return (chunk >> shift) & ((1 << n) - 1)

    def align(self) -> None:
        self.pos = (self.pos + 7) & ~7

    def octets(self, n: int) -> int:
        """Skip n aligned octets; their byte offset."""
        self.align()
        at = self.pos >> 3
        if self.pos + n * 8 > self.end:
            raise Malformed(f"{n} octets past the end")
        self.pos += n * 8
        return at

    def skip(self, n: int) -> None:
        if self.pos + n > self.end:
            raise Malformed("encoding ends early")
        self.pos += n

    def length(self) -> int:
        """X.691 §11.9 length determinant (aligned); fragmented lengths (16K and more) are refused."""
        self.align()
        first = self.bits(8)
        if first < 0x80:
            return first
        if first < 0xC0:
            return ((first & 0x3F) << 8) | self.bits(8)
        raise Malformed("fragmented length")

    def small(self) -> int:
        """X.691 §11.6 normally small number (extension indices, addition counts): 0-63 only."""
        if self.bits(1):
            raise Malformed("normally small number above 63")
        return self.bits(6)


class Node:
    __slots__ = ()

    def decode(self, r: Reader) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError


class Null(Node):
    __slots__ = ()

    def decode(self, r: Reader) -> None:
        r.step()


class Bool(Node):
    __slots__ = ()

    def decode(self, r: Reader) -> bool:
        r.step()
        return bool(r.bits(1))


class Int(Node):
    """INTEGER: `size` is the bit count of a range below 256 (unaligned), or BYTE (range 256),
    WORD (up to 64K), CONS (larger: 2-bit octet count), UNCO (length-prefixed); `lb` the lower bound."""

    __slots__ = ("size", "lb")

    def __init__(self, size: int | str, lb: int = 0) -> None:
        self.size, self.lb = size, lb

    def decode(self, r: Reader) -> int:
        r.step()
        size = self.size
        if isinstance(size, int):
            return r.bits(size) + self.lb
        if size == BYTE:
            return r.data[r.octets(1)] + self.lb
        if size == WORD:
            at = r.octets(2)
            return int.from_bytes(r.data[at:at + 2], "big") + self.lb
        n = r.bits(2) + 1 if size == CONS else r.length()
        at = r.octets(n)
        return int.from_bytes(r.data[at:at + n], "big") + self.lb


class Enum(Node):
    __slots__ = ("size", "ext")

    def __init__(self, size: int, ext: bool = False) -> None:
        self.size, self.ext = size, ext

    def decode(self, r: Reader) -> int:
        r.step()
        if self.ext and r.bits(1):
            return r.small()
        return r.bits(self.size)


def _sized(r: Reader, size: int | str, lb: int) -> int:
    """A string's length: BYTE (one aligned octet), SEMI (length determinant) or n bits, plus `lb`."""
    if size == BYTE:
        return r.data[r.octets(1)] + lb
    if size == SEMI:
        return r.length() + lb
    assert isinstance(size, int)
    return r.bits(size) + lb


class OctStr(Node):
    """OCTET STRING (and IA5/PrintableString): FIXD with `lb` octets (aligned above 2), else sized.
    With `keep`, its value is (offset in the input, the octets): where a later NAT step would write."""

    __slots__ = ("size", "lb", "keep")

    def __init__(self, size: int | str, lb: int = 0, keep: bool = False) -> None:
        self.size, self.lb, self.keep = size, lb, keep

    def decode(self, r: Reader) -> tuple[int, bytes] | None:
        r.step()
        if self.size == FIXD:
            n = self.lb
            if n <= 2:  # X.691 §17.6: two octets or fewer are not aligned
                r.skip(n * 8)
                return None
        else:
            n = _sized(r, self.size, self.lb)
        at = r.octets(n)
        return (at, bytes(r.data[at:at + n])) if self.keep else None


class BmpStr(Node):
    __slots__ = ("size", "lb")

    def __init__(self, size: int | str, lb: int = 1) -> None:
        self.size, self.lb = size, lb

    def decode(self, r: Reader) -> None:
        r.step()
        r.octets(2 * _sized(r, self.size, self.lb))


class NumStr(Node):
    """NumericString / dialedDigits: 4 bits a character after an aligned start."""

    __slots__ = ("size", "lb")

    def __init__(self, size: int, lb: int = 1) -> None:
        self.size, self.lb = size, lb

    def decode(self, r: Reader) -> None:
        r.step()
        n = _sized(r, self.size, self.lb)
        r.align()
        r.skip(4 * n)


class BitStr(Node):
    __slots__ = ("size", "lb")

    def __init__(self, size: str, lb: int = 0) -> None:
        self.size, self.lb = size, lb

    def decode(self, r: Reader) -> None:
        r.step()
        r.align()
        n = self.lb if self.size == FIXD else _sized(r, self.size, self.lb)
        r.skip(n)


class Oid(Node):
    __slots__ = ()

    def decode(self, r: Reader) -> None:
        r.step()
        r.octets(r.length())


def open_type(r: Reader, node: Node | None) -> Any:
    """An open type (X.691 §10.2): length, then `node` inside exactly that many octets (None: skipped)."""
    n = r.length()
    at = r.octets(n)
    if node is None:
        return None
    end = r.pos
    inner = Reader(r.data, at, at + n)
    inner.steps = r.steps
    try:
        value = node.decode(inner)
    except Stopped as s:
        value = s.partial
    r.steps = inner.steps
    r.pos = end
    return value


class Open(Node):
    """An OCTET STRING holding a whole encoding (fastStart's OpenLogicalChannel, h245Control's message)."""

    __slots__ = ("node",)

    def __init__(self, node: Node) -> None:
        self.node = node

    def decode(self, r: Reader) -> Any:
        r.step()
        return open_type(r, self.node)


Field = tuple  # (name, node, optional)


class Seq(Node):
    """SEQUENCE: root components `fields` as (name, node[, True if OPTIONAL]); with `ext`, the
    extension additions `adds` by position (name, node or None: skipped by length)."""

    __slots__ = ("fields", "ext", "adds", "stop_after", "nopt")

    def __init__(self, fields: list, ext: bool = True, adds: list | None = None,
                 stop_after: str | None = None) -> None:
        self.fields = [(f[0], f[1], len(f) > 2 and f[2]) for f in fields]
        self.ext, self.adds, self.stop_after = ext, adds or [], stop_after
        self.nopt = sum(1 for f in self.fields if f[2])

    def decode(self, r: Reader) -> dict:
        r.step()
        out: dict[str, Any] = {}
        extended = self.ext and r.bits(1)
        present = r.bits(self.nopt)
        opt = self.nopt
        try:
            for name, node, optional in self.fields:
                if optional:
                    opt -= 1
                    if not present >> opt & 1:
                        if name == self.stop_after:
                            raise Stopped(None)
                        continue
                out[name] = node.decode(r)
                if name == self.stop_after:
                    raise Stopped(None)
            if extended:
                count = r.small() + 1
                adds = r.bits(count)
                for i in range(count):
                    if adds >> (count - 1 - i) & 1:
                        name, node = self.adds[i] if i < len(self.adds) else (None, None)
                        value = open_type(r, node)
                        if name is not None:
                            out[name] = value
        except Stopped as s:
            if s.partial is not None and name not in out:
                out[name] = s.partial
            raise Stopped(out) from None
        return out


class SeqOf(Node):
    __slots__ = ("size", "item", "lb")

    def __init__(self, item: Node, size: int | str = SEMI, lb: int = 0) -> None:
        self.item, self.size, self.lb = item, size, lb

    def decode(self, r: Reader) -> list:
        r.step()
        if self.size == WORD:
            at = r.octets(2)
            count = int.from_bytes(r.data[at:at + 2], "big") + self.lb
        else:
            count = _sized(r, self.size, self.lb)
        items = []
        for _ in range(count):  # each item costs a step: the budget ends a huge count
            r.step()
            items.append(self.item.decode(r))
        return items


class Choice(Node):
    """CHOICE: `root` alternatives as (name, node), numbered in `bits` bits; with `ext`, the
    extension alternatives `adds` (an open type each; beyond the list: skipped)."""

    __slots__ = ("root", "ext", "adds", "nbits")

    def __init__(self, root: list, ext: bool = True, adds: list | None = None) -> None:
        self.root, self.ext, self.adds = root, ext, adds or []
        self.nbits = (len(root) - 1).bit_length()

    def decode(self, r: Reader) -> tuple:
        r.step()
        if self.ext and r.bits(1):
            index = r.small()
            name, node = self.adds[index] if index < len(self.adds) else (f"extension-{index}", None)
            return name, open_type(r, node)
        index = r.bits(self.nbits)
        if index >= len(self.root):
            raise Malformed(f"CHOICE index {index} of {len(self.root)}")
        name, node = self.root[index]
        try:
            return name, node.decode(r)
        except Stopped as s:
            raise Stopped((name, s.partial)) from None


class Unread(Node):
    """A part the helper does not read: the walk ends where it starts (an alternative of a
    message that opens nothing, a field whose encoding is costly and not needed)."""

    __slots__ = ()

    def decode(self, r: Reader) -> None:
        raise Stopped(None)


def decode(node: Node, data: bytes, start: int = 0, end: int | None = None) -> Any:
    """The value of `node` encoded in data[start:end] (a stopped walk gives what was read)."""
    try:
        return node.decode(Reader(data, start, end))
    except Stopped as s:
        return s.partial


def leaves(*names: str, node: Node | None = None) -> list:
    """Alternatives or fields that share one node (NULL by default): a CHOICE of named NULLs."""
    return [(n, node or NULL) for n in names]


NULL = Null()
UNREAD = Unread()
BOOL = Bool()
OID = Oid()
