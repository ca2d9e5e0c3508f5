"""secret-user: what a function does with a secret, for tests/test_secrets.py.

GET /read/NAME   {"value": secrets.get(NAME)} (a test reads its own value back)
GET /send        fetches ORIGIN/echo with `Authorization: Bearer <ORIGIN_TOKEN>`
GET /crash       reads ORIGIN_TOKEN, then fails (an uncaught exception)
"""

from __future__ import annotations

import json
import os
from typing import Any

from edgefn import App, Request, fetch, secrets

app = App()


@app.get("/read/{name}")
def read(request: Request) -> dict[str, Any]:
    return {"value": secrets.get(request.path_params["name"])}


@app.get("/send")
def send(request: Request) -> dict[str, Any]:
    token = secrets.get("ORIGIN_TOKEN")
    response = fetch(os.environ["ORIGIN"] + "/echo", headers=[("authorization", f"Bearer {token}")])
    echoed = json.loads(response.body)["headers"].get("authorization")
    # Whether the origin got it, never the value itself.
    return {"status": response.status, "delivered": echoed == f"Bearer {token}"}


@app.get("/crash")
def crash(request: Request) -> dict[str, Any]:
    token = secrets.get("ORIGIN_TOKEN")
    assert token is not None
    raise RuntimeError(f"the origin refused a token of {len(token)} characters")
