"""The key-value store's vocabulary: what the WIT `kv` interface's values mean,
and the rules for names and keys both sides check (the guest first, for an
error where the function's bug is; the host again, as the authority)."""

from __future__ import annotations

import re

__all__ = [
    "FAILURE_KINDS",
    "INTEGER",
    "KV_FILE",
    "MAX_KEY_BYTES",
    "MAX_KEYS_LISTED",
    "STATUSES",
    "STORE_NAME",
    "check_key",
    "check_store",
]

# The file the host writes each `get`'s value to, read-only for the guest: a
# `list<u8>` would cross the boundary one element at a time.
KV_FILE = "/.edgefn/kv"

# As Cloudflare KV's: keys are an index, not a place for data.
MAX_KEY_BYTES = 512
# The most keys one `keys()` call returns.
MAX_KEYS_LISTED = 1000

# What `key_value_stores` entries look like: "default", "sessions", "rate-limits".
STORE_NAME = re.compile(r"[a-z0-9]([a-z0-9_-]{0,62})")

# What `incr` adds to: a decimal integer in ASCII, as it stores them (not
# Python's int(), which also takes spaces, "_" and other scripts' digits).
INTEGER = re.compile(rb"[+-]?[0-9]{1,20}")

# Control characters would end a line of `keys`' answer and hide in logs.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

# The WIT `failure.kind` values, and what each answers when the function does
# not catch it: (HTTP status, stable error code).
STATUSES: dict[str, tuple[int, str]] = {
    # The manifest does not declare the store: the function's bug.
    "not_declared": (500, "kv_store_not_declared"),
    # A key or an argument the host refuses (the SDK checks them first).
    "invalid": (500, "kv_invalid"),
    # A value over the function's `max_kv_value`.
    "too_large": (500, "kv_value_too_large"),
    # The store's size or key count (`max_kv_store`, `max_kv_keys`), or the
    # request's operations (`max_kv_ops`), would go over the limit.
    "quota_exceeded": (507, "kv_quota_exceeded"),
    # `incr` on a value that is not a decimal integer, or past a signed 64-bit one.
    "not_integer": (500, "kv_not_integer"),
    # The store's database cannot be reached, or did not answer in time.
    "unavailable": (503, "kv_unavailable"),
}
FAILURE_KINDS = tuple(STATUSES)


def check_store(store: object) -> str | None:
    """What is wrong with a store name, or None."""
    if not isinstance(store, str) or not STORE_NAME.fullmatch(store):
        return (
            "store names are 1-63 lowercase letters, digits, '-' or '_', starting with a "
            f"letter or digit, such as \"default\"; got {store!r}"
        )
    return None


def check_key(key: object) -> str | None:
    """What is wrong with a key, or None."""
    if not isinstance(key, str):
        return f"keys are str, got {type(key).__name__}"
    if not key:
        return "keys cannot be empty"
    if _CONTROL.search(key):
        return f"keys cannot contain control characters, got {key[:100]!r}"
    try:
        size = len(key.encode())
    except UnicodeEncodeError:  # a lone surrogate
        return f"keys must be valid Unicode, got {key[:100]!r}"
    if size > MAX_KEY_BYTES:
        return f"keys are at most {MAX_KEY_BYTES} bytes of UTF-8, got {size:,}"
    return None
