"""What operators read: control characters from clients and guests shown escaped."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from edgefn_platform._printable import PrintableFormatter, printable, printable_lines
from edgefn_platform.cli._admin import _log_line
from edgefn_platform.gateway._access import AccessEntry

REQUEST_ID = "0123456789abcdef0123456789abcdef"
# CR and LF forge lines, ESC drives the terminal, U+0085 and U+2028 are newlines to
# some readers, U+202E reverses the rest of the line, a lone surrogate cannot be printed.
PATH = "/fn/\x1b[2J\r\n12:00:00 200 GET /admin\x85\u2028\u202e\udcff\x7f\x00\t"
ESCAPED = "/fn/\\x1b[2J\\r\\n12:00:00 200 GET /admin\\x85\\u2028\\u202e\\udcff\\x7f\\x00\\t"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain /path?q=1 ©é ✓ 😀", "plain /path?q=1 ©é ✓ 😀"),
        (PATH, ESCAPED),
        ("\x1b]0;title\x07", "\\x1b]0;title\\x07"),
        ("\u061c\u200e\u200f\u2066\u2069\u2029", "\\u061c\\u200e\\u200f\\u2066\\u2069\\u2029"),
    ],
)
def test_printable_escapes_controls_only(text: str, shown: str) -> None:
    assert printable(text) == shown


def test_printable_lines_keeps_line_breaks_and_escapes_the_rest() -> None:
    assert printable_lines("one\ntwo\x1b[1m\r\n") == "one\ntwo\\x1b[1m\\r\n"


def entry(path: str, request_id: str = REQUEST_ID) -> AccessEntry:
    return AccessEntry(
        time=0.0, request_id=request_id, function="fn", version=3, method="GET", path=path,
        status=404, outcome="ok", queue_ms=0.0, instantiate_ms=0.1, execute_ms=0.2,
        total_ms=0.4, fuel=1000, bytes_in=0, bytes_out=10, worker=1,
    )  # fmt: skip


def test_the_human_access_line_escapes_the_path_and_shows_the_whole_request_id() -> None:
    line = entry(PATH, REQUEST_ID + "\x1b[8m").human()
    assert f" {ESCAPED} -> fn@3 " in line
    assert line.endswith(f"[{REQUEST_ID}\\x1b[8m]")
    assert line.isprintable()


def test_the_json_access_line_keeps_the_raw_values() -> None:
    assert json.loads(entry(PATH).json())["path"] == PATH


@pytest.mark.parametrize("path", ["/fn/plain?q=1", "/fn/©é ✓ 😀", "/fn/a\x7fb", PATH])
def test_the_json_access_line_is_one_ascii_line_of_every_field(path: str) -> None:
    # Printable ASCII whatever the path: stdout's encoding may be ASCII (LANG=C in a
    # container), and a terminal may show the log.
    line = entry(path).json()
    assert line.isascii() and line.isprintable()
    assert json.loads(line) == vars(entry(path))


def test_edgefn_logs_lines_escape_everything_a_client_or_guest_wrote() -> None:
    access = {
        "id": 1,
        "time": 0.0,
        "request_id": REQUEST_ID + "\r",
        "kind": "access",
        "line": entry(PATH).json(),
    }
    line = _log_line(access)
    assert f" {REQUEST_ID}\\r access GET {ESCAPED} -> 404 ok 0.4 ms fuel 1,000" in line
    assert line.isprintable()
    guest = {**access, "kind": "log", "line": "\x1b[31mred\x1b[0m\u202e"}
    assert _log_line(guest).endswith(" log    \\x1b[31mred\\x1b[0m\\u202e")


def test_the_gateway_log_escapes_messages_and_tracebacks() -> None:
    formatter = PrintableFormatter("%(name)s: %(message)s")
    try:
        raise ValueError("bad\x1b[2J")
    except ValueError:
        failure = sys.exc_info()
    record = logging.LogRecord(
        "edgefn.gateway", logging.ERROR, __file__, 1, "request %s failed", (PATH,), failure
    )
    lines = formatter.format(record).split("\n")
    assert lines[0] == f"edgefn.gateway: request {ESCAPED} failed"
    assert lines[-1] == "ValueError: bad\\x1b[2J"
    assert all(line.isprintable() for line in lines)
