"""Virtual keys end to end: real redis-server, real gateway processes, the official openai SDK.

Prices make every request cost a known amount: the simulator generates exactly `max_tokens` tokens,
output costs $0.001/token and input is free, so a request with max_tokens=10 costs exactly $0.01 —
and its worst-case reservation is the same $0.01.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest
import redis

from tests.helpers import deployment, metric_value, metrics
from tests.procs import Proc, start_gateway, start_redis, start_simulator

MASTER = "sk-master-test-0123456789"
ADMIN = {"Authorization": f"Bearer {MASTER}"}
MSG = [{"role": "user", "content": "hello there"}]


@pytest.fixture(scope="module")
def sim() -> Iterator[Proc]:
    proc = start_simulator()
    yield proc
    proc.stop()


def config(sim: Proc) -> dict[str, Any]:
    return {"model_list": [
        deployment("smart", sim, "sim-smart", input_cost_per_token=0.0, output_cost_per_token=0.001),
        deployment("fast", sim, "sim-fast", input_cost_per_token=0.0, output_cost_per_token=0.001),
    ]}


def gw_env(url: str, prefix: str, **extra: str) -> dict[str, str]:
    return {"GATEWAY_MASTER_KEY": MASTER, "GATEWAY_STATE_REDIS_URL": url, "GATEWAY_STATE_KEY_PREFIX": prefix,
            "GATEWAY_KEY_CACHE_TTL": "1", **extra}


@pytest.fixture(scope="module")
def pair(sim: Proc, redis_server: Proc) -> Iterator[tuple[Proc, Proc]]:
    """Two gateway processes sharing one state Redis (and one key prefix)."""
    env = gw_env(redis_server.extra["url"], f"pair{uuid.uuid4().hex[:6]}")
    a = start_gateway(config(sim), env=env)
    b = start_gateway(config(sim), env=env)
    yield a, b
    a.stop()
    b.stop()


def admin(gw: Proc, path: str, body: dict[str, Any] | None = None, **params: Any) -> Any:
    if body is None:
        r = httpx.get(f"{gw.url}{path}", params=params, headers=ADMIN, timeout=10)
    else:
        r = httpx.post(f"{gw.url}{path}", json=body, headers=ADMIN, timeout=10)
    assert r.status_code == 200, r.text
    return r.json() if "json" in r.headers.get("content-type", "") else r.text


def client(gw: Proc, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0, timeout=20)


def aclient(gw: Proc, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0, timeout=20)


def chat(c: openai.OpenAI, model: str = "smart", **kw: Any) -> Any:
    return c.chat.completions.create(model=model, messages=MSG, max_tokens=10, **kw)  # type: ignore[arg-type]


async def burst(clients: list[openai.AsyncOpenAI], n: int, model: str = "smart",
                **kw: Any) -> list[tuple[int, str | None, str]]:
    """n concurrent chat requests spread over the clients: (status, Retry-After, error message)."""

    async def one(i: int) -> tuple[int, str | None, str]:
        try:
            await clients[i % len(clients)].chat.completions.create(model=model, messages=MSG,  # type: ignore[arg-type]
                                                                    max_tokens=10, **kw)
            return 200, None, ""
        except openai.APIStatusError as exc:
            return exc.status_code, exc.response.headers.get("retry-after"), str(exc)

    return await asyncio.gather(*(one(i) for i in range(n)))


def wait_for(pred: Callable[[], Any], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def test_rpm_limit_is_shared_by_two_gateway_processes(pair: tuple[Proc, Proc]) -> None:
    a, b = pair
    key = admin(a, "/key/generate", {"key_alias": "rpm10", "rpm_limit": 10})["key"]
    assert key.startswith("sk-")
    results = asyncio.run(burst([aclient(a, key), aclient(b, key)], 30))
    ok = [r for r in results if r[0] == 200]
    limited = [r for r in results if r[0] == 429]
    assert len(ok) == 10 and len(limited) == 20, results
    assert all(r[1] is not None and int(r[1]) >= 1 for r in limited)
    assert all("rpm_limit 10" in r[2] for r in limited)


def test_budget_stops_a_key_after_the_requests_that_spend_it(pair: tuple[Proc, Proc]) -> None:
    a, b = pair
    key = admin(a, "/key/generate", {"max_budget": 0.05})["key"]
    c = client(a, key)
    for _ in range(5):
        chat(c)
    with pytest.raises(openai.RateLimitError) as exc:
        chat(c)
    assert "Budget exceeded" in str(exc.value) and exc.value.response.headers["retry-after"]
    info = admin(b, "/key/info", key=key)["info"]
    assert info["spend"] == pytest.approx(0.05, abs=1e-9) and info["reserved"] == 0


def test_budget_holds_when_twenty_requests_arrive_at_once(pair: tuple[Proc, Proc]) -> None:
    a, b = pair
    key = admin(a, "/key/generate", {"max_budget": 0.05})["key"]
    results = asyncio.run(burst([aclient(a, key), aclient(b, key)], 20))
    assert sum(1 for r in results if r[0] == 200) == 5, results
    assert sum(1 for r in results if r[0] == 429) == 15
    info = wait_for(lambda: (i := admin(a, "/key/info", key=key)["info"])["reserved"] == 0 and i)
    assert info["spend"] == pytest.approx(0.05, abs=1e-9)  # never more than the budget


def test_team_budget_stops_all_its_keys(pair: tuple[Proc, Proc]) -> None:
    a, b = pair
    team = admin(a, "/team/new", {"team_alias": "Budgeted", "max_budget": 0.03})
    k1 = admin(a, "/key/generate", {"team_id": team["team_id"]})["key"]
    k2 = admin(b, "/key/generate", {"team_id": team["team_id"], "max_budget": 10})["key"]
    chat(client(a, k1))
    chat(client(b, k2))
    chat(client(a, k1))
    for gw, key in ((a, k1), (b, k2)):
        with pytest.raises(openai.RateLimitError) as exc:
            chat(client(gw, key))
        assert "team 'Budgeted' max_budget $0.03" in str(exc.value)
    info = admin(a, "/team/info", team_id=team["team_id"])
    assert info["team_info"]["spend"] == pytest.approx(0.03, abs=1e-9)
    assert sorted(k["spend"] for k in info["keys"]) == pytest.approx([0.01, 0.02])


def test_401_403_404(pair: tuple[Proc, Proc]) -> None:
    a, _ = pair
    with pytest.raises(openai.AuthenticationError):
        chat(client(a, "sk-not-a-key-at-all-000000"))
    r = httpx.post(f"{a.url}/v1/chat/completions", json={"model": "smart", "messages": MSG}, timeout=5)
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    short = admin(a, "/key/generate", {"duration": "1s"})["key"]
    chat(client(a, short))
    time.sleep(1.1)
    with pytest.raises(openai.AuthenticationError, match="expired"):
        chat(client(a, short))
    only_smart = admin(a, "/key/generate", {"models": ["smart"]})["key"]
    with pytest.raises(openai.PermissionDeniedError, match="This key may not use model 'fast'. Allowed: smart"):
        chat(client(a, only_smart), model="fast")
    team = admin(a, "/team/new", {"team_alias": "SmartOnly", "models": ["smart"]})["team_id"]
    in_team = admin(a, "/key/generate", {"team_id": team})["key"]  # the key itself may use every alias
    chat(client(a, in_team), model="smart")
    with pytest.raises(openai.PermissionDeniedError, match="team 'SmartOnly' may not use model 'fast'"):
        chat(client(a, in_team), model="fast")
    with pytest.raises(openai.NotFoundError, match="Available models: smart"):
        chat(client(a, only_smart), model="nosuch")
    assert [m.id for m in client(a, only_smart).models.list()] == ["smart"]
    r = httpx.post(f"{a.url}/key/generate", json={}, headers={"Authorization": f"Bearer {only_smart}"}, timeout=5)
    assert r.status_code == 401  # admin needs the master key
    r = httpx.post(f"{a.url}/key/generate", json={"metadata": {"x": "y" * 70_000}}, headers=ADMIN, timeout=5)
    assert r.status_code == 413
    r = httpx.post(f"{a.url}/key/generate", json={"team_id": "no-such-team"}, headers=ADMIN, timeout=5)
    assert r.status_code == 400 and r.json()["error"]["param"] == "team_id"


def test_parallel_tpm_update_and_delete(pair: tuple[Proc, Proc]) -> None:
    a, b = pair
    par = admin(a, "/key/generate", {"max_parallel_requests": 2})["key"]
    results = asyncio.run(burst([aclient(a, par), aclient(b, par)], 5, extra_body={"sim": {"ttft": 0.6}}))
    assert sorted(r[0] for r in results) == [200, 200, 429, 429, 429], results
    assert all("max_parallel_requests 2" in r[2] for r in results if r[0] == 429)
    chat(client(a, par))  # the slots came back

    tpm = admin(a, "/key/generate", {"tpm_limit": 30})["key"]  # each request: 5 prompt + 10 completion tokens
    chat(client(a, tpm))
    chat(client(a, tpm))
    with pytest.raises(openai.RateLimitError, match="tpm_limit 30"):
        chat(client(a, tpm))

    created = admin(a, "/key/generate", {"rpm_limit": 1, "key_alias": "to-update"})
    key = created["key"]
    chat(client(a, key))
    with pytest.raises(openai.RateLimitError):
        chat(client(b, key))
    info = admin(b, "/key/update", {"key": created["token"], "rpm_limit": 5})["info"]
    assert info["rpm_limit"] == 5
    chat(client(b, key))  # a new limit applies at once (limited keys are checked in Redis on every request)
    assert admin(a, "/key/delete", {"key_aliases": ["to-update"]})["deleted_keys"] == [created["token"]]
    with pytest.raises(openai.AuthenticationError):
        chat(client(b, key))

    free = admin(a, "/key/generate", {})["key"]  # no limits: served from the in-process cache for 1 s here
    chat(client(b, free))
    admin(a, "/key/delete", {"keys": [free]})
    time.sleep(1.1)
    with pytest.raises(openai.AuthenticationError):
        chat(client(b, free))


def test_spend_logs_csv_and_metrics_labels(pair: tuple[Proc, Proc], sim: Proc) -> None:
    a, b = pair
    team = admin(a, "/team/new", {"team_id": f"fin-{uuid.uuid4().hex[:6]}", "team_alias": "Finance"})["team_id"]
    key = admin(a, "/key/generate", {"team_id": team, "key_alias": "finance-bot"})["key"]
    anon = admin(a, "/key/generate", {"team_id": team})
    chat(client(a, key))
    chat(client(b, key))
    stream = client(a, key).chat.completions.create(model="smart", messages=MSG, max_tokens=10,  # type: ignore[arg-type]
                                                    stream=True)
    assert len([c for c in stream]) > 5
    # an upstream that sends no usage: the gateway counts the tokens after the response, then settles
    quiet = client(b, key).chat.completions.create(model="smart", messages=MSG, max_tokens=10,  # type: ignore[arg-type]
                                                   stream=True, extra_body={"sim": {"no_stream_usage": True}})
    assert len([c for c in quiet]) > 5
    chat(client(a, anon["key"]))

    rows = wait_for(lambda: (r := admin(b, "/spend/logs", team_id=team)) and len(r) == 5 and r)
    assert rows, "ledger rows did not arrive"
    mine = [r for r in rows if r["key_alias"] == "finance-bot"]
    assert len(mine) == 4 and {r["model_group"] for r in mine} == {"smart"} and {r["model"] for r in mine} == {"sim-smart"}
    assert all(r["spend"] == pytest.approx(0.01) and r["completion_tokens"] == 10 and r["status"] == 200 for r in mine)
    assert [r["stream"] for r in mine].count(True) == 2 and [r["estimated"] for r in mine].count(True) == 1
    assert all(r["api_key"] != key and len(r["api_key"]) == 64 for r in rows)
    assert len(admin(a, "/spend/logs", api_key=key)) == 4
    today = time.strftime("%Y-%m-%d", time.gmtime())
    assert len(admin(a, "/spend/logs", team_id=team, start_date=today, end_date=today)) == 5
    assert admin(a, "/spend/logs", team_id=team, end_date="2020-01-01") == []
    csv = admin(a, "/spend/logs", team_id=team, format="csv")
    lines = csv.strip().splitlines()
    assert lines[0].startswith("request_id,startTime,api_key,key_alias,team_id") and len(lines) == 6
    assert admin(a, "/key/info", key=key)["info"]["spend"] == pytest.approx(0.04)
    assert admin(a, "/team/info", team_id=team)["team_info"]["spend"] == pytest.approx(0.05)

    text = metrics(a) + metrics(b)
    assert metric_value(text, "oss_token_cost_usd_total", team="Finance", key="finance-bot") == pytest.approx(0.04)
    assert metric_value(text, "oss_requests_total", team="Finance", key="finance-bot", status_class="2xx") == 4
    anon_label = f"key-{anon['token'][:12]}"
    assert metric_value(text, "oss_completion_tokens_total", team="Finance", key=anon_label) == 10
    assert key not in text and anon["key"] not in text
    assert 'oss_limits_degraded{fail_mode="open"} 0.0' in text


def test_keys_survive_a_restart_and_no_plaintext_key_in_redis(sim: Proc, redis_server: Proc) -> None:
    url = redis_server.extra["url"]
    prefix = f"rs{uuid.uuid4().hex[:6]}"
    gw = start_gateway(config(sim), env=gw_env(url, prefix))
    try:
        made = admin(gw, "/key/generate", {"key_alias": "survivor", "max_budget": 1, "rpm_limit": 100})
        key = made["key"]
        chat(client(gw, key))
        log1 = gw.log()
    finally:
        gw.stop()
    gw2 = start_gateway(config(sim), env=gw_env(url, prefix))
    try:
        chat(client(gw2, key))
        info = wait_for(lambda: (i := admin(gw2, "/key/info", key_alias="survivor")["info"])["spend"] > 0.015 and i)
        assert info["spend"] == pytest.approx(0.02) and info["token"] == made["token"]
        log2 = gw2.log()
    finally:
        gw2.stop()

    r = redis.Redis.from_url(url)
    needles = (key.encode(), key[3:].encode())
    seen = 0
    for name in r.scan_iter(count=1000):
        kind = r.type(name)
        if kind == b"hash":
            blob = repr(r.hgetall(name))
        elif kind == b"zset":
            blob = repr(r.zrange(name, 0, -1, withscores=True))
        elif kind == b"set":
            blob = repr(r.smembers(name))
        elif kind == b"stream":
            blob = repr(r.xrange(name))
        elif kind == b"string":
            blob = repr(r.get(name))
        else:
            blob = repr(name)
        blob += repr(name)
        seen += 1
        assert not any(n.decode() in blob for n in needles), f"plaintext key in {name!r}"
    assert seen > 5
    assert key not in log1 and key not in log2


def test_state_redis_down_keeps_verified_keys_and_refuses_unknown_ones(sim: Proc) -> None:
    rds = start_redis()
    url = f"redis://127.0.0.1:{rds.port}/0"
    fast = {"GATEWAY_STATE_REDIS_TIMEOUT": "0.3"}
    open_gw = start_gateway(config(sim), env=gw_env(url, "down", **fast))
    closed_gw = start_gateway(config(sim), env=gw_env(url, "down", GATEWAY_LIMITS_FAIL_MODE="closed", **fast))
    try:
        limited = admin(open_gw, "/key/generate", {"rpm_limit": 1000})["key"]
        free = admin(open_gw, "/key/generate", {})["key"]
        never_used = admin(open_gw, "/key/generate", {})["key"]
        for gw in (open_gw, closed_gw):
            chat(client(gw, limited))
            chat(client(gw, free))
        rds.stop()
        # still ready (every replica shares this Redis: none may leave the load balancer), and says so
        assert wait_for(lambda: httpx.get(f"{open_gw.url}/health/ready", timeout=5).json()["status"] == "degraded")
        ready = httpx.get(f"{closed_gw.url}/health/ready", timeout=5)
        assert ready.status_code == 200 and "state Redis unreachable" in ready.text and "fail closed" in ready.text

        chat(client(open_gw, limited))  # verified a moment ago: works, limits fail open
        with pytest.raises(openai.InternalServerError) as exc:
            chat(client(open_gw, never_used))  # never verified by this gateway: refused, not served
        assert exc.value.status_code == 503
        with pytest.raises(openai.InternalServerError) as exc:
            chat(client(closed_gw, limited))  # limits fail closed
        assert exc.value.status_code == 503 and "closed" in str(exc.value)
        chat(client(closed_gw, free))  # no limits to check: works from the cache
        assert 'oss_limits_degraded{fail_mode="open"} 1.0' in metrics(open_gw)
        assert 'oss_redis_up{store="state"} 0.0' in metrics(open_gw)
        assert 'oss_limits_degraded{fail_mode="closed"} 1.0' in metrics(closed_gw)

        rds2 = start_redis(port=rds.port)  # back (empty: this test's Redis keeps nothing)
        try:
            assert wait_for(lambda: httpx.get(f"{open_gw.url}/health/ready", timeout=5).json()["status"] == "ready")
            assert 'oss_limits_degraded{fail_mode="open"} 0.0' in metrics(open_gw)
            # the two requests served during the outage reached the ledger once Redis was back
            rows = wait_for(lambda: len(r := admin(open_gw, "/spend/logs")) >= 2 and r)
            assert rows and len(rows) == 2 and {r["status"] for r in rows} == {200}
        finally:
            rds2.stop()
    finally:
        open_gw.stop()
        closed_gw.stop()
        rds.stop()


def test_cache_hits_count_toward_rpm_and_cost_nothing(sim: Proc, redis_server: Proc) -> None:
    cfg = {**config(sim), "litellm_settings": {"cache": True, "cache_params": {"type": "local"}}}
    gw = start_gateway(cfg, env=gw_env(redis_server.extra["url"], f"ch{uuid.uuid4().hex[:6]}"))
    try:
        made = admin(gw, "/key/generate", {"key_alias": "cached", "rpm_limit": 3, "max_budget": 1})
        c = client(gw, made["key"])
        seen = [c.chat.completions.with_raw_response.create(model="smart", messages=MSG,  # type: ignore[arg-type]
                                                            max_tokens=10).headers["x-gateway-cache"]
                for _ in range(3)]
        assert seen == ["MISS", "HIT", "HIT"]
        with pytest.raises(openai.RateLimitError, match="rpm_limit 3"):
            chat(c)
        rows = wait_for(lambda: len(r := admin(gw, "/spend/logs", key_alias="cached")) == 3 and r)
        assert [(r["cache"], r["spend"]) for r in rows] == [("miss", 0.01), ("hit", 0.0), ("hit", 0.0)]
        info = admin(gw, "/key/info", key=made["key"])["info"]
        assert info["spend"] == pytest.approx(0.01) and info["reserved"] == 0
    finally:
        gw.stop()


def test_admin_is_disabled_without_a_master_key(sim: Proc) -> None:
    gw = start_gateway(config(sim))
    try:
        r = httpx.post(f"{gw.url}/key/generate", json={}, timeout=5)
        assert r.status_code == 403 and r.json()["error"]["code"] == "admin_disabled"
        chat(client(gw, "anything"))  # auth off: the gateway is open
    finally:
        gw.stop()


# -- issue 10: slots, windows, budgets across fallbacks, revocation ---------------------------------------

def test_a_dropped_stream_frees_its_parallel_slot_at_once(sim: Proc, redis_server: Proc) -> None:
    """max_parallel_requests 1: a client that drops a started stream and reconnects at once is admitted."""
    gw = start_gateway(config(sim), env=gw_env(redis_server.extra["url"], f"par{uuid.uuid4().hex[:6]}"))
    try:
        key = admin(gw, "/key/generate", {"max_parallel_requests": 1})["key"]
        auth = {"Authorization": f"Bearer {key}"}
        slow = {"model": "smart", "messages": MSG, "max_tokens": 200, "stream": True, "sim": {"tps": 20}}
        for _ in range(3):
            with httpx.Client(timeout=20) as hc, hc.stream("POST", f"{gw.url}/v1/chat/completions", json=slow,
                                                            headers=auth) as r:
                assert r.status_code == 200
                lines = r.iter_lines()
                while '"content":" ' not in next(lines):  # the stream is running: a token arrived
                    pass
            # the connection is closed here, mid-stream; no pause before the next request
            again = httpx.post(f"{gw.url}/v1/chat/completions", headers=auth, timeout=20,
                               json={"model": "smart", "messages": MSG, "max_tokens": 5})
            assert again.status_code == 200, again.text
        with pytest.raises(openai.RateLimitError, match="max_parallel_requests 1"):  # the limit itself still holds
            with httpx.Client(timeout=20) as hc, hc.stream("POST", f"{gw.url}/v1/chat/completions", json=slow,
                                                            headers=auth) as r:
                lines = r.iter_lines()  # held: a dropped iterator would close the connection
                assert next(lines).startswith("data: ")
                chat(client(gw, key))
    finally:
        gw.stop()


def test_a_stream_longer_than_the_window_counts_its_tokens_when_it_ends(sim: Proc, redis_server: Proc) -> None:
    """The real token count lands in the second the stream ends (not the second it was admitted): a 4 s
    stream keeps the key over tpm_limit for a full 60 s after it ends, so a stream longer than the window
    cannot escape the limit. (The store test with a controlled clock covers a 70 s stream.)"""
    gw = start_gateway(config(sim), env=gw_env(redis_server.extra["url"], f"tpm{uuid.uuid4().hex[:6]}"))
    try:
        key = admin(gw, "/key/generate", {"tpm_limit": 20})["key"]
        stream = client(gw, key).chat.completions.create(
            model="smart", messages=MSG, max_tokens=40, stream=True,  # type: ignore[arg-type]
            extra_body={"sim": {"tps": 10}})
        started = time.monotonic()
        assert sum(1 for _ in stream) > 40
        assert time.monotonic() - started > 3.5
        with pytest.raises(openai.RateLimitError, match="tpm_limit 20") as exc:
            wait_for(lambda: chat(client(gw, key)) and False, timeout=2)  # until the settlement is in
        assert int(exc.value.response.headers["retry-after"]) >= 59  # not 60 s after admission: ~56 s
    finally:
        gw.stop()


def test_budget_holds_when_a_fallback_is_dearer(make_sim: Callable[..., Proc], redis_server: Proc) -> None:
    """`cheap` always fails and falls back to `dear` (10x the price): the reservation prices the worst case
    over the fallback chain, so concurrent requests cannot spend past max_budget."""
    broken = make_sim("--fault", "500")
    good = make_sim()
    cfg = {"model_list": [
        deployment("cheap", broken, "sim-cheap", input_cost_per_token=0.0, output_cost_per_token=0.001),
        deployment("dear", good, "sim-dear", id="dear-1", input_cost_per_token=0.0, output_cost_per_token=0.01),
    ], "router_settings": {"num_retries": 0, "allowed_fails": 1000, "fallbacks": [{"cheap": ["dear"]}]}}
    gw = start_gateway(cfg, env=gw_env(redis_server.extra["url"], f"fb{uuid.uuid4().hex[:6]}"))
    try:
        key = admin(gw, "/key/generate", {"max_budget": 0.25})["key"]
        r = client(gw, key).chat.completions.with_raw_response.create(model="cheap", messages=MSG,  # type: ignore[arg-type]
                                                                     max_tokens=10)
        assert r.headers["x-gateway-deployment"] == "dear-1"  # served by the fallback
        # $0.10 spent; 4 more at once: the worst case ($0.10 each) leaves room for exactly one
        results = asyncio.run(burst([aclient(gw, key)], 4, model="cheap"))
        assert sorted(s for s, _, _ in results) == [200, 429, 429, 429], results
        assert all("Budget exceeded" in m for s, _, m in results if s == 429)
        info = wait_for(lambda: (i := admin(gw, "/key/info", key=key)["info"])["reserved"] == 0 and i)
        assert info["spend"] == pytest.approx(0.2, abs=1e-9)  # never past $0.25
        with pytest.raises(openai.RateLimitError, match="Budget exceeded"):
            chat(client(gw, key), model="cheap")
    finally:
        gw.stop()


def _deadline_status(gw: Proc, key: str, want: int, within: float) -> tuple[int, float, dict[str, Any]]:
    """Ask until the status is `want` or `within` seconds passed: (last status, seconds taken, error body)."""
    start = time.monotonic()
    while True:
        r = httpx.post(f"{gw.url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, timeout=10,
                       json={"model": "smart", "messages": MSG, "max_tokens": 2})
        took = time.monotonic() - start
        if r.status_code == want or took > within:
            return r.status_code, took, r.json() if r.status_code != 200 else {}


def test_deleted_or_blocked_keys_stop_on_every_gateway_within_a_second(sim: Proc, redis_server: Proc) -> None:
    """Two gateway processes on one Redis, key cache 30 s: a key deleted or blocked through one is refused by
    the other within 1 s (the invalidation channel), also right after the channel was cut."""
    prefix = f"rv{uuid.uuid4().hex[:6]}"
    env = gw_env(redis_server.extra["url"], prefix, GATEWAY_KEY_CACHE_TTL="30")
    a = start_gateway(config(sim), env=env)
    b = start_gateway(config(sim), env=env)
    rds = redis.Redis.from_url(redis_server.extra["url"])
    try:
        def warm(key: str) -> None:
            for _ in range(2):  # the second answer comes from b's key cache
                assert _deadline_status(b, key, 200, 0)[0] == 200

        gone = admin(a, "/key/generate", {})["key"]
        warm(gone)
        admin(a, "/key/delete", {"keys": [gone]})
        status, took, body = _deadline_status(b, gone, 401, 1.0)
        assert status == 401 and took < 1.0, (status, took, body)

        blocked = admin(a, "/key/generate", {"key_alias": f"blockme-{uuid.uuid4().hex[:6]}"})
        warm(blocked["key"])
        assert admin(a, "/key/block", {"key": blocked["key"]})["blocked"] is True
        status, took, body = _deadline_status(b, blocked["key"], 401, 1.0)
        assert status == 401 and took < 1.0 and body["error"]["code"] == "key_blocked", (status, took, body)
        assert admin(a, "/key/info", key=blocked["token"])["info"]["blocked"] is True
        admin(a, "/key/unblock", {"key": blocked["token"]})
        assert _deadline_status(b, blocked["key"], 200, 1.0)[0] == 200

        team = admin(a, "/team/new", {})["team_id"]
        member = admin(a, "/key/generate", {"team_id": team})["key"]
        warm(member)
        admin(a, "/team/block", {"team_id": team})
        status, took, body = _deadline_status(b, member, 401, 1.0)
        assert status == 401 and took < 1.0 and body["error"]["code"] == "team_blocked", (status, took, body)

        # the channel is cut (b's subscription dropped by Redis): until b has subscribed again it asks Redis
        # on every request, and after that it listens again — a deletion still takes effect within 1 s
        def subscribers() -> int:
            return int(rds.pubsub_numsub(f"{prefix}:inval")[0][1])

        assert wait_for(lambda: subscribers() >= 2)
        late = admin(a, "/key/generate", {})["key"]
        warm(late)
        rds.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        admin(a, "/key/delete", {"keys": [late]})
        status, took, _ = _deadline_status(b, late, 401, 1.0)
        assert status == 401 and took < 1.0
        assert wait_for(lambda: subscribers() >= 2, timeout=10), "the gateways did not subscribe again"
        last = admin(a, "/key/generate", {})["key"]
        warm(last)
        admin(a, "/key/delete", {"keys": [last]})
        status, took, _ = _deadline_status(b, last, 401, 1.0)
        assert status == 401 and took < 1.0
    finally:
        a.stop()
        b.stop()
