"""A live metrics stack for tests and dashboard renders: vLLM-like simulators (also serving vLLM's and
dcgm-exporter's metric names), a gateway with a Redis-backed cache, a shadow and a canary (docs/rollout.md),
traffic of every kind, and a real Prometheus scraping them every second with the shipped recording and alert
rules."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai

from scripts import promql
from tests.helpers import deployment
from tests.procs import Proc, free_port, start_gateway, start_simulator, write_config

PRICES = {"input_cost_per_token": 0.0000006, "output_cost_per_token": 0.0000024, "gpu_hourly_cost_usd": 2.5,
          "gpu_count": 1}
MODELS = ("gpt-oss-120b", "Qwen3-8B", "Qwen2.5-14B")


MASTER_KEY = "sk-live-stack-master-key"
TEAM_KEYS = (("search-ranker", "search"), ("search-indexer", "search"), ("support-bot", "support"),
             ("batch-jobs", None))


def create_keys(gw: Proc) -> list[str]:
    """Teams and virtual keys, so spend has teams and keys (the last key has no team)."""
    admin = {"Authorization": f"Bearer {MASTER_KEY}"}
    for team in sorted({t for _, t in TEAM_KEYS if t}):
        httpx.post(f"{gw.url}/team/new", headers=admin, json={"team_id": team}, timeout=10).raise_for_status()
    keys = []
    for alias, team in TEAM_KEYS:
        body = {"key_alias": alias, **({"team_id": team} if team else {})}
        r = httpx.post(f"{gw.url}/key/generate", headers=admin, json=body, timeout=10)
        r.raise_for_status()
        keys.append(str(r.json()["key"]))
    return keys


def traffic(gw: Proc, stop: threading.Event, keys: list[str], rate_pause: float = 0.05) -> None:
    """Plain and streamed requests over every alias and key (repeats hit the cache; `flaky` falls back)."""

    async def run() -> None:
        clients = [openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key=k, max_retries=0) for k in keys]

        async def one(i: int) -> None:
            alias = ("smart", "fast", "long", "flaky")[i % 4]
            ac = clients[(i // 4) % len(clients)]
            try:
                if i % 3 == 0:  # unique prompts: streams reach the upstream (TTFT, inter-token latency)
                    stream = await ac.chat.completions.create(
                        model=alias, messages=[{"role": "user", "content": f"stream {i}"}], max_tokens=8, stream=True)
                    async for _ in stream:
                        pass
                else:  # a few repeated questions: cache hits
                    await ac.chat.completions.create(
                        model=alias, messages=[{"role": "user", "content": f"question {i % 5}"}], max_tokens=6,
                        extra_body={"cache": {"no-cache": i % 2 == 0}})
            except openai.APIError:
                pass  # errors are part of the traffic the dashboards show

        i = 0
        while not stop.is_set():
            await asyncio.gather(*(one(i + k) for k in range(8)))
            i += 8
            await asyncio.sleep(rate_pause)
        for ac in clients:
            await ac.close()

    asyncio.run(run())


@dataclass
class Stack:
    prometheus_url: str
    gateway: Proc
    config_path: Path


@contextlib.contextmanager
def live_stack(workdir: Path, redis_url: str, workers: int = 2) -> Iterator[Stack]:
    sims = [start_simulator("--model", name, "--ttft", "0.02", "--tps", "400", "--gpu-index", str(i))
            for i, name in enumerate(MODELS)]
    broken = start_simulator("--fault", "500")
    config = {
        "model_list": [
            deployment("smart", sims[0], MODELS[0], id="smart-gpu0", **PRICES),
            deployment("smart", broken, MODELS[0], id="smart-gpu9", **PRICES),
            deployment("fast", sims[1], MODELS[1], id="fast-gpu1", **PRICES),
            deployment("long", sims[2], MODELS[2], id="long-gpu2", **PRICES),
            deployment("flaky", broken, "flaky-model", id="flaky-gpu9", **PRICES),
            # the candidate of a model change (docs/rollout.md): smart's traffic mirrored to it, long's moving to it
            deployment("smart-next", sims[1], MODELS[1], id="smart-next-gpu3", **PRICES),
        ],
        "router_settings": {"num_retries": 1, "allowed_fails": 1, "cooldown_time": 2,
                            "fallbacks": [{"flaky": ["fast"]}],
                            "shadow": {"smart": {"to": "smart-next", "share": 100, "max_concurrency": 2}},
                            "canary": {"long": {"to": "smart-next", "steps": [10, 50], "every": "2s",
                                                "min_requests": 1}}},
        "litellm_settings": {"cache": True, "cache_params": {"type": "redis", "ttl": 600, "namespace": "live"}},
    }
    workdir.mkdir(parents=True, exist_ok=True)
    path = write_config(config, workdir)
    gw = start_gateway(path, workers=workers, env={"GATEWAY_REDIS_URL": redis_url, "GATEWAY_MASTER_KEY": MASTER_KEY})
    stop = threading.Event()
    driver = threading.Thread(target=traffic, args=(gw, stop, create_keys(gw)), daemon=True)
    prom = None
    try:
        driver.start()
        # one good and one rejected reload, so the reload panels have both results
        path.write_text(path.read_text() + "\n# touched\n")
        time.sleep(0.6)
        good = path.read_text()
        path.write_text("model_list: [")
        time.sleep(0.6)
        path.write_text(good)
        targets = [f"127.0.0.1:{s.port}" for s in sims]
        prom_config = promql.prometheus_config({
            "gateway": [f"127.0.0.1:{gw.port}"], "vllm": targets, "dcgm-exporter": targets})
        port = free_port()
        prom = promql.start_prometheus(prom_config, port, workdir / "prometheus")
        yield Stack(f"http://127.0.0.1:{port}", gw, path)
    finally:
        stop.set()
        driver.join(10)
        if prom is not None:
            prom.terminate()
            prom.wait(10)
        for p in (gw, broken, *sims):
            p.stop()
