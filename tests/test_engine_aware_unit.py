"""engine-aware routing as pure logic: engine loads and in-flight counts are given, no processes."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import dataclass, field

from gateway.engine import EngineLoad, EngineMonitor, EngineTarget, metrics_url, parse_vllm_metrics
from gateway.strategies import RouteRequest
from gateway.strategies.engine_aware import EngineAware, EngineAwareOptions, affinity_key, rendezvous_order
from gateway.upstreams import UpstreamError

VLLM_TEXT = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="smol"} 3.0
vllm:num_requests_running{engine="0",model_name="other"} 5.0
vllm:num_requests_waiting{engine="0",model_name="smol"} 2.0
vllm:kv_cache_usage_perc{engine="0",model_name="smol"} 0.42
vllm:prefix_cache_hits_total{engine="0",model_name="smol"} 100.0
"""


@dataclass(frozen=True)
class Dep:
    id: str
    weight: float = 1.0
    max_num_seqs: int | None = None


@dataclass
class View:
    engines: dict[str, EngineLoad] = field(default_factory=dict)
    flying: dict[str, int] = field(default_factory=dict)
    rng: random.Random = field(default_factory=lambda: random.Random(3))

    def in_flight(self, dep: Dep) -> int:
        return self.flying.get(dep.id, 0)

    def engine(self, dep: Dep) -> EngineLoad | None:
        return self.engines.get(dep.id)


def load(running: float = 0, waiting: float = 0, kv: float = 0.0, in_flight_at: int = 0) -> EngineLoad:
    return EngineLoad(running, waiting, kv, 0.0, in_flight_at)


def chat(system: str, *turns: str, **extra: object) -> RouteRequest:
    messages = [{"role": "system", "content": system}]
    for i, t in enumerate(turns):
        messages.append({"role": "user" if i % 2 == 0 else "assistant", "content": t})
    return RouteRequest("smart", {"model": "smart", "messages": messages, **extra})


def test_parse_vllm_metrics_for_the_served_model() -> None:
    assert parse_vllm_metrics(VLLM_TEXT, "smol") == (3.0, 2.0, 0.42)
    assert parse_vllm_metrics(VLLM_TEXT, None) == (8.0, 2.0, 0.42)  # every model of the engine
    assert parse_vllm_metrics(VLLM_TEXT, "absent") == (8.0, 2.0, 0.42)
    assert parse_vllm_metrics("# nothing here\nprocess_cpu_seconds_total 1.0\n") is None
    old = 'vllm:gpu_cache_usage_perc{model_name="m"} 0.5\nvllm:num_requests_running{model_name="m"} 1\n'
    assert parse_vllm_metrics(old, "m") == (1.0, 0.0, 0.5)
    assert metrics_url("http://gpu1:8000/v1") == "http://gpu1:8000/metrics"
    assert metrics_url("http://gpu1:8000/") == "http://gpu1:8000/metrics"


def test_conversation_turns_share_one_affinity_key() -> None:
    first = affinity_key(chat("You are a pirate.", "hello"))
    later = affinity_key(chat("You are a pirate.", "hello", "arr", "tell me more", "aye", "and more"))
    other = affinity_key(chat("You are a pirate.", "a different first question"))
    assert first is not None and first == later and first[0] == "prefix"
    assert other != first
    assert affinity_key(chat("x", "y", user="alice")) == ("session", b"alice")
    req = chat("x", "y")
    req.headers[b"x-session-id"] = b"s-1"
    assert affinity_key(req) == ("session", b"s-1")
    assert affinity_key(RouteRequest("a", {"model": "a", "input": "embed me"})) == ("prefix", b"embed me")


def test_rendezvous_order_is_stable_and_spreads_keys() -> None:
    deps = [Dep(f"d{i}") for i in range(4)]
    homes = Counter(rendezvous_order(f"key-{i}".encode(), deps)[0].id for i in range(2000))
    assert set(homes) == {"d0", "d1", "d2", "d3"} and min(homes.values()) > 400
    # removing a deployment moves only the keys that lived on it
    before = {i: rendezvous_order(f"key-{i}".encode(), deps)[0].id for i in range(500)}
    after = {i: rendezvous_order(f"key-{i}".encode(), deps[:3])[0].id for i in range(500)}
    assert all(after[i] == before[i] for i in range(500) if before[i] != "d3")


def test_conversation_sticks_to_its_home_while_it_is_not_overloaded() -> None:
    deps = [Dep("a"), Dep("b"), Dep("c")]
    view = View(engines={d.id: load(running=4) for d in deps})
    s = EngineAware()
    req = chat("system prompt " * 50, "q1")
    first = s.pick(deps, view, req)
    assert first.reason == "prefix"
    for turn in range(5):
        d = s.pick(deps, view, chat("system prompt " * 50, "q1", f"a{turn}", f"q{turn + 2}"))
        assert d.deployment.id == first.deployment.id and d.reason == "prefix"


def test_saturated_home_spills_and_idle_engine_takes_new_work() -> None:
    deps = [Dep("busy", max_num_seqs=8), Dep("idle", max_num_seqs=8)]
    # clients that bypass the gateway filled "busy": the gateway has nothing in flight there itself
    view = View(engines={"busy": load(running=8, waiting=6, kv=0.9), "idle": load()})
    s = EngineAware()
    picks = Counter(s.pick(deps, view, chat(f"sys {i}", f"question {i}")).deployment.id for i in range(20))
    assert picks["idle"] == 20


def test_a_request_waiting_for_the_next_step_is_not_saturation() -> None:
    deps = [Dep("a", max_num_seqs=16), Dep("b", max_num_seqs=16)]
    req = chat("shared system", "first question")
    home = EngineAware().pick(deps, View(engines={"a": load(), "b": load()}), req).deployment.id
    other = "b" if home == "a" else "a"
    # vLLM admits at step boundaries: a busy engine often shows one or two waiting; the batch is not full
    view = View(engines={home: load(running=5, waiting=1, kv=0.3), other: load(running=2, kv=0.1)})
    assert EngineAware().pick(deps, view, req).deployment.id == home
    full = View(engines={home: load(running=16, waiting=1, kv=0.3), other: load(running=2, kv=0.1)})
    spilled = EngineAware().pick(deps, full, req)
    assert spilled.deployment.id == other and spilled.reason == "spill"
    kv_full = View(engines={home: load(running=5, kv=0.97), other: load(running=9, kv=0.5)})
    assert EngineAware().pick(deps, kv_full, req).deployment.id == other


def test_fresh_in_flight_counts_between_readings() -> None:
    deps = [Dep("a", max_num_seqs=4), Dep("b", max_num_seqs=4)]
    view = View(engines={"a": load(), "b": load()}, flying={"a": 4})  # 4 sent to a since its reading
    d = EngineAware().pick(deps, view, RouteRequest("smart", {"model": "smart"}))
    assert d.deployment.id == "b" and d.reason == "load"


def test_without_engine_metrics_in_flight_counts_decide() -> None:
    deps = [Dep("a"), Dep("b")]
    view = View(flying={"a": 3, "b": 1})
    assert EngineAware().pick(deps, view, RouteRequest("smart", {})).deployment.id == "b"


def test_affinity_slack_bounds_the_imbalance() -> None:
    deps = [Dep("a", max_num_seqs=10), Dep("b", max_num_seqs=10)]
    req = chat("shared system", "first question")
    home = EngineAware().pick(deps, View(engines={"a": load(), "b": load()}), req).deployment.id
    other = "b" if home == "a" else "a"
    loose = EngineAware(EngineAwareOptions(affinity_slack=0.5))
    tight = EngineAware(EngineAwareOptions(affinity_slack=0.1))
    view = View(engines={home: load(running=3), other: load(running=0)})  # home scores 0.3 above
    assert loose.pick(deps, view, req).deployment.id == home
    spilled = tight.pick(deps, view, req)
    assert spilled.deployment.id == other and spilled.reason == "spill"


def test_monitor_polls_targets_and_forgets_failures() -> None:
    calls: list[str] = []
    now = [100.0]
    slow = [False]

    async def fetch(url: str, timeout: float, api_key: str | None) -> str:
        calls.append(url)
        if "bad" in url:
            raise UpstreamError("status", "HTTP 404", 404)  # no /metrics: not a vLLM engine
        if slow[0]:
            raise TimeoutError
        return VLLM_TEXT

    targets = [EngineTarget("good", "smol", "http://good/metrics", None),
               EngineTarget("bad", "smol", "http://bad/metrics", None)]
    mon = EngineMonitor(fetch, lambda: targets, lambda _id: 1, interval=0.25, retry_after=10,
                        clock=lambda: now[0])
    asyncio.run(mon.poll_once())
    good = mon.load("good")
    assert good is not None and (good.running, good.waiting, good.kv_usage, good.in_flight_at) == (3, 2, 0.42, 1)
    assert mon.load("bad") is None
    asyncio.run(mon.poll_once())
    assert calls.count("http://bad/metrics") == 1  # not polled again before retry_after
    # a busy engine that answers /metrics too slowly keeps its last reading (it must not look idle) ...
    slow[0] = True
    now[0] += 1.0
    asyncio.run(mon.poll_once())
    assert mon.load("good") == good
    assert calls.count("http://good/metrics") == 3  # ... and is asked again at the next poll
    now[0] += 2.0  # older than stale_after × interval (2 s): no longer trusted
    assert mon.load("good") is None
