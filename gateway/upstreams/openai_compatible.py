"""Talking to OpenAI-compatible upstreams (vLLM, Ollama, llama.cpp, TGI, SGLang) with aiohttp.

One `aiohttp.ClientSession` per worker with a keep-alive pool. Request bodies go out as bytes;
responses come back as bytes (plain) or as raw pieces in arrival order (streams). Failures are
`UpstreamError`s that say whether another deployment may be tried.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

import aiohttp
import orjson

from gateway.config import Deployment
from gateway.upstreams.base import EventStream, UpstreamReply, UpstreamRequest
from gateway.upstreams.failures import UpstreamError


def transport_error(exc: BaseException, replied: bool, what: str) -> UpstreamError:
    """The one table from aiohttp's transport errors to UpstreamError kinds: a timeout is a timeout; a
    broken connection or body is a drop once the upstream has replied, a connect failure before."""
    if isinstance(exc, TimeoutError):
        return UpstreamError("timeout", what)
    if isinstance(exc, aiohttp.ClientPayloadError) or replied:
        return UpstreamError("drop", f"response broken: {type(exc).__name__}")
    return UpstreamError("connect", f"cannot reach upstream: {type(exc).__name__}")


TRANSPORT_ERRORS = (TimeoutError, aiohttp.ClientPayloadError, aiohttp.ClientConnectionError)


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


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
        except TRANSPORT_ERRORS as exc:
            raise transport_error(exc, True, "stream timed out") from None

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

    def headers(self, dep: Deployment, request_id: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        key = (dep.id, dep.api_key)
        base = self._headers.get(key)
        if base is None:
            base = {"Content-Type": "application/json", "Accept-Encoding": "identity"}
            if dep.api_key:
                base["Authorization"] = f"Bearer {dep.api_key}"
            self._headers[key] = base
        return {**extra, **base, "X-Request-Id": request_id} if extra else {**base, "X-Request-Id": request_id}

    async def send(self, dep: Deployment, req: UpstreamRequest) -> UpstreamReply | EventStream:
        if req.stream:
            return await self.stream(dep, req.path, req.payload, req.request_id, req.first_byte_timeout,
                                     req.headers)
        return await self.request(dep, req.path, req.payload, req.request_id, req.headers)

    async def request(self, dep: Deployment, path: str, body: bytes, request_id: str,
                      extra_headers: Mapping[str, str] | None = None) -> UpstreamReply:
        url = f"{dep.api_base}{path}"
        t0 = time.perf_counter()
        try:
            async with self.session.post(url, data=body, headers=self.headers(dep, request_id, extra_headers),
                                         timeout=self._timeout(dep.timeout)) as resp:
                data = await resp.read()
                status = resp.status
                if status >= 400:
                    raise UpstreamError("status", f"HTTP {status}", status, data, _retry_after(resp.headers))
                return UpstreamReply(status, data, time.perf_counter() - t0)
        except TRANSPORT_ERRORS as exc:
            raise transport_error(exc, False, f"no answer within {dep.timeout:g}s") from None

    async def stream(self, dep: Deployment, path: str, body: bytes, request_id: str,
                     first_byte_timeout: float | None, extra_headers: Mapping[str, str] | None = None
                     ) -> UpstreamStream:
        """Open a stream and wait for its first piece of body (bounded by stream_timeout)."""
        url = f"{dep.api_base}{path}"
        t0 = time.perf_counter()
        resp: aiohttp.ClientResponse | None = None
        limit = first_byte_timeout or dep.timeout
        try:
            async with asyncio.timeout(limit):
                resp = await self.session.post(url, data=body, headers=self.headers(dep, request_id, extra_headers),
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
        except TRANSPORT_ERRORS as exc:
            if resp is not None:
                resp.close()
            raise transport_error(exc, resp is not None, f"no first byte within {limit:g}s") from None
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

    async def forward(self, method: str, url: str, timeout: float, api_key: str | None = None) -> tuple[int, bytes]:
        """A bodiless request (GET / DELETE of a stored object): the upstream's status and body as they are."""
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
        try:
            async with self.session.request(method, url, headers=headers, timeout=self._timeout(timeout)) as resp:
                return resp.status, await resp.read()
        except TRANSPORT_ERRORS as exc:
            raise transport_error(exc, False, f"no answer within {timeout:g}s") from None

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
