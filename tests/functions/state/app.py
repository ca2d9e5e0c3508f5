"""Routes that exercise every key-value operation and secrets, answering JSON."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from edgefn import App, Request, StreamingResponse, kv, secrets

app = App()


def _q(request: Request, name: str, default: str = "") -> str:
    return request.query.get(name, default)


def _store(request: Request) -> kv.Store:
    return kv.open(_q(request, "store", "default"))


def _ttl(request: Request) -> float | None:
    ttl = _q(request, "ttl")
    return float(ttl) if ttl else None


@app.get("/incr/{key}")
def incr(request: Request) -> dict[str, Any]:
    by = int(_q(request, "by", "1"))
    return {"value": _store(request).incr(request.path_params["key"], by, ttl=_ttl(request))}


@app.get("/get/{key}")
def get(request: Request) -> Any:
    value = _store(request).get(request.path_params["key"])
    if value is None:
        return {"value": None}
    if _q(request, "raw"):
        return value
    return {"value": value.decode("utf-8", "replace"), "length": len(value)}


@app.post("/set/{key}")
def set_(request: Request) -> dict[str, Any]:
    value = request.body
    _store(request).set(request.path_params["key"], value, ttl=_ttl(request))
    return {"set": len(value)}


@app.get("/fill/{key}")
def fill(request: Request) -> dict[str, Any]:
    """Sets `size` bytes of a pattern and reads them back: a large value's round trip."""
    size = int(_q(request, "size"))
    value = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    store = _store(request)
    store.set(request.path_params["key"], value)
    back = store.get(request.path_params["key"])
    return {"size": size, "same": back == value}


@app.get("/delete/{key}")
def delete(request: Request) -> dict[str, Any]:
    _store(request).delete(request.path_params["key"])
    return {"deleted": True}


@app.get("/exists/{key}")
def exists(request: Request) -> dict[str, Any]:
    return {"exists": _store(request).exists(request.path_params["key"])}


@app.get("/keys")
def keys(request: Request) -> dict[str, Any]:
    limit = int(_q(request, "limit", "1000"))
    return {"keys": _store(request).keys(_q(request, "prefix"), limit=limit)}


@app.get("/loop")
def loop(request: Request) -> dict[str, Any]:
    """`n` increments in one request: runs into `max_kv_ops` (or the fuel)."""
    store = _store(request)
    done = 0
    for _ in range(int(_q(request, "n"))):
        store.incr("loop")
        done += 1
    return {"done": done}


@app.get("/secret/{name}")
def secret(request: Request) -> dict[str, Any]:
    return {"value": secrets.get(request.path_params["name"])}


@app.get("/caught")
def caught(request: Request) -> dict[str, Any]:
    """The error a function can catch, as it sees it."""
    try:
        _store(request).get(_q(request, "key", "k"))
    except kv.KVError as error:
        return {"type": type(error).__name__, "status": error.status, "code": error.code}
    return {"type": None}


@app.get("/timing")
def timing(request: Request) -> dict[str, list[float]]:
    """Seconds each of `n` calls took, timed inside the function (bench/kv_sandbox.py):
    `set` then `get` of a `size`-byte value, and `open`, a host call that asks no
    backend (the boundary and the host's checks alone)."""
    store = _store(request)
    count, value = int(_q(request, "n", "100")), b"x" * int(_q(request, "size", "100"))
    times: dict[str, list[float]] = {"set": [], "get": [], "open": []}
    for i in range(count):
        started = time.perf_counter()
        store.set(f"timing/{i}", value)
        times["set"].append(time.perf_counter() - started)
    for i in range(count):
        started = time.perf_counter()
        store.get(f"timing/{i}")
        times["get"].append(time.perf_counter() - started)
    for _ in range(count):
        started = time.perf_counter()
        kv.open(store.name)
        times["open"].append(time.perf_counter() - started)
    return times


@app.get("/stream")
def stream(request: Request) -> StreamingResponse:
    """A set while the body streams: its value crosses on stdout between two chunks."""
    store = _store(request)

    def chunks() -> Iterator[bytes]:
        yield b"first "
        store.set("during", b"in the body?")
        yield b"second"

    return StreamingResponse(chunks())
