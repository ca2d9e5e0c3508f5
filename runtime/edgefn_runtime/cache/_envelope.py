"""One `Entry` as the bytes the disk tier stores, and back.

A record is a fixed header (magic, format version, the lengths of the two parts
and a CRC-32 of the whole record), the entry's small fields as JSON, then the
body. Anything that does not check out (another format, a truncated or torn
file, flipped bits) decodes to None: the caller discards it, it is never served.

CRC-32 rather than a cryptographic hash: it guards against accidents (a crash
mid-write, a truncated file), not against someone who can write the cache's
directory, who could as well write a valid record. zlib's CRC-32 runs at several
GB/s (about 0.3 ms for a 3 MB body here), blake2b at well under one.
"""

from __future__ import annotations

import json
import struct
import zlib
from typing import Any

from ._entry import Entry

__all__ = ["decode", "encode"]

_MAGIC = b"EFCE"
_VERSION = 1
# magic, version, 3 bytes reserved, length of the JSON part, of the body, CRC-32.
_HEADER = struct.Struct(">4sB3xIII")


def encode(entry: Entry) -> bytes:
    meta = json.dumps(
        [
            entry.status,
            entry.headers,
            entry.stored_at,
            entry.fresh_until,
            entry.stale_while_revalidate,
            entry.stale_if_error,
            entry.initial_age,
            entry.etag,
            entry.last_modified,
            entry.function,
            entry.path,
            entry.vary,
        ],
        separators=(",", ":"),
    ).encode()
    crc = _crc(_HEADER.pack(_MAGIC, _VERSION, len(meta), len(entry.body), 0), meta, entry.body)
    return b"".join(
        (_HEADER.pack(_MAGIC, _VERSION, len(meta), len(entry.body), crc), meta, entry.body)
    )


def decode(record: bytes) -> Entry | None:
    """The entry `record` holds, or None when it is not a whole, intact record."""
    if len(record) < _HEADER.size:
        return None
    magic, version, meta_length, body_length, crc = _HEADER.unpack_from(record)
    if magic != _MAGIC or version != _VERSION:
        return None
    if len(record) != _HEADER.size + meta_length + body_length:
        return None
    view = memoryview(record)
    meta = view[_HEADER.size : _HEADER.size + meta_length]
    body = view[_HEADER.size + meta_length :]
    if _crc(_HEADER.pack(magic, version, meta_length, body_length, 0), meta, body) != crc:
        return None
    try:
        return _entry(json.loads(bytes(meta)), bytes(body))
    except (ValueError, TypeError):
        return None


def _crc(header: bytes, meta: bytes | memoryview, body: bytes | memoryview) -> int:
    return zlib.crc32(body, zlib.crc32(meta, zlib.crc32(header)))


def _entry(fields: Any, body: bytes) -> Entry:
    """An `Entry` from the decoded JSON, each field's type checked: a record from
    another build of this module must fail here rather than later, in a handler."""
    if not isinstance(fields, list) or len(fields) != 12:
        raise ValueError("not an entry")
    status, headers, stored_at, fresh_until, swr, sie, age, etag, modified, function, path, vary = (
        fields
    )
    if not isinstance(status, int) or not isinstance(headers, list):
        raise ValueError("not an entry")
    pairs = tuple((_text(pair[0]), _text(pair[1])) for pair in headers if _is_pair(pair))
    if len(pairs) != len(headers) or not isinstance(vary, list):
        raise ValueError("not an entry")
    return Entry(
        status=status,
        headers=pairs,
        body=body,
        stored_at=_number(stored_at),
        fresh_until=_number(fresh_until),
        stale_while_revalidate=_number(swr),
        stale_if_error=_number(sie),
        initial_age=_number(age),
        etag=None if etag is None else _text(etag),
        last_modified=None if modified is None else _text(modified),
        function=_text(function),
        path=_text(path),
        vary=tuple(_text(name) for name in vary),
    )


def _is_pair(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("not a string")
    return value


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError("not a number")
    return float(value)
