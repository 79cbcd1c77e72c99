"""Token and cost counters equal the upstream's usage times the configured prices, exactly,
for streamed and plain requests, with one worker and with two."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import openai
import pytest

from tests.helpers import deployment, metric_value, metrics, sim_stats
from tests.procs import Proc

IN_PRICE = 0.0000025
OUT_PRICE = 0.00001


@pytest.mark.parametrize("workers", [1, 2])
def test_token_and_cost_counters_are_exact(make_sim: Callable[..., Proc], make_gateway: Callable[..., Proc],
                                           workers: int) -> None:
    sim = make_sim("--model", "gpt-oss-120b")
    gw = make_gateway({"model_list": [deployment("smart", sim, "gpt-oss-120b", id="smart-gpu0",
                                                 input_cost_per_token=IN_PRICE, output_cost_per_token=OUT_PRICE,
                                                 gpu_hourly_cost_usd=2.5, gpu_count=2)]}, workers=workers)

    async def traffic() -> tuple[int, int]:
        ac = openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="none", max_retries=0)
        prompt = completion = 0

        async def plain(i: int) -> tuple[int, int]:
            r = await ac.chat.completions.create(
                model="smart", max_tokens=3 + i % 7,
                messages=[{"role": "user", "content": "tell me something " + "x " * i}])
            assert r.usage is not None
            return r.usage.prompt_tokens, r.usage.completion_tokens

        async def streamed(i: int) -> tuple[int, int]:
            stream = await ac.chat.completions.create(
                model="smart", max_tokens=2 + i % 5, stream=True, stream_options={"include_usage": True},
                messages=[{"role": "user", "content": "stream " + "y " * i}])
            usage = None
            async for ch in stream:
                usage = ch.usage or usage
            assert usage is not None
            return usage.prompt_tokens, usage.completion_tokens

        async def streamed_no_usage(i: int) -> int:
            stream = await ac.chat.completions.create(model="smart", max_tokens=4, stream=True,
                                                      messages=[{"role": "user", "content": "z " * i}])
            return sum([1 async for ch in stream if ch.choices and ch.choices[0].delta.content])

        results = await asyncio.gather(*(plain(i) for i in range(40)), *(streamed(i) for i in range(40)))
        hidden = await asyncio.gather(*(streamed_no_usage(i) for i in range(20)))
        assert all(n == 4 for n in hidden)
        for p, c in results:
            prompt += p
            completion += c
        await ac.close()
        return prompt, completion

    prompt, completion = asyncio.run(traffic())
    # the simulator's own books: what it served (the 20 usage-less streams were counted upstream too)
    stats = sim_stats(sim)
    assert stats["completion_tokens"] == completion + 20 * 4
    text = metrics(gw)
    labels = {"alias": "smart", "model": "gpt-oss-120b", "deployment": "smart-gpu0", "estimated": "false"}
    assert metric_value(text, "oss_prompt_tokens_total", **labels) == stats["prompt_tokens"]
    assert metric_value(text, "oss_completion_tokens_total", **labels) == stats["completion_tokens"]
    cost = metric_value(text, "oss_token_cost_usd_total", **labels)
    assert cost == pytest.approx(stats["prompt_tokens"] * IN_PRICE + stats["completion_tokens"] * OUT_PRICE,
                                 rel=1e-9)
    assert metric_value(text, "oss_requests_total", alias="smart", status_class="2xx") == 100
    assert metric_value(text, "oss_deployment_gpu_cost_usd_per_hour", deployment="smart-gpu0") == 5.0
    assert metric_value(text, "oss_request_duration_seconds_count", alias="smart") == 100
    assert metric_value(text, "oss_time_to_first_token_seconds_count", alias="smart") == 60
    assert metric_value(text, "oss_in_flight_requests", alias="smart") == 0
    # no estimated series: the upstream sent usage for everything (include_usage was asked for upstream)
    assert metric_value(text, "oss_completion_tokens_total", estimated="true") == 0
