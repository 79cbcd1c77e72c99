"""Talking to OpenAI-compatible upstreams (vLLM, Ollama, llama.cpp, TGI, SGLang) with aiohttp.

One `aiohttp.ClientSession` per worker with a keep-alive pool. Request bodies go out as bytes;
responses come back as bytes (plain) or as raw pieces in arrival order (streams). Failures are
`UpstreamError`s that say whether another deployment may be tried.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from gateway.config import Deployment

PATHS = {"chat": "/chat/completions", "completions": "/completions", "embeddings": "/embeddings"}

_CONTEXT_MARKERS = (
    "maximum context length", "context length", "context_length_exceeded", "context window",
    "prompt is too long", "input is too long", "too many tokens", "exceed context window",
    "exceeds the context", "input_tokens", "max_model_len",
)


def is_context_error(status: int, body: bytes) -> bool:
    if status not in (400, 413, 422):
        return False
    text = body[:4096].decode("utf-8", "replace").lower()
    return any(marker in text for marker in _CONTEXT_MARKERS)


def upstream_message(body: bytes) -> str:
    """The human message of an upstream error body, whatever its shape; never the raw bytes."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body[:300].decode("utf-8", "replace").strip()
        return text or "the upstream gave no error message"
    if isinstance(data, Mapping):
        err = data.get("error", data)
        if isinstance(err, Mapping):
            msg = err.get("message") or err.get("detail") or err.get("msg")
            if isinstance(msg, str):
                return msg[:1000]
        elif isinstance(err, str):
            return err[:1000]
        detail = data.get("detail") or data.get("message")
        if isinstance(detail, str):
            return detail[:1000]
    return "the upstream gave no error message"


class UpstreamError(Exception):
    """An upstream attempt failed. kind: connect | timeout | status | drop."""

    def __init__(self, kind: str, message: str, status: int | None = None, body: bytes = b"",
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.body = body
        self.retry_after = retry_after
        self.context_exceeded = status is not None and is_context_error(status, body)

    @property
    def retryable(self) -> bool:
        """Another deployment may succeed: connection errors, timeouts, 5xx, 429, and an upstream
        that refuses our credentials or model (a deployment misconfiguration, not the client's)."""
        if self.kind != "status":
            return True
        assert self.status is not None
        return self.status >= 500 or self.status in (401, 403, 404, 408, 429)

    @property
    def reason(self) -> str:
        if self.kind == "status":
            return "rate_limited" if self.status == 429 else f"http_{self.status}"
        return self.kind


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


@dataclass
class UpstreamReply:
    status: int
    body: bytes
    elapsed: float  # seconds waiting on the upstream


class UpstreamStream:
    """An open streaming response: `first` is the first piece of body; `read()` gives the rest."""

    def __init__(self, resp: aiohttp.ClientResponse, first: bytes, elapsed: float) -> None:
        self._resp = resp
        self.first = first
        self.first_byte_elapsed = elapsed

    async def read(self) -> bytes:
        """The next piece of body as it arrived; b"" at the end. Raises UpstreamError on a broken stream."""
        try:
            return await self._resp.content.readany()
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
            raise UpstreamError("drop", f"stream broken: {type(exc).__name__}") from None
        except TimeoutError:
            raise UpstreamError("timeout", "stream timed out") from None

    def close(self) -> None:
        """Abort the upstream request (closes the connection: vLLM stops generating)."""
        self._resp.close()

    def release(self) -> None:
        self._resp.release()


class OpenAICompatible:
    """The native upstream client."""

    def __init__(self, connections: int = 1000) -> None:
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}
        self._headers: dict[tuple[str, str | None], dict[str, str]] = {}  # fixed headers per deployment

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=self._connections, limit_per_host=0, ttl_dns_cache=300,
                                         keepalive_timeout=30, enable_cleanup_closed=True)
        self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                              skip_auto_headers=("User-Agent",), json_serialize=None)  # type: ignore[arg-type]

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("upstream client not started")
        return self._session

    def _timeout(self, seconds: float) -> aiohttp.ClientTimeout:
        t = self._timeouts.get(seconds)
        if t is None:
            t = self._timeouts[seconds] = aiohttp.ClientTimeout(total=seconds, sock_connect=min(10.0, seconds))
        return t

    def headers(self, dep: Deployment, request_id: str) -> dict[str, str]:
        key = (dep.id, dep.api_key)
        base = self._headers.get(key)
        if base is None:
            base = {"Content-Type": "application/json", "Accept-Encoding": "identity"}
            if dep.api_key:
                base["Authorization"] = f"Bearer {dep.api_key}"
            self._headers[key] = base
        return {**base, "X-Request-Id": request_id}

    async def request(self, dep: Deployment, endpoint: str, body: bytes, request_id: str) -> UpstreamReply:
        url = f"{dep.api_base}{PATHS[endpoint]}"
        t0 = time.perf_counter()
        try:
            async with self.session.post(url, data=body, headers=self.headers(dep, request_id),
                                         timeout=self._timeout(dep.timeout)) as resp:
                data = await resp.read()
                status = resp.status
                if status >= 400:
                    raise UpstreamError("status", f"HTTP {status}", status, data, _retry_after(resp.headers))
                return UpstreamReply(status, data, time.perf_counter() - t0)
        except TimeoutError:
            raise UpstreamError("timeout", f"no answer within {dep.timeout:g}s") from None
        except aiohttp.ClientPayloadError as exc:
            raise UpstreamError("drop", f"response broken: {type(exc).__name__}") from None
        except aiohttp.ClientConnectionError as exc:
            raise UpstreamError("connect", f"cannot reach upstream: {type(exc).__name__}") from None

    async def stream(self, dep: Deployment, endpoint: str, body: bytes, request_id: str,
                     first_byte_timeout: float | None) -> UpstreamStream:
        """Open a stream and wait for its first piece of body (bounded by stream_timeout)."""
        url = f"{dep.api_base}{PATHS[endpoint]}"
        t0 = time.perf_counter()
        resp: aiohttp.ClientResponse | None = None
        limit = first_byte_timeout or dep.timeout
        try:
            async with asyncio.timeout(limit):
                resp = await self.session.post(url, data=body, headers=self.headers(dep, request_id),
                                               timeout=self._timeout(dep.timeout))
                if resp.status >= 400:
                    data = await resp.read()
                    resp.release()
                    raise UpstreamError("status", f"HTTP {resp.status}", resp.status, data,
                                        _retry_after(resp.headers))
                first = await resp.content.readany()
            if not first:
                # e.g. llama.cpp answers a too-long streamed prompt with 200 and an empty body
                resp.close()
                raise UpstreamError("drop", "upstream ended the stream without sending anything")
            return UpstreamStream(resp, first, time.perf_counter() - t0)
        except TimeoutError:
            if resp is not None:
                resp.close()
            raise UpstreamError("timeout", f"no first byte within {limit:g}s") from None
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
            if resp is not None:
                resp.close()
            kind = "connect" if resp is None else "drop"
            raise UpstreamError(kind, f"cannot reach upstream: {type(exc).__name__}") from None
        except BaseException:
            if resp is not None:
                resp.close()
            raise

    async def get_json(self, url: str, timeout: float, api_key: str | None = None) -> Any:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
        async with self.session.get(url, headers=headers, timeout=self._timeout(timeout)) as resp:
            data = await resp.read()
            if resp.status >= 400:
                raise UpstreamError("status", f"HTTP {resp.status}", resp.status, data)
            return orjson.loads(data) if data else None

    async def get_text(self, url: str, timeout: float, api_key: str | None = None) -> str:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
        async with self.session.get(url, headers=headers, timeout=self._timeout(timeout)) as resp:
            data = await resp.read()
            if resp.status >= 400:
                raise UpstreamError("status", f"HTTP {resp.status}", resp.status, data)
            return data.decode("utf-8", "replace")

    async def post_json(self, url: str, payload: Any, timeout: float, api_key: str | None = None) -> Any:
        headers = {"Content-Type": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        async with self.session.post(url, data=orjson.dumps(payload), headers=headers,
                                     timeout=self._timeout(timeout)) as resp:
            data = await resp.read()
            if resp.status >= 400:
                raise UpstreamError("status", f"HTTP {resp.status}", resp.status, data)
            return orjson.loads(data) if data else None
