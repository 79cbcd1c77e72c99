"""The response cache through the gateway, on a real redis-server: hits, partitions, controls, streaming
replay, two replicas sharing entries, and Redis dying mid-test with no failed request."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.helpers import deployment, metric_value, metrics, sim_stats
from tests.procs import Proc, start_redis

CHAT = "/v1/chat/completions"
MASTER = "sk-cache-master"


@pytest.fixture
def redis_proc() -> Iterator[Proc]:
    proc = start_redis()
    yield proc
    proc.stop()


def cache_config(sim: Proc, **params: Any) -> dict[str, Any]:
    return {"model_list": [deployment("smart", sim, input_cost_per_token=0.001, output_cost_per_token=0.002),
                           deployment("fast", sim)],
            "litellm_settings": {"cache": True, "cache_params": {"type": "redis-semantic", **params}},
            "general_settings": {"master_key": MASTER}}


def ask(gw: Proc, text: str, *, system: str | None = None, stream: bool = False, extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None, model: str = "smart") -> tuple[str, str]:
    """(x-gateway-cache, answer text) for one chat request."""
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
    body: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": 6, "temperature": 0,
                            "stream": stream, **(extra or {})}
    h = {"Authorization": f"Bearer {MASTER}", **(headers or {})}
    if not stream:
        r = httpx.post(f"{gw.url}{CHAT}", json=body, headers=h, timeout=30)
        r.raise_for_status()
        return r.headers["x-gateway-cache"], r.json()["choices"][0]["message"]["content"]
    parts: list[str] = []
    with httpx.stream("POST", f"{gw.url}{CHAT}", json=body, headers=h, timeout=30) as r:
        r.raise_for_status()
        status = r.headers["x-gateway-cache"]
        import orjson

        for line in r.iter_lines():
            if line.startswith("data: {"):
                chunk = orjson.loads(line[6:])
                for choice in chunk.get("choices") or ():
                    parts.append((choice.get("delta") or {}).get("content") or "")
    return status, "".join(parts)


def settle() -> None:
    time.sleep(0.3)  # entries are stored after the response, off the hot path


def test_exact_and_semantic_hits_and_partitions(make_sim: Callable[..., Proc], make_gateway: Callable[..., Proc],
                                                redis_proc: Proc) -> None:
    sim = make_sim()
    gw = make_gateway(cache_config(sim), env={"GATEWAY_REDIS_URL": f"redis://127.0.0.1:{redis_proc.port}/0"})
    q = "How do I reset my password on the website?"
    status, answer = ask(gw, q)
    assert status == "MISS"
    settle()
    assert ask(gw, q) == ("HIT", answer)
    hits_upstream = sim_stats(sim)["requests"][CHAT]
    status, semantic = ask(gw, "How can I reset my password on the website?")
    assert status == "SEMANTIC-HIT" and semantic == answer
    assert sim_stats(sim)["requests"][CHAT] == hits_upstream  # answered without the upstream
    # near-identical but different questions are never served from each other
    assert ask(gw, "What is 15% of 200?")[0] == "MISS"
    settle()
    assert ask(gw, "What is 15% of 300?")[0] == "MISS"
    assert ask(gw, "How do I turn on dark mode?")[0] == "MISS"
    settle()
    assert ask(gw, "How do I turn off dark mode?")[0] == "MISS"
    # partitions: another system prompt, other tools, another alias: no hit
    assert ask(gw, q, system="You are a pirate.")[0] == "MISS"
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    assert ask(gw, q, extra={"tools": tools})[0] == "MISS"
    assert ask(gw, q, model="fast")[0] == "MISS"
    text = metrics(gw)
    assert metric_value(text, "oss_requests_total", cache="hit") == 1
    assert metric_value(text, "oss_requests_total", cache="semantic_hit") == 1
    assert metric_value(text, "oss_cache_saved_usd_total", alias="smart") > 0
    # cached answers are not spend
    assert metric_value(text, "oss_completion_tokens_total", alias="smart") == 6 * (sim_stats(sim)["requests"][CHAT] - 1)


def test_controls(make_sim: Callable[..., Proc], make_gateway: Callable[..., Proc], redis_proc: Proc) -> None:
    sim = make_sim()
    gw = make_gateway(cache_config(sim, type="redis"), env={"GATEWAY_REDIS_URL": f"redis://127.0.0.1:{redis_proc.port}/0"})
    q = f"control question {uuid.uuid4().hex}"
    ask(gw, q)
    settle()
    assert ask(gw, q)[0] == "HIT"
    assert ask(gw, q, extra={"cache": {"no-cache": True}})[0] == "BYPASS"
    assert ask(gw, q, headers={"Cache-Control": "no-cache"})[0] == "BYPASS"
    # no-cache skips the lookup but still stores the fresh answer (as LiteLLM does)
    q1 = f"fresh answer {uuid.uuid4().hex}"
    assert ask(gw, q1, extra={"cache": {"no-cache": True}})[0] == "BYPASS"
    settle()
    assert ask(gw, q1)[0] == "HIT"
    # no-store: answered by the upstream, not kept
    q2 = f"not stored {uuid.uuid4().hex}"
    ask(gw, q2, extra={"cache": {"no-store": True}})
    settle()
    assert ask(gw, q2, extra={"cache": {"no-store": True}})[0] == "MISS"
    q3 = f"header no-store {uuid.uuid4().hex}"
    ask(gw, q3, headers={"Cache-Control": "no-store"})
    settle()
    assert ask(gw, q3, headers={"Cache-Control": "no-store"})[0] == "MISS"
    # ttl: gone after it; a hit does not extend it
    q4 = f"short lived {uuid.uuid4().hex}"
    ask(gw, q4, extra={"cache": {"ttl": 1.5}})
    settle()
    assert ask(gw, q4)[0] == "HIT"
    time.sleep(0.8)
    assert ask(gw, q4)[0] == "HIT"
    time.sleep(0.8)
    assert ask(gw, q4)[0] == "MISS"
    # s-maxage: only entries younger than that
    q5 = f"max age {uuid.uuid4().hex}"
    ask(gw, q5)
    time.sleep(1.2)
    assert ask(gw, q5, extra={"cache": {"s-maxage": 1}})[0] == "MISS"
    assert ask(gw, q5, extra={"cache": {"s-maxage": 60}})[0] == "HIT"
    # namespaces partition, and DELETE /cache clears one (master key only)
    q6 = f"namespaced {uuid.uuid4().hex}"
    ask(gw, q6, extra={"cache": {"namespace": "team-a"}})
    settle()
    assert ask(gw, q6, extra={"cache": {"namespace": "team-a"}})[0] == "HIT"
    assert ask(gw, q6, extra={"cache": {"namespace": "team-b"}})[0] == "MISS"
    assert httpx.delete(f"{gw.url}/cache", params={"namespace": "team-a"}).status_code == 401
    r = httpx.delete(f"{gw.url}/cache", params={"namespace": "team-a"}, headers={"Authorization": f"Bearer {MASTER}"})
    assert r.status_code == 200 and r.json()["deleted"] >= 1
    assert ask(gw, q6, extra={"cache": {"namespace": "team-a"}})[0] == "MISS"
    # the cache field never reaches the upstream
    assert "cache" not in sim_stats(sim)["last_request"]


def test_temperature_and_errors_are_not_served(make_sim: Callable[..., Proc], make_gateway: Callable[..., Proc],
                                               redis_proc: Proc) -> None:
    sim = make_sim()
    gw = make_gateway(cache_config(sim), env={"GATEWAY_REDIS_URL": f"redis://127.0.0.1:{redis_proc.port}/0"})
    q = f"What time zone is Berlin in? {uuid.uuid4().hex[:6]}"
    ask(gw, q)
    settle()
    # a sampled request (temperature 0.9) gets no semantic hit from a greedy answer
    assert ask(gw, q.replace("What", "Which"), extra={"temperature": 0.9})[0] == "MISS"
    # an upstream error is never stored
    bad = f"this one fails {uuid.uuid4().hex}"
    r = httpx.post(f"{gw.url}{CHAT}", headers={"Authorization": f"Bearer {MASTER}"}, timeout=30,
                   json={"model": "smart", "messages": [{"role": "user", "content": bad}], "sim": {"fault": "context"}})
    assert r.status_code == 400
    settle()
    assert ask(gw, bad)[0] == "MISS"
    # an interrupted stream is never stored
    cut = f"cut stream {uuid.uuid4().hex}"
    with httpx.stream("POST", f"{gw.url}{CHAT}", headers={"Authorization": f"Bearer {MASTER}"}, timeout=30,
                      json={"model": "smart", "messages": [{"role": "user", "content": cut}], "stream": True,
                            "max_tokens": 6, "sim": {"fault": "drop", "fault_after_tokens": 2}}) as resp:
        resp.read()
    settle()
    assert ask(gw, cut)[0] == "MISS"


def test_streaming_replay(make_sim: Callable[..., Proc], make_gateway: Callable[..., Proc], redis_proc: Proc) -> None:
    sim = make_sim()
    gw = make_gateway(cache_config(sim), env={"GATEWAY_REDIS_URL": f"redis://127.0.0.1:{redis_proc.port}/0"})
    q = f"Tell me about streams {uuid.uuid4().hex[:8]}"
    status, answer = ask(gw, q, stream=True)
    assert status == "MISS" and answer
    settle()
    status, replay = ask(gw, q, stream=True)
    assert status == "HIT" and replay == answer  # a stored stream, replayed as SSE
    assert ask(gw, q) == ("HIT", answer)  # and served to a plain request
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=MASTER, max_retries=0)
    chunks = list(client.chat.completions.create(model="smart", messages=[{"role": "user", "content": q}],
                                                 max_tokens=6, temperature=0, stream=True,
                                                 stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answer
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6


def test_two_replicas_share_entries(make_sim: Callable[..., Proc], make_gateway: Callable[..., Proc],
                                    redis_proc: Proc) -> None:
    sim = make_sim()
    env = {"GATEWAY_REDIS_URL": f"redis://127.0.0.1:{redis_proc.port}/0"}
    a = make_gateway(cache_config(sim), env=env)
    b = make_gateway(cache_config(sim), env=env)
    q = f"Which port does the gateway listen on? {uuid.uuid4().hex[:6]}"
    _, answer = ask(a, q)
    t0 = time.monotonic()
    while ask(b, q)[0] != "HIT":
        assert time.monotonic() - t0 < 1.0, "replica b did not see replica a's entry within 1 s"
        time.sleep(0.05)
    assert ask(b, q)[1] == answer
    # semantic entries too (the second replica's index is fed from Redis)
    q2 = "How do I rotate the API keys of my team?"
    ask(a, q2)
    t0 = time.monotonic()
    while ask(b, "How can I rotate the API keys of my team?")[0] != "SEMANTIC-HIT":
        assert time.monotonic() - t0 < 1.5, "replica b did not serve replica a's entry semantically"
        time.sleep(0.1)


def test_redis_killed_and_restarted_mid_test(make_sim: Callable[..., Proc], make_gateway: Callable[..., Proc]) -> None:
    redis = start_redis()
    port = redis.port
    try:
        sim = make_sim()
        gw = make_gateway(cache_config(sim), env={"GATEWAY_REDIS_URL": f"redis://127.0.0.1:{port}/0"})
        q = f"survives redis {uuid.uuid4().hex[:6]}"
        ask(gw, q)
        settle()
        assert ask(gw, q)[0] == "HIT"
        redis.stop()
        statuses = [ask(gw, f"{q} {i}")[0] for i in range(10)]  # every request still answered
        assert set(statuses) <= {"BYPASS", "MISS"} and "BYPASS" in statuses
        text = metrics(gw)
        assert metric_value(text, "oss_redis_up", store="cache") == 0
        assert metric_value(text, "oss_requests_total", cache="bypass", status_class="2xx") >= 1
        assert "Redis unreachable" in gw.log()
        redis = start_redis(port=port)
        t0 = time.monotonic()
        q2 = f"after the restart {uuid.uuid4().hex[:6]}"
        while True:
            status, _ = ask(gw, q2)
            if status == "MISS":
                settle()
                if ask(gw, q2)[0] == "HIT":
                    break
            assert time.monotonic() - t0 < 10, "cache did not resume"
            time.sleep(0.2)
        assert metric_value(metrics(gw), "oss_redis_up", store="cache") == 1
        assert metric_value(metrics(gw), "oss_requests_total", status_class="5xx") == 0
    finally:
        redis.stop()


def test_tenants_never_share_answers(make_sim: Callable[..., Proc], make_gateway: Callable[..., Proc],
                                     redis_proc: Proc) -> None:
    """A tenant is the key's team (or the key when it has none): a cached answer never crosses tenants."""
    sim = make_sim()
    gw = make_gateway(cache_config(sim), env={"GATEWAY_REDIS_URL": f"redis://127.0.0.1:{redis_proc.port}/0"})
    admin = {"Authorization": f"Bearer {MASTER}"}
    for team in ("red", "blue"):
        assert httpx.post(f"{gw.url}/team/new", headers=admin, json={"team_id": team}).status_code == 200

    def key(alias: str, team: str | None) -> str:
        body: dict[str, Any] = {"key_alias": alias}
        if team:
            body["team_id"] = team
        r = httpx.post(f"{gw.url}/key/generate", headers=admin, json=body)
        assert r.status_code == 200, r.text
        return str(r.json()["key"])

    red1, red2, blue, solo = key("red-1", "red"), key("red-2", "red"), key("blue-1", "blue"), key("solo", None)
    q = f"What is our refund policy? {uuid.uuid4().hex[:6]}"

    def status(k: str) -> str:
        return ask(gw, q, headers={"Authorization": f"Bearer {k}"})[0]

    assert status(red1) == "MISS"
    settle()
    assert status(red2) == "HIT"  # same team
    assert status(blue) == "MISS"  # another team
    assert status(solo) == "MISS"  # a key without a team is its own tenant


# -- tenants are stable ids, never labels (issue 10) ------------------------------------------------------

ADMIN = {"Authorization": f"Bearer {MASTER}"}


def admin_call(gw: Proc, path: str, body: dict[str, Any] | None = None, **params: Any) -> httpx.Response:
    if body is None:
        return httpx.get(f"{gw.url}{path}", params=params, headers=ADMIN, timeout=10)
    return httpx.post(f"{gw.url}{path}", json=body, headers=ADMIN, timeout=10)


def admin_ok(gw: Proc, path: str, body: dict[str, Any] | None = None, **params: Any) -> Any:
    r = admin_call(gw, path, body, **params)
    assert r.status_code == 200, r.text
    return r.json()


def refused(r: httpx.Response, param: str, *words: str) -> bool:
    err = r.json()["error"]
    return (r.status_code == 400 and err["type"] == "invalid_request_error" and err["param"] == param
            and all(w in err["message"] for w in words))


class Tenant:
    """One caller (a key, or the master key) asking the same question; counts what it asked."""

    def __init__(self, gw: Proc, key: str, question: str) -> None:
        self.gw, self.key, self.q = gw, key, question
        self.asked = 0

    def status(self) -> str:
        r = httpx.post(f"{self.gw.url}{CHAT}", headers={"Authorization": f"Bearer {self.key}"}, timeout=30,
                       json={"model": "smart", "messages": [{"role": "user", "content": self.q}], "max_tokens": 6,
                             "temperature": 0})
        if r.status_code == 200:
            self.asked += 1
            return r.headers["x-gateway-cache"]
        return str(r.status_code)

    def until_hit(self) -> None:
        """Ask until this tenant's own answer is served from the cache (it is stored after the response)."""
        deadline = time.monotonic() + 10
        while self.status() != "HIT":
            assert time.monotonic() < deadline, "the answer was never cached"
            time.sleep(0.05)


def poll(pred: Callable[[], Any], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := pred()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return value


def test_teams_sharing_an_alias_never_share_answers_spend_or_limits(
        make_sim: Callable[..., Proc], make_gateway: Callable[..., Proc], redis_proc: Proc) -> None:
    """team_alias is unique among team aliases and ids (it is the `team` label); and even two teams that
    share one (a store from before that rule) are two tenants: the cache, spend and limits go by team_id."""
    import redis

    sim = make_sim()
    env = {"GATEWAY_REDIS_URL": f"redis://127.0.0.1:{redis_proc.port}/0"}
    gw = make_gateway(cache_config(sim), env=env)
    admin_ok(gw, "/team/new", {"team_id": "red", "team_alias": "Shared"})
    assert refused(admin_call(gw, "/team/new", {"team_id": "blue", "team_alias": "Shared"}), "team_alias", "Shared")
    assert refused(admin_call(gw, "/team/new", {"team_id": "blue", "team_alias": "red"}), "team_alias", "red")
    assert refused(admin_call(gw, "/team/new", {"team_id": "Shared"}), "team_id", "Shared")
    admin_ok(gw, "/team/new", {"team_id": "blue", "team_alias": "Blue"})
    assert refused(admin_call(gw, "/team/update", {"team_id": "blue", "team_alias": "Shared"}), "team_alias")

    redis.Redis(port=redis_proc.port).hset("gw:team:blue", "alias", "Shared")  # as an older gateway allowed
    q = f"What is our refund policy? {uuid.uuid4().hex[:6]}"
    red = Tenant(gw, admin_ok(gw, "/key/generate", {"team_id": "red"})["key"], q)
    blue = Tenant(gw, admin_ok(gw, "/key/generate", {"team_id": "blue"})["key"], q)
    assert red.status() == "MISS"
    red.until_hit()
    red_spend = poll(lambda: admin_ok(gw, "/team/info", team_id="red")["team_info"]["spend"])
    assert red_spend > 0
    assert blue.status() == "MISS"  # the same team label, another tenant
    assert poll(lambda: admin_ok(gw, "/team/info", team_id="blue")["team_info"]["spend"] > 0)
    assert admin_ok(gw, "/team/info", team_id="red")["team_info"]["spend"] == red_spend
    admin_ok(gw, "/team/update", {"team_id": "red", "rpm_limit": 1})  # counted from now on
    assert red.status() == "HIT" and red.status() == "429"
    assert blue.status() in ("MISS", "HIT")  # red's limit is not blue's
    # a gateway starting on such a store says which teams share a label
    other = make_gateway(cache_config(sim), env=env)
    assert poll(lambda: "share the name 'Shared'" in other.log())


def test_a_teamless_key_named_like_a_team_is_its_own_tenant(
        make_sim: Callable[..., Proc], make_gateway: Callable[..., Proc], redis_proc: Proc) -> None:
    sim = make_sim()
    gw = make_gateway(cache_config(sim), env={"GATEWAY_REDIS_URL": f"redis://127.0.0.1:{redis_proc.port}/0"})
    admin_ok(gw, "/team/new", {"team_id": "acme", "team_alias": "Acme Corp"})
    q = f"Where is the invoice archive? {uuid.uuid4().hex[:6]}"
    member = Tenant(gw, admin_ok(gw, "/key/generate", {"team_id": "acme", "key_alias": "acme-bot"})["key"], q)
    named_id = Tenant(gw, admin_ok(gw, "/key/generate", {"key_alias": "acme"})["key"], q)
    named_alias = Tenant(gw, admin_ok(gw, "/key/generate", {"key_alias": "Acme Corp"})["key"], q)
    assert member.status() == "MISS"
    member.until_hit()
    assert named_id.status() == "MISS"  # key_alias == the team's id
    assert named_alias.status() == "MISS"  # key_alias == the team's alias
    named_id.until_hit()
    assert member.status() == "HIT" and named_alias.status() in ("MISS", "HIT")

    def spend(path: str, **params: str) -> float:
        body = admin_ok(gw, path, **params)
        return float((body.get("team_info") or body["info"])["spend"])

    assert poll(lambda: spend("/key/info", key_alias="Acme Corp") > 0 and spend("/key/info", key_alias="acme") > 0)
    assert poll(lambda: spend("/team/info", team_id="acme") == spend("/key/info", key_alias="acme-bot"))
    text = metrics(gw)
    assert metric_value(text, "oss_requests_total", team="Acme Corp") == member.asked
    assert metric_value(text, "oss_requests_total", team="", key="Acme Corp") == named_alias.asked
    admin_ok(gw, "/team/update", {"team_id": "acme", "rpm_limit": 1})  # counted from now on
    assert member.status() == "HIT" and member.status() == "429"
    assert named_id.status() == "HIT" and named_alias.status() in ("MISS", "HIT")


def test_master_is_a_reserved_key_alias_and_the_master_key_its_own_tenant(
        make_sim: Callable[..., Proc], make_gateway: Callable[..., Proc], redis_proc: Proc) -> None:
    import redis

    sim = make_sim()
    gw = make_gateway(cache_config(sim), env={"GATEWAY_REDIS_URL": f"redis://127.0.0.1:{redis_proc.port}/0"})
    for alias in ("master", "Master", "key-0123abcd"):
        assert refused(admin_call(gw, "/key/generate", {"key_alias": alias}), "key_alias", "reserved"), alias
    made = admin_ok(gw, "/key/generate", {"key_alias": "legacy"})
    assert refused(admin_call(gw, "/key/update", {"key": made["key"], "key_alias": "master"}), "key_alias")
    rds = redis.Redis(port=redis_proc.port)  # a key stored as "master" before the name was reserved
    rds.hset(f"gw:key:{made['token']}", "alias", "master")
    rds.hdel("gw:key_alias", "legacy")
    rds.hset("gw:key_alias", "master", made["token"])

    q = f"Summarise the quarterly report {uuid.uuid4().hex[:6]}"
    master, legacy = Tenant(gw, MASTER, q), Tenant(gw, made["key"], q)
    assert master.status() == "MISS"
    master.until_hit()
    assert legacy.status() == "MISS"
    legacy.until_hit()
    label = f"key-{made['token'][:12]}"  # not "master"
    text = metrics(gw)
    assert metric_value(text, "oss_requests_total", key="master") == master.asked
    assert metric_value(text, "oss_requests_total", key=label) == legacy.asked
    assert metric_value(text, "oss_token_cost_usd_total", key="master") > 0
    assert metric_value(text, "oss_token_cost_usd_total", key=label) > 0
    rows = poll(lambda: (r := admin_ok(gw, "/spend/logs", key_alias="master")) and len(r) == master.asked and r)
    assert rows and {r["api_key"] for r in rows} == {""}  # only the master key's own requests
    info = poll(lambda: (i := admin_ok(gw, "/key/info", key=made["key"])["info"])["spend"] > 0 and i)
    assert info and info["spend"] == pytest.approx(metric_value(text, "oss_token_cost_usd_total", key=label))


def test_semantic_cache_can_embed_with_an_alias(make_sim: Callable[..., Proc], make_gateway: Callable[..., Proc],
                                                redis_proc: Proc, tmp_path: Any) -> None:
    """`redis_semantic_cache_embedding_model` (LiteLLM's key) embeds with an embeddings alias of router.yaml."""
    sim = make_sim()
    embed = make_sim("--model", "bge-small", "--embedding-dim", "64")
    config = cache_config(sim, redis_semantic_cache_embedding_model="embed")
    config["model_list"].append(deployment("embed", embed, "bge-small", mode="embedding"))
    gw = make_gateway(config, env={"GATEWAY_REDIS_URL": f"redis://127.0.0.1:{redis_proc.port}/0"})
    probes = sim_stats(embed)["requests"].get("/v1/embeddings", 0)
    assert probes == 1  # the vector size, asked of the model at start
    q = f"How do I export my invoices? {uuid.uuid4().hex[:6]}"
    assert ask(gw, q)[0] == "MISS"
    settle()
    assert ask(gw, q)[0] == "HIT"
    assert ask(gw, "What is the weather like on Mars today?")[0] == "MISS"
    # the last user messages were embedded by the alias's deployment, not the local model
    assert sim_stats(embed)["requests"]["/v1/embeddings"] >= probes + 2
    assert sim_stats(embed)["last_request"]["model"] == "bge-small"
    # a config naming an alias that does not exist is refused with its YAML path
    bad = tmp_path / "router.yaml"
    import subprocess
    import sys

    import yaml

    bad.write_text(yaml.safe_dump(cache_config(sim, redis_semantic_cache_embedding_model="nope")))
    out = subprocess.run([sys.executable, "-m", "gateway", "check", str(bad)], capture_output=True, text=True)
    assert out.returncode == 1
    assert "litellm_settings.cache_params.redis_semantic_cache_embedding_model: unknown alias 'nope'" in out.stderr
