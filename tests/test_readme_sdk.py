"""The README's SDK signatures are the code's: its tables write calls the way
Python would accept them (keyword-only parameters after `*`)."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any

import pytest

from edgefn import HTTPError, fetch
from edgefn.image import Image, negotiate
from gateway_process import ROOT

README = (ROOT / "README.md").read_text()


def documented(name: str) -> str:
    """The first table cell of the README's SDK tables that documents `name`."""
    cells = re.findall(r"^\| `(" + re.escape(name) + r"\([^`]*\))`", README, re.MULTILINE)
    assert cells, f"the README documents no {name}(...)"
    return str(cells[0])


def spelled(name: str, function: Callable[..., Any]) -> str:
    """`function`'s signature as the README spells it: no annotations, no self."""
    parts: list[str] = []
    star = False
    for parameter in inspect.signature(function).parameters.values():
        if parameter.name == "self":
            continue
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY and not star:
            parts.append("*")
            star = True
        default = parameter.default
        if default is inspect.Parameter.empty:
            parts.append(parameter.name)
        else:
            value = f'"{default}"' if isinstance(default, str) else repr(default)
            parts.append(f"{parameter.name}={value}")
    return f"{name}({', '.join(parts)})"


@pytest.mark.parametrize(
    ("name", "function"),
    [
        ("HTTPError", HTTPError.__init__),
        ("negotiate", negotiate),
        (".send", Image.send),
        ("fetch", fetch),
    ],
)
def test_the_documented_signature_is_the_code_s(name: str, function: Callable[..., Any]) -> None:
    assert documented(name) == spelled(name, function)


def test_http_error_takes_code_and_headers_by_keyword_only() -> None:
    error = HTTPError(429, "slow down", code="rate_limited", headers={"retry-after": "5"})
    assert (error.code, error.headers) == ("rate_limited", {"retry-after": "5"})
    with pytest.raises(TypeError):
        HTTPError(429, "slow down", "rate_limited")  # type: ignore[misc]


def test_the_fresh_instance_cost_is_one_figure_from_the_benchmarks() -> None:
    results = (ROOT / "bench" / "RESULTS.md").read_text()
    per_core = re.search(r"fresh instance per request.*?\*\*([\d,]+) req/s per core\*\*", results)
    assert per_core is not None, "bench/RESULTS.md no longer gives fresh requests per core"
    measured = 1000 / int(per_core.group(1).replace(",", ""))  # ms of CPU per request
    stated = re.findall(r"fresh instance costs about \**([\d.]+) ms of CPU", README)
    assert stated and {float(figure) for figure in stated} == {round(measured, 1)}


def test_the_outbound_examples_run_as_written() -> None:
    # The handler of "Outbound HTTP" and the tests of "Testing a function natively".
    handler = re.search(r"```python\n(from edgefn import App, OutboundError.*?)```", README, re.S)
    tests = re.search(r"```python\n(from edgefn import FetchResponse.*?)```", README, re.S)
    assert handler and tests, "the README lost its outbound examples"
    namespace: dict[str, Any] = {}
    exec(handler[1] + tests[1], namespace)
    namespace["test_price"]()
    namespace["test_price_when_the_api_is_slow"]()
