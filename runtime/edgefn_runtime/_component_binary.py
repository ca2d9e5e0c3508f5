"""Just enough of the component model's binary format (Binary.md) to nest a
component in another: its sections, and the imports and index counts of its
type, alias and import sections. Written here, as no library reads component
binaries from Python (wasmtime-py compiles them, wasm-tools is a program)."""

from __future__ import annotations

from typing import NamedTuple

__all__ = [
    "ALIAS",
    "IMPORT",
    "NESTED",
    "PREAMBLE",
    "TYPE",
    "Declarations",
    "Import",
    "Malformed",
    "Section",
    "Unread",
    "Unsupported",
    "declarations",
    "sections",
    "uleb",
]

PREAMBLE = b"\x00asm\x0d\x00\x01\x00"
NESTED, ALIAS, TYPE, IMPORT = 4, 6, 7, 10  # section ids
_SORTS = {0x01: "func", 0x03: "type", 0x05: "instance"}
_IMPORTED = {0x00: "a core module", 0x02: "a value", 0x04: "a component"}


class Malformed(ValueError):
    """The bytes are not what the format allows."""


class Unsupported(ValueError):
    """An import of a kind no linker here provides (its message says which)."""


class Unread(ValueError):
    """Valid, but declarations this does not read (aliases of core items)."""


class Section(NamedTuple):
    id: int
    start: int
    body: int
    end: int


class Import(NamedTuple):
    name: str
    sort: str  # func, type or instance
    position: int  # in the index space of its sort


class Declarations(NamedTuple):
    imports: list[Import]
    counts: dict[str, int]  # items per sort: imported, aliased or defined


def sections(wasm: bytes) -> list[Section]:
    """The top-level sections of a component (its preamble checked by the caller)."""
    found, at = [], len(PREAMBLE)
    while at < len(wasm):
        size, body = _leb(wasm, at + 1)
        found.append(Section(wasm[at], at, body, body + size))
        at = body + size
    if at != len(wasm):
        raise Malformed("a section runs past the end of the file")
    return found


def declarations(wasm: bytes, within: list[Section]) -> Declarations:
    """The imports of type, alias and import sections `within`, and how many
    items of each sort they declare."""
    imports: list[Import] = []
    counts = {"func": 0, "type": 0, "instance": 0}
    for section in within:
        entries, at = _leb(wasm, section.body)
        if section.id == TYPE:
            counts["type"] += entries
            continue
        for _ in range(entries):
            if section.id == IMPORT:
                sort, at, name = _import(wasm, at)
                imports.append(Import(name, sort, counts[sort]))
            else:  # an alias: sort, then an export of an instance or an outer item
                aliased, target = _SORTS.get(_byte(wasm, at)), _byte(wasm, at + 1)
                if aliased is None or target not in (0x00, 0x02):
                    raise Unread("an alias of a core item")
                sort = aliased
                at = _leb(wasm, at + 2)[1]
                at = _string(wasm, at)[1] if target == 0x00 else _leb(wasm, at)[1]
            counts[sort] += 1
        if at != section.end:
            raise Malformed(f"section {section.id} at byte {section.start} has bytes left over")
    return Declarations(imports, counts)


def _import(wasm: bytes, at: int) -> tuple[str, int, str]:
    if _byte(wasm, at) not in (0x00, 0x01):  # the name's kind: plain or interface
        raise Malformed(f"an import name of an unknown kind at byte {at}")
    name, at = _string(wasm, at + 1)
    kind = _byte(wasm, at)
    if kind in _IMPORTED:
        raise Unsupported(f"{_IMPORTED[kind]} ({name})")
    sort = _SORTS.get(kind)
    if sort is None:
        raise Malformed(f"an import of an unknown kind at byte {at}")
    if sort == "type":  # its bound: eq <typeidx>, or sub resource
        at = _leb(wasm, at + 2)[1] if _byte(wasm, at + 1) == 0x00 else at + 2
    else:
        at = _leb(wasm, at + 1)[1]
    return sort, at, name


def _byte(wasm: bytes, at: int) -> int:
    if at >= len(wasm):
        raise Malformed("the file ends in the middle of a section")
    return wasm[at]


def _leb(wasm: bytes, at: int) -> tuple[int, int]:
    """An unsigned LEB128 u32: at most 5 bytes, as the format allows."""
    value = 0
    for shift in range(0, 35, 7):
        byte = _byte(wasm, at)
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
    raise Malformed(f"a number longer than 5 bytes at byte {at - 5}")


def _string(wasm: bytes, at: int) -> tuple[str, int]:
    size, at = _leb(wasm, at)
    if at + size > len(wasm):
        raise Malformed("the file ends in the middle of a name")
    try:
        return wasm[at : at + size].decode(), at + size
    except UnicodeDecodeError:
        raise Malformed(f"a name that is not UTF-8 at byte {at}") from None


def uleb(value: int) -> bytes:
    """`value` as an unsigned LEB128."""
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)
