"""The edge cache through a real gateway: what is stored, what is served without
running the function, and when the function runs again (RFC 9111 as a shared
cache; tests/functions/cached says in each body when it ran)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from origin_server import OriginServer

import attacks
from edgefn_platform import build
from edgefn_platform.client import AdminClient
from gateway_process import GatewayProcess
from waiting import wait_until

pytestmark = pytest.mark.wasm

AREA = "Edge cache (tests/test_cache_gateway.py)"
FUNCTION = Path(__file__).resolve().parent / "functions" / "cached"
OUTBOUND = Path(__file__).resolve().parent / "functions" / "outbound"
MANIFEST = (FUNCTION / "edgefn.toml").read_text()
CHROME = "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8"
FIREFOX = "image/avif,image/webp,image/png,image/svg+xml,image/*;q=0.8,*/*;q=0.5"
SAFARI = (
    "image/webp,image/avif,image/jxl,image/heic,image/heic-sequence,video/*;q=0.8,"
    "image/png,image/svg+xml,image/*;q=0.8,*/*;q=0.5"
)
CURL = "*/*"
# Sent with a first request: its answer comes with `Age: 60`, so with `max-age=60`
# it is stored expired already (no test waits for a lifetime to pass).
AGED = {"x-test-age": "60"}


def deploy(gateway: GatewayProcess, manifest: str = MANIFEST) -> None:
    result = build(FUNCTION)
    AdminClient(gateway.admin_url, gateway.token).deploy(manifest, result.path, None)
    name = manifest.split('name = "', 1)[1].split('"', 1)[0]
    gateway.wait_serving(name)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    root = tmp_path_factory.mktemp("cache")
    env = {"EDGEFN_CACHE_DISK": "0", "EDGEFN_OUTBOUND_ALLOWED_NETWORKS": "127.0.0.1/32"}
    with GatewayProcess(root / "data", extra_env=env) as gateway:
        deploy(gateway)
        yield gateway


_unique = iter(range(10**9))


def url(path: str = "/x", **query: str) -> str:
    """A fresh key each call: tests never see each other's entries."""
    query.setdefault("k", f"{time.time_ns()}-{next(_unique)}")
    return "/cached" + path + "?" + "&".join(f"{k}={v}" for k, v in query.items())


def get(gateway: GatewayProcess, target: str, **headers: str) -> httpx.Response:
    return httpx.get(gateway.public_url + target, headers=headers, timeout=30)


def status(response: httpx.Response) -> str:
    return response.headers.get("x-edgefn-cache", "")


def refreshed_after(gateway: GatewayProcess, target: str, first: httpx.Response) -> httpx.Response:
    """The first HIT with another run's body: a background refresh replaced `first`."""

    def refreshed() -> httpx.Response | None:
        response = get(gateway, target)
        return response if status(response) == "HIT" and response.text != first.text else None

    return wait_until(refreshed, timeout=10, interval=0.05, message="a background refresh")


def test_a_cacheable_response_is_served_again_without_running_the_function(
    gateway: GatewayProcess,
) -> None:
    target = url(cc="public, max-age=60", etag="v1")
    first = get(gateway, target)
    assert first.status_code == 200 and status(first) == "MISS"
    again = get(gateway, target)
    assert status(again) == "HIT", again.headers
    assert again.text == first.text  # the same run
    assert again.headers["etag"] == '"v1"'
    assert int(again.headers["age"]) >= 0
    assert again.headers["server-timing"].startswith("cache;desc=hit")
    assert again.headers["x-request-id"] != first.headers["x-request-id"]
    # Parameter order is not part of the key.
    path, query = target.split("?")
    reordered = path + "?" + "&".join(reversed(query.split("&")))
    assert get(gateway, reordered).text == first.text


def test_head_is_answered_from_the_get_entry(gateway: GatewayProcess) -> None:
    target = url()
    first = get(gateway, target)
    head = httpx.head(gateway.public_url + target)
    assert status(head) == "HIT" and head.content == b""
    assert int(head.headers["content-length"]) == len(first.content)


@pytest.mark.parametrize(
    ("query", "headers"),
    [
        ({"cc": "private, max-age=60"}, {}),
        ({"cc": "no-store"}, {}),
        ({"cc": "public"}, {}),  # no lifetime: never stored on a heuristic
        ({"cc": "max-age=60", "cookie": "1"}, {}),
        ({"cc": "max-age=60"}, {"authorization": "Bearer x"}),
        ({"cc": "max-age=60", "status": "503"}, {}),
        ({"cc": "max-age=60", "vary": "*"}, {}),
    ],
    ids=["private", "no-store", "no-lifetime", "set-cookie", "authorization", "5xx", "vary-star"],
)
def test_what_a_shared_cache_must_not_store_runs_every_time(
    gateway: GatewayProcess, query: dict[str, str], headers: dict[str, str]
) -> None:
    target = url(**query)
    first, second = get(gateway, target, **headers), get(gateway, target, **headers)
    assert (status(first), status(second)) == ("MISS", "MISS")
    assert first.text != second.text  # two runs


def test_authorization_with_public_is_stored(gateway: GatewayProcess) -> None:
    target = url(cc="public, max-age=60")
    first = get(gateway, target, authorization="Bearer x")
    assert status(get(gateway, target, authorization="Bearer y")) == "HIT"
    assert status(first) == "MISS"


def test_other_methods_and_opted_out_functions_bypass_the_cache(gateway: GatewayProcess) -> None:
    posted = httpx.post(gateway.public_url + url(), content=b"x")
    assert posted.status_code == 200 and status(posted) == "BYPASS"
    deploy(gateway, MANIFEST.replace('name = "cached"', 'name = "uncached"\ncache = false'))
    target = "/uncached/x?cc=public,max-age=60"
    first, second = get(gateway, target), get(gateway, target)
    assert (status(first), status(second)) == ("BYPASS", "BYPASS")
    assert first.text != second.text


def test_conditional_requests_are_answered_304_from_the_cache(gateway: GatewayProcess) -> None:
    modified = "Mon, 30 Nov 2026 09:00:00 GMT"
    target = url(etag="tag", lm=modified.replace(" ", "%20"))
    get(gateway, target)
    by_tag = get(gateway, target, **{"if-none-match": '"other", W/"tag"'})
    assert by_tag.status_code == 304 and status(by_tag) == "HIT"
    assert by_tag.headers["etag"] == '"tag"' and by_tag.content == b""
    by_date = get(gateway, target, **{"if-modified-since": "Mon, 30 Nov 2026 10:00:00 GMT"})
    assert by_date.status_code == 304 and status(by_date) == "HIT"
    older = get(gateway, target, **{"if-modified-since": "Mon, 30 Nov 2026 08:00:00 GMT"})
    assert older.status_code == 200 and status(older) == "HIT"
    # A conditional first request: the function is asked for the whole response,
    # which is stored, and the client gets its 304.
    fresh = url(etag="tag")
    first = get(gateway, fresh, **{"if-none-match": '"tag"'})
    assert first.status_code == 304 and status(first) == "MISS"
    assert get(gateway, fresh).status_code == 200


def test_no_cache_revalidates_with_the_function_every_time(gateway: GatewayProcess) -> None:
    target = url(cc="no-cache", etag="same")
    first = get(gateway, target)
    again = get(gateway, target)
    assert status(first) == "MISS"
    assert status(again) == "REVALIDATED" and again.text == first.text
    # The function answered 304 (it ran: its usage is in Server-Timing).
    assert "execute;dur=" in again.headers["server-timing"]


def test_a_304_that_makes_the_copy_unstorable_gets_the_whole_response(
    gateway: GatewayProcess,
) -> None:
    target = url(cc="no-cache", etag="same", cc304="private")
    first = get(gateway, target)
    again = get(gateway, target)  # revalidated: the function's 304 says private
    assert again.status_code == 200 and status(again) == "MISS"
    assert again.content and again.text != first.text  # a whole new run, not an empty 304


def test_an_expired_entry_runs_the_function_again(gateway: GatewayProcess) -> None:
    target = url(cc="max-age=60")
    first = get(gateway, target, **AGED)
    again = get(gateway, target)
    assert status(again) == "MISS" and again.text != first.text


def test_stale_while_revalidate_serves_stale_and_refreshes_in_the_background(
    gateway: GatewayProcess,
) -> None:
    target = url(cc="max-age=60, stale-while-revalidate=30")
    first = get(gateway, target, **AGED)
    stale = get(gateway, target)
    assert status(stale) == "STALE" and stale.text == first.text
    assert refreshed_after(gateway, target, first).status_code == 200
    # The background run is a request of its own in the metrics and logs.
    assert gateway.metric("edgefn_cache_requests_total", function="cached", status="REFRESH") >= 1


def test_a_head_request_refreshes_the_entry_with_a_get(gateway: GatewayProcess) -> None:
    target = url(cc="max-age=60, stale-while-revalidate=30")
    first = get(gateway, target, **AGED)
    assert status(httpx.head(gateway.public_url + target)) == "STALE"
    refreshed = refreshed_after(gateway, target, first)
    assert refreshed.text.startswith("x?")  # a whole body, not a HEAD's empty one


@pytest.mark.parametrize("failure", ["status", "raise", "hang"])
def test_stale_if_error_serves_the_stale_copy_while_the_function_fails(
    gateway: GatewayProcess, failure: str
) -> None:
    target = url(cc="max-age=60, stale-if-error=60")
    first = get(gateway, target, **AGED)
    stale = get(gateway, target, **{"x-test-fail": failure})
    assert stale.status_code == 200 and status(stale) == "STALE"
    assert stale.text == first.text
    # The failure is still recorded: the request's outcome is the error's code.
    # (A busy loop may run out of fuel before its time.)
    outcomes = {
        "status": ["ok"],
        "raise": ["function_error"],
        "hang": ["timeout", "fuel_exhausted"],
    }
    assert (
        sum(
            gateway.metric(
                "edgefn_requests_total", function="cached", status="200", outcome=outcome
            )
            for outcome in outcomes[failure]
        )
        >= 1
    )
    # Without stale-if-error the failure reaches the client.
    strict = url(cc="max-age=60")
    get(gateway, strict, **AGED)
    failed = get(gateway, strict, **{"x-test-fail": failure})
    assert failed.status_code >= 500 and status(failed) == "MISS"
    attacks.record(
        AREA,
        f"a function failing ({failure}) on a stale key",
        "the stale copy within stale-if-error; the error itself without it",
    )


def test_vary_accept_keeps_one_entry_per_negotiated_format(gateway: GatewayProcess) -> None:
    target = url("/image", negotiated="1")
    chrome = get(gateway, target, accept=CHROME)
    firefox = get(gateway, target, accept=FIREFOX)
    safari = get(gateway, target, accept=SAFARI)
    curl = get(gateway, target, accept=CURL)
    curl_again = get(gateway, target, accept="*/*")
    assert chrome.headers["content-type"] == "image/avif" and status(chrome) == "MISS"
    assert (status(firefox), status(safari)) == ("HIT", "HIT")
    assert firefox.text == chrome.text == safari.text
    assert curl.headers["content-type"] == "image/jpeg" and status(curl) == "MISS"
    assert status(curl_again) == "HIT" and curl_again.text == curl.text
    webp_only = get(gateway, target, accept="image/webp,*/*")
    assert webp_only.headers["content-type"] == "image/webp" and status(webp_only) == "MISS"
    assert "x-edgefn-negotiated" not in chrome.headers  # the cache's, never sent on


def test_accept_counts_as_sent_unless_the_function_says_it_negotiated(
    gateway: GatewayProcess,
) -> None:
    target = url("/image")  # Vary: Accept, without ACCEPT_NEGOTIATED
    chrome = get(gateway, target, accept=CHROME)
    firefox = get(gateway, target, accept=FIREFOX)
    assert (status(chrome), status(firefox)) == ("MISS", "MISS")
    assert status(get(gateway, target, accept=CHROME)) == "HIT"
    attacks.record(
        AREA,
        "a rare Accept header poisoning the image variant other browsers get",
        "Accept is keyed by the negotiated format only when the function says it used "
        "negotiate(); otherwise as sent",
    )


def test_a_repeated_vary_header_is_never_keyed(gateway: GatewayProcess) -> None:
    target = url("/image", negotiated="1")
    twice = [("accept", "image/avif;q=0.5"), ("accept", "image/jpeg, image/webp")]
    for _ in range(2):
        response = httpx.get(gateway.public_url + target, headers=twice)
        assert status(response) == "MISS"
    # ... nor does it read another request's entry.
    get(gateway, target, accept="image/webp")
    assert status(httpx.get(gateway.public_url + target, headers=twice)) == "MISS"
    attacks.record(
        AREA,
        "a Vary'd header sent twice (the function reads one line, a key would join both)",
        "never stored nor answered from the cache: MISS",
    )


def test_other_headers_named_by_vary_key_on_their_value(gateway: GatewayProcess) -> None:
    target = url(vary="Accept-Language")
    english = get(gateway, target, **{"accept-language": "en"})
    french = get(gateway, target, **{"accept-language": "fr"})
    assert (status(english), status(french)) == ("MISS", "MISS")
    assert status(get(gateway, target, **{"accept-language": "en"})) == "HIT"
    # Values are not lower-cased: Origin, cookies and tokens are case-sensitive.
    assert status(get(gateway, target, **{"accept-language": "EN"})) == "MISS"


def test_one_host_never_answers_another(gateway: GatewayProcess) -> None:
    target = url()
    first = get(gateway, target, host="a.example")
    other = get(gateway, target, host="b.example")
    assert status(other) == "MISS" and other.text != first.text
    attacks.record(
        AREA,
        "a response cached for one Host served for another",
        "the Host is part of the key: MISS",
    )


def test_a_hit_still_passes_the_public_listeners_checks(gateway: GatewayProcess) -> None:
    target = url()
    get(gateway, target)
    path, query = target.split("?")
    dotted = get(gateway, path.replace("/cached/", "/cached/a/%2e%2e/") + "?" + query)
    assert dotted.status_code == 400 and "x-edgefn-cache" not in dotted.headers
    huge = httpx.get(gateway.public_url + target, headers={"x-big": "a" * 70_000})
    assert huge.status_code == 431


def test_fifty_concurrent_misses_run_the_function_once(gateway: GatewayProcess) -> None:
    target = url(sleep="300")

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=gateway.public_url, timeout=30) as client:
            return await asyncio.gather(*(client.get(target) for _ in range(50)))

    responses = asyncio.run(burst())
    assert all(r.status_code == 200 for r in responses)
    assert len({r.text for r in responses}) == 1  # one run's body for all
    assert sorted(status(r) for r in responses).count("MISS") == 1
    assert gateway.metric("edgefn_cache_coalesced_total", function="cached") >= 1


def test_redeploy_and_rollback_start_with_an_empty_cache(gateway: GatewayProcess) -> None:
    target = "/cached/deploys?cc=public,max-age=600"
    get(gateway, target)
    assert status(get(gateway, target)) == "HIT"
    deploy(gateway, MANIFEST.replace("[limits]", '[env]\nVERSION = "2"\n\n[limits]'))
    after_deploy = get(gateway, target)
    assert status(after_deploy) == "MISS"
    assert status(get(gateway, target)) == "HIT"
    admin = AdminClient(gateway.admin_url, gateway.token)
    admin.activate("cached", 1)
    gateway.wait_serving("cached", 1)
    assert status(get(gateway, target)) == "MISS"
    assert status(get(gateway, target)) == "HIT"
    # Deleted and made again: numbered from 1 again, but a new function.
    admin.delete("cached")
    deploy(gateway)
    assert status(get(gateway, target)) == "MISS"


def test_the_cache_is_counted_and_logged(gateway: GatewayProcess) -> None:
    target = url()
    get(gateway, target)
    hit = get(gateway, target)
    assert gateway.metric("edgefn_cache_requests_total", function="cached", status="HIT") >= 1
    assert (
        gateway.metric("edgefn_requests_total", function="cached", status="200", outcome="ok") >= 2
    )
    gateway.wait_logged("cached", [hit.headers["x-request-id"]])
    assert gateway.metric("edgefn_cache_tier_events_total", tier="memory", event="hit") >= 1


def test_variants_of_one_original_fetch_it_once_through_the_gateway(
    gateway: GatewayProcess, origin: OriginServer
) -> None:
    manifest = (OUTBOUND / "edgefn.toml").read_text()
    manifest = manifest.replace('ORIGIN = "http://127.0.0.1:1"', f'ORIGIN = "{origin.base}"')
    AdminClient(gateway.admin_url, gateway.token).deploy(manifest, build(OUTBOUND).path, None)
    gateway.wait_serving("outbound")
    src = f"{origin.base}/cached?cc=public,max-age%3D60%26image=/image.jpg".replace(",", "%2C")
    widths = range(100, 120)
    for width in widths:
        response = get(gateway, f"/outbound/image?src={src}&w={width}")
        assert response.status_code == 200, response.text
        assert status(response) == "MISS"  # each variant runs the pipeline ...
    assert origin.hits("/cached") == 1  # ... on one fetch of the original
    cached = gateway.metric(
        "edgefn_outbound_requests_total", function="outbound", status_class="cached"
    )
    assert cached == len(widths) - 1


def test_eviction_under_a_small_bound(tmp_path: Path) -> None:
    env = {"EDGEFN_CACHE_MEMORY": "4KiB", "EDGEFN_CACHE_DISK": "0"}
    with GatewayProcess(tmp_path / "data", extra_env=env) as small:
        deploy(small)
        first = url("/evict")
        get(small, first)
        assert status(get(small, first)) == "HIT"
        for _ in range(20):
            get(small, url("/evict"))
        assert status(get(small, first)) == "MISS"
        assert small.metric("edgefn_cache_tier_events_total", tier="memory", event="evict") >= 1
        assert small.metric("edgefn_cache_memory_bytes") <= 4096


def test_the_nodes_workers_share_one_disk_tier(tmp_path: Path) -> None:
    """Two workers: misses coalesce across them, an entry one stored answers the
    other, it survives a restart, and a torn entry on disk is never served."""
    with GatewayProcess(tmp_path / "data", workers=2) as pair:
        deploy(pair)
        cold = url(sleep="300")

        async def burst(count: int, target: str) -> list[httpx.Response]:
            limits = httpx.Limits(max_keepalive_connections=0)  # new connections: both workers
            async with httpx.AsyncClient(
                base_url=pair.public_url, timeout=30, limits=limits
            ) as client:
                return await asyncio.gather(*(client.get(target) for _ in range(count)))

        responses = asyncio.run(burst(50, cold))
        assert [status(r) for r in responses].count("MISS") == 1
        assert len({r.text for r in responses}) == 1
        assert {status(r) for r in asyncio.run(burst(16, cold))} == {"HIT"}

        host = "edge.example"  # part of the key; the restarted gateway gets another port
        small = url()  # kept in the disk tier's index
        large = url(pad=str(200_000))  # in a file of its own there
        stored = {target: get(pair, target, host=host) for target in (small, large)}
        pair.stop()
        files = list((tmp_path / "data" / "cache").rglob("*.val"))
        assert len(files) == 1, files
        with files[0].open("r+b") as handle:  # torn, as by a crash mid-write
            handle.truncate(files[0].stat().st_size // 2)
        pair.start()
        after_restart = get(pair, small, host=host)
        assert status(after_restart) == "HIT" and after_restart.text == stored[small].text
        torn = get(pair, large, host=host)
        assert torn.status_code == 200 and status(torn) == "MISS"
        assert len(torn.content) == len(stored[large].content)
    attacks.record(
        AREA,
        "a disk entry truncated under the cache (a torn write, a full disk)",
        "never served: its checksum fails, it is deleted and the function runs (MISS)",
    )
