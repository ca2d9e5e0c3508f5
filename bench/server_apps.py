"""What `bench/servers.py` serves, one worker process per call:
`python bench/server_apps.py KIND PORT` binds PORT with SO_REUSEPORT (as the
gateway's workers do, so N processes share it through the kernel) and serves.

KIND:
- `uvicorn`: the hello ASGI app under uvicorn + httptools + uvloop (no guards);
- `uvicorn-guarded`: the same with the gateway's protocol class (`_http.py`:
  header/body deadlines, head cap), today's public listener without the app;
- `uvicorn-guarded-nogc`: the same with Python's cyclic garbage collector off,
  to show what the guarded protocol's per-request reference cycle costs;
- `bare`: a bare `asyncio.Protocol` + httptools server on uvloop answering the
  same bytes with no ASGI at all: the floor of a Python protocol-level path;
- `public-uvicorn`: the gateway's `PublicApp` under uvicorn with the gateway's
  protocol, built as `server.run_worker` builds it (no admin listener), on the
  data directory in `EDGEFN_BENCH_DATA_DIR`;
- `public-uvicorn-nogc`: the same with the cyclic garbage collector off (after
  the app's own `gc.freeze()`): what the reference cycles a request leaves cost.

Granian runs the same apps through its own CLI (it forks its own workers):
`hello` (ASGI), `rsgi_hello` (RSGI) and `public_app` (a factory, `--factory`).
"""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import sys
from pathlib import Path
from typing import Any

import httptools
import uvicorn
import uvloop

from edgefn_platform.gateway._cache import ResponseCache
from edgefn_platform.gateway._http import guarded_protocol
from edgefn_platform.gateway._keylocks import KeyLocks
from edgefn_platform.gateway.config import GatewayConfig
from edgefn_platform.gateway.public import Lifecycle, PublicApp
from edgefn_platform.gateway.server import Worker, bind

BODY = b"Hello, world!\n"
_START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"text/plain; charset=utf-8")],
}
_BODY = {"type": "http.response.body", "body": BODY, "more_body": False}
_RSGI_HEADERS = [("content-type", "text/plain; charset=utf-8")]
_RAW = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: %d\r\n\r\n%s" % (len(BODY), BODY)
)
# As `edgefn serve` reads them; the gateway's defaults (config.py) otherwise.
HEADER_TIMEOUT = float(os.environ.get("EDGEFN_HEADER_TIMEOUT", "10"))
BODY_TIMEOUT = float(os.environ.get("EDGEFN_BODY_TIMEOUT", "30"))


async def hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The trivial ASGI app (the lifespan acknowledged, so servers that run it start)."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    await send(_START)
    await send(_BODY)


async def rsgi_hello(scope: Any, protocol: Any) -> None:
    """The same answer through granian's RSGI: one call, no message dicts."""
    protocol.response_bytes(200, _RSGI_HEADERS, BODY)


class _Bare(asyncio.Protocol):
    """HTTP/1.1 keep-alive, every request answered with `_RAW` once it is complete."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport
        self.parser = httptools.HttpRequestParser(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
            self.transport.close()

    def on_message_complete(self) -> None:
        self.transport.write(_RAW)
        if not self.parser.should_keep_alive():
            self.transport.close()


async def _serve_bare(sock: socket.socket) -> None:
    sock.listen(2048)
    server = await asyncio.get_running_loop().create_server(_Bare, sock=sock)
    async with server:
        await server.serve_forever()


def public_app() -> PublicApp:
    """The gateway's public app on `EDGEFN_BENCH_DATA_DIR`, built as
    `server.run_worker` builds it (edge cache included), for granian's `--factory`
    and for `public-uvicorn`. Only the admin listener is left out."""
    config = GatewayConfig(data_dir=Path(os.environ["EDGEFN_BENCH_DATA_DIR"]), token="bench")
    worker = Worker.open(config)
    worker.table.start()
    worker.logs.start()
    cache = None
    if worker.cache is not None:
        wait = worker.policy.maximums["timeout"] + worker.policy.queue_wait
        locks = None
        if worker.cache.config.dir is not None and worker.cache.has_disk:
            locks = KeyLocks(worker.cache.config.dir / "locks")
        cache = ResponseCache(worker.cache, worker.metrics, wait, locks)
    lifecycle = Lifecycle(worker.table)
    return PublicApp(worker.table, worker.logs, worker.policy, lifecycle, worker.metrics, cache)


def _uvicorn(app: Any, guarded: bool) -> uvicorn.Server:
    http: Any = guarded_protocol(HEADER_TIMEOUT, BODY_TIMEOUT) if guarded else "httptools"
    return uvicorn.Server(
        uvicorn.Config(app, http=http, loop="none", log_level="warning", access_log=False)
    )


def main() -> None:
    kind, port = sys.argv[1], int(sys.argv[2])
    sock = bind("127.0.0.1", port, listen=False)
    if kind == "bare":
        uvloop.run(_serve_bare(sock))
        return
    if kind.endswith("-nogc"):
        gc.disable()  # not for production: only to price the collections
    hellos = ("uvicorn", "uvicorn-guarded", "uvicorn-guarded-nogc")
    app: Any = hello if kind in hellos else public_app()
    server = _uvicorn(app, guarded=kind != "uvicorn")
    # Served on uvloop, as the gateway's workers are (`server.run_worker`).
    uvloop.run(server.serve(sockets=[sock]))


if __name__ == "__main__":
    main()
