"""/v1/messages, /v1/messages/count_tokens and /v1/responses through the gateway with the official SDKs:
native pass-through (hosted_vllm/ deployments: the simulator speaks both APIs as vLLM does) and translated
(openai/ deployments: chat/completions only), the same routes, keys, limits and meters as chat."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.helpers import metric_value, metrics, sim_stats
from tests.procs import Proc, start_gateway, start_simulator

MASTER = "sk-master-agents-0123456789"
ADMIN = {"Authorization": f"Bearer {MASTER}"}
WEATHER_TOOL = {"name": "get_weather", "description": "Weather of a city",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def dep(alias: str, sim: Proc, provider: str, dep_id: str, **info: Any) -> dict[str, Any]:
    return {"model_name": alias, "litellm_params": {"model": f"{provider}/sim-{alias}", "api_base": f"{sim.url}/v1"},
            "model_info": {"id": dep_id, "input_cost_per_token": 0.000001, "output_cost_per_token": 0.000002, **info}}


@pytest.fixture(scope="module")
def sims() -> Iterator[tuple[Proc, Proc]]:
    a, b = start_simulator(), start_simulator()
    yield a, b
    a.stop()
    b.stop()


@pytest.fixture(scope="module")
def gw(sims: tuple[Proc, Proc], redis_server: Proc) -> Iterator[Proc]:
    a, b = sims
    config = {"model_list": [
        dep("native", a, "hosted_vllm", "native-a"), dep("native", b, "hosted_vllm", "native-b"),
        dep("translated", a, "openai", "tr-a"), dep("translated", b, "openai", "tr-b"),
    ]}
    env = {"GATEWAY_MASTER_KEY": MASTER, "GATEWAY_STATE_REDIS_URL": redis_server.extra["url"],
           "GATEWAY_STATE_KEY_PREFIX": f"agents{uuid.uuid4().hex[:6]}"}
    proc = start_gateway(config, env=env)
    yield proc
    proc.stop()


def ant(gw: Proc, key: str = MASTER) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key=key, max_retries=0, timeout=30)


def oai(gw: Proc, key: str = MASTER) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0, timeout=30)


def tokens(gw: Proc, alias: str) -> tuple[float, float]:
    text = metrics(gw)
    return (metric_value(text, "oss_prompt_tokens_total", alias=alias),
            metric_value(text, "oss_completion_tokens_total", alias=alias))


@pytest.mark.parametrize("alias", ["native", "translated"])
def test_messages_plain_stream_and_counters(gw: Proc, alias: str) -> None:
    c = ant(gw)
    p0, c0 = tokens(gw, alias)
    msg = c.messages.create(model=alias, max_tokens=8, messages=[{"role": "user", "content": "hello there"}])
    assert msg.type == "message" and msg.role == "assistant" and msg.model
    assert msg.content and msg.content[0].type == "text" and msg.content[0].text
    assert msg.usage.output_tokens == 8 and msg.stop_reason == "max_tokens"
    with c.messages.stream(model=alias, max_tokens=6, messages=[{"role": "user", "content": "stream it"}]) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text and final.usage.output_tokens == 6
    p1, c1 = tokens(gw, alias)
    # the counters equal the usage the (translated) upstream reported
    assert c1 - c0 == 8 + 6
    assert p1 - p0 == msg.usage.input_tokens + final.usage.input_tokens


@pytest.mark.parametrize("alias", ["native", "translated"])
def test_messages_tool_call_and_result(gw: Proc, alias: str) -> None:
    c = ant(gw)
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    msg = c.messages.create(model=alias, max_tokens=64, messages=ask, tools=[WEATHER_TOOL],
                            tool_choice={"type": "tool", "name": "get_weather"})
    assert msg.stop_reason == "tool_use"
    use = next(b for b in msg.content if b.type == "tool_use")
    assert use.name == "get_weather" and use.input.get("city") == "Paris"
    follow = c.messages.create(model=alias, max_tokens=8, tools=[WEATHER_TOOL], messages=[
        *ask, {"role": "assistant", "content": [b.model_dump() for b in msg.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "18C, sunny"}]}])
    assert follow.content[0].type == "text"


@pytest.mark.parametrize("alias", ["native", "translated"])
def test_count_tokens(gw: Proc, alias: str) -> None:
    n = ant(gw).messages.count_tokens(model=alias, messages=[{"role": "user", "content": "count these words " * 10}])
    assert n.input_tokens > 10


def test_messages_errors_raise_the_sdk_classes(gw: Proc, sims: tuple[Proc, Proc]) -> None:
    with pytest.raises(anthropic.NotFoundError) as nf:
        ant(gw).messages.create(model="nope", max_tokens=4, messages=[{"role": "user", "content": "hi"}])
    assert nf.value.body["type"] == "error" and nf.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    with pytest.raises(anthropic.AuthenticationError):
        ant(gw, "sk-wrong").messages.create(model="native", max_tokens=4, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(anthropic.BadRequestError):
        ant(gw).messages.create(model="native", max_tokens=4, messages=[{"role": "robot", "content": "hi"}])
    key = httpx.post(f"{gw.url}/key/generate", json={"rpm_limit": 1}, headers=ADMIN, timeout=10).json()["key"]
    ant(gw, key).messages.create(model="native", max_tokens=2, messages=[{"role": "user", "content": "one"}])
    with pytest.raises(anthropic.RateLimitError) as rl:
        ant(gw, key).messages.create(model="native", max_tokens=2, messages=[{"role": "user", "content": "two"}])
    assert rl.value.response.headers.get("retry-after")
    # x-api-key (what Claude Code sends) works like a bearer token; anthropic-version and anthropic-beta reach
    # a native upstream, the client's key never does
    r = httpx.post(f"{gw.url}/v1/messages", headers={"x-api-key": MASTER, "anthropic-version": "2023-06-01",
                                                     "anthropic-beta": "tools-2024-04-04"},
                   json={"model": "native", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200 and r.json()["type"] == "message"
    holder = sims[0] if r.headers["x-gateway-deployment"] == "native-a" else sims[1]
    seen = sim_stats(holder)["last_headers"]
    assert seen["anthropic-version"] == "2023-06-01" and seen["anthropic-beta"] == "tools-2024-04-04"
    assert MASTER not in str(seen)


@pytest.mark.parametrize("alias", ["native", "translated"])
def test_responses_plain_stream_and_follow_ups_across_deployments(gw: Proc, alias: str,
                                                                    sims: tuple[Proc, Proc]) -> None:
    c = oai(gw)
    p0, c0 = tokens(gw, alias)
    first = c.responses.with_raw_response.create(model=alias, input="Say something", max_output_tokens=8)
    resp = first.parse()
    holder = first.headers["x-gateway-deployment"]
    assert resp.status == "incomplete" and resp.output_text
    assert resp.usage is not None and resp.usage.output_tokens == 8
    prev = resp.id
    for turn in range(6):  # each follow-up must reach the deployment that holds the conversation
        raw = c.responses.with_raw_response.create(model=alias, input=f"and then {turn}?", previous_response_id=prev,
                                                   max_output_tokens=4)
        assert raw.headers["x-gateway-deployment"] == holder
        prev = raw.parse().id
    got = c.responses.retrieve(prev)
    assert got.id == prev
    events = list(c.responses.create(model=alias, input="stream please", max_output_tokens=5, stream=True))
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and "response.output_text.delta" in kinds
    assert kinds[-1] in ("response.completed", "response.incomplete")
    p1, c1 = tokens(gw, alias)
    assert c1 - c0 == 8 + 6 * 4 + 5
    assert p1 > p0
    with pytest.raises(openai.NotFoundError):
        c.responses.create(model=alias, input="x", previous_response_id="resp_does_not_exist")
    c.responses.delete(prev)
    with pytest.raises(openai.NotFoundError):
        c.responses.retrieve(prev)


def test_responses_of_another_tenant_are_unknown(gw: Proc) -> None:
    resp = oai(gw).responses.create(model="translated", input="mine", max_output_tokens=4)
    key = httpx.post(f"{gw.url}/key/generate", json={}, headers=ADMIN, timeout=10).json()["key"]
    with pytest.raises(openai.NotFoundError):
        oai(gw, key).responses.retrieve(resp.id)
    with pytest.raises(openai.NotFoundError):
        oai(gw, key).responses.create(model="translated", input="x", previous_response_id=resp.id)


def test_agents_sdk_runs_an_agent_with_a_function_tool(gw: Proc, sims: tuple[Proc, Proc]) -> None:
    agents = pytest.importorskip("agents")
    calls: list[str] = []

    @agents.function_tool
    def get_weather(city: str) -> str:
        """Weather of a city."""
        calls.append(city)
        return f"18C and sunny in {city}"

    async def run() -> Any:
        client = openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key=MASTER, max_retries=0)
        model = agents.OpenAIResponsesModel(model="native", openai_client=client)
        agent = agents.Agent(name="weather", instructions="Use the tool.", tools=[get_weather], model=model,
                             model_settings=agents.ModelSettings(tool_choice="required", max_tokens=32))
        agents.set_tracing_disabled(True)
        result = await agents.Runner.run(agent, "What is the weather in Paris?", max_turns=4)
        await client.close()
        return result

    result = asyncio.run(run())
    assert calls == ["Paris"]
    assert isinstance(result.final_output, str) and result.final_output
