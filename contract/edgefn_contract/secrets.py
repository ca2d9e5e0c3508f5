"""Secrets' vocabulary: what the WIT `secrets` interface's values mean."""

from __future__ import annotations

import re

__all__ = ["FAILURE_KINDS", "SECRET_NAME", "STATUSES", "check_name"]

# What `secrets` entries look like: environment-variable names, "ORIGIN_TOKEN".
SECRET_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")

# The WIT `failure.kind` values, and what each answers when the function does
# not catch it: (HTTP status, stable error code).
STATUSES: dict[str, tuple[int, str]] = {
    # The manifest does not declare the name: the function's bug.
    "not_declared": (500, "secret_not_declared"),
}
FAILURE_KINDS = tuple(STATUSES)


def check_name(name: object) -> str | None:
    """What is wrong with a secret's name, or None."""
    if not isinstance(name, str) or not SECRET_NAME.fullmatch(name):
        return (
            "secret names are letters, digits and '_', not starting with a digit, at most "
            f"128 characters, such as \"ORIGIN_TOKEN\"; got {name!r}"
        )
    return None
