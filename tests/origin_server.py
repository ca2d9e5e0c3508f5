"""A loopback origin server for the outbound HTTP tests and benchmarks.

What an edge function fetches from: image originals, and every way an origin can
misbehave (slow, dripping, redirecting in chains or out of bounds, failing, lying
about its length, never ending). Stdlib `http.server`, one thread per connection,
HTTP/1.1 with keep-alive, bound to a port the kernel picks:

    with OriginServer() as origin:                    # 127.0.0.1
        url = origin.url("/photo.jpg")
        ...
        assert origin.hits("/huge") == 0               # never contacted

`OriginServer("127.0.0.2")` binds a second instance elsewhere on loopback (Linux
routes all of 127.0.0.0/8 to lo): an address outside `allowed_networks =
["127.0.0.1/32"]`. Leaving the block stops it and joins every handler thread,
the ones still dripping or streaming `/huge` included, so no thread outlives it.

Endpoints (the path without its query counts as one in `hits`):

    /photo.jpg  /image.jpg  /image.png  /image.webp   originals (photo.jpg: 3 MP)
    /slow?delay=S               headers at once, the body (b"slow") after S s
    /stall?delay=S              nothing at all for S s, then a 200 "stall"
    /drip?bytes=N&interval=I    Content-Length N, one byte every I s (0.2)
    /redirect?to=URL&status=C   a redirect (302) to URL, absolute or relative
    /chain/N                    302 to /chain/N-1 ... /chain/0: 200 b"chain end"
    /status/C                   status C with a small JSON body
    /huge                       Content-Length 10737418240, 64 KiB every 50 ms, forever
    /big?bytes=N                a body of N bytes (b"x")
    /echo                       any method: method, path, query, headers, body as JSON
    /cached?cc=C[&etag=E][&lm=D][&vary=H][&cookie=1][&image=P][&delay=S][&moved=U]
                                what the origin cache sees: Cache-Control C, ETag E,
                                Last-Modified D, Vary H, a Set-Cookie; a matching
                                If-None-Match gets a 304; the body is JSON (the
                                hit count and the request's H) or the original P,
                                after S seconds; with U, a conditional request is
                                redirected (302) to U
"""

from __future__ import annotations

import base64
import functools
import json
import socket
import ssl
import threading
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import ClassVar
from urllib.parse import parse_qs, urlsplit

from images import encode, photo

__all__ = ["HUGE_LENGTH", "OriginServer", "originals"]

# What /huge claims: 10 GiB, which it never sends.
HUGE_LENGTH = 10 * 1024**3
_HUGE_CHUNK = b"h" * 65536
_HUGE_INTERVAL = 0.05


@functools.cache
def originals() -> dict[str, tuple[bytes, str]]:
    """The images the origin serves: path -> (bytes, content type). Made once per
    process (the 3 MP JPEG takes about a second)."""
    from PIL import Image

    small = photo(600, 400)
    # A phone-photo-like 3 MP JPEG (grain everywhere, q92), as bench/images.py posts.
    grain = Image.effect_noise((2121, 1414), 60).convert("RGB")
    big = Image.blend(photo(2121, 1414), grain, 0.2)
    return {
        "/photo.jpg": (encode(big, "JPEG", quality=92), "image/jpeg"),
        "/image.jpg": (encode(small, "JPEG", quality=90), "image/jpeg"),
        "/image.png": (encode(photo(300, 200, mode="RGBA"), "PNG"), "image/png"),
        "/image.webp": (encode(small, "WEBP", quality=80), "image/webp"),
    }


class _Server(ThreadingHTTPServer):
    # Joined by server_close(): a handler that outlived the server would be a leak.
    daemon_threads = False
    block_on_close = True
    # Many kept-alive connections at once in the client benchmark.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int]) -> None:
        super().__init__(address, _Handler)
        self.stopping = threading.Event()
        self.counts: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.connections: set[socket.socket] = set()

    def process_request_thread(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        with self.lock:
            self.connections.add(request)
        try:
            super().process_request_thread(request, client_address)  # type: ignore[arg-type]
        finally:
            with self.lock:
                self.connections.discard(request)

    def wake_connections(self) -> None:
        """Unblock every handler waiting on its client (an idle kept-alive
        connection waits for the next request line forever)."""
        with self.lock:
            for connection in self.connections:
                try:
                    connection.shutdown(socket.SHUT_RDWR)
                except OSError:  # already closed by the client
                    pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the clients reuse connections
    # Headers and body go out in two writes: with Nagle's algorithm the body waited
    # for the client's delayed ACK, 44 ms per small response here.
    disable_nagle_algorithm = True
    server: _Server
    _ROUTES: ClassVar[dict[str, Callable[[_Handler, dict[str, str]], None]]]

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass  # quiet: pytest shows stderr of failing tests, this would drown it

    def _dispatch(self) -> None:
        self._request_body: bytes | None = None
        parts = urlsplit(self.path)
        path = parts.path
        query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
        with self.server.lock:
            self.server.counts[path] += 1
        try:
            if path in originals():
                data, content_type = originals()[path]
                self._send(200, data, content_type)
            elif path.startswith("/chain/"):
                self._chain(path.removeprefix("/chain/"))
            elif path.startswith("/status/"):
                self._status(path.removeprefix("/status/"))
            elif path in self._ROUTES:
                self._ROUTES[path](self, query)
            else:
                self._send(404, b'{"error": "no such path"}', "application/json")
        except (ConnectionError, TimeoutError):
            # The client hung up (a cap or a timeout on its side): expected here.
            self.close_connection = True

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _dispatch

    def _body(self) -> bytes:
        """The request's body, read once (every answer reads it, or it would be
        taken for the next request on the connection)."""
        if self._request_body is None:
            length = int(self.headers.get("content-length") or 0)
            self._request_body = self.rfile.read(length) if length else b""
        return self._request_body

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str = "application/octet-stream",
        headers: dict[str, str] | None = None,
    ) -> None:
        self._body()
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _wait(self, seconds: float) -> bool:
        """Pause (woken early when the server stops); True when stopping."""
        return self.server.stopping.wait(seconds)

    def _slow(self, query: dict[str, str]) -> None:
        self._body()
        delay = float(query.get("delay", "1"))
        self.send_response(200)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", "4")
        self.end_headers()
        self.wfile.flush()
        if not self._wait(delay):
            self.wfile.write(b"slow")
        else:
            self.close_connection = True

    def _stall(self, query: dict[str, str]) -> None:
        if self._wait(float(query.get("delay", "1"))):
            self.close_connection = True
            return
        self._send(200, b"stall", "text/plain")

    def _drip(self, query: dict[str, str]) -> None:
        self._body()
        count = int(query.get("bytes", "100"))
        interval = float(query.get("interval", "0.2"))
        self.send_response(200)
        self.send_header("content-type", "application/octet-stream")
        self.send_header("content-length", str(count))
        self.end_headers()
        for _ in range(count):
            self.wfile.write(b"d")
            self.wfile.flush()
            if self._wait(interval):
                self.close_connection = True
                return

    def _redirect(self, query: dict[str, str]) -> None:
        status = int(query.get("status", "302"))
        self._send(status, b"", "text/plain", {"location": query.get("to", "/")})

    def _chain(self, raw: str) -> None:
        hops = int(raw) if raw.isdigit() else 0
        if hops == 0:
            self._send(200, b"chain end", "text/plain")
        else:
            self._send(302, b"", "text/plain", {"location": f"/chain/{hops - 1}"})

    def _status(self, raw: str) -> None:
        status = int(raw) if raw.isdigit() and 200 <= int(raw) <= 599 else 500
        body = json.dumps({"status": status}).encode()
        self._send(status, body if status not in (204, 304) else b"", "application/json")

    def _huge(self, query: dict[str, str]) -> None:
        self._body()
        self.send_response(200)
        self.send_header("content-type", "application/octet-stream")
        self.send_header("content-length", str(HUGE_LENGTH))
        self.end_headers()
        self.close_connection = True  # never completes: the connection can't be reused
        while not self._wait(_HUGE_INTERVAL):
            self.wfile.write(_HUGE_CHUNK)
            self.wfile.flush()

    def _big(self, query: dict[str, str]) -> None:
        self._send(200, b"x" * int(query.get("bytes", "1048576")))

    def _echo(self, query: dict[str, str]) -> None:
        body = self._body()
        answer = {
            "method": self.command,
            "path": urlsplit(self.path).path,
            "query": query,
            # Lower-cased names, the last value of each, as the SDK's headers read.
            "headers": {name.lower(): value for name, value in self.headers.items()},
            "body": body.decode("utf-8", "replace"),
            "body_base64": base64.b64encode(body).decode(),
        }
        self._send(200, json.dumps(answer).encode(), "application/json")

    def _cached(self, query: dict[str, str]) -> None:
        if self._wait(float(query.get("delay", "0"))):
            self.close_connection = True
            return
        headers = {"cache-control": query.get("cc", "")}
        for name, key in (("etag", "etag"), ("last-modified", "lm"), ("vary", "vary")):
            if key in query:
                headers[name] = query[key]
        if query.get("cookie"):
            headers["set-cookie"] = "session=1"
        if "moved" in query and self.headers.get("if-none-match"):
            self._send(302, b"", "text/plain", {"location": query["moved"]})
            return
        if "etag" in query and self.headers.get("if-none-match") == query["etag"]:
            self._send(304, b"", "application/json", headers)
            return
        if query.get("image") in originals():
            data, content_type = originals()[query["image"]]
            self._send(200, data, content_type, headers)
            return
        with self.server.lock:
            count = self.server.counts["/cached"]
        varied = self.headers.get(query.get("vary", ""), "")
        self._send(
            200, json.dumps({"n": count, "vary": varied}).encode(), "application/json", headers
        )


_Handler._ROUTES = {
    "/slow": _Handler._slow,
    "/stall": _Handler._stall,
    "/drip": _Handler._drip,
    "/redirect": _Handler._redirect,
    "/huge": _Handler._huge,
    "/big": _Handler._big,
    "/echo": _Handler._echo,
    "/cached": _Handler._cached,
}


class OriginServer:
    """The origin on `host` (a loopback address), a port the kernel picks; a
    context manager that starts it and stops it, joining all its threads."""

    def __init__(self, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None) -> None:
        self.host = host
        self.tls = tls  # a server context: HTTPS instead of HTTP
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, "the origin is not started"
        return int(self._server.server_address[1])

    @property
    def base(self) -> str:
        """The origin as "http://HOST:PORT", as a manifest's allowed_outbound_hosts names it."""
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://{self.host}:{self.port}"

    def url(self, path: str) -> str:
        return self.base + path

    def hits(self, path: str) -> int:
        """How many requests reached `path` (without its query) so far."""
        assert self._server is not None, "the origin is not started"
        with self._server.lock:
            return self._server.counts[path]

    def reset(self) -> None:
        """Forget the counts (a module-scoped origin, counted per test)."""
        assert self._server is not None, "the origin is not started"
        with self._server.lock:
            self._server.counts.clear()

    def start(self) -> OriginServer:
        originals()  # made before the first request, not during its timeout
        self._server = _Server((self.host, 0))
        if self.tls is not None:
            self._server.socket = self.tls.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"origin {self.host}:{self.port}",
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.stopping.set()  # ends /huge, /drip, /slow, /stall
        server.shutdown()  # the accept loop
        thread.join()
        server.wake_connections()  # idle kept-alive connections
        server.server_close()  # joins every handler thread
        self._thread = None

    def __enter__(self) -> OriginServer:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def main() -> None:
    """`python tests/origin_server.py [HOST]`: serve until stdin closes or SIGTERM;
    prints "origin http://HOST:PORT" once it listens (benchmarks run it in a
    process of its own, so its CPU is not counted against the client's)."""
    import signal
    import sys

    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    threading.Thread(target=lambda: (sys.stdin.read(), stopped.set()), daemon=True).start()
    with OriginServer(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1") as origin:
        print(f"origin {origin.base}", flush=True)
        stopped.wait()


if __name__ == "__main__":
    main()
