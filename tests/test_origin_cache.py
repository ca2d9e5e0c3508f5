"""The origin cache: what functions fetch, kept in the node's `HttpCache` by the
origin's own `Cache-Control` (issue 18), in-process against a loopback origin
(tests/origin_server.py's `/cached` endpoint, whose hit counter says how often
the origin was really asked).

First the outbound capability's host code driven natively, one request after
another as the sandbox would; then the built test function (`Image.from_url`
and `edgefn.fetch` through the guest glue) on an in-process engine.
"""

from __future__ import annotations

import ipaddress
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from origin_server import OriginServer, originals

import attacks
from edgefn_platform import BuildResult, build
from edgefn_runtime import Engine, Limits, Request, Sandbox, Usage
from edgefn_runtime.cache import CacheConfig, HttpCache
from edgefn_runtime.capabilities import RequestContext, installed
from edgefn_runtime.capabilities._base import CountedFuel
from edgefn_runtime.capabilities.outbound import (
    AllowedHosts,
    OutboundCapability,
    OutboundFailure,
    OutboundPolicy,
    Outgoing,
)
from edgefn_runtime.capabilities.outbound._client import Fetched

LOOPBACK = (ipaddress.ip_network("127.0.0.1/32"),)
FETCHING = Path(__file__).resolve().parent / "functions" / "outbound"
FRESH = "public, max-age=60"
AREA = "Origin cache (tests/test_origin_cache.py)"


def node(policy: OutboundPolicy | None = None, **config: Any) -> OutboundCapability:
    """One worker's outbound capability over a fresh memory-only cache."""
    cache = HttpCache(CacheConfig(disk=0, **config))
    return OutboundCapability(policy or OutboundPolicy(allowed_networks=LOOPBACK), cache)


class Run:
    """One request of `function` on `capability`, as the sandbox drives it."""

    def __init__(
        self,
        capability: OutboundCapability,
        allowed: list[str],
        function: str | None = "fn",
        fuel: int = 10**9,
    ) -> None:
        self.capability = capability
        grants: dict[str, Any] = {"outbound": AllowedHosts.parse(allowed)}
        if function is not None:
            grants["function"] = function
        self.context = RequestContext(None, grants)
        self.context.begin(Request("GET"), Limits(timeout=5.0, fuel=fuel), [capability])
        self.fuel = CountedFuel(fuel)

    def fetch(self, url: str, cache: bool = True, **kwargs: Any) -> Fetched:
        outgoing = Outgoing(kwargs.pop("method", "GET"), url, cache=cache, **kwargs)
        return self.capability.fetch(self.context, self.fuel, outgoing)

    def usage(self) -> Usage:
        usage = Usage()
        self.capability.finish(self.context.states["outbound"], usage)
        return usage


def cached(origin: OriginServer, cc: str = FRESH, **query: str) -> str:
    """The origin's /cached URL answering with `Cache-Control: cc` and `query`."""
    parts = [f"cc={quote(cc)}"] + [f"{name}={quote(value)}" for name, value in query.items()]
    return origin.url("/cached?" + "&".join(parts))


def header(fetched: Fetched, name: str) -> str | None:
    return next((v for k, v in fetched.headers if k.lower() == name), None)


# The capability's host code ---------------------------------------------------------


def test_twenty_fetches_of_one_url_ask_the_origin_once(origin: OriginServer) -> None:
    capability = node()
    answers = []
    for _ in range(20):
        run = Run(capability, [origin.base])
        answers.append(run.fetch(cached(origin)))
        usage = run.usage()
    assert origin.hits("/cached") == 1
    assert {(a.status, a.body, a.url) for a in answers} == {(200, answers[0].body, cached(origin))}
    assert json.loads(answers[0].body)["n"] == 1
    # A hit is still a fetch the function made, answered without the origin.
    assert usage.fetches == 1 and usage.fetch_outcomes == {"cached": 1}
    assert usage.fetch_cache_hits == 1 and usage.fetch_bytes == 0
    assert header(answers[-1], "age") is not None
    assert header(answers[-1], "content-length") == str(len(answers[0].body))


def test_the_url_is_keyed_as_the_origin_gets_it(origin: OriginServer) -> None:
    # An origin may read its query's order (or `+` against `%20`) its own way:
    # another spelling is another entry, never another URL's answer.
    capability = node()
    Run(capability, [origin.base]).fetch(cached(origin, a="1", b="2"))
    Run(capability, [origin.base]).fetch(cached(origin, a="1", b="2"))
    assert origin.hits("/cached") == 1
    again = origin.url(f"/cached?b=2&cc={quote(FRESH)}&a=1")
    assert Run(capability, [origin.base]).fetch(again).status == 200
    assert origin.hits("/cached") == 2


def test_a_fetch_with_cookies_bypasses_the_origin_cache(origin: OriginServer) -> None:
    capability = node()
    for _ in range(2):
        Run(capability, [origin.base]).fetch(cached(origin), headers=[("cookie", "user=a")])
    assert origin.hits("/cached") == 2


def test_cache_false_reaches_the_origin_every_time(origin: OriginServer) -> None:
    capability = node()
    for _ in range(3):
        run = Run(capability, [origin.base])
        run.fetch(cached(origin), cache=False)
        assert run.usage().fetch_cache_hits == 0
    assert origin.hits("/cached") == 3


def test_a_function_without_an_identity_caches_nothing(origin: OriginServer) -> None:
    # Engine.load(grants=...) without "function": no namespace, so no cache.
    capability = node()
    for _ in range(2):
        Run(capability, [origin.base], function=None).fetch(cached(origin))
    assert origin.hits("/cached") == 2


@pytest.mark.parametrize(
    ("cc", "extra"),
    [
        ("no-store, max-age=60", {}),
        ("private, max-age=60", {}),
        ("public, max-age=60", {"cookie": "1"}),
        ("", {}),  # no lifetime
        ("public", {}),  # no lifetime either
    ],
)
def test_what_a_shared_cache_may_not_keep_is_fetched_again(
    origin: OriginServer, cc: str, extra: dict[str, str]
) -> None:
    capability = node()
    for _ in range(2):
        assert Run(capability, [origin.base]).fetch(cached(origin, cc, **extra)).status == 200
    assert origin.hits("/cached") == 2


def test_an_authorized_request_is_kept_only_when_public(origin: OriginServer) -> None:
    capability = node()
    secret = [("Authorization", "Bearer t")]
    for cc in ("max-age=60", "public, max-age=60"):
        for _ in range(2):
            Run(capability, [origin.base]).fetch(cached(origin, cc), headers=secret)
    assert origin.hits("/cached") == 3  # twice without `public`, once with it


def test_conditional_and_range_requests_of_the_function_bypass_it(
    origin: OriginServer,
) -> None:
    capability = node()
    Run(capability, [origin.base]).fetch(cached(origin))
    for name, value in (("If-None-Match", '"x"'), ("Range", "bytes=0-1")):
        Run(capability, [origin.base]).fetch(cached(origin), headers=[(name, value)])
    assert origin.hits("/cached") == 3


def test_an_expired_copy_is_fetched_again(origin: OriginServer) -> None:
    capability = node()
    assert capability.origin_cache is not None
    first = Run(capability, [origin.base]).fetch(cached(origin))
    Run(capability, [origin.base]).fetch(cached(origin))
    assert origin.hits("/cached") == 1
    now = capability.origin_cache.clock()
    capability.origin_cache.clock = lambda: now + 61
    refreshed = Run(capability, [origin.base]).fetch(cached(origin))
    assert origin.hits("/cached") == 2
    assert json.loads(refreshed.body)["n"] == json.loads(first.body)["n"] + 1
    Run(capability, [origin.base]).fetch(cached(origin))  # kept again, fresh again
    assert origin.hits("/cached") == 2


def test_no_cache_with_an_etag_revalidates_and_a_304_serves_the_stored_body(
    origin: OriginServer,
) -> None:
    capability = node()
    url = cached(origin, "no-cache", etag='"v1"')
    first = Run(capability, [origin.base]).fetch(url)
    run = Run(capability, [origin.base])
    second = run.fetch(url)
    # Asked again (no-cache), answered 304, served from the cache: the body of
    # the first answer (a 200 from the origin would count 2 hits in it).
    assert origin.hits("/cached") == 2
    assert second.status == 200 and second.body == first.body
    assert json.loads(second.body)["n"] == 1
    assert header(second, "etag") == '"v1"'
    usage = run.usage()
    assert usage.fetch_cache_revalidated == 1 and usage.fetch_outcomes == {"3xx": 1}


def test_a_stale_copy_answers_when_the_origin_is_down_within_stale_if_error() -> None:
    capability = node()
    assert capability.origin_cache is not None
    with OriginServer() as gone:
        url = cached(gone, "public, max-age=1, stale-if-error=60")
        first = Run(capability, [gone.base]).fetch(url)
    now = capability.origin_cache.clock()
    capability.origin_cache.clock = lambda: now + 30
    run = Run(capability, [gone.base])
    assert run.fetch(url).body == first.body
    assert run.usage().fetch_cache_stale == 1
    capability.origin_cache.clock = lambda: now + 120  # past the window: the failure
    with pytest.raises(OutboundFailure) as caught:
        Run(capability, [gone.base]).fetch(url)
    assert caught.value.kind == "failed"


def test_two_functions_fetching_one_url_never_share_an_entry(origin: OriginServer) -> None:
    capability = node()
    for function in ("a", "b", "a", "b"):
        Run(capability, [origin.base], function=function).fetch(cached(origin))
    assert origin.hits("/cached") == 2
    attacks.record(
        AREA,
        "a function fetches a URL another function fetched and cached, to read its copy",
        "entries are keyed by the fetching function's name: each function's first fetch "
        "reaches the origin, never another's copy",
    )


def test_a_purge_of_the_whole_function_drops_its_originals(origin: OriginServer) -> None:
    capability = node()
    assert capability.origin_cache is not None
    purges = capability.origin_cache.cache.purges
    Run(capability, [origin.base]).fetch(cached(origin))
    purges.replace({"fn": [("/images/", capability.origin_cache.clock())]})  # a path: not them
    Run(capability, [origin.base]).fetch(cached(origin))
    assert origin.hits("/cached") == 1
    purges.replace({"other": [("/", capability.origin_cache.clock())]})  # another function's
    Run(capability, [origin.base]).fetch(cached(origin))
    assert origin.hits("/cached") == 1
    purges.replace({"fn": [("/", capability.origin_cache.clock())]})  # `edgefn purge fn`
    Run(capability, [origin.base]).fetch(cached(origin))
    assert origin.hits("/cached") == 2


def test_a_url_no_longer_allowed_is_refused_even_when_cached(origin: OriginServer) -> None:
    capability = node()
    Run(capability, [origin.base]).fetch(cached(origin))
    with pytest.raises(OutboundFailure) as caught:
        Run(capability, ["http://127.0.0.1:1"]).fetch(cached(origin))
    assert caught.value.kind == "not_allowed"
    assert origin.hits("/cached") == 1
    attacks.record(
        AREA,
        "a function whose manifest no longer allows a host fetches a URL of it still cached",
        "refused with not_allowed: the manifest is checked before the cache is asked",
    )


def test_vary_keeps_one_copy_per_value_of_the_header(origin: OriginServer) -> None:
    capability = node()
    url = cached(origin, vary="X-Lang")
    seen = []
    for lang in ("en", "fr", "en", "fr", "de"):
        fetched = Run(capability, [origin.base]).fetch(url, headers=[("X-Lang", lang)])
        seen.append(json.loads(fetched.body)["vary"])
    assert seen == ["en", "fr", "en", "fr", "de"]
    assert origin.hits("/cached") == 3


def test_a_body_over_max_object_is_served_but_not_kept(origin: OriginServer) -> None:
    image, _ = originals()["/image.jpg"]
    capability = node(max_object=len(image) // 2)
    for _ in range(2):
        assert (
            Run(capability, [origin.base]).fetch(cached(origin, image="/image.jpg")).body == image
        )
    assert origin.hits("/cached") == 2


def test_a_redirected_fetch_is_not_kept(origin: OriginServer) -> None:
    capability = node()
    url = origin.url("/redirect?to=" + quote(cached(origin), safe=""))
    for _ in range(2):
        assert Run(capability, [origin.base]).fetch(url).url == cached(origin)
    assert origin.hits("/cached") == 2


def test_a_revalidation_that_is_redirected_never_hands_the_function_a_304(
    origin: OriginServer,
) -> None:
    # The stored copy's ETag goes along the redirect, and the new place knows it.
    capability = node()
    moved_to = cached(origin, "no-cache", etag='"v1"', at="new")
    url = cached(origin, "no-cache", etag='"v1"', moved=moved_to)
    first = Run(capability, [origin.base]).fetch(url)
    second = Run(capability, [origin.base]).fetch(url)
    assert first.status == 200 and second.status == 200, second
    assert second.url == url and json.loads(second.body)["n"] == 4
    assert origin.hits("/cached") == 4  # 200; 302 -> 304; then again without validators


def test_the_function_asking_for_no_cache_is_not_answered_from_it(
    origin: OriginServer,
) -> None:
    capability = node()
    Run(capability, [origin.base]).fetch(cached(origin))
    for name, value in (("Cache-Control", "no-cache"), ("Pragma", "no-cache")):
        fetched = Run(capability, [origin.base]).fetch(cached(origin), headers=[(name, value)])
        assert header(fetched, "age") is None  # the origin's own answer
    assert origin.hits("/cached") == 3
    # What it fetched was kept all the same: the next fetch is a hit on the last one.
    assert json.loads(Run(capability, [origin.base]).fetch(cached(origin)).body)["n"] == 3


def test_an_authorized_or_cookie_setting_answer_never_reaches_another_request(
    origin: OriginServer,
) -> None:
    capability = node()
    secret = [("Authorization", "Bearer t")]
    first = Run(capability, [origin.base]).fetch(cached(origin, "max-age=60"), headers=secret)
    later = Run(capability, [origin.base]).fetch(cached(origin, "max-age=60"))
    assert json.loads(later.body)["n"] == json.loads(first.body)["n"] + 1
    Run(capability, [origin.base]).fetch(cached(origin, cookie="1"))
    later = Run(capability, [origin.base]).fetch(cached(origin, cookie="1"))
    assert json.loads(later.body)["n"] == 4 and header(later, "age") is None
    attacks.record(
        AREA,
        "an answer to a fetch with Authorization (no `public`), or one setting a cookie, "
        "served to the next request",
        "not stored: the next fetch of the URL reaches the origin",
    )


def test_a_hit_counts_against_max_fetches_and_the_byte_caps(origin: OriginServer) -> None:
    capability = node(OutboundPolicy(allowed_networks=LOOPBACK, max_fetches=2))
    run = Run(capability, [origin.base])
    run.fetch(cached(origin))
    run.fetch(cached(origin))
    with pytest.raises(OutboundFailure, match="max_fetches"):
        run.fetch(cached(origin))
    image, _ = originals()["/image.jpg"]
    small = OutboundPolicy(allowed_networks=LOOPBACK, max_total_bytes=len(image) + 10)
    capability = node(small)
    run = Run(capability, [origin.base])
    run.fetch(cached(origin, image="/image.jpg"))
    with pytest.raises(OutboundFailure) as caught:
        run.fetch(cached(origin, image="/image.jpg"))  # a hit, but over what is left
    assert caught.value.kind == "too_large" and "max_total_bytes" in caught.value.message
    assert origin.hits("/cached") == 2  # once for each node
    # And its bytes are charged to the request's fuel, as fetched ones are.
    fuel = 10**7
    run = Run(capability, [origin.base], fuel=fuel)
    run.fetch(cached(origin, image="/image.jpg"))
    assert fuel - run.fuel.left() > len(image)


def test_concurrent_misses_of_one_url_ask_the_origin_once(origin: OriginServer) -> None:
    capability = node()
    url = cached(origin, delay="0.3")
    bodies: list[bytes] = []

    def one() -> None:
        bodies.append(Run(capability, [origin.base]).fetch(url).body)

    threads = [threading.Thread(target=one) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(bodies) == 8 and len(set(bodies)) == 1
    assert origin.hits("/cached") == 1


# Through the guest glue, on an in-process engine ----------------------------------


@pytest.fixture(scope="module")
def fetching_build() -> BuildResult:
    return build(FETCHING)


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    policy = OutboundPolicy(allowed_networks=LOOPBACK)
    cache = HttpCache(CacheConfig(disk=0))
    with Engine(capabilities=installed(outbound=policy, cache=cache)) as engine:
        yield engine


def load(engine: Engine, build_result: BuildResult, origin: OriginServer, name: str) -> Sandbox:
    grants = {"outbound": AllowedHosts.parse([origin.base]), "function": name}
    return engine.load(build_result.path, grants=grants)


@pytest.mark.wasm
def test_twenty_variants_of_one_original_fetch_it_once(
    engine: Engine, fetching_build: BuildResult, origin: OriginServer
) -> None:
    sandbox = load(engine, fetching_build, origin, "variants")
    src = quote(cached(origin, image="/image.png"), safe="")
    sizes = set()
    for width in range(20, 220, 10):  # small: the test is about fetches, not pixels
        outcome = sandbox.invoke(Request("GET", "/image", f"src={src}&w={width}"))
        assert outcome.response.status == 200, outcome.response.body[:200]
        sizes.add(len(outcome.response.body))
    assert len(sizes) > 1  # twenty different variants ...
    assert origin.hits("/cached") == 1  # ... of one original fetched once
    assert outcome.usage.fetch_cache_hits == 1


@pytest.mark.wasm
def test_fetch_in_a_function_is_cached_unless_it_says_cache_false(
    engine: Engine, fetching_build: BuildResult, origin: OriginServer
) -> None:
    sandbox = load(engine, fetching_build, origin, "fetching")
    url = quote(cached(origin), safe="")
    answers = [
        json.loads(sandbox.invoke(Request("GET", "/fetch", f"url={url}")).response.body)
        for _ in range(3)
    ]
    assert origin.hits("/cached") == 1
    assert {json.loads(a["text"])["n"] for a in answers} == {1}
    for _ in range(2):
        sandbox.invoke(Request("GET", "/fetch", f"url={url}&cache=0"))
    assert origin.hits("/cached") == 3
