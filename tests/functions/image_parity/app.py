"""image_parity: one route that runs the image work its `spec` query parameter describes.

spec (JSON): {"source": [kind, value], "calls": [[method, args, kwargs], ...],
"ops": [raw op, ...], "probe": true | "send": {kwargs} | "raw": pipeline string}.
Source kinds: body, asset (value: name), bytes (the request body, through
Image.from_bytes), raw-bytes (the request body, past the SDK's own 64 KiB check).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from edgefn import App, HTTPError, JSONResponse, Request, Response
from edgefn.image import Image

app = App()


@dataclasses.dataclass(frozen=True)
class _Raw(Image):
    """An image whose pipeline is given as is, past the SDK's checks."""

    raw: str = ""

    def pipeline(self, *args: Any, **kwargs: Any) -> str:
        return self.raw


@app.post("/")
def run(request: Request) -> Any:
    spec = json.loads(request.query["spec"])
    try:
        return _run(request, spec)
    except HTTPError:
        raise  # the image service's refusals answer with their own status
    except Exception as exc:
        # Natively this would propagate into the test, in wasm it would end the
        # request: an answer instead, so that both can be compared byte for byte.
        return JSONResponse({"raised": type(exc).__name__, "message": str(exc)}, 500)


def _run(request: Request, spec: dict[str, Any]) -> Response | dict[str, Any]:
    kind, value = spec.get("source", ["body", None])
    if kind == "asset":
        image = Image.from_asset(value)
    elif kind == "bytes":
        image = Image.from_bytes(request.body)
    elif kind == "raw-bytes":
        image = Image(("bytes", request.body))
    else:
        image = Image.from_body()
    for method, args, kwargs in spec.get("calls", []):
        image = getattr(image, method)(*args, **kwargs)
    if "ops" in spec:
        image = Image(image.source, tuple(spec["ops"]), image.auto_orient)
    if spec.get("probe"):
        return dataclasses.asdict(image.probe())
    if "raw" in spec:
        image = _Raw(image.source, image.ops, image.auto_orient, raw=spec["raw"])
    return image.send(**spec.get("send", {}))
