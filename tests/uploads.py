"""Many large uploads at once against one worker, on raw sockets, while its
memory is sampled and another function is probed: shared by
tests/test_public_gateway.py and bench/bodies.py."""

from __future__ import annotations

import socket
import statistics
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx

from gateway_process import rss

_CHUNK = 1 << 20


@dataclass
class StormResult:
    outcomes: Counter[str] = field(default_factory=Counter)
    rss_before: int = 0
    rss_peak: int = 0
    seconds: float = 0.0
    probe_statuses: Counter[int] = field(default_factory=Counter)
    probe_seconds: list[float] = field(default_factory=list)

    @property
    def growth(self) -> int:
        return self.rss_peak - self.rss_before

    def summary(self) -> str:
        mib = 2**20
        probes = sorted(self.probe_seconds)
        p99 = probes[int(len(probes) * 0.99)] if probes else 0.0
        return (
            f"outcomes {dict(sorted(self.outcomes.items()))} in {self.seconds:.1f} s; worker RSS "
            f"{self.rss_before / mib:.0f} MiB before, {self.rss_peak / mib:.0f} MiB at peak "
            f"(+{self.growth / mib:.0f} MiB); other function: {sum(self.probe_statuses.values())} "
            f"probes {dict(self.probe_statuses)}, p50 "
            f"{statistics.median(probes) * 1000 if probes else 0:.0f} ms, p99 {p99 * 1000:.0f} ms, "
            f"max {max(probes, default=0) * 1000:.0f} ms"
        )


def upload(port: int, path: str, body: memoryview, timeout: float = 60) -> str:
    """POST `body` as fast as the server takes it; the status it answered (as a
    string), or what happened to the connection instead."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        )
        sock.sendall(head.encode())
        try:
            for offset in range(0, len(body), _CHUNK):
                sock.sendall(body[offset : offset + _CHUNK])
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered early and closed: the answer may still be readable
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            if not received:
                return "reset"
        except TimeoutError:
            return "timeout"
    if not received.startswith(b"HTTP/1.1 "):
        return "closed"
    status = received.split(b" ", 2)[1].decode()
    if status == "503" and b'"overloaded"' in received:
        return "503 overloaded"
    return status


def storm(
    port: int,
    worker: int,
    path: str,
    probe_url: str,
    count: int = 100,
    size: int = 25 * 2**20,
) -> StormResult:
    """`count` concurrent uploads of `size` bytes to `path`; meanwhile the
    worker's RSS is sampled every 10 ms and `probe_url` is fetched in a loop."""
    result = StormResult(rss_before=rss(worker))
    result.rss_peak = result.rss_before
    body = memoryview(b"x" * size)
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            try:
                result.rss_peak = max(result.rss_peak, rss(worker))
            except (OSError, ValueError):
                return
            done.wait(0.01)  # a sample every 10 ms, until the storm ends

    def probe() -> None:
        with httpx.Client(timeout=30) as client:
            while not done.is_set():
                started = time.perf_counter()
                try:
                    status = client.get(probe_url).status_code
                except httpx.HTTPError:
                    status = 0
                result.probe_seconds.append(time.perf_counter() - started)
                result.probe_statuses[status] += 1
                done.wait(0.05)  # a probe every 50 ms, until the storm ends

    watchers = [threading.Thread(target=sample), threading.Thread(target=probe)]
    for thread in watchers:
        thread.start()
    started = time.perf_counter()
    try:
        with ThreadPoolExecutor(count) as pool:
            for outcome in pool.map(lambda _: upload(port, path, body), range(count)):
                result.outcomes[outcome] += 1
    finally:
        result.seconds = time.perf_counter() - started
        done.set()
        for thread in watchers:
            thread.join()
    return result
