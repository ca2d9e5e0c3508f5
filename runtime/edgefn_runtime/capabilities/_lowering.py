"""A fix to wasmtime-py's lowering of `result<option<T>, E>` from host functions.

wasmtime-py (50.0.1) lowers a `result` whose two cases hold values of different
Python classes untagged: the host returns the ok value, or the error record.
It decides which case a value is by `isinstance` against each case's classes,
but counts an untagged `option`'s `none` as `object`, so every value, the error
record included, matches the ok case first and fails to lower as an option
("value not valid for this variant"): a host function could not return an
error at all. The `none` of an option is Python's None, so its class is
`NoneType`; an option that needs tags keeps them (`Variant`).
"""

from __future__ import annotations

from typing import Any

from wasmtime.component import _types

__all__ = ["fix_option_lowering"]


def _add_classes(self: Any, s: set[type]) -> None:
    if self._tagged():
        s.add(_types.Variant)
    else:
        s.add(type(None))
        self.payload.add_classes(s)


def fix_option_lowering() -> None:
    """Make options count as NoneType or their payload's classes (idempotent)."""
    _types.OptionType.add_classes = _add_classes  # type: ignore[method-assign]
