"""edgefn.image.negotiate: the output format for an Accept header (RFC 9110 §12.5.1)."""

from __future__ import annotations

import pytest

from edgefn.image import negotiate

# Real browsers' Accept headers for <img> requests.
CHROME = "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8"
FIREFOX = "image/avif,image/webp,*/*"
SAFARI = (
    "image/webp,image/avif,image/jxl,image/heic,image/heic-sequence,video/*;q=0.8,"
    "image/png,image/svg+xml,image/*;q=0.8,*/*;q=0.5"
)
OLD_EDGE = "image/webp,image/*,*/*;q=0.8"


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (CHROME, "avif"),
        (FIREFOX, "avif"),
        (SAFARI, "avif"),
        (OLD_EDGE, "webp"),
        ("image/avif, image/webp", "avif"),
        ("image/webp", "webp"),
        ("image/jpeg, image/webp", "webp"),
        # Wildcards make every format acceptable but give no reason to prefer AVIF.
        ("*/*", "jpeg"),
        ("image/*", "jpeg"),
        ("", "jpeg"),
        ("text/html", "jpeg"),
    ],
)
def test_what_browsers_and_tools_send(accept: str, expected: str) -> None:
    assert negotiate(accept) == expected


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        # q=0 means "not acceptable", whatever else the header says.
        ("image/avif;q=0", "jpeg"),
        ("image/avif;q=0, image/webp", "webp"),
        ("image/avif;q=0.0, image/webp;q=0.000", "jpeg"),
        ("image/avif;q=0, */*", "jpeg"),
        ("image/avif;Q=0, image/webp", "webp"),  # parameter names are case-insensitive
        ("image/avif ; q=0 , image/webp", "webp"),  # optional whitespace
        # The highest weight wins; the server's preference only breaks ties.
        ("image/avif;q=0.5, image/webp", "webp"),
        ("image/avif;q=0.8, image/webp;q=0.9", "webp"),
        ("image/avif;q=0.9, image/webp;q=0.8", "avif"),
        ("image/webp;q=0.5, */*;q=0.1", "webp"),
        ("image/webp;q=0.5, image/jpeg", "jpeg"),
        ("image/webp;q=0.5, image/*", "jpeg"),
        ("image/webp;q=1, image/avif;q=1", "avif"),
        # The most specific range decides a format's weight.
        ("image/*;q=0, image/webp", "webp"),
        ("image/jpeg;q=0.2, image/webp;q=0.1, image/*;q=0", "jpeg"),
        ("image/jpeg;q=0.1, image/*;q=0.5", "avif"),
        # Malformed elements are skipped, not trusted.
        ("image/avif;q=abc, image/webp", "webp"),
        ("image/avif;q=2", "jpeg"),
        ("image/avif;q=0.0001", "jpeg"),
        ("*/avif, image/webp", "webp"),
        ("image, image/webp", "webp"),
        (",,;, image/webp", "webp"),
    ],
)
def test_q_values_and_wildcards(accept: str, expected: str) -> None:
    assert negotiate(accept) == expected


def test_the_fallback_is_the_answer_when_nothing_better_is_acceptable() -> None:
    assert negotiate("text/html", fallback="png") == "png"
    assert negotiate("image/png;q=0.1, image/webp;q=0.05", fallback="png") == "png"
    assert negotiate("image/webp, image/png", fallback="png") == "webp"
    assert negotiate("image/png;q=0", fallback="png") == "png"  # nothing else either
    assert negotiate("image/avif;q=0, image/webp", fallback="webp") == "webp"
    assert negotiate("image/webp;q=0, image/avif", fallback="webp") == "avif"
