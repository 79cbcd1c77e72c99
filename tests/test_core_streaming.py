"""Streaming: chunks as they arrive, usage requested upstream and stripped unless asked, errors after
the first byte, client disconnects cancelling the upstream, and SIGTERM draining open streams."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable

import httpx
import openai
import orjson
import pytest

from gateway import sse
from tests.helpers import deployment, metric_value, metrics, sim_stats
from tests.procs import Proc

HI = [{"role": "user", "content": "hello there"}]


def sse_events(text: str) -> list[str]:
    return [e[len("data: "):] for e in text.split("\n\n") if e.startswith("data: ")]


def test_usage_chunk_only_when_asked(make_sim: Callable[..., Proc], make_gateway: Callable[..., Proc]) -> None:
    sim = make_sim()
    gw = make_gateway({"model_list": [deployment("smart", sim, input_cost_per_token=0.001,
                                                 output_cost_per_token=0.002)]})
    c = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="none", max_retries=0)
    chunks = list(c.chat.completions.create(model="smart", messages=HI, max_tokens=6, stream=True))
    assert all(ch.usage is None for ch in chunks)
    assert sum(1 for ch in chunks if ch.choices and ch.choices[0].delta.content) == 6
    # the gateway asked the upstream for usage anyway
    assert sim_stats(sim)["last_request"]["stream_options"] == {"include_usage": True}
    asked = list(c.chat.completions.create(model="smart", messages=HI, max_tokens=6, stream=True,
                                           stream_options={"include_usage": True}))
    assert asked[-1].usage is not None and asked[-1].usage.completion_tokens == 6
    assert asked[-1].choices == []
    text = metrics(gw)
    # both streams were counted from the upstream's own usage
    assert metric_value(text, "oss_completion_tokens_total", alias="smart", estimated="false") == 12
    prompt = asked[-1].usage.prompt_tokens
    assert metric_value(text, "oss_prompt_tokens_total", alias="smart", estimated="false") == 2 * prompt
    assert metric_value(text, "oss_token_cost_usd_total", alias="smart") == pytest.approx(
        2 * prompt * 0.001 + 12 * 0.002)
    assert metric_value(text, "oss_time_to_first_token_seconds_count", alias="smart") == 2


def test_raw_sse_headers_and_done(make_sim: Callable[..., Proc], make_gateway: Callable[..., Proc]) -> None:
    sim = make_sim()
    gw = make_gateway({"model_list": [deployment("smart", sim, id="s1")]})
    with httpx.stream("POST", f"{gw.url}/v1/chat/completions", timeout=10,
                      json={"model": "smart", "messages": HI, "max_tokens": 3, "stream": True}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-accel-buffering"] == "no"
        assert r.headers["x-gateway-deployment"] == "s1"
        body = r.read().decode()
    events = sse_events(body)
    assert events[-1] == "[DONE]"
    assert all("usage" not in orjson.loads(e) or orjson.loads(e)["usage"] is None for e in events[:-1])


def test_chunks_arrive_as_generated(make_sim: Callable[..., Proc], make_gateway: Callable[..., Proc]) -> None:
    sim = make_sim("--tps", "10")  # a token every 100 ms
    gw = make_gateway({"model_list": [deployment("smart", sim)]})
    arrivals: list[float] = []
    with httpx.stream("POST", f"{gw.url}/v1/chat/completions", timeout=10,
                      json={"model": "smart", "messages": HI, "max_tokens": 6, "stream": True}) as r:
        for line in r.iter_lines():
            if line.startswith("data: {") and '"content":" ' in line:
                arrivals.append(time.monotonic())
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
    assert len(arrivals) == 6
    # not buffered into one lump, nor in pairs: most gaps are a token's time (the simulator keeps an absolute
    # schedule, so one late token on a loaded machine is followed by a short gap: the median ignores that)
    assert sorted(gaps)[len(gaps) // 2] > 0.05 and arrivals[-1] - arrivals[0] > 0.3, gaps


def test_upstream_without_usage_is_estimated(make_sim: Callable[..., Proc],
                                             make_gateway: Callable[..., Proc]) -> None:
    sim = make_sim("--no-stream-usage")
    gw = make_gateway({"model_list": [deployment("smart", sim, input_cost_per_token=0.001,
                                                 output_cost_per_token=0.002)]})
    c = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="none", max_retries=0)
    text = "".join(ch.choices[0].delta.content or "" for ch in
                   c.chat.completions.create(model="smart", messages=HI, max_tokens=8, stream=True) if ch.choices)
    assert text
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        m = metrics(gw)
        if metric_value(m, "oss_completion_tokens_total", estimated="true") > 0:
            break
        time.sleep(0.1)
    # the simulator's /tokenize counts the words exactly: 8 tokens, labelled estimated
    assert metric_value(m, "oss_completion_tokens_total", alias="smart", estimated="true") == 8
    assert metric_value(m, "oss_prompt_tokens_total", alias="smart", estimated="true") > 0
    assert metric_value(m, "oss_token_cost_usd_total", alias="smart", estimated="true") > 0.016
    assert metric_value(m, "oss_completion_tokens_total", estimated="false") == 0


def test_failure_after_first_byte_ends_with_error_event(make_sim: Callable[..., Proc],
                                                        make_gateway: Callable[..., Proc]) -> None:
    sim = make_sim()
    gw = make_gateway({"model_list": [deployment("smart", sim)]})
    with httpx.stream("POST", f"{gw.url}/v1/chat/completions", timeout=10,
                      json={"model": "smart", "messages": HI, "max_tokens": 20, "stream": True,
                            "sim": {"fault": "drop", "fault_after_tokens": 3}}) as r:
        assert r.status_code == 200
        events = sse_events(r.read().decode())
    assert events[-1] == "[DONE]"
    err = orjson.loads(events[-2])
    assert err["error"]["type"] == "upstream_error"
    assert "smart" in err["error"]["message"]
    contents = [e for e in events[:-2] if '"content":" ' in e]
    assert len(contents) == 3
    c = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="none", max_retries=0)
    with pytest.raises(openai.APIError):
        for _ in c.chat.completions.create(model="smart", messages=HI, max_tokens=20, stream=True,
                                           extra_body={"sim": {"fault": "drop", "fault_after_tokens": 2}}):
            pass
    assert metric_value(metrics(gw), "oss_requests_total", alias="smart", status_class="5xx") == 2


def test_failure_before_first_byte_is_retried(make_sim: Callable[..., Proc],
                                              make_gateway: Callable[..., Proc]) -> None:
    bad = make_sim("--fault", "502")
    good = make_sim()
    gw = make_gateway({"model_list": [deployment("smart", bad, id="bad"), deployment("smart", good, id="good")],
                       "router_settings": {"allowed_fails": 1000}})
    c = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="none", max_retries=0)
    for _ in range(8):
        chunks = list(c.chat.completions.create(model="smart", messages=HI, max_tokens=2, stream=True))
        assert sum(1 for ch in chunks if ch.choices and ch.choices[0].delta.content) == 2


def test_client_disconnect_cancels_upstream(make_sim: Callable[..., Proc],
                                            make_gateway: Callable[..., Proc]) -> None:
    sim = make_sim("--tps", "5")
    gw = make_gateway({"model_list": [deployment("smart", sim)]})
    with httpx.stream("POST", f"{gw.url}/v1/chat/completions", timeout=10,
                      json={"model": "smart", "messages": HI, "max_tokens": 100, "stream": True}) as r:
        for line in r.iter_lines():
            if '"content":" ' in line:
                break  # leave after the first token
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and sim_stats(sim)["cancelled"] < 1:
        time.sleep(0.05)
    stats = sim_stats(sim)
    assert stats["cancelled"] == 1 and stats["in_flight"] == 0 and stats["completed"] == 0
    # a plain request waiting on a hung upstream is cancelled too
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{gw.url}/v1/chat/completions", timeout=0.5,
                   json={"model": "smart", "messages": HI, "sim": {"fault": "hang"}})
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and sim_stats(sim)["cancelled"] < 2:
        time.sleep(0.05)
    assert sim_stats(sim)["cancelled"] == 2
    assert sim_stats(sim)["in_flight"] == 0


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_drains_streams(make_sim: Callable[..., Proc], make_gateway: Callable[..., Proc],
                                workers: int) -> None:
    sim = make_sim("--tps", "10")
    gw = make_gateway({"model_list": [deployment("smart", sim)]}, workers=workers)

    async def run() -> list[int]:
        ac = openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="none", max_retries=0)

        async def one() -> int:
            stream = await ac.chat.completions.create(model="smart", messages=HI, max_tokens=15, stream=True)
            return sum([1 async for ch in stream if ch.choices and ch.choices[0].delta.content])

        tasks = [asyncio.create_task(one()) for _ in range(4)]
        await asyncio.sleep(0.5)  # streams are open, a few tokens in
        gw.signal(signal.SIGTERM)
        out = await asyncio.gather(*tasks)
        await ac.close()
        return list(out)

    counts = asyncio.run(run())
    assert counts == [15, 15, 15, 15]
    assert gw.popen.wait(10) == 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{gw.url}/health/live", timeout=1)


# content that looks like SSE framing: "[DONE]" inside a token, "data:" and blank lines inside a token
TRICKY = [" say", " [DONE]", "\n\ndata: x", " data: [DONE]\n\n", "\r\n\r\n", " end"]


def stream_events(gw: Proc, body: dict[str, object]) -> tuple[str, list[sse.Event]]:
    with httpx.stream("POST", f"{gw.url}/v1/chat/completions", json=body, timeout=10) as r:
        assert r.status_code == 200
        return r.headers["x-gateway-cache"], sse.decode(r.read())


def contents(events: list[sse.Event]) -> list[str]:
    out = []
    for ev in events:
        if ev.data != b"[DONE]":
            for choice in orjson.loads(ev.data)["choices"]:
                if choice["delta"].get("content"):
                    out.append(choice["delta"]["content"])
    return out


def test_content_that_looks_like_sse_is_only_content(make_sim: Callable[..., Proc],
                                                     make_gateway: Callable[..., Proc]) -> None:
    sim = make_sim()
    gw = make_gateway({"model_list": [deployment("smart", sim)],
                       "litellm_settings": {"cache": True, "cache_params": {"type": "local"}}})
    body = {"model": "smart", "messages": HI, "stream": True, "temperature": 0, "sim": {"reply": TRICKY}}
    status, events = stream_events(gw, body)
    assert status == "MISS"
    # role chunk, one event per token, exactly one [DONE] and it closes the stream
    assert len(events) == 1 + len(TRICKY) + 1
    assert [e.data for e in events].count(b"[DONE]") == 1 and events[-1].data == b"[DONE]"
    assert contents(events) == TRICKY
    c = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="none", max_retries=0)
    chunks = list(c.chat.completions.create(model="smart", messages=[{"role": "user", "content": "sdk"}],
                                            stream=True, extra_body={"sim": {"reply": TRICKY}}))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == "".join(TRICKY)

    # the upstream ends cleanly after 3 tokens (one of them " [DONE]"), without finish_reason or [DONE]
    cut = {**body, "messages": [{"role": "user", "content": "cut short"}],
           "sim": {"reply": TRICKY, "fault": "truncate", "fault_after_tokens": 3}}
    status, events = stream_events(gw, cut)
    assert status == "MISS" and contents(events) == TRICKY[:3]
    assert [e.data for e in events].count(b"[DONE]") == 1 and events[-1].data == b"[DONE]"
    # complete streams are stored (off the hot path): wait until the first one answers from the cache
    deadline = time.monotonic() + 5
    while stream_events(gw, body)[0] != "HIT":
        assert time.monotonic() < deadline, "a complete stream was not stored"
        time.sleep(0.05)
    before = sim_stats(sim)["requests"]["/v1/chat/completions"]
    status, events = stream_events(gw, cut)
    assert status == "MISS"  # the truncated stream was never stored
    assert sim_stats(sim)["requests"]["/v1/chat/completions"] == before + 1
