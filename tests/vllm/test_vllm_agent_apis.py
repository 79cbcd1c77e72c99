"""The agent APIs through the gateway against real vLLM (which serves /v1/messages, /v1/messages/count_tokens
and /v1/responses natively: hosted_vllm/ deployments pass them through), with the official SDKs; the
gateway's token counters equal the usage vLLM reported in each API's own terms."""

from __future__ import annotations

import anthropic
import openai

from tests.helpers import metric_value, metrics
from tests.procs import Proc
from tests.vllm.conftest import TIMEOUT


def counters(gw: Proc, alias: str) -> tuple[float, float]:
    text = metrics(gw)
    return (metric_value(text, "oss_prompt_tokens_total", alias=alias, estimated="false"),
            metric_value(text, "oss_completion_tokens_total", alias=alias, estimated="false"))


def test_messages_plain_streamed_and_count_tokens(gateway: Proc) -> None:
    c = anthropic.Anthropic(base_url=gateway.url, api_key="sk-test", max_retries=0, timeout=TIMEOUT)
    p0, c0 = counters(gateway, "large")
    msg = c.messages.create(model="large", max_tokens=8, messages=[{"role": "user", "content": "Say hello."}])
    assert msg.type == "message" and msg.content and msg.content[0].type == "text"
    assert 0 < msg.usage.output_tokens <= 8
    with c.messages.stream(model="large", max_tokens=6, messages=[{"role": "user", "content": "Count to 3."}]) as s:
        streamed = "".join(s.text_stream)
        final = s.get_final_message()
    assert streamed and 0 < final.usage.output_tokens <= 6
    p1, c1 = counters(gateway, "large")
    assert c1 - c0 == msg.usage.output_tokens + final.usage.output_tokens
    assert p1 - p0 == msg.usage.input_tokens + final.usage.input_tokens
    n = c.messages.count_tokens(model="large", messages=[{"role": "user", "content": "Say hello."}])
    assert n.input_tokens > 0
    assert counters(gateway, "large") == (p1, c1)  # counting is not serving


def test_responses_plain_and_streamed(gateway: Proc) -> None:
    c = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="sk-test", max_retries=0, timeout=TIMEOUT)
    p0, c0 = counters(gateway, "large")
    resp = c.responses.create(model="large", input="Say hello.", max_output_tokens=8)
    assert resp.output_text and resp.usage is not None and 0 < resp.usage.output_tokens <= 8
    events = list(c.responses.create(model="large", input="Count to 3.", max_output_tokens=6, stream=True))
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and "response.output_text.delta" in kinds
    done = events[-1]
    assert done.type in ("response.completed", "response.incomplete")
    usage = done.response.usage  # type: ignore[union-attr]
    assert usage is not None
    p1, c1 = counters(gateway, "large")
    assert c1 - c0 == resp.usage.output_tokens + usage.output_tokens
    assert p1 - p0 == resp.usage.input_tokens + usage.input_tokens
