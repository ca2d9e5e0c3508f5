"""edgefn.toml parsing: defaults, every field's checks, limits."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefn_platform import Manifest, ManifestError, load_manifest, parse_manifest
from edgefn_platform._units import parse_count, parse_duration, parse_size
from edgefn_runtime import Limits


def problems(text: str) -> list[str]:
    with pytest.raises(ManifestError) as caught:
        parse_manifest(text)
    return caught.value.problems


def test_defaults() -> None:
    manifest = parse_manifest('name = "resize"')
    assert manifest.entry == "app:app"
    assert manifest.route == "/resize"
    assert manifest.requirements == ()
    assert manifest.env == {}
    assert manifest.resolve_limits() == Limits()


def test_full_manifest() -> None:
    manifest = parse_manifest(
        """
        name = "img-2"
        entry = "pkg.main:application"
        route = "/images/v2"
        requirements = ["attrs>=23", "six"]
        assets = "static"
        [limits]
        memory = "128MiB"
        fuel = "5e9"
        timeout = "500ms"
        max_body = "1MiB"
        [env]
        MODE = "fast"
        """
    )
    assert (manifest.entry_module, manifest.entry_attribute) == ("pkg.main", "application")
    limits = manifest.resolve_limits()
    assert limits.memory == 128 * 1024**2
    assert limits.fuel == 5_000_000_000
    assert limits.timeout == 0.5
    assert limits.max_body == 1024**2
    assert limits.max_response == Limits().max_response
    assert manifest.env == {"MODE": "fast"}


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("name = 'Bad_Name'", "name:"),
        ("name = '-x'", "name:"),
        ("name = '" + "a" * 64 + "'", "name:"),
        ("", "name:"),
        ("name = 'a'\nentry = 'app'", "entry:"),
        ("name = 'a'\nentry = 'app:1x'", "entry:"),
        ("name = 'a'\nroute = 'nope'", "route:"),
        ("name = 'a'\nroute = '/a/../b'", "route:"),
        ("name = 'a'\nroute = '//x'", "route:"),
        ("name = 'a'\nroute = '/x/'", "route:"),
        ("name = 'a'\nrequirements = 'six'", "requirements:"),
        ("name = 'a'\nrequirements = ['six; rm -rf /', '--index-url=http://x']", "requirements:"),
        ("name = 'a'\nassets = '../secrets'", "assets:"),
        ("name = 'a'\nassets = '/etc'", "assets:"),
        # The folder itself, or a dot-folder, would deploy .edgefn/ (dev secrets) or .git/.
        ("name = 'a'\nassets = '.'", "assets: must be a directory inside the function folder"),
        ("name = 'a'\nassets = ''", "assets:"),
        ("name = 'a'\nassets = '.edgefn'", "assets:"),
        ("name = 'a'\nassets = 'static/.git'", "assets:"),
        ("name = 'a'\n[limits]\nmemory = 'lots'", "limits.memory:"),
        ("name = 'a'\n[limits]\nmemory = '8MiB'", "limits.memory: must be at least 16MiB"),
        ("name = 'a'\n[limits]\nfuel = -1", "limits.fuel:"),
        ("name = 'a'\n[limits]\ntimeout = '2 fortnights'", "limits.timeout:"),
        ("name = 'a'\n[limits]\ncpu = 1", "limits.cpu: unknown limit"),
        ("name = 'a'\n[env]\nPORT = 80", "env.PORT:"),
        ("name = 'a'\nnmae = 'typo'", "nmae: unknown field"),
        ("name = 'a'\nreuse = 'yes'", "reuse:"),
        ("name = 'a'\nreuse = -1", "reuse:"),
        ("name = 'a'\ncache = 'no'", "cache: must be true or false"),
    ],
)
def test_each_mistake_names_its_field(text: str, field: str) -> None:
    assert any(p.startswith(field) for p in problems(text)), problems(text)


@pytest.mark.parametrize(("value", "expected"), [("true", 1000), ("false", 0), ("25", 25)])
def test_reuse(value: str, expected: int) -> None:
    manifest = parse_manifest(f"name = 'a'\nreuse = {value}")
    assert manifest.reuse == expected
    assert Manifest.from_dict(manifest.to_dict()).reuse == expected


def test_cache_opt_out_survives_the_registry() -> None:
    assert parse_manifest("name = 'a'").cache is True
    manifest = parse_manifest("name = 'a'\ncache = false")
    assert manifest.cache is False
    assert Manifest.from_dict(manifest.to_dict()).cache is False


def test_all_mistakes_are_reported_at_once() -> None:
    found = problems("name = 'A'\nentry = 'x'\n[limits]\nfuel = 'many'")
    assert [p.split(":")[0] for p in found] == ["name", "entry", "limits.fuel"]


def test_invalid_toml_is_reported() -> None:
    assert problems("name = ")[0].startswith("not valid TOML")


def test_load_manifest_checks_the_assets_directory(tmp_path: Path) -> None:
    (tmp_path / "edgefn.toml").write_text('name = "a"\nassets = "static"')
    with pytest.raises(ManifestError, match="assets: directory 'static' does not exist"):
        load_manifest(tmp_path)
    (tmp_path / "static").mkdir()
    assert load_manifest(tmp_path).assets == "static"


def test_missing_manifest_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="edgefn new"):
        load_manifest(tmp_path)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("64MiB", 64 * 1024**2), ("512k", 512 * 1024), ("10MB", 10**7), (" 1 GiB ", 1024**3), (7, 7)],
)
def test_parse_size(value: str | int, expected: int) -> None:
    assert parse_size(value) == expected


@pytest.mark.parametrize("value", ["", "MiB", "1 parsec", "-5", True, -1])
def test_parse_size_rejects(value: object) -> None:
    with pytest.raises(ValueError):
        parse_size(value)  # type: ignore[arg-type]


def test_parse_duration_and_count() -> None:
    assert parse_duration("500ms") == 0.5
    assert parse_duration("1m") == 60
    assert parse_duration(3) == 3.0
    assert parse_count("2e9") == 2_000_000_000
    assert parse_count("2_000") == 2000
    for bad in ("0s", "-1s", "soon"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    with pytest.raises(ValueError):
        parse_count("1.5")
