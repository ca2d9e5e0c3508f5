"""Text from clients and guests, made safe to show on an operator's terminal.

A request path, a request id or a function's log line may carry ANSI escape
sequences (which recolour, move the cursor, retitle the window or, in some
terminals, answer back), a CR or LF that forges a line of its own, or
characters that reorder what follows them (bidirectional overrides). Every
human-readable output of the gateway and the CLI shows such text through
`printable`; machine outputs (JSON) escape it by their own rules.

>>> printable("GET /\\x1b[2J\\r\\nfake line")
'GET /\\\\x1b[2J\\\\r\\\\nfake line'
"""

from __future__ import annotations

import logging
import re
from typing import Any

__all__ = ["PrintableFormatter", "printable", "printable_lines"]

# C0 controls, DEL and C1 controls; the line and paragraph separators; the
# bidirectional marks, embeddings, overrides and isolates; lone surrogates
# (from bytes decoded with surrogateescape, which no terminal encoding takes).
_UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """`text` with every control or reordering character written as a Python-style
    escape (`\\x1b`, `\\n`, `\\u202e`); other text, non-ASCII included, unchanged."""
    if _UNSAFE.search(text) is None:  # the common case: no copy
        return text
    return _UNSAFE.sub(_escape, text)


def printable_lines(text: str) -> str:
    """`printable` line by line: for text whose own line breaks are meant (a build
    tool's output, a traceback); a CR or any other control is still escaped."""
    return "\n".join(printable(line) for line in text.split("\n"))


class PrintableFormatter(logging.Formatter):
    """A logging formatter for terminals: the message escaped whole, a traceback
    line by line (its own newlines kept), since either may quote a client's path."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return printable(super().formatMessage(record))

    def formatException(self, ei: Any) -> str:
        return printable_lines(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return printable_lines(super().formatStack(stack_info))
