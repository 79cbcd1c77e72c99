"""`gateway serve --workers 2` with the cache on: one cache process per replica holds the embedder and the
bounded index (the workers load no model), entries are served by every worker, `oss_cache_entries` shows
the bound, and a killed cache process means BYPASS (never an error) until the supervisor's restart."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import deployment, metric_value, metrics
from tests.procs import Proc, start_redis

CHAT = "/v1/chat/completions"
MASTER = "sk-cache-proc"
Q = "How do I reset my password on the website?"
PARAPHRASE = "How can I reset my password on the website?"


@pytest.fixture
def redis_proc() -> Iterator[Proc]:
    proc = start_redis()
    yield proc
    proc.stop()


def config(sim: Proc, **params: Any) -> dict[str, Any]:
    return {"model_list": [deployment("smart", sim)],
            "litellm_settings": {"cache": True, "cache_params": {"type": "redis-semantic", **params}},
            "general_settings": {"master_key": MASTER}}


def ask(gw: Proc, text: str) -> str:
    """x-gateway-cache of one chat request on a fresh connection (so the workers share the requests)."""
    r = httpx.post(f"{gw.url}{CHAT}", headers={"Authorization": f"Bearer {MASTER}"}, timeout=30,
                   json={"model": "smart", "messages": [{"role": "user", "content": text}], "max_tokens": 5,
                         "temperature": 0})
    assert r.status_code == 200, r.text
    return r.headers["x-gateway-cache"]


def children(pid: int) -> list[int]:
    out: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task"):
        out += [int(x) for x in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    return out


def maps(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return ""


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def processes(gw: Proc) -> tuple[list[int], list[int]]:
    """(children that loaded onnxruntime, worker processes) of the supervisor."""
    kids = [p for p in children(gw.popen.pid) if "resource_tracker" not in Path(f"/proc/{p}/cmdline").read_text()]
    with_model = [p for p in kids if "onnxruntime" in maps(p)]
    return with_model, [p for p in kids if p not in with_model]


def eventually(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_one_cache_process_serves_every_worker(make_sim: Callable[..., Proc], make_gateway: Callable[..., Proc],
                                               redis_proc: Proc) -> None:
    sim = make_sim()
    gw = make_gateway(config(sim, max_entries=20), workers=2,
                      env={"GATEWAY_REDIS_URL": f"redis://127.0.0.1:{redis_proc.port}/0"})
    assert ask(gw, Q) == "MISS"
    time.sleep(0.3)  # stored off the hot path
    assert {ask(gw, PARAPHRASE) for _ in range(12)} == {"SEMANTIC-HIT"}
    # one embedder per replica: the model is loaded in one child, no worker has onnxruntime or hnswlib
    with_model, workers = processes(gw)
    assert len(with_model) == 1 and len(workers) == 2, (with_model, workers)
    for w in workers:
        assert "onnxruntime" not in maps(w) and "hnswlib" not in maps(w)
        assert rss_mb(w) < 120, f"worker {w} uses {rss_mb(w):.0f} MB"
    # the index stays within max_entries, and the gauge says so
    for i in range(25):
        ask(gw, f"Question {i} about {uuid.uuid4().hex[:8]} and nothing else")
    eventually(lambda: metric_value(metrics(gw), "oss_cache_entries") == 20, 10, "index not at its bound of 20")


def test_killed_cache_process_means_bypass_then_recovery(make_sim: Callable[..., Proc],
                                                         make_gateway: Callable[..., Proc], redis_proc: Proc) -> None:
    sim = make_sim()
    gw = make_gateway(config(sim), workers=2, env={"GATEWAY_REDIS_URL": f"redis://127.0.0.1:{redis_proc.port}/0"})
    assert ask(gw, Q) == "MISS"
    q2 = "What is the best way to learn the guitar as an adult?"
    assert ask(gw, q2) == "MISS"
    time.sleep(0.3)
    assert ask(gw, PARAPHRASE) == "SEMANTIC-HIT"
    (cache_pid,), _ = processes(gw)
    os.kill(cache_pid, signal.SIGKILL)
    eventually(lambda: not Path(f"/proc/{cache_pid}").exists() or "zombie" in Path(f"/proc/{cache_pid}/status")
               .read_text(), 5, "cache process not dead")
    # every request is answered: exact entries still come from Redis, the rest bypasses the cache
    statuses = {ask(gw, f"While the cache process is down {i} {uuid.uuid4().hex[:6]}") for i in range(6)}
    assert "BYPASS" in statuses and statuses <= {"BYPASS", "MISS"}, statuses
    assert ask(gw, Q) == "HIT"
    # the supervisor restarts it; it reloads the index from Redis and the semantic cache is back
    eventually(lambda: ask(gw, f"After the restart {uuid.uuid4().hex}") == "MISS", 30, "cache process not back")
    eventually(lambda: metric_value(metrics(gw), "oss_cache_entries") >= 2, 10, "index not reloaded from Redis")
    assert ask(gw, "What's the best way to learn the guitar as an adult?") == "SEMANTIC-HIT"
    (new_pid,), _ = processes(gw)
    assert new_pid != cache_pid
    assert f"cache process {cache_pid} exited" in gw.log()
    text = metrics(gw)
    assert metric_value(text, "oss_requests_total", status_class="5xx") == 0
    assert metric_value(text, "oss_requests_total", cache="bypass", status_class="2xx") >= 1
    assert metric_value(text, "oss_cache_errors_total", op="cache_process") >= 1


def test_without_redis_the_workers_share_one_store(make_sim: Callable[..., Proc],
                                                   make_gateway: Callable[..., Proc]) -> None:
    """No Redis: the cache process also holds the entries, so an answer stored through one worker is a hit
    on every worker (before, each worker had its own store and index)."""
    sim = make_sim()
    gw = make_gateway(config(sim, type="local-semantic"), workers=2)
    q = f"Where do I find my invoices? {uuid.uuid4().hex[:6]}"
    assert ask(gw, q) == "MISS"
    time.sleep(0.3)
    assert {ask(gw, q) for _ in range(10)} == {"HIT"}
    assert ask(gw, q.replace("Where do I", "Where can I")) == "SEMANTIC-HIT"
    r = httpx.delete(f"{gw.url}/cache", headers={"Authorization": f"Bearer {MASTER}"}, timeout=10)
    assert r.status_code == 200 and r.json()["deleted"] == 1
    assert ask(gw, q) == "MISS"
    eventually(lambda: metric_value(metrics(gw), "oss_cache_entries") == 1, 10, "the MISS is not stored again")


def test_one_worker_keeps_the_index_in_process(make_sim: Callable[..., Proc],
                                               make_gateway: Callable[..., Proc]) -> None:
    sim = make_sim()
    gw = make_gateway(config(sim, type="local-semantic", max_entries=3), workers=1)
    assert children(gw.popen.pid) == []  # no cache process
    for i in range(5):
        assert ask(gw, f"Single worker question {i} {uuid.uuid4().hex[:6]}") == "MISS"
    eventually(lambda: metric_value(metrics(gw), "oss_cache_entries") == 3, 10, "index not at its bound of 3")
