"""Routes the benchmarks measure: a trivial answer, bodies, CPU work, held memory."""

from edgefn import App, Request, Response

app = App()


@app.get("/")
def hello(request: Request) -> Response:
    return Response("Hello, world!\n", media_type="text/plain")


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
