"""Hostile input on the admin API and the other FastAPI routes of a real `gateway serve --workers 1` (auth on,
virtual keys in a real Redis): keys, teams, spend, cache, reload, models, health, metrics.

With the master key, another key or none; with random JSON, wrong types in every field, deep nesting,
random bytes and odd query strings: never a 5xx, the worker survives, every error in the OpenAI shape,
and no request body in the log.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.hostile import (
    ALIASES,
    FILE_BUDGET_S,
    HOSTILE,
    Budget,
    Stack,
    auth_roles,
    check_alive,
    check_answer,
    check_coverage,
    check_log,
    check_openai_error,
    content_types,
    encode,
    header_text,
    headers_for,
    hostile_stack,
    json_values,
    mutate,
    texts,
)
from tests.procs import Proc

pytestmark = pytest.mark.timeout(180)

POSTS = ("/key/generate", "/key/update", "/key/delete", "/team/new", "/team/update", "/team/delete")
GETS: dict[str, tuple[str, ...]] = {  # path -> its query parameters
    "/key/info": ("key", "key_alias"),
    "/key/list": ("team_id",),
    "/team/info": ("team_id",),
    "/team/list": (),
    "/spend/logs": ("api_key", "key_alias", "team_id", "start_date", "end_date", "limit", "format"),
    "/v1/models": (),
    "/models": (),
    "/health/deployments": (),
    "/metrics": (),
    "/admin/comparisons": ("since", "limit"),
    "/admin/canary": (),
}

# fields of the admin schemas (gateway/keys/models.py), with values an operator could rightly send
VALID: dict[str, Any] = {
    "models": st.lists(st.sampled_from(ALIASES), max_size=3),
    "max_budget": st.floats(0, 1000),
    "budget_duration": st.sampled_from(["30s", "10m", "1h", "30d", "1mo", "2w"]),
    "rpm_limit": st.integers(0, 10_000),
    "tpm_limit": st.integers(0, 10_000),
    "max_parallel_requests": st.integers(0, 100),
    "metadata": st.dictionaries(texts, texts, max_size=3),
    "key_alias": texts,
    "team_id": texts,
    "team_alias": texts,
    "duration": st.sampled_from(["1h", "30d", 3600]),
    "key": st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=20, max_size=30).map(lambda s: "sk-" + s),
    "keys": st.lists(texts, max_size=3),
    "key_aliases": st.lists(texts, max_size=3),
    "team_ids": st.lists(texts, min_size=1, max_size=3),
}
QUERY_VALUES = st.one_of(texts, st.integers().map(str), st.sampled_from(
    ["", "-1", "0", "1e999", "NaN", "10" * 30, "2020-13-45", "1970-01-01", "9999-12-31T23:59:59", "csv", "json",
     "xml", "a:b", "sk-" + "x" * 300]))


@st.composite
def admin_bodies(draw: Any, valid: bool = False) -> dict[str, Any]:
    """Fields of the admin schemas and others; with `valid`, only right values of the schemas' fields."""
    names = st.sampled_from(sorted(VALID)) if valid else st.one_of(st.sampled_from(sorted(VALID)), texts)
    body: dict[str, Any] = {}
    for name in draw(st.lists(names, max_size=5, unique=True)):
        body[name] = draw(VALID[name]) if name in VALID and (valid or draw(st.integers(0, 2))) else draw(json_values)
    return body


@pytest.fixture(scope="module")
def stack(redis_server: Proc) -> Iterator[Stack]:
    with hostile_stack(str(redis_server.extra["url"])) as s:
        yield s


@pytest.fixture(scope="module")
def budget() -> Budget:
    return Budget(FILE_BUDGET_S)


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as c:
        yield c


def test_deep_admin_bodies_get_400_before_any_parse(stack: Stack, client: httpx.Client) -> None:
    pid = stack.gateway.popen.pid
    for depth, body in ((30_000, b'{"metadata":' + b"[" * 30_000 + b"]" * 30_000 + b"}"),  # under 64 KiB
                        (100_000, b'{"a":' * 100_000 + b"1" + b"}" * 100_000),
                        (300, b'{"key_alias":"x","metadata":' + b'{"a":' * 300 + b"1" + b"}" * 300 + b"}")):
        for path in POSTS:
            for role in (None, "master"):
                for ctype in ("application/json", None):
                    headers = {**stack.auth(role), **({"Content-Type": ctype} if ctype else {})}
                    r = client.post(stack.url + path, content=body, headers=headers)
                    assert r.status_code == 400, (depth, path, role, r.status_code, r.text[:200])
                    check_openai_error(400, r.content)
                    assert r.json()["error"]["code"] == "json_too_deep"
    # NaN and Infinity are not JSON: refused as such, never stored
    for body in (b'{"max_budget": NaN}', b'{"metadata": {"a": Infinity}}', b'{"rpm_limit": -Infinity}'):
        r = client.post(stack.url + "/key/generate", content=body, headers=stack.auth("master"))
        assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"], r.text
    check_alive(stack)
    assert stack.gateway.popen.pid == pid
    check_log(stack)


def test_random_admin_requests(stack: Stack, client: httpx.Client, budget: Budget) -> None:
    seen: Counter[int] = Counter()

    @HOSTILE
    @given(path=st.sampled_from(POSTS), data=st.data(), role=auth_roles, junk=header_text,
           content_type=content_types, ascii_only=st.booleans(), operator=st.booleans())
    def run(path: str, data: Any, role: str | None, junk: bytes, content_type: str | None,
            ascii_only: bool, operator: bool) -> None:
        if operator:  # half the time what an operator sends, so requests get past auth and validation
            raw = encode(data.draw(admin_bodies(valid=True)), ascii_only)
            role, content_type = "master", "application/json"
        else:
            raw = data.draw(st.one_of(
                st.builds(encode, st.one_of(admin_bodies(), json_values), st.just(ascii_only)),
                st.builds(mutate, st.builds(encode, admin_bodies(), st.just(ascii_only)), st.integers(0, 5000),
                          st.integers(0, 6), st.binary(max_size=6)),
                st.binary(max_size=300)))
        if budget.spent():
            return
        r = client.post(stack.url + path, content=raw, headers=headers_for(stack, role, junk, content_type))
        check_answer(r, seen)

    run()
    check_coverage(seen, {200, 400, 401})
    check_alive(stack)
    check_log(stack)


def test_random_queries_methods_and_paths(stack: Stack, client: httpx.Client, budget: Budget) -> None:
    seen: Counter[int] = Counter()
    everything = (*POSTS, *GETS, "/cache", "/admin/reload", "/admin/canary/smart/abort",
                  "/admin/canary/smart/bogus", "/admin/canary/%00/restart", "/v1/models/smart", "/openapi.json", "/nope",
                  "/key/../admin/reload", "/v1/chat/completions/")

    @HOSTILE
    @given(data=st.data(), role=auth_roles, junk=header_text)
    def run(data: Any, role: str | None, junk: bytes) -> None:
        kind = data.draw(st.sampled_from(["get", "delete-cache", "model", "any"]))
        headers = headers_for(stack, role, junk, None)
        if kind == "get":
            path = data.draw(st.sampled_from(sorted(GETS)))
            names = GETS[path]
            params = data.draw(st.dictionaries(st.one_of(st.sampled_from(names), texts) if names else texts,
                                               QUERY_VALUES, max_size=4))
            method, url, content = "GET", stack.url + path, None
        elif kind == "delete-cache":
            params = data.draw(st.dictionaries(st.just("namespace") | texts, QUERY_VALUES, max_size=2))
            method, url, content = "DELETE", stack.url + "/cache", None
        elif kind == "model":
            name = data.draw(st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E,
                                                   exclude_characters="/?#%"), min_size=1, max_size=40))
            params, method, url, content = {}, "GET", f"{stack.url}/v1/models/{name}", None
        else:  # any method on any path, any body
            method = data.draw(st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"]))
            url = stack.url + data.draw(st.sampled_from(everything))
            params = {}
            content = data.draw(st.one_of(st.none(), st.binary(max_size=200),
                                          st.builds(encode, json_values, st.booleans())))
        if budget.spent():
            return
        r = client.request(method, url, params=params, content=content, headers=headers)
        if method == "HEAD":
            assert r.status_code < 500
            seen[r.status_code] += 1
        else:
            check_answer(r, seen)

    run()
    check_coverage(seen, {200, 401}, kinds=3)
    check_alive(stack)
    check_log(stack)
