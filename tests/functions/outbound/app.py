"""outbound: fetch what the query says and answer what came back, as JSON.

GET /fetch?url=U[&method=M][&timeout=S][&body=B][&header=NAME:VALUE]...[&cache=0]
    one fetch; an uncaught Outbound* error answers its own status and code
GET /catch?url=U[&timeout=S]   the same, an Outbound* error caught: its class and message
GET /many?url=U&n=N            N fetches of U in a row (the per-request caps)
GET /image?src=U&w=W           Image.from_url(U), W px wide, as WebP

/glue/...: what tests/test_sdk_fetch.py checks the SDK's guest glue with, under a
stand-in outbound capability (one test function, built once for both modules).
"""

from __future__ import annotations

from typing import Any

from edgefn import (
    App,
    FetchResponse,
    OutboundError,
    Request,
    Response,
    StreamingResponse,
    fetch,
)
from edgefn.image import Image

app = App()


def _fetch(request: Request) -> FetchResponse:
    query = request.query
    headers = [tuple(header.split(":", 1)) for header in query.getlist("header")]
    timeout = float(query["timeout"]) if "timeout" in query else None
    return fetch(
        query["url"],
        method=query.get("method", "GET"),
        headers=headers or None,
        body=query.get("body"),
        timeout=timeout,
        cache=query.get("cache", "1") != "0",
    )


def _answer(response: FetchResponse) -> dict[str, Any]:
    return {
        "status": response.status,
        "headers": {name.lower(): value for name, value in response.headers.items()},
        "length": len(response.body),
        "text": response.body[:4096].decode("utf-8", "replace"),
        "url": response.url,
    }


@app.get("/fetch")
def fetch_one(request: Request) -> dict[str, Any]:
    return _answer(_fetch(request))


@app.get("/catch")
def fetch_caught(request: Request) -> dict[str, Any]:
    try:
        return _answer(_fetch(request))
    except OutboundError as error:
        return {"error": type(error).__name__, "kind": error.kind, "message": error.message}


@app.get("/many")
def fetch_many(request: Request) -> dict[str, Any]:
    lengths = [len(fetch(request.query["url"]).body) for _ in range(int(request.query["n"]))]
    return {"fetches": len(lengths), "bytes": sum(lengths)}


@app.get("/image")
def image(request: Request) -> Response:
    source = Image.from_url(request.query["src"])
    return source.resize(int(request.query.get("w", "800"))).send("webp")


# The guest glue's checks (tests/test_sdk_fetch.py) ------------------------------


@app.route("/glue/", methods=["GET", "POST"])
def glue_proxy(request):
    answer = fetch(
        request.query["url"],
        method=request.method,
        headers={"x-test": "1"},
        body=request.body or None,
        timeout=5,
        cache="cache" not in request.query,
    )
    return {
        "status": answer.status,
        "type": answer.headers.get("CONTENT-TYPE"),
        "x-a": answer.headers.getlist("x-a"),
        "json": answer.json() if answer.body else None,
        "url": answer.url,
    }


@app.get("/glue/caught")
def glue_caught(request):
    try:
        fetch(request.query["url"])
    except OutboundError as exc:
        return {"kind": exc.kind, "code": exc.code}


@app.get("/glue/uncaught")
def glue_uncaught(request):
    fetch(request.query["url"])


@app.get("/glue/streaming")
def glue_streaming(request):
    def chunks():
        yield b"first "
        try:  # its body crosses on stdout, between two chunks of the response's
            fetch(request.query["url"], method="POST", body=b"sent with the fetch")
        except OutboundError:
            pass
        yield b"second"

    return StreamingResponse(chunks())


@app.get("/glue/thumb")
def glue_thumb(request):
    return Image.from_url(request.query["url"]).resize(40).send("png")


@app.post("/glue/body")
def glue_body(request):
    return Image.from_body().resize(40).send("png")
