"""Deployments whose provider is not OpenAI-compatible (bedrock/, vertex_ai/, anthropic/, mistral/, …) go
through the `litellm` library, as an adapter with the native upstream's shape: `request` returns an
`UpstreamReply`, `stream` an open event stream whose `read()` gives SSE bytes (the same codec, the same
pump, usage and error handling as a native stream). The library is imported only when such a deployment
is first used, so a gateway in front of vLLM never loads it.

Where a request goes and with which credentials comes from router.yaml alone. litellm takes routing and
credentials as keyword arguments (`api_base`, `base_url`, `api_key`, `custom_llm_provider`,
`extra_headers`, `headers`, `mock_response`, `metadata`, `litellm_params`, …), so of the client's body only
the OpenAI request fields listed below reach it; everything else is dropped. The lists follow the OpenAI
API reference. Left out on purpose:
- `metadata`: litellm's own (callbacks, logging, routing hints), not OpenAI's stored-completion tags;
- `store`, `service_tier`, `prompt_cache_key`, `safety_identifier`: account-side features of OpenAI's own
  API (stored completions, billing tier) that would act on the operator's provider account;
- `stream_options`: the gateway always asks for usage and strips it unless the client asked;
- provider extensions (`top_k`, `thinking`, …): set them per deployment in router.yaml's `litellm_params`.
A router.yaml default for a generation field (`temperature`, `max_tokens`, `top_p`, `seed`) is overridden
by the client's value of that field; no other `litellm_params` entry can be.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

import orjson

from gateway import sse
from gateway.config import Deployment
from gateway.upstreams.base import EventStream, UpstreamReply, UpstreamRequest
from gateway.upstreams.failures import UpstreamError

CHAT_FIELDS = frozenset({
    "messages", "temperature", "top_p", "n", "stream", "stop", "max_tokens", "max_completion_tokens",
    "presence_penalty", "frequency_penalty", "logit_bias", "logprobs", "top_logprobs", "user", "tools",
    "tool_choice", "parallel_tool_calls", "response_format", "seed", "reasoning_effort", "modalities", "audio",
    "prediction", "verbosity", "web_search_options", "functions", "function_call",
})
COMPLETIONS_FIELDS = frozenset({
    "prompt", "best_of", "echo", "frequency_penalty", "logit_bias", "logprobs", "max_tokens", "n",
    "presence_penalty", "seed", "stop", "stream", "suffix", "temperature", "top_p", "user",
})
EMBEDDINGS_FIELDS = frozenset({"input", "dimensions", "encoding_format", "user"})
FIELDS: Mapping[str, frozenset[str]] = {"chat": CHAT_FIELDS, "completions": COMPLETIONS_FIELDS,
                                        "embeddings": EMBEDDINGS_FIELDS}

def litellm_kwargs(dep: Deployment, endpoint: str, body: Mapping[str, Any], stream: bool) -> dict[str, Any]:
    """litellm's arguments for one call: the deployment's settings, and the client's OpenAI fields only."""
    allowed = FIELDS[endpoint]
    kwargs: dict[str, Any] = dict(dep.provider_params)
    kwargs.update((k, v) for k, v in body.items() if k in allowed)
    kwargs.update(model=dep.model, timeout=dep.timeout, num_retries=0)
    if dep.api_base:
        kwargs["api_base"] = dep.api_base
    if dep.api_key:
        kwargs["api_key"] = dep.api_key
    if endpoint != "embeddings":
        kwargs["stream"] = stream
        if stream:
            kwargs["stream_options"] = {"include_usage": True}
    return kwargs


def _to_bytes(obj: Any) -> bytes:
    if hasattr(obj, "model_dump"):
        return orjson.dumps(obj.model_dump(exclude_none=False))
    return orjson.dumps(obj)


def _map_exception(exc: Exception) -> UpstreamError:
    status = getattr(exc, "status_code", None)
    name = type(exc).__name__
    message = str(getattr(exc, "message", "") or name)[:500]
    if "Timeout" in name:
        return UpstreamError("timeout", "provider timed out")
    if "APIConnectionError" in name or status is None:
        return UpstreamError("connect", f"provider unreachable ({name})")
    body = orjson.dumps({"error": {"message": message}})
    if "ContextWindowExceeded" in name:
        body = orjson.dumps({"error": {"message": message, "code": "context_length_exceeded"}})
    return UpstreamError("status", f"HTTP {status}", int(status), body)


def _events(chunk: Any) -> bytes:
    """One litellm stream chunk as SSE. Usage travels in a usage-only chunk (`choices: []`), as OpenAI
    sends it, so that the gateway shows it only to a client that asked."""
    data = chunk.model_dump(exclude_none=False) if hasattr(chunk, "model_dump") else dict(chunk)
    usage = data.pop("usage", None)
    if not usage:
        return sse.encode_json(data)
    if not data.get("choices"):
        return sse.encode_json({**data, "choices": [], "usage": usage})
    head = {k: data[k] for k in ("id", "object", "created", "model") if k in data}
    return sse.encode_json(data) + sse.encode_json({**head, "choices": [], "usage": usage})


class LiteLLMStream:
    """An open litellm stream with the native `UpstreamStream` shape (`gateway.streaming.EventStream`)."""

    def __init__(self, chunks: Any, first: bytes, elapsed: float, closing: set[asyncio.Task[Any]]) -> None:
        self._chunks = chunks
        self._closing = closing  # the adapter's closing tasks (a task needs a reference until done)
        self.first = first
        self.first_byte_elapsed = elapsed
        self._ended = False

    async def read(self) -> bytes:
        """The next chunk as SSE; `[DONE]` after the last; b"" at the end. UpstreamError when it breaks."""
        if self._ended:
            return b""
        try:
            chunk = await self._chunks.__anext__()
        except StopAsyncIteration:
            self._ended = True
            return sse.DONE
        except Exception as exc:  # noqa: BLE001 - litellm raises its own exception family
            self._ended = True
            if "Timeout" in type(exc).__name__:
                raise UpstreamError("timeout", "provider stream timed out") from None
            raise UpstreamError("drop", f"provider stream broken ({type(exc).__name__})") from None
        return _events(chunk)

    def close(self) -> None:
        """Abort the provider request (its connection is closed in the background)."""
        self._ended = True
        aclose = getattr(self._chunks, "aclose", None)
        if aclose is not None:
            task = asyncio.get_running_loop().create_task(aclose())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    def release(self) -> None:
        self._ended = True


class LiteLLMUpstream:
    def __init__(self) -> None:
        self._litellm: Any = None
        self._closing: set[asyncio.Task[Any]] = set()  # provider streams being closed

    async def send(self, dep: Deployment, req: UpstreamRequest) -> UpstreamReply | EventStream:
        if req.stream:
            return await self.stream(dep, req.endpoint, req.body, req.first_byte_timeout)
        return await self.request(dep, req.endpoint, req.body)

    def _lib(self) -> Any:
        if self._litellm is None:
            import os

            os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no download at import
            import litellm

            litellm.suppress_debug_info = True
            for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy"):
                logging.getLogger(name).setLevel(logging.WARNING)
            self._litellm = litellm
        return self._litellm

    async def _call(self, dep: Deployment, endpoint: str, body: Mapping[str, Any], stream: bool) -> Any:
        lib = self._lib()
        kwargs = litellm_kwargs(dep, endpoint, body, stream)
        if endpoint == "embeddings":
            return await lib.aembedding(**kwargs)
        if endpoint == "completions":
            return await lib.atext_completion(**kwargs)
        return await lib.acompletion(**kwargs)

    async def request(self, dep: Deployment, endpoint: str, body: Mapping[str, Any]) -> UpstreamReply:
        t0 = time.perf_counter()
        try:
            result = await self._call(dep, endpoint, body, False)
        except Exception as exc:  # noqa: BLE001 - litellm raises its own exception family
            raise _map_exception(exc) from None
        return UpstreamReply(200, _to_bytes(result), time.perf_counter() - t0)

    async def stream(self, dep: Deployment, endpoint: str, body: Mapping[str, Any],
                     first_byte_timeout: float | None) -> LiteLLMStream:
        """Open a stream and wait for its first chunk (bounded by stream_timeout, like a native stream)."""
        self._lib()  # the first use imports litellm: not part of the wait for a first byte
        t0 = time.perf_counter()
        limit = first_byte_timeout or dep.timeout
        chunks: Any = None
        try:
            async with asyncio.timeout(limit):
                chunks = await self._call(dep, endpoint, body, True)
                first = _events(await chunks.__anext__())
        except TimeoutError:
            if chunks is not None:
                LiteLLMStream(chunks, b"", 0.0, self._closing).close()
            raise UpstreamError("timeout", f"no first byte within {limit:g}s") from None
        except StopAsyncIteration:
            raise UpstreamError("drop", "provider ended the stream without sending anything") from None
        except Exception as exc:  # noqa: BLE001
            if chunks is not None:
                LiteLLMStream(chunks, b"", 0.0, self._closing).close()
            raise _map_exception(exc) from None
        except BaseException:  # cancelled: the client went away
            if chunks is not None:
                LiteLLMStream(chunks, b"", 0.0, self._closing).close()
            raise
        return LiteLLMStream(chunks, first, time.perf_counter() - t0, self._closing)
