"""A guest of the test-only echo capability, written against the bare bindings."""

import os

from wit_world import exports
from wit_world.imports import echo
from wit_world.imports.types import (
    RequestHead,
    ResponseBody_Rendered,
    ResponseBody_Written,
    ResponseHead,
)

TEXT = "content-type: text/plain\n"


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: RequestHead) -> ResponseHead:
        if request.path == "/render":
            echo.render(request.query)
            return ResponseHead(200, TEXT, ResponseBody_Rendered())
        if request.path == "/stop":
            echo.stop()
            while True:  # the guest tries to go on; out of fuel, it cannot
                pass
        answers = [echo.echo(request.query) for _ in range(2)]
        data = "\n".join(answers).encode()
        os.write(1, data)
        return ResponseHead(200, TEXT, ResponseBody_Written(len(data)))
