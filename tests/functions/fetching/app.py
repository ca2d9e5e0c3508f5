"""Fetches for tests/test_sdk_fetch.py: what the guest glue sends and reads."""

from edgefn import App, OutboundError, StreamingResponse, fetch
from edgefn.image import Image

app = App()


@app.route("/", methods=["GET", "POST"])
def proxy(request):
    answer = fetch(
        request.query["url"],
        method=request.method,
        headers={"x-test": "1"},
        body=request.body or None,
        timeout=5,
    )
    return {
        "status": answer.status,
        "type": answer.headers.get("CONTENT-TYPE"),
        "x-a": answer.headers.getlist("x-a"),
        "json": answer.json() if answer.body else None,
        "url": answer.url,
    }


@app.get("/caught")
def caught(request):
    try:
        fetch(request.query["url"])
    except OutboundError as exc:
        return {"kind": exc.kind, "code": exc.code}


@app.get("/uncaught")
def uncaught(request):
    fetch(request.query["url"])


@app.get("/streaming")
def streaming(request):
    def chunks():
        yield b"first"
        fetch(request.query["url"], method="POST", body=b"would land in the response")

    return StreamingResponse(chunks())


@app.get("/thumb")
def thumb(request):
    return Image.from_url(request.query["url"]).resize(40).send("png")


@app.post("/body")
def body(request):
    return Image.from_body().resize(40).send("png")
