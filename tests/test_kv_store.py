"""The key-value stores' backends (`edgefn_platform.kv`): the same tests on SQLite
and PostgreSQL, against the registry's migrated schema."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

import attacks
from edgefn_platform.kv import SQLKeyValue, open_key_value
from edgefn_platform.kv._store import SWEEP_SECONDS, prefix_bounds
from edgefn_platform.registry import open_registry
from edgefn_runtime.capabilities.kv import KVFailure, StoreQuota
from gateway_process import closed_port

ROOM = StoreQuota(max_bytes=10**9, max_keys=10**6)
SOON = 10.0  # seconds: a deadline no test reaches unless it means to
AREA = "Key-value stores on SQLite and PostgreSQL (tests/test_kv_store.py)"

# A child process for the tests across processes: `incr` a counter N times, or
# `set` keys until killed, printing each key once its write is acknowledged.
_CHILD = """
import sys, time
from pathlib import Path
from edgefn_platform.kv import open_key_value
from edgefn_runtime.capabilities.kv import StoreQuota
url, data_dir, mode, function, count = sys.argv[1:]
kv = open_key_value(url or None, Path(data_dir))
quota = StoreQuota(10**9, 10**6)
for i in range(int(count)):
    if mode == "incr":
        kv.incr(function, "default", "n", 1, None, quota, time.monotonic() + 30)
    else:
        key = f"k{i:06d}"
        kv.set(function, "default", key, key.encode() * 10, None, quota, time.monotonic() + 30)
        print(key, flush=True)
kv.close()
"""


class Place:
    """Where one backend's data lives: the URL (None: SQLite) and data directory."""

    def __init__(self, url: str | None, data_dir: Path) -> None:
        self.url, self.data_dir = url, data_dir

    def child(self, mode: str, function: str, count: int) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-c", _CHILD, self.url or "", str(self.data_dir), mode, function,
             str(count)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def place(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Place:
    data_dir = tmp_path_factory.mktemp(f"kv-{request.param}")
    url = None
    if request.param == "postgres":
        url = request.getfixturevalue("postgres").database()
    open_registry(url, data_dir).close()  # migrates the schema
    return Place(url, data_dir)


@pytest.fixture(scope="module")
def shared(place: Place) -> Iterator[SQLKeyValue]:
    kv = open_key_value(place.url, place.data_dir)
    try:
        yield kv
    finally:
        kv.close()


class Clock:
    def __init__(self) -> None:
        self.now = 1_900_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def kv(shared: SQLKeyValue) -> Iterator[SQLKeyValue]:
    shared.clock = Clock()  # type: ignore[method-assign]
    try:
        yield shared
    finally:
        del shared.clock  # type: ignore[method-assign]


@pytest.fixture
def fn() -> str:
    """A function name of this test's own: tests share one database per backend."""
    return "f" + uuid.uuid4().hex[:10]


def deadline() -> float:
    return time.monotonic() + SOON


def put(kv: SQLKeyValue, fn: str, key: str, value: bytes, ttl: float | None = None,
        quota: StoreQuota = ROOM, store: str = "default") -> None:  # fmt: skip
    kv.set(fn, store, key, value, ttl, quota, deadline())


def get(kv: SQLKeyValue, fn: str, key: str, store: str = "default") -> bytes | None:
    return kv.get(fn, store, key, deadline())


def incr(kv: SQLKeyValue, fn: str, key: str, by: int = 1, ttl: float | None = None,
         quota: StoreQuota = ROOM) -> int:  # fmt: skip
    return kv.incr(fn, "default", key, by, ttl, quota, deadline())


def usage(kv: SQLKeyValue, fn: str) -> int:
    return kv.stored_bytes().get(fn, 0)


def test_a_function_made_again_starts_with_empty_stores(
    kv: SQLKeyValue, fn: str, place: Place, tmp_path: Path
) -> None:
    """What a request of a deleted function wrote after the delete (it was still
    running) is gone when a function of that name is made again; a new version
    of a living function keeps its data."""
    component = tmp_path / "c.wasm"
    component.write_bytes(b"\0asm")
    registry = open_registry(place.url, place.data_dir)
    try:
        registry.deploy(fn, f"/{fn}", {"name": fn}, component, "0" * 64)
        put(kv, fn, "kept", b"1")
        registry.deploy(fn, f"/{fn}", {"name": fn, "v": 2}, component, "0" * 64)
        assert get(kv, fn, "kept") == b"1"
        registry.delete(fn)
        put(kv, fn, "late", b"written after the delete")
        registry.deploy(fn, f"/{fn}", {"name": fn}, component, "0" * 64)
        assert get(kv, fn, "late") is None and usage(kv, fn) == 0
    finally:
        registry.close()


# -- basics ---------------------------------------------------------------------


def test_set_get_exists_delete(kv: SQLKeyValue, fn: str) -> None:
    assert get(kv, fn, "a") is None
    assert not kv.exists(fn, "default", "a", deadline())
    put(kv, fn, "a", b"\x00\xffbinary")
    assert get(kv, fn, "a") == b"\x00\xffbinary"
    assert kv.exists(fn, "default", "a", deadline())
    put(kv, fn, "a", b"")
    assert get(kv, fn, "a") == b""  # empty, not absent
    kv.delete(fn, "default", "a", deadline())
    kv.delete(fn, "default", "a", deadline())  # absent: nothing to do
    assert get(kv, fn, "a") is None
    assert usage(kv, fn) == 0


def test_keys_in_byte_order_with_an_exact_prefix_and_a_limit(kv: SQLKeyValue, fn: str) -> None:
    names = ["a", "B", "é", "z", "a/b", "a%", "a_c", "ab", "a\U0010ffff", "日本", "~"]
    for name in names:
        put(kv, fn, name, b"1")
    every = sorted(names, key=lambda k: k.encode())
    assert kv.keys(fn, "default", "", 1000, deadline()) == every
    # LIKE would read `%` and `_` as wildcards; they are characters here.
    assert kv.keys(fn, "default", "a%", 1000, deadline()) == ["a%"]
    assert kv.keys(fn, "default", "a_", 1000, deadline()) == ["a_c"]
    assert kv.keys(fn, "default", "a", 1000, deadline()) == [k for k in every if k.startswith("a")]
    assert kv.keys(fn, "default", "a\U0010ffff", 1000, deadline()) == ["a\U0010ffff"]
    assert kv.keys(fn, "default", "", 3, deadline()) == every[:3]
    assert kv.keys(fn, "default", "x\n", 10, deadline()) == []


def test_prefix_bounds_cover_exactly_the_keys_with_the_prefix() -> None:
    assert prefix_bounds("ab") == ("ab", "ac")
    assert prefix_bounds("a\U0010ffff") == ("a\U0010ffff", "b")
    assert prefix_bounds("\ud7ff") == ("\ud7ff", "\ue000")
    assert prefix_bounds("") == ("", None)


def test_stores_and_functions_are_isolated(kv: SQLKeyValue, fn: str) -> None:
    other = fn + "x"
    put(kv, fn, "k", b"mine")
    put(kv, fn, "k", b"sessions", store="sessions")
    put(kv, other, "k", b"theirs")
    assert get(kv, fn, "k") == b"mine"
    assert get(kv, fn, "k", store="sessions") == b"sessions"
    assert get(kv, other, "k") == b"theirs"
    assert get(kv, fn, "k", store="other") is None
    kv.delete(other, "default", "k", deadline())
    assert get(kv, fn, "k") == b"mine"
    assert kv.keys(fn, "default", "", 10, deadline()) == ["k"]
    full = StoreQuota(max_bytes=10**9, max_keys=1)
    put(kv, fn, "only", b"1", quota=full, store="third")  # another store's keys do not count
    assert kv.stored_bytes()[fn] == 2 * len(b"k") + len(b"mine") + len(b"sessions") + 5


# -- times to live ----------------------------------------------------------------


def test_expired_entries_are_absent_to_every_call(kv: SQLKeyValue, fn: str) -> None:
    clock = kv.clock
    assert isinstance(clock, Clock)
    put(kv, fn, "short", b"v", ttl=10)
    put(kv, fn, "long", b"v", ttl=100)
    put(kv, fn, "forever", b"v")
    clock.now += 9.9
    assert get(kv, fn, "short") == b"v"
    clock.now += 0.2
    assert get(kv, fn, "short") is None
    assert not kv.exists(fn, "default", "short", deadline())
    assert kv.keys(fn, "default", "", 10, deadline()) == ["forever", "long"]
    assert incr(kv, fn, "short") == 1  # an expired value counts as absent, not as "v"
    clock.now += 1000
    assert kv.keys(fn, "default", "", 10, deadline()) == ["forever", "short"]  # no ttl given


# -- incr -----------------------------------------------------------------------


def test_incr_creates_adds_and_keeps_the_expiry(kv: SQLKeyValue, fn: str) -> None:
    clock = kv.clock
    assert isinstance(clock, Clock)
    assert incr(kv, fn, "n") == 1
    assert incr(kv, fn, "n", by=41) == 42
    assert incr(kv, fn, "n", by=-50) == -8
    assert get(kv, fn, "n") == b"-8"  # decimal ASCII: readable with get
    put(kv, fn, "t", b"5", ttl=10)
    clock.now += 5
    assert incr(kv, fn, "t", ttl=1000) == 6  # keeps its own expiry, not the new ttl
    clock.now += 5.1
    assert get(kv, fn, "t") is None
    assert incr(kv, fn, "fresh", ttl=10) == 1
    clock.now += 10.1
    assert get(kv, fn, "fresh") is None


def test_incr_refuses_a_non_integer_and_an_overflow(kv: SQLKeyValue, fn: str) -> None:
    for value in (b"abc", b"1.5", b"", b" 1", b"\xff", b"9" * 30):
        put(kv, fn, "v", value)
        with pytest.raises(KVFailure) as refused:
            incr(kv, fn, "v")
        assert refused.value.kind == "not_integer"
        assert "decimal integer" in refused.value.message or "64-bit" in refused.value.message
        assert get(kv, fn, "v") == value  # unchanged
    put(kv, fn, "max", str(2**63 - 1).encode())
    with pytest.raises(KVFailure, match="64-bit") as refused:
        incr(kv, fn, "max")
    assert refused.value.kind == "not_integer"
    assert incr(kv, fn, "max", by=-(2**63 - 1)) == 0
    assert incr(kv, fn, "min", by=-(2**63)) == -(2**63)
    with pytest.raises(KVFailure, match="64-bit"):
        incr(kv, fn, "min", by=-1)


def test_incr_from_50_threads_counts_50(kv: SQLKeyValue, fn: str) -> None:
    barrier = threading.Barrier(50)
    failures: list[BaseException] = []

    def bump() -> None:
        barrier.wait()
        try:
            kv.incr(fn, "default", "n", 1, None, ROOM, time.monotonic() + 30)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=bump) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert get(kv, fn, "n") == b"50"


def test_incr_from_two_processes_loses_no_increment(place: Place, kv: SQLKeyValue, fn: str) -> None:
    children = [place.child("incr", fn, 100) for _ in range(2)]
    for child in children:
        assert child.wait(timeout=120) == 0
    assert get(kv, fn, "n") == b"200"


# -- quotas ---------------------------------------------------------------------


def test_a_write_over_the_store_size_is_refused_saying_the_limit(kv: SQLKeyValue, fn: str) -> None:
    quota = StoreQuota(max_bytes=100, max_keys=1000)
    put(kv, fn, "a", b"x" * 49, quota=quota)  # 50 bytes with its key
    put(kv, fn, "b", b"x" * 49, quota=quota)  # 100: exactly the limit
    with pytest.raises(KVFailure) as refused:
        put(kv, fn, "c", b"", quota=quota)
    assert refused.value.kind == "quota_exceeded"
    message = refused.value.message
    assert "max_kv_store of 100 bytes" in message and "holds 100 bytes" in message
    assert "--max-kv-store" in message and "edgefn.toml" in message
    assert "operator's maximum" in message
    assert get(kv, fn, "c") is None
    # Replacing counts the difference: the same size fits, a smaller one too.
    put(kv, fn, "a", b"y" * 49, quota=quota)
    put(kv, fn, "a", b"y" * 9, quota=quota)
    put(kv, fn, "c", b"z" * 39, quota=quota)  # the 40 bytes freed
    with pytest.raises(KVFailure):
        put(kv, fn, "c", b"z" * 40, quota=quota)
    assert usage(kv, fn) == 100
    with pytest.raises(KVFailure):
        incr(kv, fn, "d", quota=quota)
    kv.delete(fn, "default", "b", deadline())
    assert usage(kv, fn) == 50


def test_a_write_over_the_key_count_is_refused_saying_the_limit(kv: SQLKeyValue, fn: str) -> None:
    quota = StoreQuota(max_bytes=10**6, max_keys=2)
    put(kv, fn, "a", b"1", quota=quota)
    assert incr(kv, fn, "b", quota=quota) == 1
    with pytest.raises(KVFailure) as refused:
        put(kv, fn, "c", b"1", quota=quota)
    assert refused.value.kind == "quota_exceeded"
    assert "holds 2 keys" in refused.value.message
    assert "max_kv_keys of 2" in refused.value.message
    assert "--max-kv-keys" in refused.value.message
    put(kv, fn, "a", b"replaced", quota=quota)  # not a new key
    assert incr(kv, fn, "b", quota=quota) == 2


def test_expired_entries_are_swept_before_a_write_is_refused(kv: SQLKeyValue, fn: str) -> None:
    clock = kv.clock
    assert isinstance(clock, Clock)
    quota = StoreQuota(max_bytes=1000, max_keys=3)
    put(kv, fn, "old1", b"x" * 100, ttl=10, quota=quota)
    put(kv, fn, "old2", b"x" * 100, ttl=10, quota=quota)
    put(kv, fn, "keep", b"x" * 100, quota=quota)
    clock.now += 11
    # Expired entries count until swept: the store is full of keys.
    assert usage(kv, fn) == 3 * 104
    put(kv, fn, "new", b"x", quota=quota)  # sweeps old1 and old2, then fits
    assert usage(kv, fn) == 104 + 4
    assert kv.keys(fn, "default", "", 10, deadline()) == ["keep", "new"]
    # A refusal still commits its sweep.
    put(kv, fn, "gone", b"x", ttl=1, quota=quota)
    clock.now += 2
    with pytest.raises(KVFailure):
        put(kv, fn, "big", b"x" * 2000, quota=quota)
    assert usage(kv, fn) == 108
    # Replacing an expired entry that the sweep removes: counted as new.
    roomy = StoreQuota(max_bytes=1000, max_keys=10)
    put(kv, fn, "t", b"x" * 100, ttl=1, quota=roomy)
    put(kv, fn, "u", b"x" * 700, ttl=1, quota=roomy)
    clock.now += 2
    put(kv, fn, "t", b"y" * 300, quota=roomy)
    assert get(kv, fn, "t") == b"y" * 300
    assert usage(kv, fn) == 108 + 301


def test_a_write_sweeps_its_stores_expired_entries_once_a_minute(kv: SQLKeyValue, fn: str) -> None:
    clock = kv.clock
    assert isinstance(clock, Clock)
    put(kv, fn, "token", b"x" * 100, ttl=5)  # the store's first write sweeps (nothing)
    clock.now += 10
    put(kv, fn, "other", b"1")
    assert usage(kv, fn) == 105 + 6  # expired, but swept at most once a minute
    clock.now += SWEEP_SECONDS
    put(kv, fn, "other", b"2")  # a replacement: the sweep still runs
    assert usage(kv, fn) == 6
    assert kv.keys(fn, "default", "", 10, deadline()) == ["other"]


def test_a_write_sweeps_a_bounded_batch_and_the_next_write_goes_on(
    kv: SQLKeyValue, fn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A store whose many entries expire at once: one write sweeping them all
    # held the database's write lock (SQLite's: the registry's) for seconds.
    clock = kv.clock
    assert isinstance(clock, Clock)
    monkeypatch.setattr(kv, "sweep_batch", 3)
    for i in range(7):
        put(kv, fn, f"t{i}", b"x" * 10, ttl=1)  # 12 bytes each
    clock.now += SWEEP_SECONDS
    put(kv, fn, "a", b"1")  # sweeps 3
    assert usage(kv, fn) == 4 * 12 + 2
    put(kv, fn, "a", b"2")  # not a minute later: 3 more, the store was left due
    assert usage(kv, fn) == 1 * 12 + 2
    put(kv, fn, "a", b"3")  # the last one, and the store is swept
    assert usage(kv, fn) == 2
    put(kv, fn, "t9", b"x" * 10, ttl=1)
    clock.now += 2
    put(kv, fn, "a", b"4")  # swept a few seconds ago: not due
    assert usage(kv, fn) == 12 + 2
    # Over quota with more expired than a batch: refused, saying a retry may fit.
    for i in range(5):
        put(kv, fn, f"u{i}", b"x" * 10, ttl=1)
    clock.now += 2
    with pytest.raises(KVFailure) as refused:
        put(kv, fn, "b", b"1", quota=StoreQuota(max_bytes=1000, max_keys=3))
    assert "expired entries are swept 3 a write: retry" in refused.value.message
    assert kv.keys(fn, "default", "", 10, deadline()) == ["a"]
    attacks.record(
        AREA,
        "fill a store with entries that all expire together, so that one write sweeps them",
        "a write sweeps at most 1,000 expired entries (~20 ms of the write lock); the next goes on",
    )


# -- deadlines, failures, crashes ---------------------------------------------------


def _hold_write_lock(place: Place, fn: str) -> tuple[object, object]:
    """Another connection holding the store's write lock: (connection, its closer)."""
    if place.url is None:
        db = sqlite3.connect(place.data_dir / "registry.sqlite3", isolation_level=None)
        db.execute("BEGIN IMMEDIATE")
        return db, lambda: (db.execute("ROLLBACK"), db.close())
    conn = psycopg.connect(place.url)
    conn.execute("INSERT INTO kv_usage VALUES (%s, 'default', 0, 0)", (fn,))
    conn.commit()
    conn.execute("SELECT * FROM kv_usage WHERE function = %s FOR UPDATE", (fn,))
    return conn, lambda: (conn.rollback(), conn.close())


def test_a_write_waits_for_the_lock_no_longer_than_its_deadline(
    place: Place, kv: SQLKeyValue, fn: str
) -> None:
    _, release = _hold_write_lock(place, fn)
    try:
        started = time.monotonic()
        with pytest.raises(KVFailure) as refused:
            kv.set(fn, "default", "k", b"v", None, ROOM, time.monotonic() + 0.3)
        waited = time.monotonic() - started
        assert refused.value.kind == "unavailable"
        assert "deadline" in refused.value.message
        assert 0.25 <= waited < 2.0
        with pytest.raises(KVFailure, match="deadline"):
            kv.incr(fn, "default", "k", 1, None, ROOM, time.monotonic() - 1)  # already past
        assert get(kv, fn, "k") is None  # reads do not wait for writers
    finally:
        release()  # type: ignore[operator]
    put(kv, fn, "k", b"v")
    assert get(kv, fn, "k") == b"v"


def test_an_unreachable_database_is_unavailable_with_a_clear_message(tmp_path: Path) -> None:
    with closed_port() as port:
        kv = open_key_value(f"postgresql://edgefn@127.0.0.1:{port}/none", tmp_path)
        try:
            started = time.monotonic()
            with pytest.raises(KVFailure) as refused:
                kv.get("f", "default", "k", time.monotonic() + 0.5)
            assert time.monotonic() - started < 3
        finally:
            kv.close()
    assert refused.value.kind == "unavailable"
    assert f"(PostgreSQL at 127.0.0.1:{port}/none) cannot be reached" in refused.value.message


def test_sigkill_during_writes_loses_no_acknowledged_write(
    place: Place, kv: SQLKeyValue, fn: str
) -> None:
    child = place.child("set", fn, 1_000_000)
    assert child.stdout is not None
    acknowledged = []
    try:
        for line in child.stdout:
            acknowledged.append(line.strip())
            if len(acknowledged) == 300:
                break
        child.send_signal(signal.SIGKILL)
        acknowledged += [line.strip() for line in child.stdout]  # printed before the kill
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    assert len(acknowledged) >= 300
    for key in acknowledged:
        assert get(kv, fn, key) == key.encode() * 10, key
    # And the store's usage counts exactly what is there.
    keys = kv.keys(fn, "default", "", 1_000_000, deadline())
    assert usage(kv, fn) == sum(len(k) * 11 for k in keys)
    # The registry's own connection still opens the database (no corruption).
    open_registry(place.url, place.data_dir).close()


def test_a_second_backend_sees_the_first_ones_writes(
    place: Place, kv: SQLKeyValue, fn: str
) -> None:
    put(kv, fn, "k", b"v")
    other = open_key_value(place.url, place.data_dir)
    try:
        assert other.get(fn, "default", "k", deadline()) == b"v"
    finally:
        other.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_database_error_reaches_the_function_without_sql_or_driver_text(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A database without the tables (no registry migrated it): every statement fails.
    url = request.getfixturevalue("postgres").database() if backend == "postgres" else None
    kv = open_key_value(url, tmp_path)
    try:
        for call in (
            lambda: kv.get("f", "default", "k", deadline()),
            lambda: kv.set("f", "default", "k", b"v", None, ROOM, deadline()),
        ):
            with pytest.raises(KVFailure) as failed:
                call()
            assert failed.value.kind == "unavailable"
            message = failed.value.message.lower()
            assert "the gateway's log has the details" in message
            for leak in ("select", "insert", "kv_usage", "no such table", "does not exist"):
                assert leak not in message
    finally:
        kv.close()
    # The details are in the gateway's log, for the operator.
    assert "no such table" in caplog.text or "does not exist" in caplog.text
