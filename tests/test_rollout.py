"""Shadow traffic and canaries end to end: real gateway processes, simulators of different speeds and faults,
a real redis-server, the official openai SDK as the client."""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from tests.helpers import deployment, metric_value, metrics, sim_set, sim_stats
from tests.procs import Proc

MASTER = "sk-master-rollout-0123456789"
ADMIN = {"Authorization": f"Bearer {MASTER}"}
MSG = [{"role": "user", "content": "say something"}]


def wait_for(pred: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def env(redis_url: str | None = None, **extra: str) -> dict[str, str]:
    out = {"GATEWAY_MASTER_KEY": MASTER, "GATEWAY_CANARY_TICK": "0.2", **extra}
    if redis_url:
        out |= {"GATEWAY_STATE_REDIS_URL": redis_url, "GATEWAY_STATE_KEY_PREFIX": f"ro{uuid.uuid4().hex[:8]}"}
    return out


def client(gw: Proc, key: str = MASTER, timeout: float = 20) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0, timeout=timeout)


def comparisons(gw: Proc, since: float = 3600) -> list[dict[str, Any]]:
    r = httpx.get(f"{gw.url}/admin/comparisons", params={"since": since}, headers=ADMIN, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()["records"]


def shadow_settled(gw: Proc, sim: Proc, alias: str, shadow_alias: str) -> Callable[[], bool]:
    """Every shadow call that reached the shadow simulator is counted and no shadow call is in flight."""
    def check() -> bool:
        text = metrics(gw)
        done = sum(metric_value(text, "oss_shadow_requests_total", alias=alias, shadow_alias=shadow_alias,
                                result=r) for r in ("ok", "error"))
        return done == chats(sim) and len(comparisons(gw)) == done
    return check


def chats(sim: Proc) -> int:
    """Chat requests the simulator received."""
    return int(sim_stats(sim)["requests"].get("/v1/chat/completions", 0))


def prices(**kw: Any) -> dict[str, Any]:
    return {"input_cost_per_token": 0.000001, "output_cost_per_token": 0.00001, **kw}


# -- shadow ---------------------------------------------------------------------------------------------------

def test_shadow_share_billing_and_limits(make_sim: Callable[..., Proc], make_gateway: Callable[..., Proc],
                                         redis_server: Proc) -> None:
    primary, shadow = make_sim(), make_sim("--ttft", "0.01")
    gw = make_gateway({
        "model_list": [deployment("fast", primary, "m-primary", id="fast-1", **prices()),
                       deployment("fast-next", shadow, "m-shadow", id="next-1", **prices(gpu_hourly_cost_usd=2.0))],
        "router_settings": {"shadow": {"fast": {"to": "fast-next", "share": 30, "max_concurrency": 1000}}},
    }, env=env(redis_server.extra["url"]))
    r = httpx.post(f"{gw.url}/key/generate", json={"key_alias": "app", "rpm_limit": 300}, headers=ADMIN, timeout=10)
    key = r.json()["key"]
    c = client(gw, key)
    n = 300
    for _ in range(n):  # exactly the key's rpm: had a shadow call counted in it, some of these would be 429
        c.chat.completions.create(model="fast", messages=MSG, max_tokens=5)  # type: ignore[arg-type]
    wait_for(shadow_settled(gw, shadow, "fast", "fast-next"), what="shadow calls to settle")
    mirrored = chats(shadow)
    # share 30% of 300: mean 90, sd 7.9; 4 sd either way
    assert 58 <= mirrored <= 122, mirrored
    assert chats(primary) == n
    text = metrics(gw)
    primary_cost = metric_value(text, "oss_token_cost_usd_total", alias="fast", shadow="false")
    shadow_cost = metric_value(text, "oss_token_cost_usd_total", alias="fast-next", shadow="true")
    assert shadow_cost == pytest.approx(mirrored * (5 * 0.00001 + metric_value(
        text, "oss_prompt_tokens_total", shadow="true") / mirrored * 0.000001), rel=1e-6)
    assert metric_value(text, "oss_token_cost_usd_total", shadow="true", key="app") == 0  # no key on shadow series
    assert metric_value(text, "oss_token_cost_usd_total", alias="fast-next", shadow="false") == 0
    info = wait_for(lambda: (i := httpx.get(f"{gw.url}/key/info", params={"key": key}, headers=ADMIN,
                                            timeout=10).json()["info"])["reserved"] == 0 and i, what="spend settled")
    assert info["spend"] == pytest.approx(primary_cost, rel=1e-6)  # the key paid for its own requests only
    with pytest.raises(openai.RateLimitError):  # and its rpm is the 300 it sent, no more, no less
        c.chat.completions.create(model="fast", messages=MSG, max_tokens=5)  # type: ignore[arg-type]
    recs = comparisons(gw)
    assert len(recs) == mirrored
    r0 = recs[0]
    assert (r0["primary"]["alias"], r0["primary"]["deployment"], r0["shadow"]["alias"], r0["shadow"]["deployment"]) == \
        ("fast", "fast-1", "fast-next", "next-1")
    assert r0["shadow"]["gpu_usd_per_hour"] == 2.0 and r0["shadow"]["completion_tokens"] == 5
    assert r0["primary"]["cost_usd"] == pytest.approx(r0["primary"]["prompt_tokens"] * 1e-6 + 5e-5)


def test_primary_is_not_delayed_by_a_hanging_or_failing_shadow(make_sim: Callable[..., Proc],
                                                               make_gateway: Callable[..., Proc]) -> None:
    primary = make_sim("--ttft", "0.02")
    hang = make_sim("--fault", "hang")
    failing = make_sim("--fault", "500")
    gw = make_gateway({
        "model_list": [deployment("base", primary, id="base-1"), deployment("fast", primary, id="fast-1"),
                       deployment("flaky", primary, id="flaky-1"),
                       deployment("hangs", hang, id="hang-1"), deployment("fails", failing, id="fail-1")],
        "router_settings": {"num_retries": 0, "shadow": {
            "fast": {"to": "hangs", "share": 100, "max_concurrency": 4, "timeout": "1s"},
            "flaky": {"to": "fails", "share": 100}}},
    }, env=env())
    c = client(gw, timeout=5)

    def p50(alias: str, n: int = 20) -> float:
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            c.chat.completions.create(model=alias, messages=MSG, max_tokens=4)  # type: ignore[arg-type]
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    base = p50("base")
    hanging = p50("fast")
    failing_p50 = p50("flaky")
    # the simulator's 20 ms first token dominates; a shadow on the path would add its hang (1 s) or its failure
    assert hanging < base + 0.015 and failing_p50 < base + 0.015, (base, hanging, failing_p50)
    text = metrics(gw)
    # the hanging shadow holds 4 slots for its 1 s timeout: the other calls were dropped, not queued
    assert metric_value(text, "oss_shadow_requests_total", alias="fast", result="dropped") >= 10
    wait_for(lambda: metric_value(metrics(gw), "oss_shadow_requests_total", alias="flaky", result="error") == 20,
             what="failed shadow calls counted")
    recs = wait_for(lambda: [r for r in comparisons(gw) if r["primary"]["alias"] == "fast"] or None,
                    what="timed-out shadow records")
    assert recs[0]["shadow"]["error"] == "timeout" and recs[0]["primary"]["error"] is None
    assert 0.9 < recs[0]["shadow"]["latency_s"] < 2.0
    fails = [r for r in comparisons(gw) if r["primary"]["alias"] == "flaky"]
    assert len(fails) == 20 and {r["shadow"]["error"] for r in fails} == {"http_500"}
    assert all(r["primary"]["status"] == 200 and r["agreement"] is None for r in fails)
    assert "Traceback" not in gw.log()


def test_client_disconnect_does_not_cancel_the_shadow(make_sim: Callable[..., Proc],
                                                       make_gateway: Callable[..., Proc]) -> None:
    primary, shadow = make_sim("--tps", "20"), make_sim("--tps", "100")
    gw = make_gateway({
        "model_list": [deployment("smart", primary, id="p-1"), deployment("smart-next", shadow, id="s-1")],
        "router_settings": {"shadow": {"smart": {"to": "smart-next", "share": 100}}},
    }, env=env())
    with httpx.stream("POST", f"{gw.url}/v1/chat/completions", headers=ADMIN, timeout=10,
                      json={"model": "smart", "messages": MSG, "max_tokens": 60, "stream": True}) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                break  # the client goes away after its first token
    recs = wait_for(lambda: comparisons(gw) or None, timeout=15, what="the comparison record")
    # the primary was cancelled with its client (GPU time is money); the shadow ran to its end
    wait_for(lambda: sim_stats(primary)["cancelled"] == 1, what="the primary cancelled")
    assert recs[0]["primary"]["status"] == 499 and recs[0]["primary"]["error"] == "client_gone"
    assert recs[0]["shadow"]["status"] == 200 and recs[0]["shadow"]["completion_tokens"] == 60
    assert recs[0]["shadow"]["ttft_s"] is not None  # mirrored as a stream, as the primary was


def test_comparison_numbers_match_what_the_simulators_were_set_to(make_sim: Callable[..., Proc],
                                                                  make_gateway: Callable[..., Proc]) -> None:
    fast = make_sim("--ttft", "0.05", "--tps", "200")
    slow = make_sim("--ttft", "0.25", "--tps", "50")
    gw = make_gateway({
        "model_list": [deployment("smart", fast, "m-fast", id="fast-1", **prices()),
                       deployment("smart-next", slow, "m-slow", id="slow-1",
                                  **prices(output_cost_per_token=0.00002))],
        "router_settings": {"shadow": {"smart": {"to": "smart-next", "share": 100}}},
    }, env=env())
    c = client(gw)
    n = 12
    for _ in range(n):
        s = c.chat.completions.create(model="smart", messages=MSG, max_tokens=20, stream=True)  # type: ignore[arg-type]
        for _chunk in s:
            pass
    recs = wait_for(lambda: (r := comparisons(gw)) and len(r) == n and r, what="12 records")
    for side, ttft, tps, out_price in (("primary", 0.05, 200, 0.00001), ("shadow", 0.25, 50, 0.00002)):
        rows = [r[side] for r in recs]
        assert statistics.median(x["ttft_s"] for x in rows) == pytest.approx(ttft, abs=0.03)
        speed = sum(x["completion_tokens"] - 1 for x in rows) / sum(x["latency_s"] - x["ttft_s"] for x in rows)
        assert speed == pytest.approx(tps, rel=0.25), (side, speed)
        assert all(x["completion_tokens"] == 20 and x["error"] is None for x in rows)
        assert all(x["cost_usd"] == pytest.approx(x["prompt_tokens"] * 1e-6 + 20 * out_price) for x in rows)
    assert all(r["method"] in ("cosine", "lexical", "exact") and 0 <= r["agreement"] <= 1 for r in recs)
    text = metrics(gw)
    for side in ("primary", "shadow"):
        assert metric_value(text, "oss_compare_ttft_seconds_count", alias="smart", shadow_alias="smart-next",
                            side=side) == n
        assert metric_value(text, "oss_compare_completion_tokens_total", side=side) == 20 * n


# -- canary ----------------------------------------------------------------------------------------------------

def canary(gw: Proc) -> dict[str, Any]:
    r = httpx.get(f"{gw.url}/admin/canary", headers=ADMIN, timeout=5)
    assert r.status_code == 200, r.text
    return r.json()["canaries"][0]


def drive(gw: Proc, until: Callable[[dict[str, Any]], bool], timeout: float = 30.0, stream: bool = False
          ) -> list[tuple[int, str]]:
    """Send requests to `smart` until the canary's state satisfies `until`: (status, deployment) of each."""
    seen: list[tuple[int, str]] = []
    deadline = time.monotonic() + timeout
    while not until(canary(gw)):
        if time.monotonic() > deadline:
            raise AssertionError(f"canary stuck: {canary(gw)}")
        for _ in range(5):
            body: dict[str, Any] = {"model": "smart", "messages": MSG, "max_tokens": 3}
            if stream:
                body["stream"] = True
            r = httpx.post(f"{gw.url}/v1/chat/completions", json=body, headers=ADMIN, timeout=10)
            seen.append((r.status_code, r.headers.get("x-gateway-deployment", "")))
    return seen


def canary_config(a: Proc, b: Proc, **opts: Any) -> dict[str, Any]:
    return {"model_list": [deployment("smart", a, id="old-1"), deployment("smart-next", b, id="new-1")],
            "router_settings": {"num_retries": 0, "canary": {"smart": {
                "to": "smart-next", "steps": [20, 50, 100], "every": "1s", "min_requests": 5, **opts}}}}


def test_canary_advances_to_completion_then_aborts_on_errors_and_rolls_back(
        make_sim: Callable[..., Proc], make_gateway: Callable[..., Proc], redis_server: Proc) -> None:
    a, b = make_sim(), make_sim()
    gw = make_gateway(canary_config(a, b, abort_if={"error_rate_over": 0.2}), env=env(redis_server.extra["url"]))
    steps: list[float] = []
    drive(gw, lambda s: steps.append(s["percent"]) or s["state"] == "complete")
    assert [p for i, p in enumerate(steps) if i == 0 or p != steps[i - 1]] == [20, 50, 100]
    at_full = []
    for _ in range(20):
        r = httpx.post(f"{gw.url}/v1/chat/completions", json={"model": "smart", "messages": MSG, "max_tokens": 3},
                       headers=ADMIN, timeout=10)
        at_full.append((r.status_code, r.headers["x-gateway-deployment"]))
    assert at_full == [(200, "new-1")] * 20  # complete: every request on the canary
    text = metrics(gw)
    assert [metric_value(text, "oss_canary_steps_total", alias="smart", action=x) for x in ("start", "advance",
                                                                                            "complete")] == [1, 2, 1]
    assert metric_value(text, "oss_canary_percent", alias="smart", to="smart-next") == 100
    assert "canary smart -> smart-next: step 2/3, 20% -> 50%" in gw.log()
    # a new rollout of the same pair, and the canary starts failing half its requests
    httpx.post(f"{gw.url}/admin/canary/smart/restart", headers=ADMIN, timeout=5).raise_for_status()
    sim_set(b, fault="500", fault_rate=0.5)
    seen = drive(gw, lambda s: s["state"] == "aborted")
    assert all(status == 200 for status, _ in seen)  # a failed canary attempt is served by the alias itself
    st = canary(gw)
    assert st["percent"] == 0 and "error rate" in st["reason"]
    b_before = chats(b)
    after = [httpx.post(f"{gw.url}/v1/chat/completions", json={"model": "smart", "messages": MSG, "max_tokens": 3},
                        headers=ADMIN, timeout=10) for _ in range(20)]
    assert {(r.status_code, r.headers["x-gateway-deployment"]) for r in after} == {(200, "old-1")}  # rolled back
    assert chats(b) == b_before
    assert "ABORTED at 20%" in gw.log()
    assert metric_value(metrics(gw), "oss_fallbacks_total", from_alias="smart-next", to_alias="smart",
                        reason="canary") >= 1


def test_canary_aborts_on_slow_time_to_first_token(make_sim: Callable[..., Proc], make_gateway: Callable[..., Proc]
                                                   ) -> None:
    a, b = make_sim(), make_sim("--ttft", "0.3")
    gw = make_gateway(canary_config(a, b, steps=[50, 100], every="1h", abort_if={"p95_ttft_over_ms": 150}), env=env())
    drive(gw, lambda s: s["state"] == "aborted", stream=True)
    st = canary(gw)
    assert st["percent"] == 0 and "p95 time to first token" in st["reason"]


def test_canary_state_survives_reload_and_restart(make_sim: Callable[..., Proc], make_gateway: Callable[..., Proc],
                                                  redis_server: Proc) -> None:
    a, b = make_sim(), make_sim()
    cfg = canary_config(a, b, steps=[10, 20, 30, 100], every="1h", min_requests=0)
    e = env(redis_server.extra["url"])
    gw = make_gateway(cfg, env=e)
    wait_for(lambda: canary(gw)["state"] == "running", what="the canary to start")
    for _ in range(2):
        httpx.post(f"{gw.url}/admin/canary/smart/advance", headers=ADMIN, timeout=5).raise_for_status()
    assert canary(gw)["percent"] == 30
    path = gw.extra["config_path"]
    text = path.read_text().replace("every: 1h", "every: 2h")
    assert text != path.read_text()
    path.write_text(text)  # a hot reload that keeps `to` and `steps` keeps the rollout's progress
    wait_for(lambda: canary(gw)["every_s"] == 7200, what="the reload")
    assert canary(gw)["percent"] == 30 and canary(gw)["step"] == 3
    gw.stop()
    gw2 = make_gateway(path, env=e, workers=2)  # a restart (now two workers) resumes from the shared store
    wait_for(lambda: canary(gw2)["state"] == "running", what="the canary after restart")
    assert canary(gw2)["percent"] == 30
    served = {httpx.post(f"{gw2.url}/v1/chat/completions", json={"model": "smart", "messages": MSG, "max_tokens": 2},
                         headers=ADMIN, timeout=10).headers["x-gateway-deployment"] for _ in range(60)}
    assert served == {"old-1", "new-1"}
    path.write_text(path.read_text().replace("- 20\n", "- 25\n"))  # new steps: a new rollout from its first step
    wait_for(lambda: canary(gw2)["percent"] == 10, what="the new rollout")
    r = httpx.post(f"{gw2.url}/admin/canary/nope/abort", headers=ADMIN, timeout=5)
    assert r.status_code == 400 and r.json()["error"]["param"] == "alias"
    assert httpx.get(f"{gw2.url}/admin/canary", timeout=5).status_code == 401
    assert httpx.get(f"{gw2.url}/admin/comparisons", params={"since": "-5"}, headers=ADMIN, timeout=5).status_code == 400


def test_agent_apis_are_mirrored_too(make_sim: Callable[..., Proc], make_gateway: Callable[..., Proc]) -> None:
    import anthropic

    primary, shadow = make_sim(), make_sim()
    gw = make_gateway({
        "model_list": [deployment("smart", primary, id="p-1"),
                       deployment("smart-next", shadow, id="s-1", supports=["chat", "responses", "messages"])],
        "router_settings": {"shadow": {"smart": {"to": "smart-next", "share": 100, "stream": False}}},
    }, env=env())
    a = anthropic.Anthropic(base_url=gw.url, api_key=MASTER, max_retries=0)
    a.messages.create(model="smart", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    with a.messages.stream(model="smart", max_tokens=8, messages=[{"role": "user", "content": "hi"}]) as s:
        s.get_final_message()
    client(gw).responses.create(model="smart", input="hi", max_output_tokens=8)
    recs = wait_for(lambda: (r := comparisons(gw)) and len(r) == 3 and r, what="three records")
    assert sorted(r["endpoint"] for r in recs) == ["messages", "messages", "responses"]
    for r in recs:  # the primary translated to chat, the shadow native; each counted its own tokens
        assert r["primary"]["completion_tokens"] == 8 and r["shadow"]["completion_tokens"] == 8
        assert r["shadow"]["ttft_s"] is None  # stream: false mirrors even a streamed request as a plain call
        assert r["agreement"] is not None
    streamed = [r for r in recs if r["primary"]["ttft_s"] is not None]
    assert len(streamed) == 1
    assert chats(primary) == 3 and sim_stats(shadow)["requests"].get("/v1/messages") == 2


def test_a_conversation_begun_on_the_canary_goes_on_there(make_sim: Callable[..., Proc],
                                                          make_gateway: Callable[..., Proc]) -> None:
    a, b = make_sim(), make_sim()
    gw = make_gateway(canary_config(a, b, steps=[50, 100], every="1h", min_requests=0), env=env())
    wait_for(lambda: canary(gw)["percent"] == 50, what="the canary to start")
    c = client(gw)
    firsts = [c.responses.with_raw_response.create(model="smart", input="hi", max_output_tokens=4) for _ in range(12)]
    by_dep = {r.headers["x-gateway-deployment"]: r.parse().id for r in firsts}
    assert set(by_dep) == {"old-1", "new-1"}  # 12 requests at 50%: both sides (fails with p = 2 * 0.5^12)
    for dep, rid in by_dep.items():
        for _ in range(4):  # each follow-up where its conversation is, whatever the canary's dice say
            r = c.responses.with_raw_response.create(model="smart", input="and?", previous_response_id=rid,
                                                     max_output_tokens=4)
            assert r.headers["x-gateway-deployment"] == dep


def test_a_judge_alias_scores_long_answers(make_sim: Callable[..., Proc], make_gateway: Callable[..., Proc]) -> None:
    primary, shadow, judge = make_sim(), make_sim(), make_sim()
    sim_set(judge, reply=["0.75"])  # the judge's verdict, whatever it is asked
    gw = make_gateway({
        "model_list": [deployment("smart", primary, id="p-1"), deployment("smart-next", shadow, id="s-1"),
                       deployment("judge", judge, id="j-1", input_cost_per_token=0.001)],
        "router_settings": {"shadow": {"smart": {"to": "smart-next", "share": 100, "judge": "judge"}}},
    }, env=env())
    c = client(gw)
    c.chat.completions.create(model="smart", messages=MSG, max_tokens=20)  # type: ignore[arg-type]  # long: judged
    c.chat.completions.create(model="smart", messages=MSG, max_tokens=2)  # type: ignore[arg-type]  # short: exact
    recs = wait_for(lambda: (r := comparisons(gw)) and len(r) == 2 and r, what="two records")
    by_len = {r["primary"]["completion_tokens"]: r for r in recs}
    assert (by_len[20]["agreement"], by_len[20]["method"]) == (0.75, "judge")
    assert (by_len[2]["agreement"], by_len[2]["method"]) == (1.0, "exact")
    judged = sim_stats(judge)["last_request"]
    assert judged["max_tokens"] == 8 and "Answer A" in judged["messages"][1]["content"]
    text = metrics(gw)  # the judge's tokens are shadow tokens: nobody's spend
    assert metric_value(text, "oss_token_cost_usd_total", alias="judge", shadow="true") > 0
    assert metric_value(text, "oss_token_cost_usd_total", alias="judge", shadow="false") == 0


@pytest.mark.parametrize("workers", [1, 2])  # the embedder in the worker / in the replica's cache process
def test_long_answers_agree_by_the_caches_embeddings(make_sim: Callable[..., Proc], make_gateway: Callable[..., Proc],
                                                     workers: int) -> None:
    primary, shadow = make_sim(), make_sim()
    gw = make_gateway({
        "model_list": [deployment("smart", primary, id="p-1"), deployment("smart-next", shadow, id="s-1")],
        "router_settings": {"shadow": {"smart": {"to": "smart-next", "share": 100}}},
        "litellm_settings": {"cache": True, "cache_params": {"type": "local-semantic"}},
    }, env=env(), workers=workers)
    c = client(gw)
    words = "the gateway mirrors a share of the traffic to a candidate model and compares the answers".split()
    c.chat.completions.create(model="smart", messages=[{"role": "user", "content": " ".join(words)}],  # type: ignore[arg-type]
                              max_tokens=len(words))
    wait_for(lambda: len(comparisons(gw)) == 1, what="the first record")  # before the shadow changes its answer
    sim_set(shadow, reply=["bananas", "grow", "on", "tall", "plants", "in", "warm", "humid", "tropical", "places",
                           "near", "the", "equator", "every", "year", "round"])
    c.chat.completions.create(model="smart", messages=[{"role": "user", "content": " ".join(reversed(words))}],  # type: ignore[arg-type]
                              max_tokens=len(words))
    recs = wait_for(lambda: (r := comparisons(gw)) and len(r) == 2 and r, what="two records")
    same, other = sorted(recs, key=lambda r: r["ts"])
    assert same["method"] == other["method"] == "cosine"
    assert same["agreement"] > 0.99 and other["agreement"] < 0.5, (same["agreement"], other["agreement"])
