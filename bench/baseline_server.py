"""Serve a native baseline app with 2 uvicorn workers on an inherited listening
socket: `python baseline_server.py MODULE:APP FD` (bench/baseline.py starts it).

Not `uvicorn --fd`: uvicorn wraps that descriptor as an AF_UNIX socket, so the
event loop never sets TCP_NODELAY on the connections it accepts, and Nagle's
algorithm against delayed ACKs held each kept-alive response ~40 ms: the FastAPI
hello measured ~1,000 req/s with p50 ~50 ms that way, against ~4,500 req/s on a
socket uvicorn bound itself (wrk, 50 connections, same machine, same minute).
`socket.socket(fileno=...)` reads the descriptor's real family.
"""

import socket
import sys

import uvicorn
from uvicorn.supervisors import Multiprocess

if __name__ == "__main__":  # the workers are spawned: they import this module again
    app, fd = sys.argv[1], int(sys.argv[2])
    config = uvicorn.Config(app, workers=2, log_level="warning", access_log=False)
    Multiprocess(config, sockets=[socket.socket(fileno=fd)]).run()
