"""Human-friendly sizes ("64MiB") and durations ("2s") used in manifests and the CLI."""

from __future__ import annotations

import math
import re

__all__ = ["format_size", "parse_count", "parse_duration", "parse_size"]

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "k": 1024,
    "kib": 1024,
    "m": 1024**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gib": 1024**3,
}
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "": 1.0}
_NUMBER_UNIT = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?(?:e[0-9]+)?)\s*([a-z]*)\s*", re.IGNORECASE)


def parse_size(value: str | int) -> int:
    """Bytes from an int or a string like `"64MiB"`, `"512k"`, `"10MB"`."""
    if isinstance(value, bool):
        raise ValueError(f'expected a size like "64MiB", got {value!r}')
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a size cannot be negative, got {value}")
        return value
    found = _NUMBER_UNIT.fullmatch(str(value))
    unit = found.group(2).lower() if found else None
    if found is None or unit not in _SIZE_UNITS:
        raise ValueError(
            f'expected a size like "64MiB", "512KiB" or a number of bytes, got {value!r}'
        )
    size = float(found.group(1)) * _SIZE_UNITS[unit]
    if not math.isfinite(size):
        raise ValueError(f"a size must be finite, got {value!r}")
    return int(size)


def parse_duration(value: str | int | float) -> float:
    """Seconds from a number or a string like `"2s"`, `"500ms"`, `"1m"`."""
    if isinstance(value, bool):
        raise ValueError(f'expected a duration like "2s", got {value!r}')
    if isinstance(value, (int, float)):
        try:
            seconds = float(value)
        except OverflowError:  # an int too large for a float
            seconds = math.inf
    else:
        found = _NUMBER_UNIT.fullmatch(str(value))
        unit = found.group(2).lower() if found else None
        if found is None or unit not in _DURATION_UNITS:
            raise ValueError(f'expected a duration like "2s" or "500ms", got {value!r}')
        seconds = float(found.group(1)) * _DURATION_UNITS[unit]
    if not 0 < seconds < math.inf:
        raise ValueError(f"a duration must be positive and finite, got {value!r}")
    return seconds


def parse_count(value: str | int | float) -> int:
    """A whole number from an int or a string like `"2e9"` or `"2_000_000_000"`."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f'expected a whole number like 2000000000 or "2e9", got {value!r}')
    try:
        number = float(value.replace("_", "")) if isinstance(value, str) else value
    except ValueError:
        raise ValueError(
            f'expected a whole number like 2000000000 or "2e9", got {value!r}'
        ) from None
    if isinstance(number, float) and not math.isfinite(number):
        raise ValueError(f"expected a finite whole number, got {value!r}")
    if number < 0 or number != int(number):
        raise ValueError(f"expected a non-negative whole number, got {value!r}")
    return int(number)


def format_size(size: int) -> str:
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"
