"""The dashboards and recording rules against a real Prometheus scraping a real gateway under traffic.

A gateway (2 workers, exact cache on) in front of simulators that also serve vLLM's and dcgm-exporter's
metric names; traffic of every kind runs while Prometheus (the Debian package) scrapes every second;
every PromQL expression of every dashboard panel and every recording rule must return data.
"""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from scripts import promql
from tests.helpers import deployment, metric_value, metrics
from tests.procs import Proc, free_port, start_gateway, start_simulator, write_config

PRICES = {"input_cost_per_token": 0.0000006, "output_cost_per_token": 0.0000024, "gpu_hourly_cost_usd": 2.5,
          "gpu_count": 1}


def _traffic(gw: Proc, stop: threading.Event) -> None:
    async def run() -> None:
        ac = openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="none", max_retries=0)

        async def one(i: int) -> None:
            alias = ("smart", "fast", "long", "flaky")[i % 4]
            msg = [{"role": "user", "content": f"question {i % 5}"}]  # repeats: cache hits
            try:
                if i % 3 == 0:  # unique prompts: streams reach the upstream (TTFT, inter-token latency)
                    stream = await ac.chat.completions.create(
                        model=alias, messages=[{"role": "user", "content": f"stream {i}"}], max_tokens=8, stream=True)
                    async for _ in stream:
                        pass
                else:
                    await ac.chat.completions.create(model=alias, messages=msg, max_tokens=6,
                                                     extra_body={"cache": {"no-cache": i % 2 == 0}})
            except openai.APIError:
                pass  # errors are part of the traffic the dashboards show

        i = 0
        while not stop.is_set():
            await asyncio.gather(*(one(i + k) for k in range(8)))
            i += 8
            await asyncio.sleep(0.05)
        await ac.close()

    asyncio.run(run())


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, redis_server: Proc) -> Iterator[tuple[str, Proc]]:
    if shutil.which("prometheus") is None:
        pytest.skip("prometheus is not installed: run ./scripts/setup.sh")
    sims = [start_simulator("--model", name, "--ttft", "0.02", "--tps", "400", "--gpu-index", str(i))
            for i, name in enumerate(("gpt-oss-120b", "Qwen3-8B", "Qwen2.5-14B"))]
    broken = start_simulator("--fault", "500")
    config = {
        "model_list": [
            deployment("smart", sims[0], "gpt-oss-120b", id="smart-gpu0", **PRICES),
            deployment("smart", broken, "gpt-oss-120b", id="smart-gpu9", **PRICES),
            deployment("fast", sims[1], "Qwen3-8B", id="fast-gpu1", **PRICES),
            deployment("long", sims[2], "Qwen2.5-14B", id="long-gpu2", **PRICES),
            deployment("flaky", broken, "flaky-model", id="flaky-gpu9", **PRICES),
        ],
        "router_settings": {"num_retries": 1, "allowed_fails": 1, "cooldown_time": 2,
                            "fallbacks": [{"flaky": ["fast"]}]},
        "litellm_settings": {"cache": True, "cache_params": {"type": "redis", "ttl": 600,
                                                             "namespace": "prom-test"}},
    }
    path = write_config(config, tmp_path_factory.mktemp("gw"))
    gw = start_gateway(path, workers=2, env={"GATEWAY_REDIS_URL": str(redis_server.extra["url"])})
    stop = threading.Event()
    traffic = threading.Thread(target=_traffic, args=(gw, stop), daemon=True)
    traffic.start()
    # one good and one rejected reload, so the reload panels have both results
    path.write_text(path.read_text() + "\n# touched\n")
    time.sleep(0.6)
    good = path.read_text()
    path.write_text("model_list: [")
    time.sleep(0.6)
    path.write_text(good)
    sim_targets = [f"127.0.0.1:{s.port}" for s in sims]
    prom_config = promql.prometheus_config({
        "gateway": [f"127.0.0.1:{gw.port}"],
        "vllm": sim_targets,
        "dcgm-exporter": sim_targets,
    })
    port = free_port()
    prom = promql.start_prometheus(prom_config, port, Path(tmp_path_factory.mktemp("prometheus")))
    try:
        yield f"http://127.0.0.1:{port}", gw
    finally:
        stop.set()
        traffic.join(10)
        prom.terminate()
        prom.wait(10)
        for p in (gw, broken, *sims):
            p.stop()


def test_gateway_feeds_every_dashboard_panel_and_rule(live: tuple[str, Proc]) -> None:
    url, gw = live
    queries = promql.all_dashboard_queries() + promql.rule_queries()
    assert len(queries) > 50
    results = promql.wait_for_data(url, queries, timeout=90, nan_is_data=False)
    missing = promql.without_data(results, nan_is_data=False)
    assert not missing, "no data for:\n" + promql.report(missing)
    text = metrics(gw)
    assert metric_value(text, "oss_cache_saved_usd_total") > 0
    assert metric_value(text, "oss_fallbacks_total", from_alias="flaky", to_alias="fast") > 0
    assert metric_value(text, "oss_deployment_cooldowns_total", deployment="smart-gpu9") > 0


def test_seed_query_as_written(live: tuple[str, Proc]) -> None:
    """design.md's query: USD per token for each series, matching the three counters one to one."""
    url, _ = live
    seed = ("rate(oss_token_cost_usd_total[1h]) / "
            "(rate(oss_completion_tokens_total[1h]) + rate(oss_prompt_tokens_total[1h]))")
    deadline = time.monotonic() + 60
    series: list[dict[str, object]] = []
    while time.monotonic() < deadline:
        series = [s for s in promql.instant_query(url, seed) if s["value"][1] not in ("NaN", "+Inf")]
        if {s["metric"]["deployment"] for s in series} >= {"smart-gpu0", "fast-gpu1", "long-gpu2"}:
            break
        time.sleep(1)
    assert series
    for s in series:
        usd_per_token = float(s["value"][1])
        # a blend of the input and output price, never outside them
        assert PRICES["input_cost_per_token"] * 0.999 <= usd_per_token <= PRICES["output_cost_per_token"] * 1.001
