"""Counters and values in the "default" store, for tests/test_kv_gateway.py and
bench/kv.py: each route does one kind of key-value work through the gateway."""

import time

from edgefn import App, Request, Response, kv

app = App()


def _ttl(request: Request) -> float | None:
    ttl = request.query.get("ttl")
    return float(ttl) if ttl else None


@app.get("/incr")
def incr(request: Request) -> dict[str, int]:
    store = kv.open(request.query.get("store", "default"))
    by = int(request.query.get("by", "1"))
    return {"value": store.incr(request.query.get("key", "hits"), by, ttl=_ttl(request))}


@app.get("/plain")
def plain(request: Request) -> dict[str, int]:
    """What /incr answers, without the store: bench/kv.py's baseline."""
    return {"value": 1}


@app.get("/value")
def get(request: Request) -> Response:
    value = kv.open("default").get(request.query["key"])
    if value is None:
        return Response(b"", status=404)
    return Response(value, media_type="application/octet-stream")


@app.put("/value")
def put(request: Request) -> Response:
    kv.open("default").set(request.query["key"], request.body, ttl=_ttl(request))
    return Response(b"", status=204)


@app.get("/keys")
def keys(request: Request) -> dict[str, list[str]]:
    return {"keys": kv.open("default").keys(request.query.get("prefix", ""))}


@app.get("/ops")
def ops(request: Request) -> dict[str, int]:
    """`n` operations in one request: runs into `max_kv_ops`."""
    store = kv.open("default")
    count = int(request.query["n"])
    for _ in range(count):
        store.exists("x")
    return {"ops": count}


@app.get("/timing")
def timing(request: Request) -> dict[str, list[float]]:
    """Seconds each of `n` sets then `n` gets of a `size`-byte value took, timed
    inside the function (bench/kv.py)."""
    store = kv.open("default")
    count, value = int(request.query.get("n", "100")), b"x" * int(request.query.get("size", "100"))
    sets, gets = [], []
    for i in range(count):
        started = time.perf_counter()
        store.set(f"timing/{i}", value)
        sets.append(time.perf_counter() - started)
    for i in range(count):
        started = time.perf_counter()
        store.get(f"timing/{i}")
        gets.append(time.perf_counter() - started)
    return {"set": sets, "get": gets}
