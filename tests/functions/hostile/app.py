import hashlib
import importlib
import json
import os
import socket
import sys

from edgefn import App, Request, Response, StreamingResponse
from edgefn.image import Image

app = App()
counter = 0


@app.route("/inspect", methods=["GET", "POST", "PUT", "DELETE"])
@app.route("/inspect/{rest:path}", methods=["GET", "POST"])
def inspect(request: Request) -> dict[str, object]:
    return {
        "method": request.method,
        "path": request.path,
        "query": {key: request.query.getlist(key) for key in request.query},
        "headers": request.headers.multi_items(),
    }


@app.post("/echo")
def echo(request: Request) -> Response:
    return Response(request.body, headers={"content-type": "application/octet-stream"})


@app.get("/counter")
def count(request: Request) -> dict[str, int]:
    global counter
    counter += 1
    return {"counter": counter}


@app.get("/env")
def env(request: Request) -> dict[str, str]:
    return dict(os.environ)


@app.get("/read")
def read(request: Request) -> dict[str, str]:
    path = request.query["path"]
    try:
        with open(path, "rb") as file:
            return {"read": file.read(100).decode("latin-1")}
    except OSError as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


@app.get("/write")
def write(request: Request) -> dict[str, str]:
    try:
        with open(request.query["path"], "w") as file:
            file.write("overwritten")
        return {"written": "yes"}
    except OSError as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


@app.get("/listdir")
def listdir(request: Request) -> dict[str, object]:
    try:
        return {"entries": os.listdir(request.query.get("path", "/"))}
    except OSError as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


@app.get("/socket")
def connect(request: Request) -> dict[str, str]:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(1)
            sock.connect(("127.0.0.1", int(request.query.get("port", "80"))))
            return {"connected": "yes"}
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


@app.get("/print")
def printing(request: Request) -> str:
    print(request.query.get("text", "printed line"))
    import logging

    logging.getLogger("hostile").warning("logged line")
    return "body only\n"


@app.get("/log-flood")
def log_flood(request: Request) -> str:
    for i in range(int(request.query.get("lines", "100000"))):
        print(f"flood line {i:06d} " + "x" * 80)
    return "still alive\n"


@app.get("/loop")
def loop(request: Request) -> None:
    while True:
        pass


@app.route("/sleep", methods=["GET", "POST"])
def sleep(request: Request) -> str:
    import time

    time.sleep(float(request.query.get("seconds", "10")))
    return "woke up\n"


@app.get("/host-sleep")
def host_sleep(request: Request) -> str:
    """One wait in the host (WASI's clock), past the SDK's 10 ms slices."""
    from edgefn import _guest

    _guest._host_sleep(float(request.query.get("seconds", "10")))
    return "woke up\n"


@app.get("/alloc")
def alloc(request: Request) -> None:
    hoard = []
    while True:
        hoard.append(bytearray(1024 * 1024))


@app.get("/recurse")
def recurse(request: Request) -> None:
    def down(n: int) -> int:
        return down(n + 1) + 1

    down(0)


@app.get("/crash")
def crash(request: Request) -> None:
    # Past CPython's own recursion check, the WebAssembly stack overflows: a trap.
    sys.setrecursionlimit(10**7)

    def down(n: int) -> int:
        return down(n + 1) + 1

    down(0)


@app.get("/raise")
def fail(request: Request) -> None:
    raise KeyError("no such thing")


@app.get("/big")
def big(request: Request) -> Response:
    """`size` bytes, streamed 1 MiB at a time, or with `whole=1` in one body."""
    size = int(request.query["size"])
    if request.query.get("whole"):
        return Response(b"x" * size)
    megabyte = b"x" * 1024 * 1024
    chunks = (megabyte[: min(len(megabyte), size - sent)] for sent in range(0, size, len(megabyte)))
    return StreamingResponse(chunks)


@app.get("/exit")
def leave(request: Request) -> None:
    sys.exit(3)


@app.get("/bad-header")
def bad_header(request: Request) -> Response:
    return Response("x", headers={"x-evil": "a\r\nInjected: 1"})


@app.get("/control-header")
def control_header(request: Request) -> Response:
    return Response("x", headers={"x-evil": "\x1b]0;owned\x07"})


@app.get("/json")
def as_json(request: Request) -> Response:
    return Response(json.dumps({"ok": True}), headers={"content-type": "application/json"})


@app.get("/exit-hard")
def exit_hard(request: Request) -> None:
    os._exit(3)


@app.get("/raise-in-generator")
def raise_in_generator(request: Request) -> Response:
    def chunks():  # type: ignore[no-untyped-def]
        yield b"first chunk\n"
        raise RuntimeError("the generator broke")

    return StreamingResponse(chunks())


@app.route("/stream", methods=["GET", "POST"])
def stream(request: Request) -> Response:
    """`chunks` chunks of `size` bytes, `pause` ms apart, logging how many it made;
    with `fail=1` the generator raises before its first chunk."""
    import time

    count, size = int(request.query.get("chunks", "2")), int(request.query.get("size", "10"))
    pause = int(request.query.get("pause", "0")) / 1000

    def chunks():  # type: ignore[no-untyped-def]
        made = 0
        if request.query.get("fail"):
            raise ValueError("failed before the first chunk")
        try:
            for i in range(count):
                if i and pause:
                    time.sleep(pause)
                made += 1
                yield str(i % 10).encode() * size
        finally:
            print(f"made {made} chunks")

    headers = {"x-streamed": "yes"}
    return StreamingResponse(
        chunks(), status=int(request.query.get("status", "200")), headers=headers
    )


@app.get("/stream-bytes")
def stream_bytes(request: Request) -> Response:
    """`count` chunks of one byte, each after an empty one."""
    count = int(request.query["count"])
    return StreamingResponse(chunk for _ in range(count) for chunk in (b"", b"x"))


@app.get("/stream-bad-header")
def stream_bad_header(request: Request) -> Response:
    return StreamingResponse(iter([b"x"]), headers={"x-evil": "a\r\nInjected: 1"})


@app.get("/raise-in-finally")
def raise_in_finally(request: Request) -> str:
    try:
        return "never sent\n"
    finally:
        raise ValueError("raised in finally")


@app.get("/headers")
def many_headers(request: Request) -> Response:
    count, size = int(request.query.get("count", "1")), int(request.query.get("size", "1"))
    response = Response("headers\n")
    for i in range(count):
        response.headers.append(f"x-h{i}", "v" * size)
    return response


@app.get("/hop-by-hop")
def hop_by_hop(request: Request) -> Response:
    """Two Set-Cookie headers, beside every hop-by-hop header a proxy must not forward."""
    response = Response("hops\n")
    response.headers.append("set-cookie", "a=1")
    response.headers.append("set-cookie", "b=2")
    for name in ("connection", "keep-alive", "proxy-authenticate", "te", "trailer", "upgrade"):
        response.headers[name] = "x"
    response.headers["transfer-encoding"] = "chunked"
    response.headers["content-length"] = "999"
    return response


@app.get("/resolve")
def resolve(request: Request) -> dict[str, str]:
    try:
        return {"resolved": str(socket.getaddrinfo(request.query["host"], 80))}
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


# A 3x2 PNG; Pillow ignores what follows IEND, so padding makes it any size.
TINY_PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000030000000208020000001216f14d0000001049444154"
    "789c63fccf00054c3006030013290103f0d807840000000049454e44ae426082"
)


@app.get("/image-bytes")
def image_bytes(request: Request) -> dict[str, int]:
    data = TINY_PNG + b"\0" * int(request.query.get("pad", "0"))
    info = Image.from_bytes(data).probe()
    again = Image.from_bytes(data).probe()  # each use sends the bytes anew
    return {"width": info.width, "height": again.height}


@app.get("/image-bytes-claim")
def image_bytes_claim(request: Request) -> Response:
    """Past the SDK: claims `n` bytes of stdout as an image it never wrote (the
    host then reads that much of where its body goes: its own body suffers)."""
    from componentize_py_types import Err
    from wit_world.imports import image as host_image

    answer = {"kind": "ok", "message": ""}
    try:
        host_image.probe(host_image.Source_Bytes(int(request.query["n"])))
    except Err as failure:
        answer = {"kind": failure.value.kind, "message": failure.value.message}
    return Response(json.dumps(answer), headers={"x-kind": answer["kind"]})


@app.get("/status")
def status(request: Request) -> Response:
    """Any status at all, past the SDK's own check; `upgrade=1` adds a WebSocket upgrade."""
    response = Response("status\n")
    response.status = int(request.query["code"])
    if "upgrade" in request.query:
        response.headers["upgrade"] = "websocket"
        response.headers["connection"] = "upgrade"
    return response


@app.post("/length")
def length(request: Request) -> dict[str, int]:
    return {"length": len(request.body)}


@app.get("/late-import/{which}")
def late_import(request: Request) -> str:
    """A module imported inside a handler: one the build imported (`json`, at the
    top), one only a build-time import imported (`_socket`, by `socket`), one
    nothing imported (`fractions`), one of the function's own (`hostile_late`).
    Deployed and under `edgefn dev`, only the first two import."""
    which = request.path_params["which"]
    if which == "own":
        import hostile_late

        return hostile_late.VALUE
    return importlib.import_module(which).__name__


@app.post("/upload")
def upload(request: Request) -> dict[str, object]:
    """The body's size, chunks and digest, read as a stream (`?whole=1`: as `body`).
    `?stop=N` answers after N chunks; `?twice=1` reads it again after streaming."""
    digest, size, chunks = hashlib.sha256(), 0, 0
    stop = int(request.query.get("stop", "0"))
    parts = [request.body] if request.query.get("whole") else request.stream()
    for chunk in parts:
        digest.update(chunk)
        size, chunks = size + len(chunk), chunks + 1
        if chunks == stop:
            break
    if request.query.get("twice"):
        size += len(request.body)
    return {"size": size, "chunks": chunks, "sha256": digest.hexdigest()}


@app.post("/upload-echo")
def upload_echo(request: Request) -> Response:
    """Streams back each chunk's size as it reads it: the client sees a chunk
    arrive before it sends the next."""
    return StreamingResponse(f"{len(chunk)}\n".encode() for chunk in request.stream())
