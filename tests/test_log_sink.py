"""The log sink keeps lines through a registry outage, up to its buffer (lines and bytes)."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import pytest

from edgefn_platform.gateway._logs import _BUFFER_BYTES, _BUFFER_LINES, LogSink
from edgefn_platform.registry import RegistryUnavailable

Line = tuple[str, float, str, str, str]


class Flaky:
    """A registry whose database is away while `down` is set."""

    def __init__(self) -> None:
        self.down = False
        self.stored: list[Line] = []

    def append_logs(self, records: Iterable[Line]) -> None:
        if self.down:
            raise RegistryUnavailable("the registry cannot be reached")
        self.stored.extend(records)


def test_lines_written_during_an_outage_arrive_after_it_in_order() -> None:
    registry = Flaky()
    sink = LogSink(registry)  # type: ignore[arg-type]
    sink.add("f", "r1", "log", ["before"])
    sink.flush()
    registry.down = True
    sink.add("f", "r2", "log", ["during 1"])
    sink.flush()
    sink.add("f", "r3", "log", ["during 2"])
    sink.flush()
    registry.down = False
    sink.add("f", "r4", "log", ["after"])
    sink.flush()
    assert [r[4] for r in registry.stored] == ["before", "during 1", "during 2", "after"]


def test_a_long_outage_keeps_the_newest_lines() -> None:
    registry = Flaky()
    registry.down = True
    sink = LogSink(registry)  # type: ignore[arg-type]
    for batch in range(3):
        sink.add("f", f"r{batch}", "log", [f"{batch}-{i}" for i in range(_BUFFER_LINES // 2)])
        sink.flush()
    registry.down = False
    sink.flush()
    assert len(registry.stored) == _BUFFER_LINES
    newest = f"2-{_BUFFER_LINES // 2 - 1}"
    assert registry.stored[0][4] == "1-0" and registry.stored[-1][4] == newest


def test_a_long_outage_keeps_the_newest_lines_within_the_byte_cap() -> None:
    registry = Flaky()
    registry.down = True
    sink = LogSink(registry)  # type: ignore[arg-type]
    line = "é" * 32 * 1024  # 64 KiB in UTF-8: a function's whole default max_log
    for i in range(400):  # 25 MiB in all, far fewer lines than the line cap
        sink.add("f", f"r{i}", "log", [f"{i:03d}{line}"])
        sink.flush()
    registry.down = False
    sink.flush()
    kept = [len(record[4].encode()) for record in registry.stored]
    assert 0 < sum(kept) <= _BUFFER_BYTES
    assert sum(kept) > _BUFFER_BYTES * 0.95  # not much less either
    assert [r[2] for r in registry.stored] == [f"r{i}" for i in range(400 - len(kept), 400)]


def test_dropped_lines_are_warned_about_once_per_ten_seconds(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1000.0]
    monkeypatch.setattr("edgefn_platform.gateway._logs.time.monotonic", lambda: now[0])
    registry = Flaky()
    registry.down = True
    sink = LogSink(registry)  # type: ignore[arg-type]

    def drop_lines() -> None:
        sink.add("f", "r", "log", ["x"] * (_BUFFER_LINES + 1))
        sink.flush()

    with caplog.at_level(logging.WARNING, logger="edgefn.gateway"):
        for _ in range(5):
            drop_lines()
        now[0] += 9.9
        drop_lines()  # within ten seconds of the warning: counted, not warned about
        warned = [r.getMessage().split(":")[0] for r in caplog.records]
        assert warned == ["dropped the 1 oldest log lines"]
        now[0] += 0.2
        drop_lines()
    warned = [r.getMessage().split(":")[0] for r in caplog.records]
    assert len(warned) == 2 and warned[1] != warned[0], warned
    # The second counts every line dropped since the first.
    assert warned[1] == f"dropped the {6 * (_BUFFER_LINES + 1)} oldest log lines", warned
