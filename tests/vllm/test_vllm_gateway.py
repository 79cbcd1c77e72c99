"""The gateway's contracts on real vLLM (CPU, SmolLM2-135M-Instruct), through `gateway serve`, with the
official openai SDK: plain and streamed chat and completions, exact token counts, vLLM's own errors mapped
to the gateway's error table (design.md §3), a real context-length error falling back to a larger-context
alias, and a client disconnect freeing the engine."""

from __future__ import annotations

import json
import socket
from typing import Any

import httpx
import openai
import pytest

from tests.helpers import metric_value, metrics
from tests.procs import Proc
from tests.vllm import servers
from tests.vllm.conftest import TIMEOUT, Vllm, wait_until

QUESTION = [{"role": "user", "content": "Name three colours."}]
# ~630 tokens once templated: over the small server's 512, well inside the large one's 2048
LONG = [{"role": "user", "content": "Summarise this. " + "The quick brown fox jumps over the lazy dog. " * 60}]
TOKEN_COUNTERS = ("oss_prompt_tokens_total", "oss_completion_tokens_total")


def client(gw: Proc) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key="sk-test", max_retries=0, timeout=TIMEOUT)


def engine_value(v: Vllm, name: str, **labels: str) -> float:
    return sum(metric_value(servers.scrape(p), name, **labels) for p in v.all)


def engine_tokens(v: Vllm) -> tuple[float, float]:
    """(prompt, generation) tokens both vLLM servers say they processed."""
    return engine_value(v, "vllm:prompt_tokens_total"), engine_value(v, "vllm:generation_tokens_total")


def gateway_tokens(gw: Proc, estimated: str = "false") -> tuple[float, float]:
    text = metrics(gw)
    return tuple(metric_value(text, c, estimated=estimated) for c in TOKEN_COUNTERS)  # type: ignore[return-value]


def error_of(exc: openai.APIStatusError) -> dict[str, Any]:
    body = exc.response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]  # type: ignore[no-any-return]


# ------------------------------------------------------------------------------------ plain and streamed

def test_chat_plain_and_streamed(gateway: Proc) -> None:
    sdk = client(gateway)
    raw = sdk.chat.completions.with_raw_response.create(model="large", messages=QUESTION, max_tokens=6)
    assert raw.headers["x-gateway-deployment"] == "vllm-large"
    assert raw.headers["x-request-id"]
    r = raw.parse()
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert isinstance(r.choices[0].message.content, str)
    assert r.choices[0].finish_reason in ("length", "stop")
    assert r.usage is not None and 0 < r.usage.completion_tokens <= 6
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens

    chunks = list(sdk.chat.completions.create(model="large", messages=QUESTION, max_tokens=6, stream=True,
                                              stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] in (
        ["length"], ["stop"])
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None and 0 < usage.completion_tokens <= 6
    assert all(c.usage is None for c in chunks[:-1])
    assert usage.prompt_tokens == r.usage.prompt_tokens  # same prompt, same tokenizer


def test_completions_plain_and_streamed(gateway: Proc) -> None:
    sdk = client(gateway)
    r = sdk.completions.create(model="large", prompt="The sky is", max_tokens=5, extra_body={"ignore_eos": True})
    assert r.object == "text_completion"
    assert r.choices[0].finish_reason == "length"
    assert r.usage is not None and r.usage.completion_tokens == 5 and r.usage.prompt_tokens == 3

    chunks = list(sdk.completions.create(model="large", prompt="The sky is", max_tokens=5, stream=True,
                                         extra_body={"ignore_eos": True}))
    assert all(c.object == "text_completion" and c.usage is None for c in chunks)  # not asked: stripped
    assert chunks[-1].choices[0].finish_reason == "length"
    assert "".join(c.choices[0].text for c in chunks)


def test_sse_framing_through_the_gateway(gateway: Proc) -> None:
    """Every event vLLM sends arrives as `data: <json>\\n\\n`, then `data: [DONE]`."""
    body = {"model": "large", "messages": QUESTION, "max_tokens": 4, "stream": True,
            "stream_options": {"include_usage": True}}
    with httpx.stream("POST", f"{gateway.url}/v1/chat/completions", json=body, timeout=TIMEOUT) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        text = resp.read().decode()
    assert text.endswith("data: [DONE]\n\n")
    events = text.split("\n\n")[:-1]
    assert all(e.startswith("data: ") and "\n" not in e for e in events)
    payloads = [json.loads(e[6:]) for e in events[:-1]]
    assert {p["object"] for p in payloads} == {"chat.completion.chunk"}
    assert len({p["id"] for p in payloads}) == 1
    assert payloads[-1]["choices"] == [] and payloads[-1]["usage"]["completion_tokens"] >= 1


# ------------------------------------------------------------------------------------------- token counts

def test_token_counts_equal_vllm_usage(vllm: Vllm, gateway: Proc) -> None:
    """oss_*_tokens_total move by exactly what vLLM served: with usage in the answer, with
    include_usage, and for streams whose client did not ask for usage (the gateway asks and strips it)."""
    sdk = client(gateway)
    gw0, engine0 = gateway_tokens(gateway), engine_tokens(vllm)
    est0 = gateway_tokens(gateway, estimated="true")

    chat = sdk.chat.completions.create(model="small", messages=QUESTION, max_tokens=5).usage
    text = sdk.completions.create(model="large", prompt="Once upon a time", max_tokens=5).usage
    with_usage = list(sdk.chat.completions.create(model="large", messages=QUESTION, max_tokens=5, stream=True,
                                                  stream_options={"include_usage": True}))
    streamed = with_usage[-1].usage
    assert chat is not None and text is not None and streamed is not None
    without = list(sdk.chat.completions.create(model="small", messages=QUESTION, max_tokens=7, stream=True,
                                               extra_body={"ignore_eos": True}))
    without_c = list(sdk.completions.create(model="large", prompt="Once upon a time", max_tokens=7, stream=True,
                                            extra_body={"ignore_eos": True}))
    assert all(c.usage is None for c in without + without_c)  # not asked for: stripped

    def deltas() -> tuple[tuple[float, float], tuple[float, float]]:
        gw, engine = gateway_tokens(gateway), engine_tokens(vllm)
        return (gw[0] - gw0[0], gw[1] - gw0[1]), (engine[0] - engine0[0], engine[1] - engine0[1])

    wait_until(lambda: deltas()[0] == deltas()[1], timeout=30)  # usage is recorded off the hot path
    d_gw, d_engine = deltas()
    assert d_gw == d_engine, f"gateway counted {d_gw} (prompt, completion) tokens, vLLM processed {d_engine}"
    # and they are the usage vLLM reported: the two streams without usage made 7 tokens each (ignore_eos)
    assert d_gw[0] == chat.prompt_tokens * 2 + text.prompt_tokens * 2 + streamed.prompt_tokens
    assert d_gw[1] == chat.completion_tokens + text.completion_tokens + streamed.completion_tokens + 14
    assert gateway_tokens(gateway, estimated="true") == est0  # nothing estimated: vLLM always sent usage


def test_prefix_cache_details_pass_through(vllm: Vllm, gateway: Proc) -> None:
    """vLLM's prefix cache (128-token blocks) shows in usage.prompt_tokens_details.cached_tokens
    (--enable-prompt-tokens-details), which the gateway passes through untouched."""
    hits = engine_value(vllm, "vllm:prefix_cache_hits_total")
    messages = [{"role": "system", "content": "You answer briefly. " * 60}, *QUESTION]  # > 2 blocks
    sdk = client(gateway)
    first = sdk.chat.completions.create(model="large", messages=messages, max_tokens=1).usage
    second = sdk.chat.completions.create(model="large", messages=messages, max_tokens=1).usage
    assert first is not None and second is not None and first.prompt_tokens == second.prompt_tokens > 256
    assert second.prompt_tokens_details is not None
    cached = second.prompt_tokens_details.cached_tokens
    assert cached is not None and cached >= 256 and cached % 128 == 0
    assert engine_value(vllm, "vllm:prefix_cache_hits_total") - hits >= cached


# ------------------------------------------------------------------------------------------------ errors

def test_vllm_bad_max_tokens_is_400_invalid_request(gateway: Proc) -> None:
    sdk = client(gateway)
    with pytest.raises(openai.BadRequestError) as info:
        sdk.chat.completions.create(model="large", messages=QUESTION, max_tokens=0)
    err = error_of(info.value)
    assert err["type"] == "invalid_request_error"
    assert "max_tokens must be at least 1" in err["message"]  # vLLM's own words
    with pytest.raises(openai.BadRequestError) as info:  # the same before the first byte of a stream
        list(sdk.chat.completions.create(model="large", messages=QUESTION, max_tokens=0, stream=True))
    assert error_of(info.value)["type"] == "invalid_request_error"


def test_vllm_bad_max_tokens_keeps_param(gateway: Proc) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client(gateway).chat.completions.create(model="large", messages=QUESTION, max_tokens=0)
    assert error_of(info.value)["param"] == "max_tokens"


@pytest.mark.parametrize("stream", [False, True])
def test_vllm_context_error_without_fallback(gateway: Proc, stream: bool) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        r = client(gateway).chat.completions.create(model="tiny", messages=LONG, max_tokens=4, stream=stream)
        if stream:
            list(r)  # type: ignore[arg-type]
    err = error_of(info.value)
    assert err["type"] == "invalid_request_error"
    assert err["code"] == "context_length_exceeded"
    assert err["param"] == "messages"
    assert "maximum context length is 512 tokens" in err["message"]  # vLLM's message, passed on


def test_max_tokens_over_the_context_of_vllm(gateway: Proc) -> None:
    """vLLM: `max_tokens=600 cannot be greater than max_model_len=512` - a context problem too."""
    with pytest.raises(openai.BadRequestError) as info:
        client(gateway).chat.completions.create(model="tiny", messages=QUESTION, max_tokens=600)
    err = error_of(info.value)
    assert err["type"] == "invalid_request_error"
    assert "max_model_len=512" in err["message"]


def test_model_unknown_to_vllm_is_502_naming_the_alias(vllm: Vllm, gateway: Proc) -> None:
    """vLLM answers 404 for a model it does not serve: a deployment misconfiguration, so the gateway
    answers 502 upstream_error naming the alias (never vLLM's address)."""
    before = engine_value(vllm, "vllm:request_success_total")
    with pytest.raises(openai.APIStatusError) as info:
        client(gateway).chat.completions.create(model="ghost", messages=QUESTION, max_tokens=4)
    exc = info.value
    assert exc.status_code == 502
    assert exc.response.headers["x-should-retry"] == "false"
    err = error_of(exc)
    assert err["type"] == "upstream_error"
    assert "'ghost'" in err["message"] and "404" in err["message"]
    assert "127.0.0.1" not in err["message"] and str(vllm.small.port) not in err["message"]
    assert engine_value(vllm, "vllm:request_success_total") == before  # vLLM generated nothing


def test_unknown_alias_is_the_gateways_404(gateway: Proc) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client(gateway).chat.completions.create(model="no-such-alias", messages=QUESTION, max_tokens=4)
    err = error_of(info.value)
    assert err["code"] == "model_not_found" and err["param"] == "model"
    assert "small" in err["message"] and "large" in err["message"]


# --------------------------------------------------------------------------------------------- fallbacks

@pytest.mark.parametrize("stream", [False, True])
def test_context_error_falls_back_to_larger_context_alias(vllm: Vllm, gateway: Proc, stream: bool) -> None:
    """`small` (512 tokens) rejects the prompt for real; context_window_fallbacks sends it to `large`."""
    def fallbacks() -> float:
        return metric_value(metrics(gateway), "oss_fallbacks_total", from_alias="small", to_alias="large",
                            reason="context_window")

    before = fallbacks()
    sdk = client(gateway)
    if stream:
        raw = sdk.chat.completions.with_raw_response.create(
            model="small", messages=LONG, max_tokens=4, stream=True, stream_options={"include_usage": True})
        chunks = list(raw.parse())
        usage = chunks[-1].usage
    else:
        raw = sdk.chat.completions.with_raw_response.create(model="small", messages=LONG, max_tokens=4)
        usage = raw.parse().usage
    assert raw.headers["x-gateway-deployment"] == "vllm-large"
    assert usage is not None and usage.prompt_tokens > 512
    assert fallbacks() == before + 1


# ----------------------------------------------------------------------------------------- disconnects

def _large(vllm: Vllm, name: str, **labels: str) -> float:
    return metric_value(servers.scrape(vllm.large), name, **labels)


@pytest.mark.parametrize("stream", [True, False])
def test_client_disconnect_frees_the_engine(vllm: Vllm, gateway: Proc, stream: bool) -> None:
    """A client that hangs up mid-generation: vLLM stops it and num_requests_running goes back to 0, long
    before the 1900 tokens asked for could have been made (at most ~30 tokens/s here: a minute or more).

    vLLM 0.32 does not count aborted requests in vllm:request_success_total{finished_reason="abort"}:
    the proof is that running drops to 0 while no request finished and generation stopped short."""
    running = "vllm:num_requests_running"
    assert wait_until(lambda: _large(vllm, running) == 0, timeout=60)
    finished = _large(vllm, "vllm:request_success_total")
    generated = _large(vllm, "vllm:generation_tokens_total")
    body = json.dumps({"model": "large", "messages": QUESTION, "max_tokens": 1900, "ignore_eos": True,
                       "stream": stream}).encode()
    request = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{gateway.port}\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=TIMEOUT) as sock:
        sock.sendall(request)
        assert wait_until(lambda: _large(vllm, running) == 1, timeout=60), "vLLM never started the request"
        if stream:
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")  # headers (and maybe the first events)
    # hung up while vLLM is generating
    assert wait_until(lambda: _large(vllm, running) == 0, timeout=30), "vLLM still generates for nobody"
    assert _large(vllm, "vllm:request_success_total") == finished  # it did not run to its end
    assert _large(vllm, "vllm:generation_tokens_total") - generated < 1000
