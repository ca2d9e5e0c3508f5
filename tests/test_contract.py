"""The contract package: one vocabulary for guest and host, and who may import whom."""

from __future__ import annotations

import ast
import re
import sys
from importlib import resources
from pathlib import Path

import pytest

import edgefn.testing
from edgefn import App, Request
from edgefn.image import Image
from edgefn_contract import CONTRACT_VERSION
from edgefn_contract.image import FAILURE_KINDS, ImageInfo

ROOT = Path(__file__).resolve().parent.parent
WIT = resources.files("edgefn_contract.wit").joinpath("edgefn.wit").read_text()


def _imports(folder: Path) -> dict[str, set[str]]:
    """Top-level package of every absolute import, per file under `folder`."""
    found = {}
    for path in sorted(folder.rglob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names
    return found


def test_the_sdk_imports_neither_the_runtime_nor_the_platform() -> None:
    leaks = {
        path: names & {"edgefn_runtime", "edgefn_platform"}
        for path, names in _imports(ROOT / "sdk" / "edgefn").items()
    }
    assert {path: names for path, names in leaks.items() if names} == {}


def test_the_runtime_does_not_import_the_sdk() -> None:
    leaks = {path: names for path, names in _imports(ROOT / "runtime").items() if "edgefn" in names}
    assert leaks == {}


def test_the_contract_is_pure_standard_library() -> None:
    # It is compiled into every component, where nothing else is installed.
    allowed = set(sys.stdlib_module_names) | {"__future__", "edgefn_contract"}
    foreign = {path: names - allowed for path, names in _imports(ROOT / "contract").items()}
    assert {path: names for path, names in foreign.items() if names} == {}


def test_the_wit_speaks_the_contract_version() -> None:
    package = re.search(r"^package edgefn:http@([0-9.]+);", WIT, re.M)
    assert package is not None and package[1] == CONTRACT_VERSION


def test_the_wit_lists_every_failure_kind() -> None:
    record = WIT[WIT.index("record failure {") :]
    comment = record[: record.index("(`edgefn_contract")].replace("///", "")
    listed = [kind.split("(")[0].strip() for kind in comment.split("{")[1].split(",")]
    assert listed == list(FAILURE_KINDS)


def test_the_wit_info_record_is_image_info() -> None:
    record = WIT[WIT.index("record info {") :]
    record = record[: record.index("}")]
    fields = re.findall(r"^\s*([a-z-]+):", record, re.M)
    assert [name.replace("-", "_") for name in fields] == list(ImageInfo.__dataclass_fields__)


def test_without_the_runtime_image_calls_say_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = App()

    @app.get("/")
    def probe(request: Request) -> dict[str, int]:
        return {"width": Image.from_body().probe().width}

    @app.get("/plain")
    def plain(request: Request) -> str:
        return "no image needed"

    monkeypatch.setattr(edgefn.testing, "entry_points", lambda **_: ())
    edgefn.testing._image_service_factory.cache_clear()
    try:
        client = edgefn.testing.TestClient(app)
        assert client.get("/plain").text == "no image needed"
        with pytest.raises(RuntimeError, match="edgefn's runtime, which is not installed"):
            client.get("/")
    finally:
        edgefn.testing._image_service_factory.cache_clear()
