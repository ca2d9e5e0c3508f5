"""edgefn: write HTTP functions in Python, run them as WebAssembly at the edge.

>>> from edgefn import App, Request
>>> app = App()
>>> @app.get("/hello/{name}")
... def hello(request: Request):
...     return {"hello": request.path_params["name"]}
"""

from . import kv, secrets
from ._datastructures import Headers, QueryParams
from ._exceptions import HTTPError
from ._requests import Request
from ._responses import JSONResponse, Response, StreamingResponse, json, redirect, text
from ._routing import App
from .outbound import (
    FetchResponse,
    OutboundError,
    OutboundFailed,
    OutboundNotAllowed,
    OutboundTimeout,
    OutboundTooLarge,
    fetch,
)

__all__ = [
    "App",
    "FetchResponse",
    "HTTPError",
    "Headers",
    "JSONResponse",
    "OutboundError",
    "OutboundFailed",
    "OutboundNotAllowed",
    "OutboundTimeout",
    "OutboundTooLarge",
    "QueryParams",
    "Request",
    "Response",
    "StreamingResponse",
    "fetch",
    "json",
    "kv",
    "redirect",
    "secrets",
    "text",
]
