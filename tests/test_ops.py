"""Operations (issue 10, items 5, 7, 8, 9, 16), asserted as an operator or a client sees them:

- a Redis outage leaves every replica ready (degraded, said in the body, metrics and logs) and serving;
- a slow Redis reply is not an outage, a killed Redis is one within a second;
- series of a deployment removed from router.yaml, and of a worker that died, leave /metrics;
- a SIGHUP storm while workers start kills none of them; after SIGTERM new connections are refused
  at once while the stream in flight finishes;
- /health/deployments shows internal addresses only to the master key.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml

from tests.helpers import deployment, metric_value, metrics
from tests.procs import Proc, start_redis

MASTER = "sk-ops-master-0123456789"
ADMIN = {"Authorization": f"Bearer {MASTER}"}
HI = [{"role": "user", "content": "hi"}]


def wait_for(pred: Callable[[], Any], timeout: float = 5.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def write_atomically(path: Path, config: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(config))
    os.replace(tmp, path)


def worker_pids(supervisor: int) -> set[int]:
    """The gateway workers (multiprocessing spawn children) of a supervisor."""
    pids: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        if ppid == supervisor and b"spawn_main" in cmdline:
            pids.add(int(entry.name))
    return pids


def new_key(gw: Proc, **limits: Any) -> str:
    r = httpx.post(f"{gw.url}/key/generate", json=limits, headers=ADMIN, timeout=10)
    assert r.status_code == 200, r.text
    return str(r.json()["key"])


def ask(gw: Proc, key: str, text: str) -> tuple[int, str]:
    """(status, x-gateway-cache) of one chat request on a new connection."""
    r = httpx.post(f"{gw.url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, timeout=10,
                   json={"model": "smart", "messages": [{"role": "user", "content": text}], "max_tokens": 3,
                         "temperature": 0})
    return r.status_code, r.headers.get("x-gateway-cache", "")


def cache_config(sim: Proc) -> dict[str, Any]:
    return {"model_list": [deployment("smart", sim)],
            "litellm_settings": {"cache": True, "cache_params": {"type": "redis"}},
            "general_settings": {"master_key": MASTER}}


@pytest.fixture
def rds() -> Iterator[Proc]:
    proc = start_redis(extra_args=["--enable-debug-command", "local"])
    yield proc
    proc.stop()


# -- 5. a Redis outage leaves the replica ready, degraded and serving -----------------------------------------


def test_redis_killed_replica_stays_ready_and_serves(make_sim: Callable[..., Proc],
                                                     make_gateway: Callable[..., Proc], rds: Proc) -> None:
    sim = make_sim()
    gw = make_gateway(cache_config(sim), env={"GATEWAY_REDIS_URL": f"redis://127.0.0.1:{rds.port}/0"})
    key = new_key(gw, rpm_limit=10_000)  # a limited key: every request is admitted by the state Redis
    q = f"ops ready {uuid.uuid4().hex[:8]}"
    assert ask(gw, key, q) == (200, "MISS")
    assert wait_for(lambda: ask(gw, key, q) == (200, "HIT"))
    ready = httpx.get(f"{gw.url}/health/ready", timeout=5)
    assert ready.status_code == 200 and ready.json()["status"] == "ready" and ready.json()["degraded"] == []

    rds.popen.kill()  # SIGKILL: no goodbye on the connections
    rds.popen.wait(5)
    statuses = [ask(gw, key, f"{q} {i}") for i in range(10)]
    assert {s for s, _ in statuses} == {200}, statuses  # served: key verified a moment ago, limits fail open
    assert statuses[-1] == (200, "BYPASS")
    for path in ("/health/ready", "/health/readiness"):
        ready = httpx.get(f"{gw.url}{path}", timeout=5)
        assert ready.status_code == 200, ready.text  # a shared Redis must not take every replica out
        body = ready.json()
        assert body["status"] == "degraded"
        assert any("cache Redis unreachable" in d for d in body["degraded"])
        assert any("state Redis unreachable" in d and "fail open" in d for d in body["degraded"])
        assert str(rds.port) not in ready.text  # the open endpoint names no address
    text = metrics(gw)
    assert metric_value(text, "oss_redis_up", store="cache") == 0
    assert metric_value(text, "oss_redis_up", store="state") == 0
    assert metric_value(text, "oss_limits_degraded", fail_mode="open") == 1
    summary = httpx.get(f"{gw.url}/health/deployments", timeout=5).json()
    assert summary["redis"] == {"cache": {"up": False}, "state": {"up": False}}
    detail = httpx.get(f"{gw.url}/health/deployments", headers=ADMIN, timeout=5).json()
    assert detail["redis"]["cache"] == {"up": False, "where": f"127.0.0.1:{rds.port}/0"}
    log = gw.log()
    assert "response cache: Redis unreachable, requests bypass the cache" in log
    assert re.search(r"state Redis \S+ down", log)

    back = start_redis(port=rds.port)
    try:
        assert wait_for(lambda: httpx.get(f"{gw.url}/health/ready", timeout=5).json()["degraded"] == [], 10)
        text = metrics(gw)
        assert metric_value(text, "oss_redis_up", store="cache") == 1
        assert metric_value(text, "oss_redis_up", store="state") == 1
        assert metric_value(text, "oss_limits_degraded", fail_mode="open") == 0
    finally:
        back.stop()


# -- 7. a slow reply is not an outage; a killed Redis is one, quickly ------------------------------------------


def test_slow_redis_is_not_an_outage_a_killed_one_is(make_sim: Callable[..., Proc],
                                                     make_gateway: Callable[..., Proc], rds: Proc) -> None:
    sim = make_sim()
    gw = make_gateway(cache_config(sim), env={"GATEWAY_REDIS_URL": f"redis://127.0.0.1:{rds.port}/0"})
    key = new_key(gw, rpm_limit=10_000)
    q = f"ops slow {uuid.uuid4().hex[:8]}"
    assert ask(gw, key, q) == (200, "MISS")
    assert wait_for(lambda: ask(gw, key, q) == (200, "HIT"))
    busy = redis.Redis(port=rds.port)

    async def requests_while_redis_sleeps() -> list[tuple[int, str]]:
        sleeper = threading.Thread(target=busy.execute_command, args=("DEBUG", "SLEEP", "0.5"))
        sleeper.start()
        await asyncio.sleep(0.05)  # Redis is asleep now: these wait for it
        async with httpx.AsyncClient(timeout=10) as c:
            async def one(i: int) -> tuple[int, str]:
                await asyncio.sleep(i * 0.04)
                r = await c.post(f"{gw.url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                                 json={"model": "smart", "messages": [{"role": "user", "content": q}],
                                       "max_tokens": 3, "temperature": 0})
                return r.status_code, r.headers.get("x-gateway-cache", "")
            out = await asyncio.gather(*(one(i) for i in range(10)))
        sleeper.join()
        return list(out)

    for _ in range(3):
        t0 = time.monotonic()
        results = asyncio.run(requests_while_redis_sleeps())
        assert time.monotonic() - t0 >= 0.5
        assert results == [(200, "HIT")] * 10  # waited for the slow replies, served from the cache
    log = gw.log()
    assert "Redis unreachable" not in log and not re.search(r"state Redis \S+ down", log)
    text = metrics(gw)
    assert metric_value(text, "oss_redis_up", store="cache") == 1
    assert metric_value(text, "oss_redis_up", store="state") == 1
    assert metric_value(text, "oss_limits_degraded", fail_mode="open") == 0
    assert metric_value(text, "oss_requests_total", cache="bypass") == 0

    rds.popen.kill()
    rds.popen.wait(5)
    t0 = time.monotonic()
    assert ask(gw, key, q) == (200, "BYPASS")  # the first request after the kill already bypasses
    text = metrics(gw)
    assert metric_value(text, "oss_redis_up", store="cache") == 0
    assert metric_value(text, "oss_redis_up", store="state") == 0
    assert time.monotonic() - t0 < 1.0


# -- 8. removed things leave the dashboards -------------------------------------------------------------------


def scrapes(gw: Proc, n: int = 12) -> list[str]:
    """n scrapes on new connections (spread over the workers)."""
    return [httpx.get(f"{gw.url}/metrics", timeout=5).text for _ in range(n)]


GAUGES = ("oss_deployment_gpu_cost_usd_per_hour", "oss_deployment_healthy", "oss_in_flight_requests")


def gauges_of(text: str, dep: str) -> list[str]:
    """The gauge series of a deployment (counters and histograms are history: they stay)."""
    return [ln for ln in text.splitlines() if ln.startswith(GAUGES) and f'deployment="{dep}"' in ln]


def test_removed_deployment_leaves_metrics_with_two_workers(make_sim: Callable[..., Proc],
                                                             make_gateway: Callable[..., Proc]) -> None:
    sim = make_sim()
    a = deployment("smart", sim, id="gpu-a", gpu_hourly_cost_usd=2.5)
    b = deployment("smart", sim, id="gpu-b", gpu_hourly_cost_usd=4.0, gpu_count=2)
    gw = make_gateway({"model_list": [a, b]}, workers=2)
    for _ in range(6):
        httpx.post(f"{gw.url}/v1/chat/completions", json={"model": "smart", "messages": HI, "max_tokens": 1},
                   timeout=10).raise_for_status()
    for text in scrapes(gw, 4):
        assert metric_value(text, "oss_deployment_gpu_cost_usd_per_hour", deployment="gpu-b") == 8.0
        assert 'oss_deployment_healthy{alias="smart",deployment="gpu-b"} 1.0' in text
        assert 'oss_in_flight_requests{alias="smart",deployment="gpu-b"}' in text

    path: Path = gw.extra["config_path"]  # type: ignore[assignment]
    write_atomically(path, {"model_list": [a]})  # hot reload: gpu-b is gone
    assert wait_for(lambda: not any(gauges_of(t, "gpu-b") for t in scrapes(gw)), 5), "gpu-b still on /metrics"
    for text in scrapes(gw):
        assert gauges_of(text, "gpu-b") == []
        assert 'oss_request_duration_seconds_count{alias="smart",deployment="gpu-b"' in text  # history stays
        assert metric_value(text, "oss_deployment_gpu_cost_usd_per_hour", deployment="gpu-a") == 2.5
        assert 'oss_deployment_healthy{alias="smart",deployment="gpu-a"} 1.0' in text
        assert 'oss_in_flight_requests{alias="smart",deployment="gpu-a"}' in text
        assert metric_value(text, "oss_config_reloads_total", result="ok") == 2  # one per worker


def test_limits_degraded_clears_when_a_worker_died_while_degraded(make_sim: Callable[..., Proc],
                                                                  make_gateway: Callable[..., Proc],
                                                                  rds: Proc) -> None:
    sim = make_sim()
    gw = make_gateway({"model_list": [deployment("smart", sim)]}, workers=2,
                      env={"GATEWAY_MASTER_KEY": MASTER, "GATEWAY_STATE_REDIS_URL": f"redis://127.0.0.1:{rds.port}/0",
                           "GATEWAY_STATE_REDIS_TIMEOUT": "0.3"})
    assert wait_for(lambda: len(worker_pids(gw.popen.pid)) == 2)
    assert wait_for(lambda: all(metric_value(t, "oss_redis_up", store="state") == 1 for t in scrapes(gw, 6)))
    rds.popen.kill()
    rds.popen.wait(5)
    assert wait_for(lambda: all(metric_value(t, "oss_limits_degraded", fail_mode="open") == 1
                                for t in scrapes(gw, 6)))
    victim = min(worker_pids(gw.popen.pid))
    os.kill(victim, signal.SIGKILL)  # dies while degraded
    assert wait_for(lambda: len(pids := worker_pids(gw.popen.pid)) == 2 and victim not in pids, 10)
    back = start_redis(port=rds.port)
    try:
        def recovered() -> bool:
            return all(metric_value(t, "oss_limits_degraded", fail_mode="open") == 0
                       and metric_value(t, "oss_redis_up", store="state") == 1 for t in scrapes(gw, 8))
        assert wait_for(recovered, 15), scrapes(gw, 1)
        assert "exited with -9: restarting" in gw.log()
    finally:
        back.stop()


# -- 9. signals -----------------------------------------------------------------------------------------------


def served_model(gw: Proc) -> str:
    r = httpx.post(f"{gw.url}/v1/chat/completions", json={"model": "smart", "messages": HI, "max_tokens": 1},
                   timeout=10)
    r.raise_for_status()
    return str(r.json()["model"])


def test_sighup_storm_while_workers_start_kills_none(make_sim: Callable[..., Proc],
                                                     make_gateway: Callable[..., Proc]) -> None:
    a = make_sim("--model", "model-a")
    b = make_sim("--model", "model-b")
    gw = make_gateway({"model_list": [deployment("smart", a, "model-a")]}, workers=2, wait=False,
                      env={"GATEWAY_RELOAD_INTERVAL": "60"})  # only signals reload
    sup = gw.popen.pid
    assert wait_for(lambda: "supervisor" in gw.log(), 20), gw.log()  # its own handler is in place
    first = worker_pids(sup)
    assert len(first) == 2
    sent = 0
    deadline = time.monotonic() + 30
    ready_at: float | None = None
    while time.monotonic() < deadline:  # every 5 ms from before the workers import anything to 1 s after ready
        os.kill(sup, signal.SIGHUP)
        sent += 1
        time.sleep(0.005)
        if ready_at is None and gw.log().count("gateway ready:") >= 2:
            ready_at = time.monotonic()
        if ready_at is not None and time.monotonic() - ready_at > 1.0:
            break
    assert ready_at is not None, gw.log()
    assert gw.popen.poll() is None
    assert worker_pids(sup) == first  # no worker died and was replaced
    assert "restarting" not in gw.log()
    reloads = [metric_value(t, "oss_config_reloads_total", result="ok") for t in scrapes(gw, 6)]
    assert min(reloads) >= 1, reloads  # signals that came during the start were applied, not lost
    assert sent > 100

    write_atomically(gw.extra["config_path"], {"model_list": [deployment("smart", b, "model-b")]})  # type: ignore[arg-type]
    os.kill(sup, signal.SIGHUP)
    assert wait_for(lambda: all(served_model(gw) == "model-b" for _ in range(8)), 3)
    assert worker_pids(sup) == first


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_refuses_new_connections_at_once_and_finishes_the_stream(make_sim: Callable[..., Proc],
                                                                         make_gateway: Callable[..., Proc],
                                                                         workers: int) -> None:
    sim = make_sim("--tps", "10")
    gw = make_gateway({"model_list": [deployment("smart", sim)]}, workers=workers)

    async def scenario() -> tuple[float | None, list[str]]:
        lines: list[str] = []
        first = asyncio.Event()

        async def stream() -> None:
            async with httpx.AsyncClient(timeout=30) as c, c.stream(
                    "POST", f"{gw.url}/v1/chat/completions",
                    json={"model": "smart", "messages": HI, "max_tokens": 15, "stream": True}) as r:
                async for line in r.aiter_lines():
                    if line.startswith("data: "):
                        lines.append(line)
                        first.set()

        task = asyncio.create_task(stream())
        await asyncio.wait_for(first.wait(), 10)
        gw.signal(signal.SIGTERM)
        t0 = time.monotonic()
        refused_after = None
        while time.monotonic() - t0 < 5:
            try:
                with socket.create_connection(("127.0.0.1", gw.port), timeout=1):
                    pass  # accepted (or queued in the backlog): not refused yet
            except ConnectionRefusedError:
                refused_after = time.monotonic() - t0
                break
            await asyncio.sleep(0.01)
        await task
        return refused_after, lines

    refused_after, lines = asyncio.run(scenario())
    assert refused_after is not None and refused_after < 0.5, refused_after
    assert lines[-1] == "data: [DONE]"
    assert sum('"content"' in ln and '"content":""' not in ln for ln in lines) >= 15
    assert gw.popen.wait(10) == 0


# -- 16. internal addresses only for the master key -----------------------------------------------------------


def test_health_deployments_shows_addresses_only_to_the_master_key(make_sim: Callable[..., Proc],
                                                                   make_gateway: Callable[..., Proc]) -> None:
    sim = make_sim()
    gw = make_gateway({"model_list": [deployment("smart", sim, id="gpu-0")],
                       "general_settings": {"master_key": MASTER}})
    key = new_key(gw)
    for headers in ({}, {"Authorization": f"Bearer {key}"}, {"Authorization": "Bearer sk-wrong"}):
        r = httpx.get(f"{gw.url}/health/deployments", headers=headers, timeout=5)
        assert r.status_code == 200
        assert sim.url not in r.text and f":{sim.port}" not in r.text
        body = r.json()
        assert body["detail"] is False
        (dep,) = body["deployments"]
        assert "api_base" not in dep
        assert dep["id"] == "gpu-0" and dep["healthy"] is True and dep["in_cooldown"] is False
        assert dep["in_flight"] == 0
    r = httpx.get(f"{gw.url}/health/deployments", headers=ADMIN, timeout=5)
    body = r.json()
    assert body["detail"] is True
    assert body["deployments"][0]["api_base"] == f"{sim.url}/v1"
