"""Shared parts of the hostile-input suites (tests/test_hostile*.py): a real gateway stack with auth on,
hypothesis strategies for hostile JSON, bytes and headers, and the checks every answer must pass."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from tests.helpers import deployment
from tests.procs import Proc, start_gateway, start_simulator

MASTER = "sk-hostile-master-" + uuid.uuid4().hex
CANARY = "CaNaRy" + uuid.uuid4().hex[:12]  # placed in bodies; must never reach the gateway's log
ALIASES = ("smart", "fast", "embed")
ERROR_KEYS = {"message", "type", "param", "code"}
FILE_BUDGET_S = 45.0  # a whole test file stays under a minute on a 2-core machine

# bounded in count; `deadline=None`: a request's time depends on the machine, not on the input
HOSTILE = settings(max_examples=250, deadline=None, print_blob=True,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                          HealthCheck.filter_too_much])


class Budget:
    """Wall-clock budget of a test file: hypothesis tests stop sending once it is spent (count bounds
    them already; this bounds them on a slow CI machine too)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.started = time.monotonic()

    def spent(self) -> bool:
        return time.monotonic() - self.started > self.seconds


@dataclass
class Stack:
    gateway: Proc
    sim: Proc
    keys: dict[str, str]  # role -> secret: "vkey" (any alias), "fast_only", "broke" (max_budget 0)

    @property
    def url(self) -> str:
        return self.gateway.url

    def auth(self, role: str | None) -> dict[str, str]:
        if role is None:
            return {}
        if role == "master":
            return {"Authorization": f"Bearer {MASTER}"}
        return {"Authorization": f"Bearer {self.keys[role]}"}


def gateway_config(sim: Proc) -> dict[str, Any]:
    prices = {"input_cost_per_token": 0.000001, "output_cost_per_token": 0.000002}
    return {
        "model_list": [
            deployment("smart", sim, "sim-smart", max_input_tokens=100_000, **prices),
            deployment("fast", sim, "sim-fast", **prices),
            deployment("embed", sim, "sim-embed", **prices),
        ],
        "litellm_settings": {"cache": True, "cache_params": {"type": "local"}},
        # every hostile body `fast` admits is mirrored too: a shadow call must survive what the primary does
        "router_settings": {"shadow": {"fast": {"to": "smart", "share": 100, "max_concurrency": 4}}},
    }


@contextlib.contextmanager
def hostile_stack(redis_url: str) -> Iterator[Stack]:
    """One simulator and one `gateway serve --workers 1` (auth on, virtual keys in a real Redis, exact
    cache on, debug logging so that anything the gateway might log about a request is in its log)."""
    sim = start_simulator()
    gw = None
    try:
        gw = start_gateway(gateway_config(sim), workers=1, env={
            "GATEWAY_MASTER_KEY": MASTER, "GATEWAY_STATE_REDIS_URL": redis_url,
            "GATEWAY_STATE_KEY_PREFIX": "hostile" + uuid.uuid4().hex[:8], "GATEWAY_LOG_LEVEL": "debug"})
        admin = {"Authorization": f"Bearer {MASTER}"}
        keys = {}
        for role, body in (("vkey", {}), ("fast_only", {"models": ["fast"]}), ("broke", {"max_budget": 0})):
            r = httpx.post(f"{gw.url}/key/generate", json={"key_alias": f"hostile-{role}-{uuid.uuid4().hex}", **body},
                           headers=admin, timeout=30)
            assert r.status_code == 200, r.text
            keys[role] = r.json()["key"]
        yield Stack(gw, sim, keys)
    finally:
        if gw is not None:
            gw.stop()
        sim.stop()


# -- checks ---------------------------------------------------------------------------------------------

def check_openai_error(status: int, body: bytes) -> None:
    """An error answer of the gateway: JSON, exactly {"error": {message, type, param, code}}."""
    data = json.loads(body)
    assert isinstance(data, dict) and set(data) == {"error"}, (status, body[:300])
    err = data["error"]
    assert isinstance(err, dict) and set(err) == ERROR_KEYS, (status, body[:300])
    assert isinstance(err["message"], str) and err["message"], (status, body[:300])
    assert isinstance(err["type"], str) and err["type"], (status, body[:300])
    assert err["param"] is None or isinstance(err["param"], str)
    assert err["code"] is None or isinstance(err["code"], str)


def check_answer(r: httpx.Response, seen: Counter[int] | None = None) -> None:
    if seen is not None:
        seen[r.status_code] += 1
    assert r.status_code < 500, (r.status_code, r.text[:300])
    if r.status_code >= 400:
        check_openai_error(r.status_code, r.content)


def check_coverage(seen: Counter[int], expected: set[int], kinds: int = 1) -> None:
    """A fuzz run that was not cut short by the time budget reached these answers, and at least `kinds`
    different ones (not only 400s at the parser: inputs get past it to auth, the cache and the upstream)."""
    if sum(seen.values()) >= 100:
        assert expected <= set(seen) and len(seen) >= kinds, sorted(seen.items())


def check_alive(stack: Stack) -> None:
    """The one worker is the process we started (no restart can hide a crash) and still answers."""
    proc = stack.gateway.popen
    assert proc.poll() is None, f"gateway exited with {proc.returncode}:\n{stack.gateway.log()[-3000:]}"
    r = httpx.get(f"{stack.url}/health/live", timeout=10)
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def check_log(stack: Stack) -> None:
    log = stack.gateway.log()
    assert CANARY not in log, "a request body reached the gateway's log"
    assert "Traceback" not in log, log[-3000:]
    assert "failed inside the gateway" not in log, log[-3000:]


# -- strategies -----------------------------------------------------------------------------------------

texts = st.one_of(
    st.text(max_size=24),
    st.just(CANARY),
    st.builds(lambda a, b: a + CANARY + b, st.text(max_size=4), st.text(max_size=4)),
    st.sampled_from(["", " ", "\x00", "\u202e", "\ud7ff\uffff", "[DONE]", "data: x\n\n", "{", '"', "\\", "NaN"]),
)
numbers = st.one_of(
    st.integers(),
    st.integers(min_value=-(2 ** 200), max_value=2 ** 200),  # past 64 bits: orjson reads these as floats
    st.floats(allow_nan=True, allow_infinity=True),  # json.dumps writes NaN / Infinity tokens (invalid JSON)
    st.sampled_from([0, -1, 1, 2 ** 63, -(2 ** 63) - 1, 2 ** 64, 1e308, -1e308, 5e-324, 0.5, 2.0000001]),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, texts)


def _nest(value: Any, depth: int, kind: str) -> Any:
    for _ in range(depth):
        value = {"a": value} if kind == "obj" else [value]
    return value


json_values = st.recursive(
    st.one_of(
        scalars, scalars, scalars,
        st.builds(_nest, scalars, st.integers(1, 300), st.sampled_from(["obj", "arr"])),  # deep
        st.builds(lambda v, n: [v] * n, scalars, st.integers(0, 3000)),  # wide
    ),
    lambda kids: st.one_of(st.lists(kids, max_size=4), st.dictionaries(texts, kids, max_size=4)),
    max_leaves=12,
)

# per field: values a client could rightly send (so requests get past validation to auth, the cache and the
# upstream), mixed below with junk of every type
floats01 = st.floats(0, 1)
VALID: dict[str, Any] = {
    "stream": st.booleans(),
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
    "n": st.integers(1, 3),
    "max_tokens": st.integers(1, 40),
    "max_completion_tokens": st.integers(1, 40),
    "temperature": st.floats(0, 2),
    "top_p": floats01,
    "presence_penalty": st.floats(-2, 2),
    "frequency_penalty": st.floats(-2, 2),
    "seed": st.integers(-(2 ** 63), 2 ** 63 - 1),
    "stop": st.one_of(texts, st.lists(texts, max_size=3)),
    "user": texts,
    "tools": st.lists(st.just({"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}),
                      max_size=2),
    "tool_choice": st.sampled_from(["auto", "none", "required"]),
    "response_format": st.sampled_from([{"type": "json_object"}, {"type": "text"}]),
    "logit_bias": st.dictionaries(st.integers(0, 9999).map(str), st.integers(-100, 100), max_size=3),
    "metadata": st.dictionaries(texts, texts, max_size=3),
    "cache": st.fixed_dictionaries({}, optional={
        "no-cache": st.booleans(), "no-store": st.booleans(), "ttl": st.one_of(st.integers(), st.floats()),
        "s-maxage": st.integers(), "namespace": texts}),
    "encoding_format": st.sampled_from(["float", "base64"]),
    "dimensions": st.integers(1, 64),
    "logprobs": st.booleans(),
    "top_logprobs": st.integers(0, 5),
    "echo": st.booleans(),
    "top_k": st.integers(-1, 50),
}
FIELDS = (*VALID, "messages", "prompt", "input", "functions", "suffix", "best_of", "guided_json", "extra_headers",
          "api_base", "base_url", "custom_llm_provider", "mock_response", "parallel_tool_calls")
MAIN = {"chat": "messages", "completions": "prompt", "embeddings": "input"}
valid_main = {
    "messages": st.lists(st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "system", "assistant"]),
         "content": st.one_of(texts, st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": texts}),
                                              max_size=2))}), min_size=1, max_size=3),
    "prompt": st.one_of(texts, st.lists(texts, min_size=1, max_size=3), st.lists(st.integers(0, 50000), max_size=5)),
    "input": st.one_of(texts, st.lists(texts, min_size=1, max_size=3)),
}


@st.composite
def request_bodies(draw: Any, endpoint: str) -> dict[str, Any]:
    """A body for `endpoint` ("chat", "completions", "embeddings"): often right enough to reach auth, the
    cache and the upstream; often with a wrong type in some field, unknown fields or junk."""
    body: dict[str, Any] = {}
    if draw(st.integers(0, 9)):
        body["model"] = draw(st.sampled_from(ALIASES)) if draw(st.integers(0, 3)) else draw(
            st.one_of(texts, json_values))
    main = MAIN[endpoint]
    if draw(st.integers(0, 9)):
        body[main] = draw(valid_main[main]) if draw(st.integers(0, 3)) else draw(json_values)
    for name in draw(st.lists(st.one_of(st.sampled_from(FIELDS), texts), max_size=4, unique=True)):
        if name != "sim":  # the simulator's test hook (fault injection) is no part of the gateway's surface
            body[name] = draw(VALID[name]) if name in VALID and draw(st.integers(0, 2)) else draw(json_values)
    return body


def encode(value: Any, ascii_only: bool) -> bytes:
    """JSON text, NaN/Infinity written as tokens (JSON has none: the gateway must refuse them cleanly)."""
    return json.dumps(value, ensure_ascii=ascii_only, allow_nan=True).encode("utf-8", "surrogatepass")


def mutate(raw: bytes, at: int, cut: int, insert: bytes) -> bytes:
    at = at % (len(raw) + 1)
    return raw[:at] + insert + raw[at + cut:]


header_text = st.text(st.characters(min_codepoint=0x21, max_codepoint=0xFF, exclude_characters="\x7f"),
                      max_size=40).map(lambda s: s.encode("latin-1"))
auth_roles = st.one_of(st.sampled_from(["vkey", "master"]),  # half the time a key that may use every alias
                       st.sampled_from([None, "master", "vkey", "fast_only", "broke", "junk", "junk-bearer"]))
content_types = st.sampled_from([None, "application/json", "text/plain", "application/x-www-form-urlencoded",
                                 "multipart/form-data; boundary=x", "application/json; charset=latin-1",
                                 "application/vnd.api+json", "garbage/", "*/*"])


def headers_for(stack: Stack, role: str | None, junk: bytes, content_type: str | None) -> dict[str, Any]:
    headers: dict[str, Any] = {}
    if role == "junk":
        headers["Authorization"] = junk or b"x"
    elif role == "junk-bearer":
        headers["Authorization"] = b"Bearer " + (junk or b"x")
    else:
        headers.update(stack.auth(role))
    if content_type is not None:
        headers["Content-Type"] = content_type
    return headers


# -- raw HTTP (for what httpx refuses to send) --------------------------------------------------------------

def raw_http(port: int, request: bytes, timeout: float = 15.0) -> tuple[int, dict[str, str], bytes]:
    """Send bytes, read the answer until the server closes (send `Connection: close`)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    if headers.get("transfer-encoding") == "chunked":
        out = b""
        while body:
            size_line, _, rest = body.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            out += rest[:size]
            body = rest[size + 2:]
        body = out
    return status, headers, body


LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
_UNESCAPE = re.compile(r"\\(.)")


def label_values(metrics_text: str, label: str | None = None) -> set[str]:
    """Every label value of a Prometheus exposition (of one label name, or of all), unescaped."""
    out = set()
    for line in metrics_text.splitlines():
        if line.startswith("#") or "{" not in line:
            continue
        for name, value in LABEL.findall(line[line.index("{") + 1:line.rindex("}")]):
            if label is None or name == label:
                out.add(_UNESCAPE.sub(lambda m: "\n" if m.group(1) == "n" else m.group(1), value))
    return out
