"""Routing with the official SDK: aliases, weights, retries, cooldown, fallbacks, context windows."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import openai
import pytest

from tests.helpers import deployment, metric_value, metrics, sim_set, sim_stats
from tests.procs import Proc

HI = [{"role": "user", "content": "hello there"}]
CHAT = "/v1/chat/completions"


def client(gw: Proc) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key="none", max_retries=0)


def test_seed_config_loads_and_check_prints_routes(tmp_path: Path) -> None:
    seed = tmp_path / "router.yaml"
    seed.write_text(
        'model_list:\n'
        '  - model_name: "smart"\n'
        '    litellm_params: {model: "openai/gpt-oss-120b", api_base: "http://gpu1:8000/v1"}\n'
        '  - model_name: "fast"\n'
        '    litellm_params: {model: "openai/mpt-30b", api_base: "http://gpu2:8000/v1"}\n'
    )
    out = subprocess.run([sys.executable, "-m", "gateway", "check", str(seed)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "smart:" in out.stdout and "gpt-oss-120b @ http://gpu1:8000/v1" in out.stdout
    assert "fast:" in out.stdout and "mpt-30b @ http://gpu2:8000/v1" in out.stdout
    shipped = subprocess.run([sys.executable, "-m", "gateway", "check", "router.yaml"], capture_output=True, text=True,
                             cwd=Path(__file__).parent.parent)
    assert shipped.returncode == 0, shipped.stderr
    for alias in ("smart:", "fast:", "long:"):
        assert alias in shipped.stdout


def test_check_names_yaml_paths(tmp_path: Path) -> None:
    bad = tmp_path / "router.yaml"
    bad.write_text(
        "model_list:\n"
        "  - model_name: smart\n"
        "    litellm_params: {model: openai/x, api_base: http://ok:8000/v1}\n"
        "  - model_name: fast\n"
        "    litellm_params: {model: openai/y, api_base: not-a-url, rpm: -3}\n"
        "router_settings: {fallbacks: [{smart: [nowhere]}]}\n"
    )
    out = subprocess.run([sys.executable, "-m", "gateway", "check", str(bad)], capture_output=True, text=True)
    assert out.returncode == 1
    assert "model_list[1].litellm_params.api_base: not a URL" in out.stderr
    assert "model_list[1].litellm_params.rpm" in out.stderr
    assert "router_settings.fallbacks.smart: unknown alias 'nowhere'" in out.stderr


def test_litellm_file_loads_unchanged_with_ignored_keys(tmp_path: Path) -> None:
    cfg = tmp_path / "litellm.yaml"
    cfg.write_text(
        "model_list:\n"
        "  - model_name: smart\n"
        "    litellm_params: {model: hosted_vllm/gpt-oss-120b, api_base: http://gpu1:8000/v1, drop_params: true}\n"
        "    model_info: {id: a, base_model: foo}\n"
        "litellm_settings: {drop_params: true, success_callback: [langfuse], set_verbose: false}\n"
        "general_settings: {database_url: postgres://x, alerting: [slack]}\n"
        "environment_variables: {FOO: bar}\n"
        "router_settings: {routing_strategy: usage-based-routing-v2, redis_host: x}\n"
    )
    out = subprocess.run([sys.executable, "-m", "gateway", "check", str(cfg)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "ignored" in out.stdout and "litellm_settings.success_callback" in out.stdout
    assert "general_settings.database_url" in out.stdout


def test_routes_by_alias_sync_and_async(make_sim: Callable[..., Proc], make_gateway: Callable[..., Proc]) -> None:
    a = make_sim("--model", "gpt-oss-120b")
    b = make_sim("--model", "mpt-30b")
    gw = make_gateway({"model_list": [deployment("smart", a, "gpt-oss-120b", id="smart-1"),
                                      deployment("fast", b, "mpt-30b", id="fast-1")]})
    c = client(gw)
    raw = c.chat.completions.with_raw_response.create(model="smart", messages=HI, max_tokens=4)
    r = raw.parse()
    assert r.model == "gpt-oss-120b"
    assert raw.headers["x-gateway-deployment"] == "smart-1"
    assert raw.headers["x-gateway-cache"] == "BYPASS"
    assert r.usage is not None and r.usage.completion_tokens == 4
    # the upstream saw its own model name, and every other field untouched (unknown ones too)
    c.chat.completions.create(model="fast", messages=HI, max_tokens=3, temperature=0.3,
                              response_format={"type": "json_object"},
                              tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}],
                              extra_body={"top_k": 7, "guided_choice": ["a", "b"]})
    seen = sim_stats(b)["last_request"]
    assert seen["model"] == "mpt-30b"
    assert seen["top_k"] == 7 and seen["guided_choice"] == ["a", "b"] and seen["temperature"] == 0.3
    assert seen["response_format"] == {"type": "json_object"} and seen["tools"][0]["function"]["name"] == "f"
    assert sim_stats(a)["requests"][CHAT] == 1

    async def run_async() -> None:
        ac = openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="none", max_retries=0)
        res = await asyncio.gather(*(ac.chat.completions.create(model="fast", messages=HI, max_tokens=2)
                                     for _ in range(10)))
        assert all(x.model == "mpt-30b" for x in res)
        stream = await ac.chat.completions.create(model="smart", messages=HI, max_tokens=5, stream=True)
        text = "".join([ch.choices[0].delta.content or "" async for ch in stream if ch.choices])
        assert len(text.split()) == 5
        done = await ac.completions.create(model="smart", prompt="once upon a time", max_tokens=3)
        assert done.usage is not None and done.usage.completion_tokens == 3
        emb = await ac.embeddings.create(model="fast", input=["a", "b"])
        assert len(emb.data) == 2 and len(emb.data[0].embedding) > 0
        models = await ac.models.list()
        assert sorted(m.id for m in models.data) == ["fast", "smart"]
        await ac.close()

    asyncio.run(run_async())


def test_weights_share_traffic(make_sim: Callable[..., Proc], make_gateway: Callable[..., Proc]) -> None:
    heavy = make_sim()
    light = make_sim()
    gw = make_gateway({"model_list": [deployment("smart", heavy, weight=3), deployment("smart", light, weight=1)]})

    async def burst() -> None:
        ac = openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="none", max_retries=0)
        sem = asyncio.Semaphore(16)

        async def one() -> None:
            async with sem:
                await ac.chat.completions.create(model="smart", messages=HI, max_tokens=1)

        await asyncio.gather(*(one() for _ in range(400)))
        await ac.close()

    asyncio.run(burst())
    h = sim_stats(heavy)["requests"][CHAT]
    ll = sim_stats(light)["requests"][CHAT]
    assert h + ll == 400
    assert 0.66 < h / 400 < 0.84, (h, ll)  # 3:1 is 0.75; binomial sd is ~0.022


def test_least_busy_prefers_idle_deployment(make_sim: Callable[..., Proc],
                                            make_gateway: Callable[..., Proc]) -> None:
    """While a request holds the slow deployment, every new request goes to the idle one. The test waits
    for the gateway's own in-flight gauge to show the held request, not for a fixed time."""
    slow = make_sim("--ttft", "30")
    quick = make_sim()
    gw = make_gateway({"model_list": [deployment("smart", slow, id="slow"), deployment("smart", quick, id="quick")],
                       "router_settings": {"routing_strategy": "least-busy", "num_retries": 0}})

    async def run() -> list[str]:
        ac = openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="none", max_retries=0)
        held: list[asyncio.Task[object]] = []
        on_slow = 0.0
        while on_slow < 1:  # requests to quick finish at once; one to slow stays in flight for 30 s
            assert len(held) < 40, "the slow deployment never took a request"
            held.append(asyncio.create_task(ac.chat.completions.create(model="smart", messages=HI, max_tokens=1)))
            deadline = time.monotonic() + 20
            while True:  # until the new request is either in flight on slow or answered by quick
                on_slow = metric_value(await asyncio.to_thread(metrics, gw), "oss_in_flight_requests",
                                       deployment="slow")
                if on_slow + sum(t.done() for t in held) >= len(held):
                    break
                assert time.monotonic() < deadline, "a held request never showed up"
                await asyncio.sleep(0.02)
        ids = []
        for _ in range(20):  # one at a time: the quick deployment is idle again before each
            raw = await ac.chat.completions.with_raw_response.create(model="smart", messages=HI, max_tokens=1)
            ids.append(raw.headers["x-gateway-deployment"])
        for t in held:
            t.cancel()
        await asyncio.gather(*held, return_exceptions=True)
        await ac.close()
        return ids

    ids = asyncio.run(run())
    assert ids.count("quick") == 20, ids


def test_retry_goes_to_healthy_deployment(make_sim: Callable[..., Proc], make_gateway: Callable[..., Proc]) -> None:
    bad = make_sim("--fault", "503")
    good = make_sim()
    gw = make_gateway({"model_list": [deployment("smart", bad, id="bad"), deployment("smart", good, id="good")],
                       "router_settings": {"num_retries": 2, "allowed_fails": 1000}})
    c = client(gw)
    for _ in range(20):
        raw = c.chat.completions.with_raw_response.create(model="smart", messages=HI, max_tokens=1)
        assert raw.headers["x-gateway-deployment"] == "good"
    assert sim_stats(good)["completed"] == 20
    assert sim_stats(bad)["requests"][CHAT] >= 3  # some requests tried it first, and were retried
    text = metrics(gw)
    assert metric_value(text, "oss_retries_total", alias="smart", deployment="bad") == sim_stats(bad)["requests"][CHAT]
    assert metric_value(text, "oss_requests_total", alias="smart", status_class="2xx") == 20


def test_connection_errors_and_429_are_retried(make_sim: Callable[..., Proc],
                                               make_gateway: Callable[..., Proc]) -> None:
    limited = make_sim("--fault", "429")
    good = make_sim()
    gw = make_gateway({"model_list": [deployment("smart", limited, id="limited"), deployment("smart", good, id="good")],
                       "router_settings": {"num_retries": 1, "allowed_fails": 1000}})
    c = client(gw)
    for _ in range(10):
        assert c.chat.completions.with_raw_response.create(
            model="smart", messages=HI, max_tokens=1).headers["x-gateway-deployment"] == "good"
    limited.stop()  # now a refused connection
    for _ in range(10):
        assert c.chat.completions.with_raw_response.create(
            model="smart", messages=HI, max_tokens=1).headers["x-gateway-deployment"] == "good"


def test_cooldown_takes_failing_deployment_out(make_sim: Callable[..., Proc],
                                               make_gateway: Callable[..., Proc]) -> None:
    bad = make_sim("--fault", "500")
    good = make_sim()
    gw = make_gateway({"model_list": [deployment("smart", bad, id="bad"), deployment("smart", good, id="good")],
                       "router_settings": {"num_retries": 1, "allowed_fails": 2, "cooldown_time": 2}})
    c = client(gw)
    for _ in range(30):
        c.chat.completions.create(model="smart", messages=HI, max_tokens=1)
    tried = sim_stats(bad)["requests"][CHAT]
    assert tried == 3  # allowed_fails=2: the third failure within a minute cools it down
    report = {d["id"]: d for d in httpx.get(f"{gw.url}/health/deployments").json()["deployments"]}
    assert report["bad"]["in_cooldown"] is True and report["good"]["in_cooldown"] is False
    text = metrics(gw)
    assert metric_value(text, "oss_deployment_cooldowns_total", deployment="bad") == 1
    assert metric_value(text, "oss_deployment_healthy", deployment="bad") == 0
    # after cooldown_time it is tried again
    sim_set(bad, fault=None)
    time.sleep(2.2)
    for _ in range(30):
        c.chat.completions.create(model="smart", messages=HI, max_tokens=1)
    assert sim_stats(bad)["completed"] > 0


def test_alias_fallback_when_alias_exhausted(make_sim: Callable[..., Proc],
                                             make_gateway: Callable[..., Proc]) -> None:
    bad = make_sim("--fault", "500")
    good = make_sim("--model", "fast-model")
    gw = make_gateway({"model_list": [deployment("smart", bad, id="smart-1"),
                                      deployment("fast", good, "fast-model", id="fast-1")],
                       "router_settings": {"num_retries": 1, "fallbacks": [{"smart": ["fast"]}]}})
    c = client(gw)
    raw = c.chat.completions.with_raw_response.create(model="smart", messages=HI, max_tokens=2)
    assert raw.parse().model == "fast-model"
    assert raw.headers["x-gateway-deployment"] == "fast-1"
    assert sim_stats(bad)["requests"][CHAT] == 2  # first try + one retry, then the fallback alias
    text = metrics(gw)
    assert metric_value(text, "oss_fallbacks_total", from_alias="smart", to_alias="fast") == 1
    # the app asked for smart: that is the request's alias; the tokens are the fallback's
    assert metric_value(text, "oss_requests_total", alias="smart", status_class="2xx") == 1
    assert metric_value(text, "oss_completion_tokens_total", alias="fast", deployment="fast-1") == 2


def test_context_window_fallback_before_sending(make_sim: Callable[..., Proc],
                                                make_gateway: Callable[..., Proc]) -> None:
    small = make_sim("--model", "small")
    large = make_sim("--model", "large")
    gw = make_gateway({"model_list": [deployment("fast", small, "small", id="fast-1", max_input_tokens=100),
                                      deployment("long", large, "large", id="long-1", max_input_tokens=100000)],
                       "router_settings": {"context_window_fallbacks": [{"fast": ["long"]}]}})
    c = client(gw)
    short = c.chat.completions.with_raw_response.create(model="fast", messages=HI, max_tokens=1)
    assert short.headers["x-gateway-deployment"] == "fast-1"
    big = [{"role": "user", "content": "word " * 2000}]
    raw = c.chat.completions.with_raw_response.create(model="fast", messages=big, max_tokens=1)
    assert raw.headers["x-gateway-deployment"] == "long-1"
    assert sim_stats(small)["requests"][CHAT] == 1  # the long prompt never went to the small model
    assert metric_value(metrics(gw), "oss_fallbacks_total", from_alias="fast", to_alias="long",
                        reason="context_window") == 1
    # no fallback for long: a clear 400
    with pytest.raises(openai.BadRequestError) as exc:
        c.chat.completions.create(model="long", messages=[{"role": "user", "content": "word " * 500000}])
    assert exc.value.code == "context_length_exceeded"  # type: ignore[attr-defined]


def test_context_window_fallback_on_upstream_error(make_sim: Callable[..., Proc],
                                                   make_gateway: Callable[..., Proc]) -> None:
    small = make_sim("--model", "small", "--max-model-len", "64")
    large = make_sim("--model", "large")
    gw = make_gateway({"model_list": [deployment("fast", small, "small", id="fast-1"),
                                      deployment("long", large, "large", id="long-1")],
                       "router_settings": {"context_window_fallbacks": [{"fast": ["long"]}]}})
    c = client(gw)
    raw = c.chat.completions.with_raw_response.create(
        model="fast", messages=[{"role": "user", "content": "word " * 200}], max_tokens=4)
    assert raw.headers["x-gateway-deployment"] == "long-1"
    assert sim_stats(small)["errors"] == 1
    stream = c.chat.completions.create(model="fast", messages=[{"role": "user", "content": "word " * 200}],
                                       max_tokens=4, stream=True)
    assert sum(1 for ch in stream if ch.choices and ch.choices[0].delta.content) == 4


def test_stream_timeout_and_timeout_end_with_504(make_sim: Callable[..., Proc],
                                                 make_gateway: Callable[..., Proc]) -> None:
    sim = make_sim("--ttft", "3")
    gw = make_gateway({"model_list": [deployment("smart", sim, timeout=30, stream_timeout=0.5),
                                      deployment("plain", sim, timeout=0.5)],
                       "router_settings": {"num_retries": 0}})
    c = client(gw)
    t0 = time.monotonic()
    with pytest.raises(openai.APIStatusError) as exc:
        c.chat.completions.create(model="smart", messages=HI, stream=True)
    assert exc.value.status_code == 504
    assert time.monotonic() - t0 < 2.5
    with pytest.raises(openai.APIStatusError) as exc2:
        c.chat.completions.create(model="plain", messages=HI)
    assert exc2.value.status_code == 504


def test_per_deployment_rpm_and_parallel_limits(make_sim: Callable[..., Proc],
                                                make_gateway: Callable[..., Proc]) -> None:
    a = make_sim()
    b = make_sim("--ttft", "1")
    gw = make_gateway({"model_list": [deployment("smart", a, id="a", rpm=5),
                                      deployment("par", b, id="b", max_parallel_requests=2)]})
    c = client(gw)
    for _ in range(5):
        c.chat.completions.create(model="smart", messages=HI, max_tokens=1)
    with pytest.raises(openai.RateLimitError) as exc:
        c.chat.completions.create(model="smart", messages=HI, max_tokens=1)
    assert int(exc.value.response.headers["retry-after"]) >= 1

    async def parallel() -> list[int]:
        ac = openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="none", max_retries=0)

        async def one() -> int:
            try:
                await ac.chat.completions.create(model="par", messages=HI, max_tokens=1)
                return 200
            except openai.APIStatusError as e:
                return e.status_code

        out = await asyncio.gather(*(one() for _ in range(4)))
        await ac.close()
        return list(out)

    statuses = asyncio.run(parallel())
    assert sorted(statuses) == [200, 200, 429, 429]


def test_context_window_fallback_when_the_fitting_deployment_is_down(make_sim: Callable[..., Proc],
                                                                     make_gateway: Callable[..., Proc]) -> None:
    """fast = A (no max_input_tokens, down) + B (max_input_tokens 60): a long prompt cannot go to B and A is
    unavailable, so the context-window fallback `long` takes it (first on A's connection error, then while
    A is in cooldown), never a 502/503."""
    dead = make_sim("--model", "small")
    small = make_sim("--model", "small")
    large = make_sim("--model", "large")
    gw = make_gateway({"model_list": [deployment("fast", dead, "small", id="fast-a"),
                                      deployment("fast", small, "small", id="fast-b", max_input_tokens=60),
                                      deployment("long", large, "large", id="long-1")],
                       "router_settings": {"context_window_fallbacks": [{"fast": ["long"]}], "allowed_fails": 1,
                                           "cooldown_time": 60, "num_retries": 1}})
    dead.stop()
    c = client(gw)
    big = [{"role": "user", "content": "word " * 400}]
    for _ in range(3):
        raw = c.chat.completions.with_raw_response.create(model="fast", messages=big, max_tokens=1)
        assert raw.status_code == 200
        assert raw.headers["x-gateway-deployment"] == "long-1"
    assert sim_stats(small)["requests"].get(CHAT, 0) == 0  # B was never asked to take a prompt over its window
    assert metric_value(metrics(gw), "oss_fallbacks_total", from_alias="fast", to_alias="long",
                        reason="context_window") == 3
    # a short prompt still goes to the deployment that fits
    short = c.chat.completions.with_raw_response.create(model="fast", messages=HI, max_tokens=1)
    assert short.headers["x-gateway-deployment"] == "fast-b"
