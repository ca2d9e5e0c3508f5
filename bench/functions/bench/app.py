"""Routes the benchmarks measure: a trivial answer, bodies, CPU work, held memory."""

import hashlib

from edgefn import App, Request, Response, StreamingResponse

app = App()


@app.get("/")
def hello(request: Request) -> Response:
    return Response("Hello, world!\n", media_type="text/plain")


@app.post("/digest")
def digest(request: Request) -> dict[str, object]:
    """The body's sha256, hashed chunk by chunk as `stream()` gives them."""
    hashed, size = hashlib.sha256(), 0
    for chunk in request.stream():
        hashed.update(chunk)
        size += len(chunk)
    return {"size": size, "sha256": hashed.hexdigest()}


@app.post("/echo")
def echo(request: Request) -> Response:
    return Response(request.body, media_type="application/octet-stream")


def fib(n: int) -> int:
    return n if n < 2 else fib(n - 1) + fib(n - 2)


@app.get("/fib")
def fibonacci(request: Request) -> dict[str, int]:
    return {"fib": fib(int(request.query.get("n", "25")))}


@app.get("/hold")
def hold(request: Request) -> dict[str, int]:
    """Keep `mb` MiB of guest memory busy for `ms` milliseconds."""
    import time

    block = bytearray(int(request.query.get("mb", "16")) * 1024 * 1024)
    block[::4096] = b"x" * len(block[::4096])  # touch every page
    time.sleep(int(request.query.get("ms", "300")) / 1000)
    return {"held": len(block)}


@app.get("/cached")
def cached(request: Request) -> Response:
    """hello, cacheable: bench/cache.py measures the edge cache's hits with it."""
    headers = {"cache-control": "public, max-age=60"}
    return Response("Hello, world!\n", media_type="text/plain", headers=headers)


def csv_chunks(rows: int, lines: int = 4096):  # type: ignore[no-untyped-def]
    """`rows` CSV lines, `lines` to a chunk (4,096: ~60 KiB): what an export streams."""
    for start in range(0, rows, lines):
        end = min(rows, start + lines)
        yield "".join(f"{n},{n * n},{n % 7}\n" for n in range(start, end)).encode()


@app.get("/export")
def export(request: Request) -> Response:
    """bench/streaming.py: the same CSV streamed (`stream=1`) or whole."""
    rows, lines = int(request.query.get("rows", "120000")), int(request.query.get("lines", "4096"))
    if request.query.get("stream"):
        return StreamingResponse(csv_chunks(rows, lines), media_type="text/csv")
    return Response(b"".join(csv_chunks(rows)), media_type="text/csv")
