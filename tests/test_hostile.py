"""Hostile input on the OpenAI endpoints of a real `gateway serve --workers 1` (auth on, virtual keys in a real
Redis, a simulator upstream), and on the simulator itself.

Whatever arrives — JSON nested 100,000 deep, wrong types in every field, NaN tokens, random bytes, broken
headers, with or without a key — the answer is a 4xx in the OpenAI error shape (or a 2xx), the one worker
process keeps serving, no request body reaches the log, and metric labels stay configured aliases.
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import safejson
from gateway.endpoints import BY_NAME
from gateway.endpoints.base import short as _short
from tests.helpers import deployment, metric_value, metrics
from tests.hostile import (
    ALIASES,
    CANARY,
    FILE_BUDGET_S,
    HOSTILE,
    MASTER,
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
    label_values,
    mutate,
    raw_http,
    request_bodies,
)
from tests.procs import Proc

pytestmark = pytest.mark.timeout(180)

PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions", "embeddings": "/v1/embeddings"}
DEEP = 100_000


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


def deep_bodies(depth: int) -> dict[str, bytes]:
    obj = b'{"a":' * depth + b"1" + b"}" * depth
    arr = b"[" * depth + b"]" * depth
    head = b'{"model":"smart","messages":[{"role":"user","content":"x"}],"prompt":"x","input":"x","metadata":'
    return {"object": obj, "array": arr, "metadata-object": head + obj + b"}",
            "metadata-array": head + b'{"k":' + arr + b"}}"}


def _depth(v: Any) -> int:
    if isinstance(v, dict):
        return 1 + max((_depth(x) for x in v.values()), default=0)
    if isinstance(v, list):
        return 1 + max((_depth(x) for x in v), default=0)
    return 0


tricky = st.sampled_from(['"', "\\", '\\"', "[", "{", "]", "}", '"[{', '\\\\"]}', "a", ""])
strings = st.lists(tricky, max_size=6).map("".join)
nested = st.recursive(st.one_of(st.none(), st.integers(-(2 ** 63), 2 ** 63 - 1), strings),
                      lambda kids: st.lists(kids, max_size=3) | st.dictionaries(strings, kids, max_size=3),
                      max_leaves=40)


@HOSTILE
@given(value=nested, limit=st.integers(1, 12), indent=st.sampled_from([None, 0, 2]), cut=st.integers(0, 10 ** 6))
def test_depth_check_is_exact_and_ignores_brackets_in_strings(value: Any, limit: int, indent: int | None,
                                                              cut: int) -> None:
    raw = json.dumps(value, indent=indent).encode()
    assert safejson.exceeds_depth(raw, limit) == (_depth(value) > limit)
    if safejson.exceeds_depth(raw, limit):  # a prefix that goes too deep is refused although it is not JSON
        deepest = next(i for i in range(len(raw) + 1) if safejson.exceeds_depth(raw[:i], limit))
        assert safejson.exceeds_depth(raw[:max(deepest, cut % (len(raw) + 1))], limit)
        with pytest.raises(safejson.TooDeep):
            safejson.loads(raw, limit)
    else:
        assert safejson.loads(raw, limit) == value


def test_error_messages_never_fail_on_a_value() -> None:
    deep: Any = 1
    for _ in range(300):  # orjson.dumps refuses this (more than 255 levels)
        deep = [deep]
    assert _short(deep) == "(array)"
    assert _short("x" * 10_000) == repr("x" * 36)[:37] + "..."
    with pytest.raises(Exception, match="'temperature' must be a number between 0 and 2, got array"):
        BY_NAME["chat"].validate({"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": deep})


def test_the_depth_limit_is_a_setting(make_sim: Any, make_gateway: Any) -> None:
    sim = make_sim()
    gw = make_gateway({"model_list": [deployment("smart", sim)]}, env={"GATEWAY_MAX_JSON_DEPTH": "8"})
    msg = [{"role": "user", "content": "x"}]
    ok = {"model": "smart", "messages": msg, "metadata": _nest_value(7)}  # the body, then 7: 8 levels
    assert httpx.post(f"{gw.url}/v1/chat/completions", json=ok, timeout=10).status_code == 200
    r = httpx.post(f"{gw.url}/v1/chat/completions", json={**ok, "metadata": _nest_value(8)}, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["message"] == (
        "Request body is nested deeper than 8 levels of objects and arrays")
    r = httpx.post(f"{gw.url}/key/generate", json={"metadata": _nest_value(8)}, timeout=10)  # FastAPI routes too
    assert r.status_code == 400 and r.json()["error"]["code"] == "json_too_deep"


def _nest_value(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    return value


def test_deep_nesting_gets_400_without_a_key_and_the_worker_keeps_serving(stack: Stack, client: httpx.Client) -> None:
    pid = stack.gateway.popen.pid
    for depth in (DEEP, 300, 65):
        for what, body in deep_bodies(depth).items():
            for endpoint, path in PATHS.items():
                for role in (None, "vkey"):
                    r = client.post(stack.url + path, content=body, headers=stack.auth(role))
                    assert r.status_code == 400, (depth, what, endpoint, role, r.status_code, r.text[:200])
                    check_openai_error(400, r.content)
                    err = r.json()["error"]
                    assert err["code"] == "json_too_deep" and err["type"] == "invalid_request_error"
                    assert "nested deeper than 64 levels" in err["message"]
        check_alive(stack)
    # 64 levels is within the limit: served, and the body reaches the upstream unchanged
    inner = json.loads(b'{"a":' * 62 + b"1" + b"}" * 62)  # body {, metadata {, then 62
    r = client.post(stack.url + PATHS["chat"], headers=stack.auth("vkey"),
                    json={"model": "smart", "messages": [{"role": "user", "content": "deep"}], "metadata": {"k": inner}})
    assert r.status_code == 200, r.text
    assert httpx.get(f"{stack.sim.url}/sim/stats", timeout=5).json()["last_request"]["metadata"] == {"k": inner}
    check_alive(stack)
    assert stack.gateway.popen.pid == pid
    check_log(stack)


def test_random_json_bodies_on_the_openai_endpoints(stack: Stack, client: httpx.Client, budget: Budget) -> None:
    seen: Counter[int] = Counter()

    @HOSTILE
    @given(endpoint=st.sampled_from(sorted(PATHS)), data=st.data(), role=auth_roles, junk=header_text,
           content_type=content_types, ascii_only=st.booleans())
    def run(endpoint: str, data: Any, role: str | None, junk: bytes, content_type: str | None,
            ascii_only: bool) -> None:
        body = data.draw(st.one_of(request_bodies(endpoint), json_values))
        if budget.spent():  # after every draw: hypothesis wants the same draws when it replays an example
            return
        r = client.post(stack.url + PATHS[endpoint], content=encode(body, ascii_only),
                        headers=headers_for(stack, role, junk, content_type))
        check_answer(r, seen)

    run()
    check_coverage(seen, {200, 400, 401})
    check_alive(stack)
    check_log(stack)
    # the bodies `fast` admitted were mirrored (router_settings.shadow in tests/hostile.py) and none broke it
    text = httpx.get(f"{stack.url}/metrics", timeout=10).text
    assert metric_value(text, "oss_shadow_requests_total", alias="fast") > 0


def test_random_bytes_and_broken_json(stack: Stack, client: httpx.Client, budget: Budget) -> None:
    seen: Counter[int] = Counter()

    @HOSTILE
    @given(endpoint=st.sampled_from(sorted(PATHS)), role=auth_roles, junk=header_text, content_type=content_types,
           # a third of the bodies are well-formed chat requests, unmutated: the fuzz must get past the parser
           # (check_coverage below), which mutated JSON alone did not always do (250 of 250 answered 400 once)
           body=st.one_of(st.binary(max_size=600), st.builds(encode, request_bodies("chat"), st.booleans()),
                          st.builds(mutate, st.builds(encode, request_bodies("chat"), st.booleans()),
                                    st.integers(0, 10_000), st.integers(0, 8), st.binary(max_size=8))))
    def run(endpoint: str, role: str | None, junk: bytes, content_type: str | None, body: bytes) -> None:
        if budget.spent():
            return
        r = client.post(stack.url + PATHS[endpoint], content=body, headers=headers_for(stack, role, junk, content_type))
        check_answer(r, seen)

    run()
    check_coverage(seen, {400}, kinds=2)
    check_alive(stack)
    check_log(stack)


def test_models_list_with_odd_authorization(stack: Stack, client: httpx.Client, budget: Budget) -> None:
    @HOSTILE
    @given(role=auth_roles, junk=header_text, path=st.sampled_from(["/v1/models", "/models", "/v1/models/smart"]),
           model=st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="/?#%"),
                         min_size=1, max_size=30))
    def run(role: str | None, junk: bytes, path: str, model: str) -> None:
        if budget.spent():
            return
        r = client.get(stack.url + path, headers=headers_for(stack, role, junk, None))
        check_answer(r)
        r = client.get(f"{stack.url}/v1/models/{model}", headers=headers_for(stack, role, junk, None))
        check_answer(r)

    run()
    check_alive(stack)


OK_BODY = b'{"model":"smart","messages":[{"role":"user","content":"hi"}],"max_tokens":3}'
CL = b"Content-Length: %d\r\n" % len(OK_BODY)
BAD_REQUESTS = [  # header lines (then the blank line) and the body
    (b"Content-Length: abc\r\n", OK_BODY),
    (b"Content-Length: -1\r\n", OK_BODY),
    (b"Content-Length: 99999999999999999999999999\r\n", OK_BODY),
    (CL + b"Content-Length: 3\r\n", OK_BODY),
    (CL + b"Transfer-Encoding: chunked\r\n", b"0\r\n\r\n"),
    (b"Transfer-Encoding: chunked\r\n", b"zz\r\n{}\r\n0\r\n\r\n"),
    (b"Transfer-Encoding: chunked\r\n", b"2\r\n{\"\r\n" * 3 + b"0\r\n\r\n"),
    (b"Transfer-Encoding: chunked\r\nAuthorization: Bearer " + MASTER.encode() + b"\r\n",
     b"%x\r\n%s\r\n0\r\n\r\n" % (len(OK_BODY), OK_BODY)),
    (b"Content-Length: 5\r\n", OK_BODY),  # the rest reads as a second, broken request
    (CL + b"Authorization: \xff\xfe\x80\r\n", OK_BODY),
    (CL + b"Authorization: Bearer\r\n", OK_BODY),
    (CL + b"Authorization: Bearer \t \r\n", OK_BODY),
    (CL + b"Authorization: bEaReR   " + MASTER.encode() + b"\t\r\n", OK_BODY),
    (CL + b"Authorization: Bearer " + MASTER.encode() + b"x\r\n", OK_BODY),
    (CL + b"Authorization: Basic dXNlcjpwYXNz\r\n", OK_BODY),
    (CL + b"Authorization: Bearer " + b"k" * 16000 + b"\r\n", OK_BODY),
    (CL + b"Authorization: Bearer a\r\nAuthorization: Bearer b\r\n", OK_BODY),
    (CL + b"X-Api-Key: \xc3\xa9\xff\r\n", OK_BODY),
    (CL + b"X-Api-Key: \x00\r\n", OK_BODY),
    (CL + b"X-Request-Id: " + b"\xc3\xa9" * 500 + b"\r\n", OK_BODY),
    (CL + b"Bad Header Name: x\r\n", OK_BODY),
    (CL + b"Content-Type: application/json; charset=\xff\r\n", OK_BODY),
    (CL + b"Cache-Control: \xff" + CANARY.encode() + b"\r\n", OK_BODY),
]


def test_broken_http_headers(stack: Stack) -> None:
    """What httpx will not send. Answers come from the gateway (OpenAI shape) or, for requests that are not
    HTTP at all, from the HTTP server itself (a plain 400 before any application code runs): never a 5xx."""
    pid = stack.gateway.popen.pid
    seen: set[int] = set()
    for path in PATHS.values():
        for lines, payload in BAD_REQUESTS:
            req = b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + lines + b"\r\n"
            status, headers, body = raw_http(stack.gateway.port, req + payload)
            assert status < 500, (lines[:80], status, body[:200])
            if status >= 400 and headers.get("content-type", "").startswith("application/json"):
                check_openai_error(status, body)
            elif status >= 400:  # refused by the HTTP server before any application code ran
                assert status == 400 and body == b"Invalid HTTP request received.", (lines[:80], status, body[:200])
            seen.add(status)
    assert {200, 400, 401} <= seen, seen
    # declared over the limit: 413 before a byte of the body is read
    req = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
           b"Content-Length: 900000000\r\n\r\n{")
    status, _, body = raw_http(stack.gateway.port, req)
    assert status == 413
    check_openai_error(status, body)
    check_alive(stack)
    assert stack.gateway.popen.pid == pid
    check_log(stack)


def test_simulator_answers_hostile_bodies_with_4xx(stack: Stack, client: httpx.Client, budget: Budget) -> None:
    sim = stack.sim
    paths = {"chat": "/v1/chat/completions", "completions": "/v1/completions", "embeddings": "/v1/embeddings",
             "tokenize": "/tokenize"}

    def check_vllm(r: httpx.Response) -> None:
        assert r.status_code < 500, (r.status_code, r.text[:300])
        if r.status_code >= 400:
            data = r.json()
            assert data["object"] == "error" and isinstance(data["message"], str), r.text[:300]
            assert data["code"] == r.status_code and isinstance(data["type"], str)

    for depth in (DEEP, 300):
        for body in deep_bodies(depth).values():
            for path in paths.values():
                r = client.post(sim.url + path, content=body)
                assert r.status_code == 400, (depth, path, r.text[:200])
                check_vllm(r)
    huge = b'{"prompt":"' + b"x" * (64 * 1024 * 1024 + 10) + b'"}'
    r = client.post(sim.url + "/v1/completions", content=huge)
    assert r.status_code == 400
    check_vllm(r)
    del huge

    @HOSTILE
    @given(kind=st.sampled_from(sorted(paths)), data=st.data(), ascii_only=st.booleans())
    def run(kind: str, data: Any, ascii_only: bool) -> None:
        endpoint = "chat" if kind == "tokenize" else kind
        raw = data.draw(st.one_of(st.builds(encode, st.one_of(request_bodies(endpoint), json_values),
                                            st.just(ascii_only)), st.binary(max_size=300)))
        if budget.spent():
            return
        check_vllm(client.post(sim.url + paths[kind], content=raw))

    run()
    assert sim.popen.poll() is None
    assert client.get(f"{sim.url}/health").status_code == 200


def test_client_model_names_never_become_label_values(stack: Stack, client: httpx.Client) -> None:
    """Every path before routing (401, 403, 404, 400, 413, 429, client gone) labels a configured alias or
    "(unknown)"; many requests with random model names add no series. Runs last: it also checks the labels
    left by the fuzzing above."""
    names = [f"{CANARY}-{uuid.uuid4().hex[:8]}" for _ in range(120)] + ["é\u202e", "a\"b", "x\\y", "n\nl"]
    msg = [{"role": "user", "content": "hi"}]
    seen: set[int] = set()

    def send(model: str, role: str | None, **extra: Any) -> None:
        headers = {"Authorization": "Bearer sk-no-such-key-000"} if role == "bad" else stack.auth(role)
        r = client.post(stack.url + PATHS["chat"], json={"model": model, "messages": msg, **extra}, headers=headers)
        check_answer(r)
        seen.add(r.status_code)

    for i, name in enumerate(names):
        send(name, (None, "bad", "vkey", "broke")[i % 4])  # 401, 401, 404, 429 or 404
        send(name, "vkey", temperature="hot")  # 400 naming the field
    send("smart", "fast_only")  # 403 (a configured alias: that label is fine)
    send("smart", "broke")  # 429: budget 0
    r = client.post(stack.url + PATHS["chat"], content=b'{"model": "' + CANARY.encode() + b'-json", ')
    assert r.status_code == 400  # malformed JSON
    req = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 900000000\r\n\r\n")
    assert raw_http(stack.gateway.port, req)[0] == 413
    assert {400, 401, 403, 404, 429} <= seen, seen

    def unknown() -> float:
        return metric_value(metrics(stack.gateway), "oss_requests_total", alias="(unknown)")

    before = unknown()
    gone = b'{"model": "' + CANARY.encode() + b'-gone", "messages": []'
    with socket.create_connection(("127.0.0.1", stack.gateway.port)) as s:  # the client leaves mid-body
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + gone)
    deadline = time.monotonic() + 10  # recorded once the server sees the close
    while unknown() < before + 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert unknown() == before + 1

    def snapshot() -> tuple[set[str], set[str], int]:
        text = metrics(stack.gateway)
        return label_values(text, "alias"), label_values(text), sum(
            1 for ln in text.splitlines() if ln.startswith(("oss_requests_total{", "oss_gateway_overhead_seconds")))

    aliases, values, series = snapshot()
    assert aliases <= {*ALIASES, "(unknown)"}, aliases - {*ALIASES}
    assert not [v for v in values if CANARY in v or v in names], "a client's model name became a label value"
    for name in names[:60]:  # more random names: not one more series
        send(name + "-again", None)
        send(name + "-again", "vkey")
    assert snapshot()[2] == series
    check_alive(stack)
    check_log(stack)
