"""The hot path: POST /v1/chat/completions, /v1/completions and /v1/embeddings as raw ASGI.

read body (bounded) ▶ parse once ▶ validate ▶ auth ▶ alias ▶ [cache] ▶ pick deployment ▶ upstream
  ◀ bytes, or SSE events as they arrive ◀ tokens and cost recorded after the response is out
Retries go to another deployment of the alias; then `fallbacks` move to other aliases;
`context_window_fallbacks` move before sending when the prompt is over `max_input_tokens`, and
after an upstream's context-length error.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from gateway import errors
from gateway.config import Deployment, GatewayConfig
from gateway.errors import GatewayError
from gateway.metrics import UNKNOWN_ALIAS
from gateway.protocol import error_for_status, parse_json_body, validate
from gateway.router import NoDeployment
from gateway.sse import Decoder
from gateway.strategies import RouteRequest
from gateway.streaming import DONE, StreamTally, error_event
from gateway.tokens import estimate_prompt_tokens
from gateway.upstreams import (
    Attempt,
    AttemptsFailed,
    EventStream,
    UpstreamError,
    UpstreamReply,
    UpstreamRequest,
    upstream_message,
)

if TYPE_CHECKING:
    from gateway.app import Gateway
    from gateway.auth import Caller

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

log = logging.getLogger("gateway.proxy")

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
JSON_CT = (b"content-type", b"application/json")
_CACHE_HEADERS = {status: (b"x-gateway-cache", status.upper().replace("_", "-").encode())
                  for status in ("hit", "semantic_hit", "miss", "bypass")}


UPSTREAM_PATHS = {"chat": "/chat/completions", "completions": "/completions", "embeddings": "/embeddings"}
_UUID = re.compile(r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}")


class ClientGone(Exception):
    """The client disconnected; nothing more can be sent."""


class _AliasExhausted(Exception):
    def __init__(self, error: GatewayError, reason: str) -> None:
        super().__init__(error.message)
        self.error = error
        self.reason = reason


class _ContextExceeded(Exception):
    def __init__(self, error: GatewayError) -> None:
        super().__init__(error.message)
        self.error = error


@dataclass(slots=True)
class Call:
    """One client request as it goes through the gateway."""

    endpoint: str
    request_id: str
    started: float
    headers: dict[bytes, bytes]
    body: dict[str, Any] = field(default_factory=dict)
    alias: str = UNKNOWN_ALIAS  # a configured alias or UNKNOWN_ALIAS: the only alias used as a label value
    requested: str = ""  # the client's `model`, for error messages only
    stream: bool = False
    wants_usage: bool = False
    caller: Caller | None = None
    cache_status: str = "bypass"
    deployment: Deployment | None = None
    upstream_wait: float = 0.0
    first_byte_at: float | None = None
    status: int = 200
    response_started: bool = False
    client_gone: bool = False
    prompt_estimate: int | None = None
    cache_req: Any = None  # the cache's view of the request, from lookup to store
    completing: bool = False  # the last write of the response has begun
    watcher: asyncio.Task[None] | None = None  # watches for a client disconnect (long requests only)
    ticket: Any = None  # keys.Ticket: the key/team admission to settle when the request ends

    @property
    def upstream_request_id(self) -> str:
        """The id sent upstream: the request id when it is a UUID (llama.cpp's server refuses anything
        else with a bare 400), else a UUID derived from it, so the two can still be matched."""
        if _UUID.fullmatch(self.request_id):
            return self.request_id
        return uuid.uuid5(uuid.NAMESPACE_URL, self.request_id).hex

    @property
    def team(self) -> str:
        return self.caller.team if self.caller else ""

    @property
    def key(self) -> str:
        return self.caller.key_alias if self.caller else ""


async def read_body(receive: Receive, headers: dict[bytes, bytes], limit: int) -> bytes:
    declared = headers.get(b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise errors.body_too_large(limit)
    msg = await receive()
    if msg["type"] == "http.disconnect":
        raise ClientGone
    body = msg.get("body", b"")
    if not msg.get("more_body", False):
        if len(body) > limit:
            raise errors.body_too_large(limit)
        return body
    parts = [body]
    size = len(body)
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            raise ClientGone
        chunk = msg.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise errors.body_too_large(limit)
        parts.append(chunk)
        if not msg.get("more_body", False):
            return b"".join(parts)


class Proxy:
    """Serves the OpenAI endpoints for one worker's `Gateway`."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self._dep_headers: dict[str, tuple[bytes, bytes]] = {}

    # -- ASGI entry ---------------------------------------------------------------------------------

    async def __call__(self, endpoint: str, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope["headers"])
        rid = headers.get(b"x-request-id")
        call = Call(endpoint=endpoint, request_id=rid.decode("latin-1")[:128] if rid else os.urandom(16).hex(),
                    started=time.perf_counter(), headers=headers)
        arm: asyncio.TimerHandle | None = None
        raw_send = send
        config = self.gw.config  # the snapshot this request uses: its routes and its label values

        async def send(message: Message) -> None:  # noqa: F811 - marks the last write of the response
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                call.completing = True
            await raw_send(message)

        try:
            try:
                raw = await read_body(receive, headers, self.gw.max_request_bytes)
                call.body = parse_json_body(raw, self.gw.settings.max_json_depth)
                call.requested = validate(endpoint, call.body)
                if call.requested in config.aliases:  # else stays UNKNOWN_ALIAS, whatever happens next
                    call.alias = call.requested
                call.caller = await self.gw.authenticate(headers, call.requested, call)
                call.stream = call.body.get("stream") is True
                so = call.body.get("stream_options")
                call.wants_usage = isinstance(so, dict) and so.get("include_usage") is True
                # a client that goes away cancels the upstream request (GPU time is money); the watcher
                # is armed only for requests still running after 50 ms (most finish before: no task)
                task = asyncio.current_task()
                assert task is not None
                held = call.ticket is not None and call.ticket.holds_slot  # watched at once: freed on disconnect
                arm = asyncio.get_running_loop().call_later(0 if held else 0.05, self._arm_watcher, receive, call, task)
                await self._serve(call, send, config)
            except GatewayError as exc:
                call.status = exc.status
                if not call.response_started:
                    await self._send_error(send, call, exc)
                else:
                    await self._end_stream_with_error(send, exc)
        except ClientGone:
            call.status = 499
        except asyncio.CancelledError:
            if not call.client_gone:
                raise
            call.status = 499
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
        except Exception as exc:  # noqa: BLE001 - last resort: a clean 500, details only in our log
            log.error("request %s failed inside the gateway: %s: %s", call.request_id, type(exc).__name__, exc,
                      exc_info=log.isEnabledFor(logging.DEBUG))
            call.status = 500
            if not call.response_started:
                await self._send_error(send, call, GatewayError(500, "Internal gateway error (request id "
                                                                     f"{call.request_id})", "internal_error"))
        finally:
            if arm is not None:
                arm.cancel()
            if call.watcher is not None:
                call.watcher.cancel()
            self._record_request(call)

    def _arm_watcher(self, receive: Receive, call: Call, task: asyncio.Task[None]) -> None:
        if not call.completing:
            call.watcher = asyncio.get_running_loop().create_task(self._watch_disconnect(receive, call, task))

    async def _watch_disconnect(self, receive: Receive, call: Call, task: asyncio.Task[None]) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                # uvicorn also answers http.disconnect once the response is complete: not a client leaving
                if not call.completing:
                    call.client_gone = True
                    if call.ticket is not None:
                        self.gw.keys.release(call)  # its parallel slot is free now, not after the unwinding
                    task.cancel()
                return

    # -- routing -------------------------------------------------------------------------------------

    async def _serve(self, call: Call, send: Send, config: GatewayConfig) -> None:
        if call.requested not in config.aliases:  # call.alias is UNKNOWN_ALIAS: the name is for the message only
            raise errors.model_not_found(call.requested, self.gw.visible_aliases(call.caller, config))
        if self.gw.cache is not None:
            if await self.gw.cache_lookup(call, send):
                return
        chain: list[tuple[str, str | None]] = [(call.alias, None)]
        visited: set[str] = set()
        last_error: GatewayError | None = None
        prev = call.alias
        while chain:
            alias, reason = chain.pop(0)
            if alias in visited or alias not in config.aliases:
                continue
            visited.add(alias)
            if reason is not None:
                self.gw.metrics.fallbacks.labels(prev, alias, reason).inc()
            prev = alias
            deployments = config.aliases[alias]
            fits = self._fitting(call, deployments)
            if not fits:
                last_error = self._context_error(call, deployments)
                chain[:0] = [(a, "context_window") for a in config.router.context_window_fallbacks.get(alias, ())]
                continue
            try:
                await self._attempts(call, send, config, alias, fits)
                return
            except _ContextExceeded as exc:
                last_error = exc.error
                chain[:0] = [(a, "context_window") for a in config.router.context_window_fallbacks.get(alias, ())]
            except _AliasExhausted as exc:
                last_error = exc.error
                if len(fits) < len(deployments):
                    # every deployment that could take this prompt is unavailable, and the others cannot
                    # take it: a larger-context alias is the next place to go, before ordinary fallbacks
                    chain[:0] = [(a, "context_window") for a in config.router.context_window_fallbacks.get(alias, ())]
                more = config.router.fallbacks.get(alias)
                if more is None and alias == call.alias:
                    more = config.router.default_fallbacks
                chain.extend((a, exc.reason) for a in more or ())
        assert last_error is not None
        raise last_error

    def _fitting(self, call: Call, deployments: tuple[Deployment, ...]) -> tuple[Deployment, ...]:
        if call.endpoint == "embeddings" or all(d.max_input_tokens is None for d in deployments):
            return deployments
        if call.prompt_estimate is None:
            call.prompt_estimate = estimate_prompt_tokens(call.body)
        n = call.prompt_estimate
        return tuple(d for d in deployments if d.max_input_tokens is None or n <= d.max_input_tokens)

    def _context_error(self, call: Call, deployments: tuple[Deployment, ...]) -> GatewayError:
        limit = max(d.max_input_tokens or 0 for d in deployments)
        return errors.invalid_request(
            f"This model's maximum context length is {limit} tokens; the request's prompt is about "
            f"{call.prompt_estimate} tokens and no larger-context fallback is configured for '{call.alias}'.",
            "messages" if call.endpoint == "chat" else "prompt",
            "context_length_exceeded",
        )

    async def _attempts(self, call: Call, send: Send, config: GatewayConfig, alias: str,
                        deployments: tuple[Deployment, ...]) -> None:
        router = self.gw.router
        settings = config.router
        tried: set[str] = set()
        attempts: list[Attempt] = []
        for _ in range(settings.num_retries + 1):
            try:
                decision = router.pick(alias, deployments, settings.routing_strategy, tried,
                                       RouteRequest(alias, call.body, call.headers))
            except NoDeployment as nd:
                if not attempts:
                    if nd.reason == "rate_limited":
                        raise _AliasExhausted(errors.rate_limited(
                            f"Every deployment of '{alias}' is at its rpm/tpm/parallel limit", nd.retry_after),
                            "rate_limited") from None
                    raise _AliasExhausted(errors.unavailable(
                        f"No healthy deployment for '{alias}' right now", nd.retry_after), "unhealthy") from None
                break
            dep = decision.deployment
            self.gw.metrics.child(self.gw.metrics.routing_decisions, alias, settings.routing_strategy,
                                  decision.reason).inc()
            if attempts:
                prev = attempts[-1]
                self.gw.metrics.retries.labels(alias, prev.deployment, prev.error.reason).inc()
            tried.add(dep.id)
            try:
                await self._send_to(call, send, dep)
                return
            except UpstreamError as exc:
                if exc.context_exceeded:
                    raise _ContextExceeded(errors.invalid_request(
                        upstream_message(exc.body), "messages" if call.endpoint == "chat" else "prompt",
                        "context_length_exceeded")) from None
                if not exc.retryable:
                    raise error_for_status(exc.status or 400, upstream_message(exc.body)) from None
                attempts.append(Attempt(dep.id, exc))
                if exc.policy.cooldown and router.record_failure(dep, settings, len(config.aliases[alias])):
                    self.gw.metrics.cooldowns.labels(alias, dep.id).inc()
                    log.warning("deployment %s of %s cooled down for %gs after repeated failures (last: %s)",
                                dep.id, alias, settings.cooldown_time, exc.reason)
        failed = AttemptsFailed(alias, attempts)
        log.log(failed.last.policy.log_level, "request %s: every attempt at %s failed: %s", call.request_id, alias,
                failed.summary())
        raise _AliasExhausted(self._final_error(failed), failed.last.reason)

    @staticmethod
    def _final_error(failed: AttemptsFailed) -> GatewayError:
        """What the client sees: the status the last failure's policy names, a message naming the alias."""
        alias, last, n = failed.alias, failed.last, len(failed.attempts)
        status = last.policy.status
        if status == 504:
            return errors.timed_out(f"The upstream for '{alias}' timed out ({last}).")
        if status == 429:
            return errors.rate_limited(f"Every deployment of '{alias}' is rate limited upstream (HTTP 429).",
                                       last.retry_after or 1.0)
        return errors.upstream_failed(
            f"The upstream for '{alias}' failed after {n} attempt{'s' if n != 1 else ''} "
            f"(last error: {last.describe()}).")

    # -- one upstream attempt ------------------------------------------------------------------------

    def _upstream_body(self, call: Call, dep: Deployment) -> bytes:
        body = dict(call.body)
        body["model"] = dep.served_model
        body.pop("cache", None)
        if call.stream and not call.wants_usage:
            so = body.get("stream_options")
            body["stream_options"] = {**so, "include_usage": True} if isinstance(so, dict) else {"include_usage": True}
        return orjson.dumps(body)

    async def _send_to(self, call: Call, send: Send, dep: Deployment) -> None:
        gw = self.gw
        st = gw.router.state(dep)
        st.in_flight += 1
        st.note_request(dep, gw.router.clock())
        gauge = gw.metrics.child(gw.metrics.in_flight, dep.alias, dep.id)
        gauge.inc()
        call.deployment = dep
        try:
            if call.stream:
                await self._stream(call, send, dep)
            else:
                await self._plain(call, send, dep)
        finally:
            st.in_flight -= 1
            gauge.dec()

    def response_headers(self, call: Call, dep: Deployment | None, base: list[tuple[bytes, bytes]]) -> list[
            tuple[bytes, bytes]]:
        hs = [*base, (b"x-request-id", call.request_id.encode("latin-1")), _CACHE_HEADERS[call.cache_status]]
        if dep is not None:
            value = self._dep_headers.get(dep.id)
            if value is None:
                value = self._dep_headers[dep.id] = (b"x-gateway-deployment", dep.id.encode("latin-1", "replace"))
            hs.append(value)
        return hs

    def _upstream_request(self, call: Call, dep: Deployment) -> UpstreamRequest:
        return UpstreamRequest(
            endpoint=call.endpoint, path=UPSTREAM_PATHS[call.endpoint], body=call.body,
            payload=self._upstream_body(call, dep) if dep.native else b"", stream=call.stream,
            request_id=call.upstream_request_id,
            first_byte_timeout=dep.stream_timeout or self.gw.config.router.stream_timeout)

    async def _plain(self, call: Call, send: Send, dep: Deployment) -> None:
        reply = await self.gw.upstreams.for_deployment(dep).send(dep, self._upstream_request(call, dep))
        assert isinstance(reply, UpstreamReply)
        call.upstream_wait += reply.elapsed
        await self.send_json(send, call, dep, reply.body)
        self.gw.after_plain(call, dep, reply.body)

    async def send_json(self, send: Send, call: Call, dep: Deployment | None, body: bytes) -> None:
        call.response_started = True
        headers = self.response_headers(call, dep, [JSON_CT, (b"content-length", str(len(body)).encode())])
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        call.first_byte_at = time.perf_counter()

    async def _stream(self, call: Call, send: Send, dep: Deployment) -> None:
        upstream = await self.gw.upstreams.for_deployment(dep).send(dep, self._upstream_request(call, dep))
        assert not isinstance(upstream, UpstreamReply)
        call.upstream_wait += upstream.first_byte_elapsed
        tally = StreamTally(strip_usage=not call.wants_usage)
        try:
            await self.start_stream(send, call, dep)
            await self.pump(call, send, upstream, tally)
        finally:
            if tally.done:
                upstream.release()
            else:
                upstream.close()
            self.gw.after_stream(call, dep, tally)

    async def start_stream(self, send: Send, call: Call, dep: Deployment | None) -> None:
        call.response_started = True
        await send({"type": "http.response.start", "status": 200,
                    "headers": self.response_headers(call, dep, SSE_HEADERS)})

    async def pump(self, call: Call, send: Send, upstream: EventStream, tally: StreamTally) -> None:
        """Forward complete SSE events as they arrive."""
        decoder = Decoder()
        piece = upstream.first
        while True:
            complete = decoder.feed(piece)
            if complete:
                out = tally.process(complete)
                if out:
                    await send({"type": "http.response.body", "body": out, "more_body": True})
                    if call.first_byte_at is None:
                        call.first_byte_at = time.perf_counter()
            try:
                piece = await upstream.read()
            except UpstreamError as exc:
                call.status = 502 if exc.kind != "timeout" else 504
                log.warning("stream %s from %s broke after the first byte: %s", call.request_id,
                            call.deployment.id if call.deployment else "?", exc)
                await send({"type": "http.response.body", "more_body": False,
                            "body": error_event(f"The upstream stream for '{call.alias}' broke: {exc}",
                                                "upstream_error" if exc.kind != "timeout" else "timeout")})
                return
            if not piece:
                break
        tail = decoder.flush()
        tail = tally.process(tail) if tail else b""
        if not tally.done:
            tail += DONE
        await send({"type": "http.response.body", "body": tail, "more_body": False})

    # -- errors and accounting -----------------------------------------------------------------------

    async def _send_error(self, send: Send, call: Call, exc: GatewayError) -> None:
        body = exc.body()
        headers = self.response_headers(call, None, [JSON_CT, (b"content-length", str(len(body)).encode()),
                                                      *exc.header_list()])
        try:
            await send({"type": "http.response.start", "status": exc.status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        except OSError:
            pass

    async def _end_stream_with_error(self, send: Send, exc: GatewayError) -> None:
        try:
            await send({"type": "http.response.body", "body": error_event(exc.message, exc.type, exc.code),
                        "more_body": False})
        except OSError:
            pass

    def _record_request(self, call: Call) -> None:
        gw = self.gw
        if call.ticket is not None:  # release the key's slot and reservation, or settle to the real cost
            gw.keys.finish(call)
        m = gw.metrics
        now = time.perf_counter()
        status_class = f"{call.status // 100}xx"
        m.child(m.requests, call.alias, status_class, call.cache_status, call.team, call.key).inc()
        dep_id = call.deployment.id if call.deployment else ""
        if call.status < 400 or call.response_started:
            m.child(m.duration, call.alias, dep_id, "true" if call.stream else "false").observe(now - call.started)
        until = call.first_byte_at if call.first_byte_at is not None else now
        m.child(m.overhead, call.alias).observe(max(0.0, until - call.started - call.upstream_wait))
        if call.status >= 500:
            log.warning("request %s alias=%s deployment=%s status=%d", call.request_id, call.alias, dep_id or "-",
                        call.status)
