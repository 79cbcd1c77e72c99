"""The simulator with its engine model, as a process: cached_tokens in usage, vLLM's engine series on
/metrics, queueing beyond max_num_seqs, a disconnect freeing the engine, and flags that are checked."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable

import httpx
import openai

from tests.helpers import metric_value
from tests.procs import Proc

ENGINE = ("--prefill-tps", "1000000", "--decode-tps", "1000", "--max-num-seqs", "2", "--block-size", "16")
SYSTEM = {"role": "system", "content": " ".join(f"policy{i}" for i in range(200))}


def scrape(sim: Proc) -> str:
    return httpx.get(f"{sim.url}/metrics", timeout=5).text


def wait_for(cond: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_cached_tokens_and_prefix_cache_series(make_sim: Callable[..., Proc]) -> None:
    sim = make_sim(*ENGINE, "--enable-prompt-tokens-details")
    client = openai.OpenAI(base_url=f"{sim.url}/v1", api_key="x", max_retries=0)
    first = client.chat.completions.create(model="m", messages=[SYSTEM, {"role": "user", "content": "one"}],
                                           max_tokens=4)
    assert first.usage is not None and first.usage.prompt_tokens == 200 + 3 + 1 + 3
    assert first.usage.prompt_tokens_details is None  # nothing cached: vLLM leaves the details out
    messages = [SYSTEM, {"role": "user", "content": "one"},
                {"role": "assistant", "content": first.choices[0].message.content},
                {"role": "user", "content": "two"}]
    stream = client.chat.completions.create(model="m", messages=messages, max_tokens=3, stream=True,  # type: ignore[arg-type]
                                            stream_options={"include_usage": True})
    usage = [c.usage for c in stream if c.usage is not None]
    assert len(usage) == 1 and usage[0].prompt_tokens_details is not None
    cached = usage[0].prompt_tokens_details.cached_tokens
    # the first call left 207 prompt + 3 hidden header + 3 of its 4 answer tokens (the last one sampled
    # is never computed) = 213 tokens in the KV cache: 13 full blocks of 16, which this prompt starts with
    assert cached == 13 * 16
    text = scrape(sim)
    assert metric_value(text, "vllm:prefix_cache_queries_total") == (207 + 3) + (usage[0].prompt_tokens + 3)
    assert metric_value(text, "vllm:prefix_cache_hits_total") == cached
    for name in ("vllm:time_to_first_token_seconds_count", "vllm:request_queue_time_seconds_count",
                 "vllm:request_prefill_time_seconds_count", "vllm:request_decode_time_seconds_count",
                 "vllm:time_per_output_token_seconds_count", "vllm:e2e_request_latency_seconds_count"):
        assert metric_value(text, name) == 2, name
    assert metric_value(text, "vllm:num_preemptions_total") == 0
    assert 'vllm:cache_config_info{block_size="16"' in text and 'num_gpu_blocks="4096"' in text
    plain = openai.OpenAI(base_url=f"{make_sim(*ENGINE).url}/v1", api_key="x", max_retries=0)
    again = plain.chat.completions.create(model="m", messages=messages, max_tokens=3)
    assert again.usage is not None and again.usage.prompt_tokens_details is None  # without the flag


def test_default_simulator_has_no_engine_series(make_sim: Callable[..., Proc]) -> None:
    text = scrape(make_sim())
    assert "vllm:num_requests_running" in text and "vllm:prefix_cache_queries" not in text


async def test_requests_beyond_max_num_seqs_wait_and_a_disconnect_frees_the_engine(
        make_sim: Callable[..., Proc]) -> None:
    sim = make_sim("--prefill-tps", "1000000", "--decode-tps", "20", "--max-num-seqs", "2")

    async def hold(http: httpx.AsyncClient, i: int) -> None:
        body = {"model": "m", "messages": [{"role": "user", "content": f"job {i}"}], "max_tokens": 2000,
                "stream": True}
        async with http.stream("POST", f"{sim.url}/v1/chat/completions", json=body) as resp:
            async for _ in resp.aiter_raw():
                pass

    def gauges() -> tuple[float, float, float]:
        text = scrape(sim)
        return (metric_value(text, "vllm:num_requests_running"), metric_value(text, "vllm:num_requests_waiting"),
                metric_value(text, "vllm:kv_cache_usage_perc"))

    async with httpx.AsyncClient(timeout=60) as http:
        tasks = [asyncio.create_task(hold(http, i)) for i in range(3)]
        try:
            await asyncio.to_thread(wait_for, lambda: gauges()[:2] == (2, 1), "2 running, 1 waiting")
            assert gauges()[2] > 0
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.to_thread(wait_for, lambda: gauges() == (0, 0, 0), "the engine to be idle and empty")
    text = scrape(sim)
    assert metric_value(text, "vllm:request_success_total", finished_reason="abort") == 3


def test_engine_flags_are_checked() -> None:
    for args, message in (
        (["--decode-tps", "0"], "decode_tps must be > 0"),
        (["--prefill-tps", "100", "--kv-cache-tokens", "4096"], "must hold --max-model-len"),
        (["--prefill-tps", "100", "--block-size", "0"], "--block-size must be >= 1"),
    ):
        out = subprocess.run([sys.executable, "-m", "gateway.simulator", *args], capture_output=True, text=True,
                             timeout=30)
        assert out.returncode == 2 and message in out.stderr, (args, out.stderr)
