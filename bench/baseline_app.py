"""The native baseline for bench/gateway.py: the same handler in a plain FastAPI app."""

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse

app = FastAPI()


@app.get("/bench/")
def hello() -> PlainTextResponse:
    return PlainTextResponse("Hello, world!\n")
