"""cached: answers with the caching headers its query asks for.

GET /any/path?cc=C&etag=E&lm=L&vary=V&cookie=1&status=N&sleep=MS&pad=N
    Cache-Control C (default "public, max-age=60"), ETag E, Last-Modified L,
    Vary V, a Set-Cookie, status N; busy for MS milliseconds first. Answers 304
    itself when If-None-Match names E (with Cache-Control `cc304` if given). The
    body names the path, the query and the moment it was computed (`run=<ns>`):
    two equal bodies are one run; N bytes of padding follow it.
GET /image?...  the same, as image/<format negotiated from Accept>, Vary: Accept;
    with `negotiated`, saying so to the cache (`edgefn.image.ACCEPT_NEGOTIATED`).
A request header `x-test-age: N` sends `Age: N` (a copy that comes aged, say from
a cache in front). A request header `x-test-fail: status` answers 500, `x-test-fail: raise` raises
and `x-test-fail: hang` runs past the time limit — headers the cache does not
key on, so a test can make a stored key fail.
"""

from __future__ import annotations

import time

from edgefn import App, Request, Response
from edgefn.image import ACCEPT_NEGOTIATED, negotiate
from edgefn_contract.image import MEDIA_TYPES

app = App()


@app.route("/{path:path}", methods=["GET", "HEAD", "POST"])
def answer(request: Request) -> Response:
    path = request.path_params["path"]
    fail = request.headers.get("x-test-fail")
    if fail == "status":
        return Response(b"failed on purpose", 500)
    if fail == "raise":
        raise RuntimeError("failed on purpose")
    if fail == "hang":
        while True:
            pass
    query = request.query
    if "sleep" in query:
        until = time.monotonic() + int(query["sleep"]) / 1000
        while time.monotonic() < until:
            pass
    cc = query.get("cc", "public, max-age=60")
    headers = {"cache-control": cc}
    etag = query.get("etag")
    if etag:
        headers["etag"] = f'"{etag}"'
        if f'"{etag}"' in request.headers.get("if-none-match", ""):
            return Response(b"", 304, {**headers, "cache-control": query.get("cc304", cc)})
    if "lm" in query:
        headers["last-modified"] = query["lm"]
    if "vary" in query:
        headers["vary"] = query["vary"]
    if "cookie" in query:
        headers["set-cookie"] = "session=abc"
    if "x-test-age" in request.headers:  # aged already: stored stale, without a wait
        headers["age"] = request.headers["x-test-age"]
    body = f"{path}?{request.query_string} run={time.time_ns()}" + "." * int(query.get("pad", "0"))
    if path == "image":
        fmt = negotiate(request.headers.get("accept", ""))
        headers["content-type"] = MEDIA_TYPES[fmt]
        headers.update(ACCEPT_NEGOTIATED if "negotiated" in query else {"vary": "Accept"})
        body = f"{fmt} run={time.time_ns()}"
    else:
        headers["content-type"] = "text/plain"
    return Response(body.encode(), int(query.get("status", "200")), headers)
