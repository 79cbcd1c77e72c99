"""Deployments whose provider is not OpenAI-compatible (bedrock/, vertex_ai/, anthropic/, …) go
through the `litellm` library. It is imported only when such a deployment is first used, so a
gateway in front of vLLM never loads it."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import orjson

from gateway.config import Deployment
from gateway.streaming import StreamTally
from gateway.upstream import UpstreamError

if TYPE_CHECKING:
    from gateway.proxy import Call, Proxy, Send


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


class LiteLLMUpstream:
    def __init__(self) -> None:
        self._litellm: Any = None

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

    def _kwargs(self, call: Call, dep: Deployment) -> dict[str, Any]:
        body = {k: v for k, v in call.body.items() if k not in ("model", "cache", "stream_options")}
        kwargs: dict[str, Any] = {**dep.provider_params, **body, "model": dep.model, "timeout": dep.timeout,
                                  "num_retries": 0}
        if dep.api_base:
            kwargs["api_base"] = dep.api_base
        if dep.api_key:
            kwargs["api_key"] = dep.api_key
        if call.stream:
            kwargs["stream_options"] = {"include_usage": True}
        return kwargs

    async def serve(self, call: Call, send: Send, dep: Deployment, proxy: Proxy) -> None:
        lib = self._lib()
        kwargs = self._kwargs(call, dep)
        t0 = time.perf_counter()
        try:
            if call.endpoint == "embeddings":
                result = await lib.aembedding(**kwargs)
            elif call.endpoint == "completions":
                result = await lib.atext_completion(**kwargs)
            else:
                result = await lib.acompletion(**kwargs)
        except Exception as exc:  # noqa: BLE001 - litellm raises its own exception family
            raise _map_exception(exc) from None
        call.upstream_wait += time.perf_counter() - t0
        if not call.stream:
            body = _to_bytes(result)
            await proxy.send_json(send, call, dep, body)
            proxy.gw.after_plain(call, dep, body)
            return
        tally = StreamTally(strip_usage=not call.wants_usage)
        started = False
        try:
            async for chunk in result:
                data = chunk.model_dump(exclude_none=False) if hasattr(chunk, "model_dump") else dict(chunk)
                usage = data.get("usage")
                if usage and not call.wants_usage:
                    tally.usage = usage  # counted, but the client did not ask to see it
                    data.pop("usage")
                block = b"data: " + orjson.dumps(data) + b"\n\n"
                out = tally.process(block)
                if not started:
                    await proxy.start_stream(send, call, dep)
                    started = True
                if out:
                    await send({"type": "http.response.body", "body": out, "more_body": True})
                    if call.first_byte_at is None:
                        call.first_byte_at = time.perf_counter()
        except Exception as exc:  # noqa: BLE001
            if not started:
                raise _map_exception(exc) from None
            raise
        finally:
            proxy.gw.after_stream(call, dep, tally)
        if not started:
            await proxy.start_stream(send, call, dep)
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
