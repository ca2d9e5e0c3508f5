"""One line per issue target, the same shape in every benchmark, so that `make bench`
reads as a checklist: `met     <what>: <measured> (target <target>)`."""

from __future__ import annotations

__all__ = ["verdict"]


def verdict(what: str, measured: str, target: str, met: bool) -> bool:
    """Print the target's line and return whether it was met."""
    print(f"{'met' if met else 'NOT MET':7}  {what}: {measured} (target {target})", flush=True)
    return met
