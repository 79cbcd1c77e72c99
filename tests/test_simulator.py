"""The upstream simulator (gateway.simulator) against the official openai SDK."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.procs import Proc, start_simulator

MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Name three colours of the rainbow please"},
]
PROMPT_TOKENS = (3 + 3) + (7 + 3)  # words + 3 per message


# ---- helpers --------------------------------------------------------------------------------------
def http(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    req = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def stats(sim: Proc) -> dict[str, Any]:
    return json.loads(http("GET", f"{sim.url}/sim/stats")[1])


def wait_stats(sim: Proc, key: str, value: int, timeout: float = 3.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        current = stats(sim)
        if current[key] == value or time.monotonic() > deadline:
            return current
        time.sleep(0.02)


def sse_events(raw: bytes) -> list[str]:
    return [line[len("data: ") :] for line in raw.decode().split("\n\n") if line.startswith("data: ")]


# ---- fixtures -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sim() -> Iterator[Proc]:
    proc = start_simulator("--model", "sim-a", "--model", "sim-b", "--gpu-index", "3")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def sim2() -> Iterator[Proc]:
    """llama.cpp-like streaming usage, strict models, small context, CLI faults, nested errors, 2 GPUs."""
    proc = start_simulator(
        "--model",
        "only",
        "--strict-models",
        "--no-stream-usage",
        "--max-model-len",
        "64",
        "--fault",
        "500",
        "--fault-rate",
        "0.5",
        "--seed",
        "7",
        "--error-style",
        "nested",
        "--no-dcgm",
        "--embedding-dim",
        "8",
    )
    yield proc
    proc.stop()


@pytest.fixture(autouse=True)
def _reset(request: pytest.FixtureRequest) -> None:
    for name in ("sim", "sim2"):
        if name in request.fixturenames:
            proc: Proc = request.getfixturevalue(name)
            http("POST", f"{proc.url}/sim/reset")
            http("POST", f"{proc.url}/sim/config", {"reset": True})


@pytest.fixture
def client(sim: Proc) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{sim.url}/v1", api_key="unused", max_retries=0, timeout=5)


@pytest.fixture
def client2(sim2: Proc) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{sim2.url}/v1", api_key="unused", max_retries=0, timeout=5)


HEALTHY = {"sim": {"fault": None}}  # per-request override of sim2's CLI fault


# ---- endpoints ------------------------------------------------------------------------------------
def test_health_models_version(sim: Proc, client: openai.OpenAI) -> None:
    assert http("GET", f"{sim.url}/health")[0] == 200
    assert [m.id for m in client.models.list()] == ["sim-a", "sim-b"]
    assert http("GET", f"{sim.url}/models")[0] == 200  # also without /v1
    assert json.loads(http("GET", f"{sim.url}/version")[1])["version"]


def test_chat_plain_exact_usage_and_determinism(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="sim-b", messages=MESSAGES, max_tokens=7)
    assert r.id.startswith("chatcmpl-") and r.object == "chat.completion" and r.model == "sim-b"
    assert r.created > 0
    choice = r.choices[0]
    assert choice.finish_reason == "length" and choice.message.role == "assistant"
    assert r.usage is not None
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (
        PROMPT_TOKENS,
        7,
        PROMPT_TOKENS + 7,
    )
    content = choice.message.content or ""
    assert len(content.split()) == 7 and content.startswith(" Name three colours")
    again = client.chat.completions.create(model="sim-b", messages=MESSAGES, max_tokens=7)
    assert again.choices[0].message.content == content
    other = client.chat.completions.create(
        model="sim-b", messages=[{"role": "user", "content": "x"}], max_tokens=7
    )
    assert other.choices[0].message.content != content

    default = client.chat.completions.create(model="anything", messages=MESSAGES)  # any model accepted
    assert default.usage is not None and default.usage.completion_tokens == 16
    assert default.choices[0].finish_reason == "stop" and default.model == "anything"
    mct = client.chat.completions.create(model="sim-a", messages=MESSAGES, max_completion_tokens=3)
    assert mct.usage is not None and mct.usage.completion_tokens == 3


def test_chat_stream_with_usage(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="sim-a",
            messages=MESSAGES,
            max_tokens=5,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].choices[0].delta.content == ""
    tokens = chunks[1:-1]
    assert len(tokens) == 5
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert [c.choices[0].finish_reason for c in tokens] == [None] * 4 + ["length"]
    assert all((c.choices[0].delta.content or "").startswith(" ") for c in tokens)
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (PROMPT_TOKENS, 5)
    assert all(c.usage is None for c in chunks[:-1])


def test_chat_stream_raw_shape_without_usage(sim: Proc) -> None:
    status, raw = http(
        "POST",
        f"{sim.url}/chat/completions",  # the path without /v1 too
        {"model": "sim-a", "messages": MESSAGES, "max_tokens": 3, "stream": True},
    )
    events = sse_events(raw)
    assert status == 200 and events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert len(chunks) == 1 + 3 and all("usage" not in c for c in chunks)  # vLLM omits the key
    assert "".join(c["choices"][0]["delta"]["content"] for c in chunks).split() == [
        "Name",
        "three",
        "colours",
    ]


def test_no_stream_usage_flag(client2: openai.OpenAI) -> None:
    chunks = list(
        client2.chat.completions.create(
            model="only",
            messages=MESSAGES,
            max_tokens=4,
            stream=True,
            stream_options={"include_usage": True},
            extra_body=HEALTHY,
        )
    )
    assert len(chunks) == 1 + 4 and all(c.usage is None for c in chunks) and chunks[-1].choices
    plain = client2.chat.completions.create(model="only", messages=MESSAGES, max_tokens=4, extra_body=HEALTHY)
    assert plain.usage is not None and plain.usage.completion_tokens == 4


def test_completions_plain_and_stream(sim: Proc, client: openai.OpenAI) -> None:
    r = client.completions.create(model="sim-a", prompt="once upon a time there", max_tokens=6)
    assert r.id.startswith("cmpl-") and r.object == "text_completion"
    assert r.usage is not None and (r.usage.prompt_tokens, r.usage.completion_tokens) == (5, 6)
    assert len(r.choices[0].text.split()) == 6 and r.choices[0].finish_reason == "length"
    ids = client.completions.create(model="sim-a", prompt=[1, 2, 3, 4], max_tokens=2)
    assert ids.usage is not None and ids.usage.prompt_tokens == 4

    chunks = list(
        client.completions.create(
            model="sim-a",
            prompt="once upon a time there",
            max_tokens=6,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].text for c in chunks[:-1]) == r.choices[0].text
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 11
    assert http("POST", f"{sim.url}/completions", {"prompt": "a", "max_tokens": 1})[0] == 200


def test_embeddings(client: openai.OpenAI, client2: openai.OpenAI) -> None:
    r = client.embeddings.create(
        model="sim-a",
        input=["the red cat sat", "the red cat sat down", "quantum finance"],
        encoding_format="float",
    )
    assert r.usage.prompt_tokens == 4 + 5 + 2 and r.usage.total_tokens == 11
    vectors = [d.embedding for d in r.data]
    assert [len(v) for v in vectors] == [384] * 3
    assert all(abs(math.sqrt(sum(x * x for x in v)) - 1) < 1e-6 for v in vectors)

    def cos(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True))

    assert cos(vectors[0], vectors[1]) > cos(vectors[0], vectors[2])
    same = client.embeddings.create(model="sim-a", input="the red cat sat", encoding_format="float")
    assert same.data[0].embedding == vectors[0]
    b64 = client.embeddings.create(model="sim-a", input="the red cat sat", encoding_format="base64")
    raw = b64.data[0].embedding
    decoded = memoryview(base64.b64decode(raw)).cast("f").tolist() if isinstance(raw, str) else raw
    assert all(abs(x - y) < 1e-6 for x, y in zip(decoded, vectors[0], strict=True))
    small = client2.embeddings.create(model="only", input="hi", encoding_format="float", extra_body=HEALTHY)
    assert len(small.data[0].embedding) == 8


def test_tokenize_matches_usage(sim: Proc, client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="sim-a", messages=MESSAGES, max_tokens=1)
    status, body = http("POST", f"{sim.url}/tokenize", {"model": "sim-a", "messages": MESSAGES})
    tok = json.loads(body)
    assert status == 200 and r.usage is not None
    assert tok["count"] == len(tok["tokens"]) == r.usage.prompt_tokens and tok["max_model_len"] == 8192
    tok = json.loads(http("POST", f"{sim.url}/tokenize", {"model": "sim-a", "prompt": "one two three"})[1])
    assert tok["count"] == 3


# ---- errors and faults ----------------------------------------------------------------------------
def test_context_length_error_shape(client: openai.OpenAI, client2: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="sim-a", messages=MESSAGES, max_tokens=8190)
    assert err.value.response.json() == {
        "object": "error",
        "message": "This model's maximum context length is 8192 tokens. However, you requested "
        f"{PROMPT_TOKENS + 8190} tokens ({PROMPT_TOKENS} in the messages, 8190 in the completion). "
        "Please reduce the length of the messages or completion.",
        "type": "BadRequestError",
        "param": None,
        "code": 400,
    }
    with pytest.raises(openai.BadRequestError) as err:  # --max-model-len 64, --error-style nested
        client2.chat.completions.create(model="only", messages=MESSAGES, max_tokens=60, extra_body=HEALTHY)
    body = err.value.response.json()
    assert (
        body["error"]["type"] == "BadRequestError"
        and "maximum context length is 64 tokens" in body["error"]["message"]
    )


def test_http_faults(client: openai.OpenAI) -> None:
    for fault, exc_type in (
        ("500", openai.InternalServerError),
        ("502", openai.InternalServerError),
        ("503", openai.InternalServerError),
        ("429", openai.RateLimitError),
        ("context", openai.BadRequestError),
    ):
        with pytest.raises(exc_type) as err:
            client.chat.completions.create(
                model="sim-a", messages=MESSAGES, extra_body={"sim": {"fault": fault}}
            )
        status = 400 if fault == "context" else int(fault)
        assert err.value.status_code == status
        body = err.value.response.json()
        assert body["object"] == "error" and body["code"] == status
        if fault == "429":
            assert err.value.response.headers["retry-after"] == "1"
        if fault == "context":
            assert "maximum context length" in body["message"]
    with pytest.raises(openai.InternalServerError):
        client.embeddings.create(model="sim-a", input="x", extra_body={"sim": {"fault": "503"}})


def test_drop_and_reset(sim: Proc, client: openai.OpenAI) -> None:
    for fault in ("drop", "reset"):
        with pytest.raises(openai.APIConnectionError):
            client.chat.completions.create(
                model="sim-a", messages=MESSAGES, extra_body={"sim": {"fault": fault}}
            )
        got: list[Any] = []
        # an abrupt close, not a clean end of stream (openai 2.x lets httpx's error through mid-stream)
        with pytest.raises((openai.APIConnectionError, httpx.TransportError)):
            for chunk in client.chat.completions.create(
                model="sim-a",
                messages=MESSAGES,
                stream=True,
                extra_body={"sim": {"fault": fault, "fault_after_tokens": 2}},
            ):
                got.append(chunk)
        assert len(got) == 1 + 2
    s = stats(sim)
    assert s["faults"] == {"drop": 2, "reset": 2} and s["cancelled"] == 0 and s["in_flight"] == 0


def test_mid_stream_error_event(sim: Proc, client: openai.OpenAI) -> None:
    got: list[Any] = []
    with pytest.raises(openai.APIError, match="EngineCore"):
        for chunk in client.chat.completions.create(
            model="sim-a",
            messages=MESSAGES,
            stream=True,
            extra_body={"sim": {"fault": "500", "fault_after_tokens": 3}},
        ):
            got.append(chunk)
    assert len(got) == 1 + 3
    status, raw = http(
        "POST",
        f"{sim.url}/v1/completions",
        {"prompt": "a b", "stream": True, "sim": {"fault": "503", "fault_after_tokens": 1}},
    )
    events = sse_events(raw)
    assert status == 200 and events[-1] == "[DONE]" and json.loads(events[-2])["error"]["code"] == 503


def test_cli_fault_rate_and_per_request_override(sim2: Proc, client2: openai.OpenAI) -> None:
    outcomes = []
    for _ in range(30):
        try:
            client2.chat.completions.create(model="only", messages=MESSAGES, max_tokens=1)
            outcomes.append(200)
        except openai.InternalServerError as exc:
            assert exc.response.json()["error"]["code"] == 500  # --error-style nested
            outcomes.append(500)
    assert 5 < outcomes.count(500) < 25
    assert stats(sim2)["faults"]["500"] == outcomes.count(500)
    with pytest.raises(openai.NotFoundError):  # --strict-models
        client2.chat.completions.create(model="nope", messages=MESSAGES, extra_body=HEALTHY)


def test_sim_config_api(sim: Proc, client: openai.OpenAI) -> None:
    status, body = http("POST", f"{sim.url}/sim/config", {"fault": 503})
    assert status == 200 and json.loads(body)["fault"] == "503"
    assert json.loads(http("GET", f"{sim.url}/sim/config")[1])["fault_rate"] == 1.0
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="sim-a", messages=MESSAGES)
    client.chat.completions.create(model="sim-a", messages=MESSAGES, extra_body=HEALTHY)
    assert http("POST", f"{sim.url}/sim/config", {"bogus": 1})[0] == 400
    assert http("POST", f"{sim.url}/sim/config", {"ttft": -1})[0] == 400
    assert json.loads(http("POST", f"{sim.url}/sim/config", {"reset": True})[1])["fault"] is None
    client.chat.completions.create(model="sim-a", messages=MESSAGES)


def test_bad_requests(sim: Proc) -> None:
    assert http("POST", f"{sim.url}/v1/chat/completions", b"{not json")[0] == 400
    assert http("POST", f"{sim.url}/v1/chat/completions", {"model": "sim-a"})[0] == 400
    assert http("POST", f"{sim.url}/v1/chat/completions", {"messages": MESSAGES, "max_tokens": 0})[0] == 400
    assert (
        http("POST", f"{sim.url}/v1/chat/completions", {"messages": MESSAGES, "sim": {"fault": "x"}})[0]
        == 400
    )
    assert stats(sim)["errors"] == 4


# ---- timing, cancellation and stats -----------------------------------------------------------------
def test_ttft_and_tps(client: openai.OpenAI) -> None:
    start = time.monotonic()
    stream = client.chat.completions.create(
        model="sim-a",
        messages=MESSAGES,
        max_tokens=6,
        stream=True,
        extra_body={"sim": {"ttft": 0.2, "tps": 50}},
    )
    arrivals = [
        time.monotonic() - start for chunk in stream if chunk.choices and chunk.choices[0].delta.content
    ]
    assert len(arrivals) == 6
    assert 0.2 <= arrivals[0] < 0.45
    assert 0.08 <= arrivals[-1] - arrivals[0] < 0.35  # 5 more tokens at 50/s
    start = time.monotonic()
    client.chat.completions.create(
        model="sim-a", messages=MESSAGES, max_tokens=6, extra_body={"sim": {"ttft": 0.1, "tps": 50}}
    )
    assert 0.2 <= time.monotonic() - start < 0.5


def test_cancel_counts_hang_and_ttft(sim: Proc) -> None:
    quick = openai.OpenAI(base_url=f"{sim.url}/v1", api_key="x", max_retries=0, timeout=0.3)
    with pytest.raises(openai.APITimeoutError):
        quick.chat.completions.create(model="sim-a", messages=MESSAGES, extra_body={"sim": {"fault": "hang"}})
    with pytest.raises(openai.APITimeoutError):
        quick.chat.completions.create(model="sim-a", messages=MESSAGES, extra_body={"sim": {"ttft": 5}})
    s = wait_stats(sim, "cancelled", 2)
    assert s["cancelled"] == 2 and s["in_flight"] == 0 and s["completed"] == 0


async def test_cancel_stream_midway(sim: Proc) -> None:
    client = openai.AsyncOpenAI(base_url=f"{sim.url}/v1", api_key="x", max_retries=0, timeout=5)
    stream = await client.chat.completions.create(
        model="sim-a", messages=MESSAGES, max_tokens=100, stream=True, extra_body={"sim": {"tps": 50}}
    )
    seen = 0
    async for _chunk in stream:
        seen += 1
        if seen == 3:
            break
    await stream.close()
    for _ in range(150):
        s = stats(sim)
        if s["cancelled"] == 1:
            break
        await asyncio.sleep(0.02)
    assert s["cancelled"] == 1 and s["in_flight"] == 0 and s["completed"] == 0
    await client.close()


def test_stats_last_request_and_reset(sim: Proc, client: openai.OpenAI) -> None:
    client.chat.completions.create(
        model="sim-a",
        messages=MESSAGES,
        max_tokens=2,
        extra_headers={"X-Trace": "abc"},
        tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        response_format={"type": "json_object"},
        extra_body={"custom_field": [1, 2]},
    )
    s = stats(sim)
    assert (
        s["requests"] == {"/v1/chat/completions": 1} and s["completed"] == 1 and s["models"] == {"sim-a": 1}
    )
    assert s["last_request"]["custom_field"] == [1, 2] and s["last_request"]["tools"][0]["type"] == "function"
    assert (
        s["last_headers"]["x-trace"] == "abc"
        and s["last_headers"]["authorization"] == f"Bearer {client.api_key}"
    )
    assert (s["prompt_tokens"], s["completion_tokens"]) == (PROMPT_TOKENS, 2)
    reset = json.loads(http("POST", f"{sim.url}/sim/reset")[1])
    assert reset["requests"] == {} and reset["completed"] == 0 and reset["last_request"] is None


async def test_metrics(sim: Proc, client: openai.OpenAI) -> None:
    def sample(text: str, name: str, labels: str) -> float:
        match = re.search(rf"^{re.escape(name)}\{{{labels}\}} (\S+)$", text, re.M)
        assert match, f"{name}{{{labels}}} missing"
        return float(match.group(1))

    before = http("GET", f"{sim.url}/metrics")[1].decode()
    client.chat.completions.create(model="sim-b", messages=MESSAGES, max_tokens=4)
    list(client.chat.completions.create(model="sim-b", messages=MESSAGES, max_tokens=2, stream=True))
    slow = asyncio.create_task(
        asyncio.to_thread(
            client.chat.completions.create,
            model="sim-b",
            messages=MESSAGES,
            max_tokens=1,
            extra_body={"sim": {"ttft": 0.5}},
        )
    )
    await asyncio.sleep(0.2)
    during = http("GET", f"{sim.url}/metrics")[1].decode()
    await slow
    after = http("GET", f"{sim.url}/metrics")[1].decode()

    model = 'model_name="sim-b"'
    assert sample(during, "vllm:num_requests_running", model) == 1
    assert sample(during, "vllm:kv_cache_usage_perc", model) > 0
    assert sample(during, "vllm:gpu_cache_usage_perc", model) > 0
    assert sample(after, "vllm:num_requests_running", model) == 0
    assert sample(after, "vllm:num_requests_waiting", model) == 0

    def delta(name: str, labels: str = model) -> float:
        return sample(after, name, labels) - sample(before, name, labels)

    assert delta("vllm:prompt_tokens_total") == 3 * PROMPT_TOKENS
    assert delta("vllm:generation_tokens_total") == 4 + 2 + 1
    assert delta("vllm:request_success_total", f'finished_reason="length",{model}') == 3
    assert delta("vllm:time_to_first_token_seconds_count") == 3
    assert delta("vllm:time_to_first_token_seconds_sum") >= 0.5
    assert delta("vllm:e2e_request_latency_seconds_count") == 3
    assert (
        delta("vllm:e2e_request_latency_seconds_bucket", f'le="0.3",{model}') == 2
    )  # the slow one took > 0.5 s
    gpu = re.search(r"^DCGM_FI_DEV_FB_USED\{(.*)\} (\S+)$", after, re.M)
    assert gpu is not None
    for label in (
        'gpu="3"',
        'UUID="GPU-',
        'modelName="NVIDIA H100 80GB HBM3"',
        "Hostname=",
        'device="nvidia3"',
    ):
        assert label in gpu.group(1)
    assert "DCGM_FI_DEV_FB_FREE{" in after and "DCGM_FI_DEV_GPU_UTIL{" in after


def test_no_dcgm(sim2: Proc) -> None:
    text = http("GET", f"{sim2.url}/metrics")[1].decode()
    assert "DCGM_FI" not in text and 'vllm:num_requests_running{model_name="only"} 0.0' in text
