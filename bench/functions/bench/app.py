"""Routes the runtime benchmark measures: a trivial answer, body in, body out."""

from edgefn import App, Request, Response

app = App()


@app.get("/")
def hello(request: Request) -> Response:
    return Response("Hello, world!\n", media_type="text/plain")


@app.post("/sink")
def sink(request: Request) -> dict[str, int]:
    return {"received": len(request.body)}


@app.get("/source")
def source(request: Request) -> Response:
    return Response(b"x" * int(request.query["size"]))


def fib(n: int) -> int:
    return n if n < 2 else fib(n - 1) + fib(n - 2)


@app.get("/fib")
def fibonacci(request: Request) -> dict[str, int]:
    return {"fib": fib(int(request.query.get("n", "25")))}
