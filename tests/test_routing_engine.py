"""engine-aware routing against simulators that model vLLM's engine, through a real gateway:
load that bypasses the gateway, prefix-cache affinity of interleaved conversations, and deployments
without engine metrics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import openai

from gateway.strategies import RouteRequest
from gateway.strategies.engine_aware import affinity_key, rendezvous_order
from tests.helpers import deployment, metric_value, metrics, sim_stats
from tests.procs import Proc

ALIAS = "agent"
# decode at 20 tokens/s: a request with thousands of max_tokens holds its sequence slot for minutes
SLOW_ENGINE = ("--prefill-tps", "200000", "--decode-tps", "20", "--batch-slowdown", "0", "--max-num-seqs", "4")
FAST_ENGINE = ("--prefill-tps", "1000000", "--decode-tps", "2000", "--max-num-seqs", "16")


@dataclass(frozen=True)
class Dep:
    id: str
    weight: float = 1.0


def config(strategy: str, deps: list[tuple[str, Proc]], **info: Any) -> dict[str, Any]:
    return {
        "model_list": [deployment(ALIAS, sim, id=dep_id, **info) for dep_id, sim in deps],
        "router_settings": {"routing_strategy": strategy, "num_retries": 0},
    }


def home(request: RouteRequest, ids: list[str]) -> str:
    key = affinity_key(request)
    assert key is not None
    return rendezvous_order(key[1], [Dep(i) for i in ids])[0].id


def chat_body(messages: list[dict[str, str]], **extra: Any) -> dict[str, Any]:
    return {"model": ALIAS, "messages": messages, **extra}


def wait_for(cond: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Poll observable state until `cond` holds."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def engine_gauges(sim: Proc) -> tuple[float, float]:
    text = httpx.get(f"{sim.url}/metrics", timeout=5).text
    return metric_value(text, "vllm:num_requests_running"), metric_value(text, "vllm:num_requests_waiting")


def scrapes(sim: Proc) -> int:
    return int(sim_stats(sim)["requests"].get("/metrics", 0))


def decisions(gw: Proc, strategy: str) -> dict[str, float]:
    text = metrics(gw)
    return {r: v for r in ("prefix", "session", "spill", "load", "only", "weight")
            if (v := metric_value(text, "oss_routing_decisions_total", alias=ALIAS, strategy=strategy, reason=r))}


def in_flight(gw: Proc, dep_id: str) -> int:
    deps = httpx.get(f"{gw.url}/health/deployments", timeout=5).json()["deployments"]
    return int(next(d["in_flight"] for d in deps if d["id"] == dep_id))


async def hold_stream(http: httpx.AsyncClient, url: str, body: dict[str, Any]) -> None:
    """A streaming request that stays open until cancelled."""
    async with http.stream("POST", url, json={**body, "stream": True}) as resp:
        async for _ in resp.aiter_raw():
            pass


async def test_engine_saturated_behind_the_gateways_back_gets_no_new_requests(
        make_sim: Callable[..., Proc], make_gateway: Callable[..., Proc]) -> None:
    busy, idle = make_sim(*SLOW_ENGINE), make_sim(*SLOW_ENGINE)
    gw = make_gateway(config("engine-aware", [("busy", busy), ("idle", idle)], max_num_seqs=4))
    async with httpx.AsyncClient(timeout=60) as http:
        # other clients (another gateway replica, a batch job) fill `busy` directly: 4 run, 4 wait
        holders = [asyncio.create_task(hold_stream(http, f"{busy.url}/v1/chat/completions", chat_body(
            [{"role": "user", "content": f"long job {i}"}], max_tokens=4000))) for i in range(8)]
        try:
            await asyncio.to_thread(wait_for, lambda: engine_gauges(busy) == (4, 4), "busy to fill")
            seen = await asyncio.to_thread(scrapes, busy)
            # two more reads of busy's /metrics by the gateway's engine monitor: it has seen the queue
            await asyncio.to_thread(wait_for, lambda: scrapes(busy) >= seen + 2, "the gateway to read busy")
            picked: dict[str, str] = {}
            for i in range(20):
                messages = [{"role": "system", "content": f"agent {i} of a fleet"},
                            {"role": "user", "content": f"new task {i}"}]
                async with http.stream("POST", f"{gw.url}/v1/chat/completions",
                                       json=chat_body(messages, max_tokens=1, stream=True)) as resp:
                    assert resp.status_code == 200
                    picked[f"{i}"] = resp.headers["x-gateway-deployment"]
                homes = {f"{i}": home(RouteRequest(ALIAS, chat_body([
                    {"role": "system", "content": f"agent {i} of a fleet"},
                    {"role": "user", "content": f"new task {i}"}])), ["busy", "idle"]) for i in range(20)}
        finally:
            for h in holders:
                h.cancel()
            await asyncio.gather(*holders, return_exceptions=True)
    assert sum(1 for d in picked.values() if d == "idle") >= 18, picked
    homed_busy = sum(1 for h in homes.values() if h == "busy")
    assert 0 < homed_busy < 20  # both deployments are homes of some of these conversations
    seen_decisions = decisions(gw, "engine-aware")
    assert sum(seen_decisions.values()) == 20
    # conversations whose home is busy spilled to idle; the others went home
    assert seen_decisions.get("spill", 0) + seen_decisions.get("load", 0) >= homed_busy - 2, seen_decisions
    assert seen_decisions.get("prefix", 0) >= 20 - homed_busy - 2, seen_decisions


def run_conversations(client: openai.OpenAI, model: str, conversations: int = 6, turns: int = 5) -> None:
    """Interleaved multi-turn conversations, each with its own ~600-token system prompt."""
    chats = [[{"role": "system", "content": " ".join(f"rule{c}-{w}" for w in range(600))}]
             for c in range(conversations)]
    for t in range(turns):
        for c, messages in enumerate(chats):
            messages.append({"role": "user", "content": f"step {t} of task {c}: " + "detail " * 40})
            out = client.chat.completions.create(model=model, messages=messages, max_tokens=8)  # type: ignore[arg-type]
            messages.append({"role": "assistant", "content": out.choices[0].message.content or ""})


def hit_ratio(sims: list[Proc]) -> float:
    hits = queries = 0.0
    for s in sims:
        text = httpx.get(f"{s.url}/metrics", timeout=5).text
        hits += metric_value(text, "vllm:prefix_cache_hits_total")
        queries += metric_value(text, "vllm:prefix_cache_queries_total")
    assert queries > 0
    return hits / queries


def test_interleaved_conversations_keep_their_prefix_cache(make_sim: Callable[..., Proc],
                                                           make_gateway: Callable[..., Proc]) -> None:
    one = make_sim(*FAST_ENGINE)
    run_conversations(openai.OpenAI(base_url=f"{one.url}/v1", api_key="x", max_retries=0), "sim-model")
    single = hit_ratio([one])
    ratios: dict[str, float] = {}
    for strategy in ("simple-shuffle", "engine-aware"):
        sims = [make_sim(*FAST_ENGINE) for _ in range(3)]
        gw = make_gateway(config(strategy, [(f"r{i}", s) for i, s in enumerate(sims)]))
        run_conversations(openai.OpenAI(base_url=f"{gw.url}/v1", api_key="x", max_retries=0), ALIAS)
        ratios[strategy] = hit_ratio(sims)
    assert single > 0.7  # each conversation computes its system prompt once
    assert ratios["engine-aware"] >= 0.9 * single, (ratios, single)
    assert ratios["engine-aware"] > ratios["simple-shuffle"] + 0.1, ratios
    assert decisions(gw, "engine-aware") == {"prefix": 30}


async def test_deployment_without_engine_metrics_routes_on_in_flight_counts(
        make_sim: Callable[..., Proc], make_gateway: Callable[..., Proc]) -> None:
    vllm, plain = make_sim(*FAST_ENGINE), make_sim("--no-metrics")
    ids = ["vllm", "plain"]
    gw = make_gateway(config("engine-aware", [("vllm", vllm), ("plain", plain)], max_num_seqs=2))
    sessions = [f"user-{i}" for i in range(200)]
    to_plain = [s for s in sessions if home(RouteRequest(ALIAS, {}, {b"x-session-id": s.encode()}), ids) == "plain"]
    assert len(to_plain) >= 12
    url = f"{gw.url}/v1/chat/completions"
    hi = [{"role": "user", "content": "hi"}]
    async with httpx.AsyncClient(timeout=30) as http:
        assert (await http.get(f"{plain.url}/metrics")).status_code == 404
        # two requests of sessions homed on `plain` stay in flight there: its whole max_num_seqs
        holders = [asyncio.create_task(hold_stream(http, url, chat_body(hi, user=s, sim={"fault": "hang"})))
                   for s in to_plain[:2]]
        try:
            await asyncio.to_thread(wait_for, lambda: in_flight(gw, "plain") == 2, "two requests in flight on plain")
            for s in to_plain[2:8]:
                r = await http.post(url, json=chat_body(hi, max_tokens=2), headers={"x-session-id": s})
                assert r.status_code == 200 and r.headers["x-gateway-deployment"] == "vllm"
        finally:
            for h in holders:
                h.cancel()
            await asyncio.gather(*holders, return_exceptions=True)
        await asyncio.to_thread(wait_for, lambda: in_flight(gw, "plain") == 0, "plain to drain")
        for s in to_plain[8:12]:
            r = await http.post(url, json=chat_body(hi, max_tokens=2), headers={"x-session-id": s})
            assert r.status_code == 200 and r.headers["x-gateway-deployment"] == "plain"
    seen = decisions(gw, "engine-aware")
    assert seen == {"session": 2 + 4, "spill": 6}, seen
    assert "no engine metrics" in gw.log()

