"""The native baseline for bench/gateway.py: the same handler in a plain FastAPI app."""

import hashlib

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response, StreamingResponse

app = FastAPI()


@app.get("/bench/")
def hello() -> PlainTextResponse:
    return PlainTextResponse("Hello, world!\n")


def csv_chunks(rows: int, lines: int = 4096):  # type: ignore[no-untyped-def]
    """As the bench function's (bench/functions/bench/app.py)."""
    for start in range(0, rows, lines):
        end = min(rows, start + lines)
        yield "".join(f"{n},{n * n},{n % 7}\n" for n in range(start, end)).encode()


@app.get("/bench/export")
def export(rows: int = 120_000, lines: int = 4096, stream: str = "") -> Response:
    if stream:
        return StreamingResponse(csv_chunks(rows, lines), media_type="text/csv")
    return Response(b"".join(csv_chunks(rows)), media_type="text/csv")


@app.post("/bench/digest")
async def digest(request: Request) -> dict[str, object]:
    """As the bench function's: hashed as the body arrives."""
    hashed, size = hashlib.sha256(), 0
    async for chunk in request.stream():
        hashed.update(chunk)
        size += len(chunk)
    return {"size": size, "sha256": hashed.hexdigest()}
