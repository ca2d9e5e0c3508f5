"""The cache's two tiers (runtime/edgefn_runtime/cache/): LRU bounds in memory and
on disk, the disk tier across restarts and processes, torn records, purges, and a
broken disk that only makes the cache smaller."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefn_runtime.cache import CacheConfig, Entry, HttpCache

KB = 2**10
MB = 2**20


def _entry(size: int = 100, *, path: str = "/a", stored_at: float | None = None) -> Entry:
    now = time.time() if stored_at is None else stored_at
    return Entry(
        status=200,
        headers=(("content-type", "image/webp"), ("cache-control", "public, max-age=60")),
        body=os.urandom(size),
        stored_at=now,
        fresh_until=now + 60,
        stale_while_revalidate=5.0,
        stale_if_error=30.0,
        initial_age=2.0,
        etag='"v1"',
        last_modified="Mon, 30 Nov 2026 10:00:00 GMT",
        function="thumbs",
        path=path,
        vary=("accept",),
    )


class _Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, int]] = []

    def __call__(self, event: str, tier: str, amount: int) -> None:
        self.seen.append((event, tier, amount))

    def total(self, event: str, tier: str) -> int:
        return sum(amount for e, t, amount in self.seen if (e, t) == (event, tier))


@pytest.fixture
def caches(tmp_path: Path) -> Iterator[list[HttpCache]]:
    """Caches a test opens, closed (writer threads stopped) even when it fails."""
    opened: list[HttpCache] = []
    yield opened
    for cache in opened:
        cache.close()


def _open(caches: list[HttpCache], directory: Path, **bounds: int) -> HttpCache:
    cache = HttpCache(CacheConfig(dir=directory, **bounds), listener=_Events())
    caches.append(cache)
    return cache


def _events(cache: HttpCache) -> _Events:
    listener = cache._listener
    assert isinstance(listener, _Events)
    return listener


def _on_disk(directory: Path) -> int:
    """Bytes the directory really takes: allocated blocks, not file lengths."""
    return sum(p.stat().st_blocks * 512 for p in directory.rglob("*") if p.is_file())


def _value_files(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*.val")]


# -- memory tier ---------------------------------------------------------------


def test_memory_tier_evicts_the_least_recently_used(caches: list[HttpCache]) -> None:
    size = _entry(10 * KB).size
    cache = HttpCache(CacheConfig(memory=3 * size, disk=0), listener=_Events())
    caches.append(cache)
    for key in "abc":
        assert cache.put(key, _entry(10 * KB))
    assert cache.get("a") is not None  # a is now more recent than b
    cache.put("d", _entry(10 * KB))
    assert cache.get("b") is None
    assert all(cache.get(key) is not None for key in "acd")
    assert cache.stats()["memory"] == (3, 3 * size)
    assert _events(cache).total("evict", "memory") == 1


def test_a_memory_hit_is_a_few_microseconds(caches: list[HttpCache], tmp_path: Path) -> None:
    import timeit

    cache = _open(caches, tmp_path)
    cache.put("k", _entry())
    runs = 20_000
    best = min(timeit.repeat(lambda: cache.get("k"), number=runs, repeat=5)) / runs
    # ~0.7-1.1 us on the 2-core dev VM; the bound leaves room for a loaded CI machine.
    assert best < 20e-6


# -- disk tier -----------------------------------------------------------------


def test_a_new_cache_on_the_same_dir_serves_what_the_old_one_stored(
    caches: list[HttpCache], tmp_path: Path
) -> None:
    small, large = _entry(300), _entry(200 * KB)
    first = _open(caches, tmp_path)
    first.put("small", small)
    first.put("large", large)
    first.close()

    restarted = _open(caches, tmp_path)
    assert restarted.get("small") == small
    assert restarted.get("large") == large
    assert _events(restarted).total("hit", "disk") == 2
    # Promoted: served from memory from then on.
    assert restarted.get("large") == large
    assert _events(restarted).total("hit", "memory") == 1


def test_an_entry_too_large_for_memory_is_kept_on_disk(
    caches: list[HttpCache], tmp_path: Path
) -> None:
    cache = _open(caches, tmp_path, memory=64 * KB)
    assert cache.put("big", _entry(300 * KB))
    assert cache.flush()
    assert cache.stats()["memory"].entries == 0
    assert cache.get("big") is not None


def test_two_processes_sharing_the_dir_see_each_others_entries(
    caches: list[HttpCache], tmp_path: Path
) -> None:
    parent = _open(caches, tmp_path)
    parent.put("from-parent", _entry(150 * KB))
    assert parent.flush()
    child = f"""
import sys
from pathlib import Path
from edgefn_runtime.cache import CacheConfig, Entry, HttpCache
with HttpCache(CacheConfig(dir=Path({str(tmp_path)!r}))) as cache:
    found = cache.get("from-parent")
    if found is None or len(found.body) != {150 * KB}:
        sys.exit("child: from-parent not found")
    cache.put("from-child", Entry(200, (), b"hello", 1.0, 2.0, function="f", path="/c"))
"""
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    found = parent.get("from-child")
    assert found is not None and found.body == b"hello" and found.path == "/c"


def test_two_processes_writing_at_once_both_reach_the_disk(
    caches: list[HttpCache], tmp_path: Path
) -> None:
    child = f"""
import os
from pathlib import Path
from edgefn_runtime.cache import CacheConfig, Entry, HttpCache
with HttpCache(CacheConfig(dir=Path({str(tmp_path)!r}))) as cache:
    for i in range(300):
        cache.put(f"child-{{i}}", Entry(200, (), os.urandom(2048), 1.0, 2.0))
"""
    writer = subprocess.Popen([sys.executable, "-c", child], stderr=subprocess.PIPE, text=True)
    try:
        parent = _open(caches, tmp_path, memory=0)
        for i in range(300):
            parent.put(f"parent-{i}", _entry(2048))
        assert parent.flush()
    finally:
        _, errors = writer.communicate(timeout=60)
    assert writer.returncode == 0, errors
    reader = _open(caches, tmp_path)
    assert reader.stats()["disk"].entries == 600
    assert all(reader.get(f"child-{i}") is not None for i in range(300))


def test_disk_tier_evicts_the_least_recently_used(caches: list[HttpCache], tmp_path: Path) -> None:
    # 2 MB holds about a dozen 100 KB entries once the WAL's room is set aside.
    cache = _open(caches, tmp_path, memory=0, disk=2 * MB)
    for i in range(8):
        cache.put(f"k{i}", _entry(100 * KB))
    assert cache.flush()
    assert cache.get("k0") is not None  # k0 is now the most recently used
    for i in range(8, 20):
        cache.put(f"k{i}", _entry(100 * KB))
    assert cache.flush()
    assert cache.get("k0") is not None
    assert cache.get("k1") is None
    assert cache.get("k19") is not None
    assert _events(cache).total("evict", "disk") > 0
    assert _on_disk(tmp_path) <= 2 * MB


def test_thousands_of_distinct_keys_keep_the_disk_under_its_bound(
    caches: list[HttpCache], tmp_path: Path
) -> None:
    bound = 4 * MB
    cache = _open(caches, tmp_path, memory=256 * KB, disk=bound)
    for i in range(5000):
        # Mostly small entries (in SQLite's pages), every 50th one in its own file.
        cache.put(f"/img/{i}", _entry(90 * KB if i % 50 == 0 else 700))
        if i % 1000 == 999:
            assert cache.flush()
            assert _on_disk(tmp_path) <= bound, i
    assert cache.flush()
    entries, counted = cache.stats()["disk"]
    assert 0 < entries < 5000
    assert counted <= bound
    assert _on_disk(tmp_path) <= bound
    assert _events(cache).total("evict", "disk") >= 5000 - entries
    assert cache.get("/img/4999") is not None


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_a_damaged_record_file_is_never_served_and_is_removed(
    caches: list[HttpCache], tmp_path: Path, damage: str
) -> None:
    writer = _open(caches, tmp_path)
    writer.put("k", _entry(200 * KB))
    writer.close()
    (record,) = _value_files(tmp_path)
    length = record.stat().st_size
    if damage == "truncate":  # a crash mid-write, or someone's `truncate`
        os.truncate(record, length // 2)
    elif damage == "garbage":  # same length, other bytes
        record.write_bytes(os.urandom(length))
    else:
        os.truncate(record, 0)

    reader = _open(caches, tmp_path)
    assert reader.get("k") is None
    assert reader.stats()["disk"].entries == 0
    assert not record.exists()
    assert _events(reader).total("miss", "disk") == 1


def test_a_damaged_record_in_the_index_is_never_served_and_is_removed(
    caches: list[HttpCache], tmp_path: Path
) -> None:
    writer = _open(caches, tmp_path)
    writer.put("k", _entry(500))
    writer.close()
    # A small entry lives in SQLite's own pages: flip one byte of its body there.
    with sqlite3.connect(tmp_path / "cache.db") as db:
        (value,) = db.execute("SELECT value FROM Cache").fetchone()
        torn = bytearray(value)
        torn[-1] ^= 0xFF
        db.execute("UPDATE Cache SET value = ?", (bytes(torn),))
    reader = _open(caches, tmp_path)
    assert reader.get("k") is None
    assert reader.stats()["disk"].entries == 0


# -- what is stored, what is served ----------------------------------------------


def test_an_entry_over_max_object_is_stored_in_neither_tier(
    caches: list[HttpCache], tmp_path: Path
) -> None:
    fits = _entry(50 * KB)
    cache = _open(caches, tmp_path, max_object=fits.size)
    assert not cache.put("over", _entry(50 * KB + 1))
    assert cache.put("fits", fits)
    cache.close()
    reopened = _open(caches, tmp_path)
    assert reopened.get("over") is None
    assert reopened.get("fits") == fits
    assert reopened.stats()["disk"].entries == 1


def test_purges_apply_to_entries_from_disk(caches: list[HttpCache], tmp_path: Path) -> None:
    stored = time.time() - 10
    writer = _open(caches, tmp_path)
    writer.put("purged", _entry(path="/img/a.jpg", stored_at=stored))
    writer.put("kept", _entry(path="/css/a.css", stored_at=stored))
    writer.close()

    reader = _open(caches, tmp_path)
    reader.purges.replace({"thumbs": [("/img/", stored + 1)]})
    assert reader.get("purged") is None
    assert reader.get("kept") is not None
    assert reader.stats()["disk"].entries == 1


def test_delete_removes_from_both_tiers(caches: list[HttpCache], tmp_path: Path) -> None:
    cache = _open(caches, tmp_path)
    cache.put("k", _entry())
    assert cache.flush()
    cache.delete("k")
    assert cache.get("k") is None
    assert cache.stats()["disk"].entries == 0


# -- a broken disk is a smaller cache, never an error ------------------------------


def test_a_removed_dir_degrades_to_misses(caches: list[HttpCache], tmp_path: Path) -> None:
    directory = tmp_path / "cache"
    first = _open(caches, directory)
    first.put("k", _entry(200 * KB))
    first.close()
    cache = _open(caches, directory, memory=0)
    cache.put("other", _entry())
    assert cache.flush()
    for path in sorted(directory.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    directory.rmdir()
    assert cache.get("k") is None
    cache.put("new", _entry(200 * KB))
    assert cache.flush()


def test_a_dir_that_cannot_hold_a_cache_leaves_the_memory_tier(
    caches: list[HttpCache], tmp_path: Path
) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_bytes(b"x")
    cache = _open(caches, not_a_dir)
    assert cache.put("k", _entry())
    assert cache.get("k") is not None
    assert "disk" not in cache.stats()


def test_a_corrupt_index_leaves_the_memory_tier(caches: list[HttpCache], tmp_path: Path) -> None:
    (tmp_path / "cache.db").write_bytes(os.urandom(8192))
    cache = _open(caches, tmp_path)
    assert cache.put("k", _entry())
    assert cache.get("k") is not None
    assert "disk" not in cache.stats()


def test_a_locked_index_is_a_quick_miss(caches: list[HttpCache], tmp_path: Path) -> None:
    writer = _open(caches, tmp_path)
    writer.put("k", _entry())
    writer.close()
    cache = _open(caches, tmp_path)
    other = sqlite3.connect(tmp_path / "cache.db", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another worker holding the write lock
        started = time.monotonic()
        assert cache.get("k") is None
        assert time.monotonic() - started < 0.5
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert cache.get("k") is not None


def test_a_write_that_fails_does_not_stop_the_disk_writer(
    caches: list[HttpCache], tmp_path: Path
) -> None:
    cache = _open(caches, tmp_path)
    unwritable = Entry(200, ((b"x", b"y"),), b"", 1.0, 2.0)  # type: ignore[arg-type]
    cache.put("unwritable", unwritable)
    cache.put("k", _entry())
    assert cache.flush(timeout=10)
    cache.close()
    assert _open(caches, tmp_path).get("k") is not None


def test_a_purged_memory_hit_leaves_the_disk_in_the_writer_thread(
    caches: list[HttpCache], tmp_path: Path
) -> None:
    stored = time.time() - 10
    cache = _open(caches, tmp_path)
    cache.put("k", _entry(stored_at=stored))
    assert cache.flush()
    cache.purges.replace({"thumbs": [("/", stored + 1)]})
    assert cache.get("k") is None  # from memory: purged
    assert cache.flush()
    assert cache.stats()["disk"].entries == 0


def test_after_writes_calls_back_once_what_was_put_is_on_disk(
    caches: list[HttpCache], tmp_path: Path
) -> None:
    cache = _open(caches, tmp_path)
    cache.put("k", _entry(200 * KB))
    seen: list[int] = []
    done = threading.Event()
    cache.after_writes(
        lambda: (seen.append(_open(caches, tmp_path).stats()["disk"].entries), done.set())
    )
    assert done.wait(10)
    assert seen == [1]  # another process's view (a new cache on the dir) has it by then
    no_disk = _open(caches, tmp_path / "none", disk=0)
    called = threading.Event()
    no_disk.after_writes(called.set)
    assert called.is_set()  # no disk tier: at once


def test_a_record_that_is_not_bytes_is_refused_not_unpickled(
    caches: list[HttpCache], tmp_path: Path
) -> None:
    import diskcache

    cache = _open(caches, tmp_path)
    cache.put("k", _entry())
    assert cache.flush()
    cache.close()
    # What someone who could write the directory might plant: a pickled value.
    with diskcache.Cache(str(tmp_path)) as raw:
        raw.set("k", {"not": "bytes"})
    reader = _open(caches, tmp_path)
    assert reader.get("k") is None
    assert reader.stats()["disk"].entries == 0  # and it is gone


def test_a_new_disk_tier_directory_is_the_gateway_users_only(
    caches: list[HttpCache], tmp_path: Path
) -> None:
    _open(caches, tmp_path / "fresh")
    assert (tmp_path / "fresh").stat().st_mode & 0o777 == 0o700
