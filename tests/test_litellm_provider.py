"""A non-OpenAI provider prefix goes through the litellm library (imported only then)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import openai
import orjson
import pytest

from gateway import sse
from gateway.config import parse_config
from gateway.upstreams.litellm import FIELDS, litellm_kwargs
from tests.helpers import metric_value, metrics, sim_set, sim_stats
from tests.procs import Proc

HI = [{"role": "user", "content": "hello there"}]


def test_litellm_provider_plain_and_stream(make_sim: Callable[..., Proc], make_gateway: Callable[..., Proc]) -> None:
    sim = make_sim("--model", "sim-model")
    native = make_sim("--model", "native-model")
    gw = make_gateway({"model_list": [
        {"model_name": "cloud", "litellm_params": {"model": "mistral/sim-model", "api_base": f"{sim.url}/v1",
                                                    "api_key": "os.environ/CLOUD_KEY"},
         "model_info": {"id": "cloud-1", "input_cost_per_token": 0.001, "output_cost_per_token": 0.002}},
        {"model_name": "local", "litellm_params": {"model": "openai/native-model", "api_base": f"{native.url}/v1"}},
    ]}, env={"CLOUD_KEY": "sk-cloud-secret"})
    c = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="none", max_retries=0)
    raw = c.chat.completions.with_raw_response.create(model="cloud", messages=HI, max_tokens=4)
    r = raw.parse()
    assert raw.headers["x-gateway-deployment"] == "cloud-1"
    assert r.choices[0].message.content is not None and len(r.choices[0].message.content.split()) == 4
    # litellm called the provider with the configured key
    assert sim_stats(sim)["last_headers"]["authorization"] == "Bearer sk-cloud-secret"
    chunks = list(c.chat.completions.create(model="cloud", messages=HI, max_tokens=3, stream=True))
    assert sum(1 for ch in chunks if ch.choices and ch.choices[0].delta.content) == 3
    assert all(ch.usage is None for ch in chunks)  # not asked for: not shown
    text = metrics(gw)
    assert metric_value(text, "oss_completion_tokens_total", alias="cloud", estimated="false") == 7
    assert metric_value(text, "oss_requests_total", alias="cloud", status_class="2xx") == 2
    # the native deployment next to it is unaffected
    assert c.chat.completions.create(model="local", messages=HI, max_tokens=1).model == "native-model"
    assert "sk-cloud-secret" not in gw.log()


def test_litellm_provider_errors_map_to_openai_shape(make_sim: Callable[..., Proc],
                                                     make_gateway: Callable[..., Proc]) -> None:
    sim = make_sim("--fault", "500")
    gw = make_gateway({"model_list": [
        {"model_name": "cloud", "litellm_params": {"model": "mistral/sim-model", "api_base": f"{sim.url}/v1",
                                                    "api_key": "x"}}],
        "router_settings": {"num_retries": 0}})
    c = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="none", max_retries=0)
    try:
        c.chat.completions.create(model="cloud", messages=HI, max_tokens=1)
    except openai.APIStatusError as exc:
        assert exc.status_code == 502
        assert "cloud" in str(exc.message)
    else:
        raise AssertionError("expected a 502")


SECRET = "sk-cloud-secret"
# what litellm's mistral/ provider sends of the fields the tests use (seed goes out as random_seed)
SENT_FIELDS = {"model", "messages", "max_tokens", "temperature", "top_p", "random_seed", "stop", "stream",
               "stream_options", "input", "encoding_format"}


def cloud_gateway(make_gateway: Callable[..., Proc], real: Proc) -> Proc:
    params = {"api_base": f"{real.url}/v1", "api_key": "os.environ/CLOUD_KEY"}
    return make_gateway({"model_list": [
        {"model_name": "cloud", "litellm_params": {"model": "mistral/sim-model", **params}},
        {"model_name": "cloud-embed", "litellm_params": {"model": "mistral/sim-embed", **params}},
    ], "router_settings": {"num_retries": 0}}, env={"CLOUD_KEY": SECRET})


def test_request_body_cannot_steer_a_litellm_deployment(make_sim: Callable[..., Proc],
                                                        make_gateway: Callable[..., Proc]) -> None:
    real = make_sim()
    attacker = make_sim()
    gw = cloud_gateway(make_gateway, real)
    heard = sim_stats(attacker)["requests"]  # its start-up health check
    evil = f"{attacker.url}/v1"
    hostile: list[dict[str, Any]] = [
        {"api_base": evil}, {"base_url": evil}, {"custom_llm_provider": "openai", "api_base": evil},
        {"api_key": "sk-attacker"}, {"extra_headers": {"x-evil": "1", "Authorization": "Bearer sk-attacker"}},
        {"headers": {"x-evil": "1"}}, {"mock_response": "pwned"}, {"mock_response": "pwned", "api_base": evil},
        {"litellm_params": {"api_base": evil, "mock_response": "pwned"}},
        {"metadata": {"api_base": evil, "model_group": "other"}}, {"extra_body": {"api_base": evil, "evil": 1}},
        {"model_list": [{"model_name": "cloud", "litellm_params": {"model": "openai/x", "api_base": evil}}]},
        {"organization": "evil-org"}, {"api_version": "evil"}, {"azure_ad_token": "evil"},
        {"aws_region_name": "evil"}, {"vertex_project": "evil"}, {"timeout": 0.0001}, {"num_retries": 5},
        {"fallbacks": [{"model": "openai/x", "api_base": evil}]}, {"mock_testing_fallbacks": True},
        {"mock_timeout": True}, {"input_cost_per_token": 0}, {"stream_options": {"include_usage": False}},
        {"user_api_key": "sk-attacker"}, {"proxy_server_request": {"url": evil}}, {"store": True},
        {"service_tier": "priority"},
    ]
    c = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="none", max_retries=0)
    served = 0

    def check_real_got_it(fields: dict[str, Any]) -> None:
        nonlocal served
        served += 1
        stats = sim_stats(real)
        assert stats["completed"] == served, fields  # answered upstream: never short-circuited
        sent = stats["last_request"]
        assert set(sent) <= SENT_FIELDS, (fields, sent)
        headers = stats["last_headers"]
        assert headers["authorization"] == f"Bearer {SECRET}", fields
        assert "x-evil" not in headers

    for fields in hostile:
        r = c.chat.completions.create(model="cloud", messages=HI, max_tokens=2, extra_body=fields)
        assert r.choices[0].message.content != "pwned"
        assert r.choices[0].message.content is not None and len(r.choices[0].message.content.split()) == 2
        check_real_got_it(fields)
    for fields in ({"mock_response": "pwned"}, {"api_base": evil}, {"extra_headers": {"x-evil": "1"}}):
        chunks = list(c.chat.completions.create(model="cloud", messages=HI, max_tokens=2, stream=True,
                                                extra_body=fields))
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        assert "pwned" not in text and len(text.split()) == 2
        check_real_got_it(fields)
        emb = c.embeddings.create(model="cloud-embed", input="hello world", extra_body=fields)
        assert len(emb.data[0].embedding) == 384
        check_real_got_it(fields)
        assert sim_stats(real)["last_request"]["input"] == "hello world"
    # the OpenAI fields do arrive (in the provider's spelling)
    c.chat.completions.create(model="cloud", messages=HI, max_tokens=2, temperature=0.5, top_p=0.9, seed=7,
                              stop=["zz"])
    check_real_got_it({})
    sent = sim_stats(real)["last_request"]
    assert (sent["temperature"], sent["top_p"], sent["random_seed"], sent["stop"]) == (0.5, 0.9, 7, ["zz"])
    assert sim_stats(attacker)["requests"] == heard  # the attacker's server heard nothing, ever
    assert SECRET not in gw.log()


def test_litellm_stream_that_breaks_ends_with_error_event(make_sim: Callable[..., Proc],
                                                          make_gateway: Callable[..., Proc]) -> None:
    real = make_sim()
    gw = cloud_gateway(make_gateway, real)
    # the provider drops the connection, or ends the body cleanly but short (no finish_reason, no [DONE])
    for fault in ("drop", "truncate"):
        sim_set(real, fault=fault, fault_after_tokens=3)
        with httpx.stream("POST", f"{gw.url}/v1/chat/completions", timeout=10,
                          json={"model": "cloud", "messages": HI, "max_tokens": 20, "stream": True}) as r:
            assert r.status_code == 200
            events = sse.decode(r.read())
        assert events[-1].data == b"[DONE]", fault
        assert [e.data for e in events].count(b"[DONE]") == 1
        err = orjson.loads(events[-2].data)["error"]
        assert err["type"] == "upstream_error" and "cloud" in err["message"], fault
        tokens = [e for e in events[:-2] if orjson.loads(e.data)["choices"][0]["delta"].get("content")]
        assert len(tokens) == 3, fault
    c = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="none", max_retries=0)
    with pytest.raises(openai.APIError):
        for _ in c.chat.completions.create(model="cloud", messages=HI, max_tokens=20, stream=True):
            pass
    assert metric_value(metrics(gw), "oss_requests_total", alias="cloud", status_class="5xx") == 3
    # a stream that fails before its first byte is still a plain error answer
    sim_set(real, fault="503", fault_after_tokens=None)
    with pytest.raises(openai.APIStatusError) as exc:
        list(c.chat.completions.create(model="cloud", messages=HI, max_tokens=2, stream=True))
    assert exc.value.status_code == 502


def test_litellm_stream_left_by_its_client_stops_upstream(make_sim: Callable[..., Proc],
                                                         make_gateway: Callable[..., Proc]) -> None:
    real = make_sim("--tps", "5")
    gw = cloud_gateway(make_gateway, real)
    with httpx.stream("POST", f"{gw.url}/v1/chat/completions", timeout=10,
                      json={"model": "cloud", "messages": HI, "max_tokens": 100, "stream": True}) as r:
        for line in r.iter_lines():
            if '"content":" ' in line:
                break  # leave after the first token
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and sim_stats(real)["cancelled"] < 1:
        time.sleep(0.05)
    stats = sim_stats(real)
    assert stats["cancelled"] == 1 and stats["in_flight"] == 0 and stats["completed"] == 0


def test_allow_lists_leave_every_litellm_argument_to_router_yaml() -> None:
    import os

    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    from litellm.types.utils import all_litellm_params

    config = parse_config({"model_list": [{"model_name": "cloud", "litellm_params": {
        "model": "bedrock/anthropic.claude", "api_key": "sk-yaml", "aws_region_name": "eu-west-1",
        "extra_headers": {"x-yaml": "1"}, "temperature": 0.2}}]})
    dep = config.aliases["cloud"][0]
    names = {*all_litellm_params, "api_base", "base_url", "api_key", "extra_headers", "headers", "extra_body",
             "extra_query", "custom_llm_provider", "aws_region_name", "aws_access_key_id", "vertex_credentials",
             "stream_options", "model"}
    for endpoint, fields in FIELDS.items():
        assert not fields & names, endpoint
        body = {name: f"client-{name}" for name in names} | {"temperature": 0.9}
        kwargs = litellm_kwargs(dep, endpoint, body, stream=True)
        assert not any(isinstance(v, str) and v.startswith("client-") for v in kwargs.values()), endpoint
        assert kwargs["model"] == "bedrock/anthropic.claude" and kwargs["api_key"] == "sk-yaml"
        assert kwargs["aws_region_name"] == "eu-west-1" and kwargs["extra_headers"] == {"x-yaml": "1"}
        assert kwargs["num_retries"] == 0 and "api_base" not in kwargs
        if endpoint != "embeddings":
            assert kwargs["temperature"] == 0.9  # a generation default from router.yaml; the client may change it
            assert kwargs["stream_options"] == {"include_usage": True}
