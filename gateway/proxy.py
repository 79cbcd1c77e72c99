"""The request path of every API endpoint in the registry (gateway/endpoints), as raw ASGI.

read body (bounded) ▶ parse once (nesting bounded) ▶ endpoint validates ▶ auth + key limits ▶ alias
  ▶ [cache] ▶ router picks a deployment ▶ upstream.send ◀ bytes, or SSE events as they arrive
  ◀ accounting after the response is out (tokens, cost, spend, cache store)
Retries go to another deployment of the alias; then `fallbacks` move to other aliases;
`context_window_fallbacks` move before sending when the prompt is over `max_input_tokens`, after an
upstream's context-length error, and when every deployment that could take the prompt is unavailable.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from typing import Any, Protocol

import orjson

from gateway import errors
from gateway.accounting import Accounting
from gateway.asgi import ClientGone, Message, Receive, Scope, Send, read_body
from gateway.auth import Caller
from gateway.cache.serving import CacheService
from gateway.call import Call
from gateway.config import Deployment, GatewayConfig
from gateway.endpoints import BY_NAME, Endpoint
from gateway.errors import GatewayError
from gateway.followups import FollowUps
from gateway.metrics import Metrics
from gateway.protocol import parse_json_body, upstream_client_error
from gateway.responses import Response, start_sse
from gateway.rollout.traffic import Rollout
from gateway.router import NoDeployment, RouterState
from gateway.settings import Settings
from gateway.sse import Decoder
from gateway.strategies import RouteRequest
from gateway.upstreams import (
    Attempt,
    AttemptsFailed,
    EventStream,
    UpstreamError,
    UpstreamReply,
    UpstreamRequest,
    Upstreams,
    upstream_message,
)
from gateway.upstreams.translated import send_translated

log = logging.getLogger("gateway.proxy")


class Admission(Protocol):
    """Who is calling and whether their key/team limits admit the request (gateway/keys)."""

    async def admit(self, headers: dict[bytes, bytes], alias: str, call: Call) -> Caller: ...

    def release(self, call: Call) -> None: ...

    def finish(self, call: Call) -> None: ...


class _AliasExhausted(Exception):
    def __init__(self, error: GatewayError, reason: str) -> None:
        super().__init__(error.message)
        self.error = error
        self.reason = reason


class _ContextExceeded(Exception):
    def __init__(self, error: GatewayError) -> None:
        super().__init__(error.message)
        self.error = error


def visible_aliases(caller: Caller | None, config: GatewayConfig) -> list[str]:
    return [a for a in config.aliases if caller is None or caller.may_use(a)]


class Proxy:
    """Serves the registry's endpoints for one worker process."""

    def __init__(self, config: Callable[[], GatewayConfig], settings: Settings, admission: Admission,
                 router: RouterState, upstreams: Upstreams, accounting: Accounting, cache: CacheService | None,
                 metrics: Metrics, followups: FollowUps, rollout: Rollout | None = None) -> None:
        self.config = config
        self.settings = settings
        self.admission = admission
        self.router = router
        self.upstreams = upstreams
        self.accounting = accounting
        self.cache = cache
        self.metrics = metrics
        self.followups = followups
        self.rollout = rollout  # canaries and shadow traffic (gateway/rollout)

    # -- ASGI entry ---------------------------------------------------------------------------------

    async def __call__(self, api: Endpoint, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope["headers"])
        rid = headers.get(b"x-request-id")
        call = Call(api=api, request_id=rid.decode("latin-1")[:128] if rid else os.urandom(16).hex(),
                    started=time.perf_counter(), headers=headers)
        arm: asyncio.TimerHandle | None = None
        raw_send = send
        config = self.config()  # the snapshot this request uses: its routes and its label values

        async def send(message: Message) -> None:  # noqa: F811 - marks the last write of the response
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                call.completing = True
            await raw_send(message)

        try:
            try:
                limit = config.max_request_bytes or self.settings.max_request_bytes
                raw = await read_body(receive, headers, limit)
                call.body = parse_json_body(raw, self.settings.max_json_depth)
                call.requested = api.validate(call.body)
                if call.requested in config.aliases:  # else stays UNKNOWN_ALIAS, whatever happens next
                    call.alias = call.requested
                call.caller = await self.admission.admit(headers, call.requested, call)
                call.stream = api.streams and call.body.get("stream") is True
                so = call.body.get("stream_options")
                call.wants_usage = isinstance(so, dict) and so.get("include_usage") is True
                # a client that goes away cancels the upstream request (GPU time is money); the watcher
                # is armed only for requests still running after 50 ms (most finish before: no task),
                # at once for one holding a parallel slot (freed when the disconnect is seen)
                task = asyncio.current_task()
                assert task is not None
                held = call.ticket is not None and call.ticket.holds_slot
                arm = asyncio.get_running_loop().call_later(0 if held else 0.05, self._arm_watcher, receive, call, task)
                await self._serve(call, send, config)
            except GatewayError as exc:
                call.status = exc.status
                if not call.response_started:
                    await self._send_error(send, call, exc)
                else:
                    await self._end_stream_with_error(send, call, exc)
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

    async def stored_response(self, scope: Scope, send: Send, rid: str) -> None:
        """GET / DELETE /v1/responses/{id}: answered by the deployment that holds the response (native), or
        from the conversation the gateway kept (translated); another tenant's id is unknown."""
        headers = dict(scope["headers"])
        api = BY_NAME["responses"]
        call = Call(api=api, request_id=os.urandom(16).hex(), started=time.perf_counter(), headers=headers)
        try:
            call.caller = await self.admission.admit(headers, "", None)
            tenant = call.caller.tenant
            rec = await self.followups.get(tenant, rid) if rid and "/" not in rid and len(rid) <= 256 else None
            dep = None if rec is None else next((d for d in self.config().deployments if d.id == rec[0]), None)
            if rec is None or dep is None:
                raise GatewayError(404, f"Response '{rid[:80]}' is unknown or has expired", "invalid_request_error",
                                   None, "not_found")
            method = scope["method"]
            if api.support in dep.supports and dep.native:
                status, body = await self.upstreams.native.forward(method, f"{dep.api_base}/responses/{rid}",
                                                                     dep.timeout, dep.api_key)
            elif method == "GET" and rec[1] is not None and isinstance(rec[3], dict):
                status, body = 200, orjson.dumps(rec[3])
            else:
                status, body = 200, orjson.dumps({"id": rid, "object": "response", "deleted": True})
            if method == "DELETE" and status < 300:
                await self.followups.delete(tenant, rid)
            await Response(body, status, call.response_headers(dep)).send_to(send)
        except GatewayError as exc:
            await self._send_error(send, call, exc)
        except UpstreamError as exc:
            await self._send_error(send, call, errors.upstream_failed(f"The upstream holding '{rid[:80]}' failed "
                                                                      f"({exc.describe()})."))

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
                        self.admission.release(call)  # its parallel slot is free now, not after the unwinding
                    task.cancel()
                return

    # -- routing -------------------------------------------------------------------------------------

    async def _serve(self, call: Call, send: Send, config: GatewayConfig) -> None:
        if call.requested not in config.aliases:  # call.alias is UNKNOWN_ALIAS: the name is for the message only
            raise errors.model_not_found(call.requested, visible_aliases(call.caller, config))
        api = call.api
        prev = api.follow_up_of(call.body)
        holder_alias: str | None = None
        if prev is not None:
            holder_alias = await self._pin_follow_up(call, prev, config)
        if self.cache is not None and api.cacheable and (api.replayable or not call.stream) \
                and await self.cache.answer(call, send):
            return
        if holder_alias is not None:  # a follow-up: where its conversation is (the alias, or its canary)
            start = holder_alias
        else:
            start = self.rollout.start(call, config) if self.rollout is not None else call.alias
        chain: list[tuple[str, str | None]] = [(start, None)]
        if start != call.alias:  # the alias's canary serves it; should the canary fail, the alias itself does
            chain.append((call.alias, "canary"))
        visited: set[str] = set()
        last_error: GatewayError | None = None
        prev = call.alias
        cw = config.router.context_window_fallbacks
        while chain:
            alias, reason = chain.pop(0)
            if alias in visited or alias not in config.aliases:
                continue
            visited.add(alias)
            if reason is not None:
                self.metrics.fallbacks.labels(prev, alias, reason).inc()
            prev = alias
            deployments = config.aliases[alias]
            if call.pinned is not None:  # a follow-up goes where its conversation is, or nowhere
                deployments = tuple(d for d in deployments if d.id == call.pinned)
                if not deployments:
                    continue
            fits = self._fitting(call, deployments)
            if not fits:
                last_error = self._context_error(call, deployments)
                chain[:0] = [(a, "context_window") for a in cw.get(alias, ())]
                continue
            try:
                await self._attempts(call, send, config, alias, fits)
                return
            except _ContextExceeded as exc:
                last_error = exc.error
                chain[:0] = [(a, "context_window") for a in cw.get(alias, ())]
            except _AliasExhausted as exc:
                last_error = exc.error
                if alias != call.alias and alias == start:
                    call.canary_failed = True
                if len(fits) < len(deployments):
                    # every deployment that could take this prompt is unavailable, and the others cannot
                    # take it: a larger-context alias is the next place to go, before ordinary fallbacks
                    chain[:0] = [(a, "context_window") for a in cw.get(alias, ())]
                more = config.router.fallbacks.get(alias)
                if more is None and alias == call.alias:
                    more = config.router.default_fallbacks
                chain.extend((a, exc.reason) for a in more or ())
        assert last_error is not None
        raise last_error

    async def _pin_follow_up(self, call: Call, prev: str, config: GatewayConfig) -> str:
        """Pin the request to the deployment holding the conversation; returns that deployment's alias (the
        request's own, or its canary's: a conversation begun on the canary goes on there)."""
        tenant = call.caller.tenant if call.caller is not None else "open"
        rec = await self.followups.get(tenant, prev)
        canary = config.router.canary.get(call.alias)
        mine = config.aliases[call.alias] + (config.aliases.get(canary.to, ()) if canary is not None else ())
        holder = None if rec is None else next((d for d in mine if d.id == rec[0]), None)
        if rec is None or holder is None or rec[2]:  # (deployment, items, too large, answer)
            why = "is unknown or has expired" if rec is None else (
                "was served by a deployment that is no longer in the config" if holder is None
                else "belongs to a conversation too large to keep")
            raise GatewayError(404, f"Previous response '{prev[:80]}' {why}; start a new conversation.",
                               "invalid_request_error", "previous_response_id", "previous_response_not_found")
        call.pinned = holder.id
        call.context = rec[1]
        return holder.alias

    def _fitting(self, call: Call, deployments: tuple[Deployment, ...]) -> tuple[Deployment, ...]:
        if not call.api.streams or all(d.max_input_tokens is None for d in deployments):
            return deployments  # embeddings: no context-window routing
        n = call.estimate_prompt()
        return tuple(d for d in deployments if d.max_input_tokens is None or n <= d.max_input_tokens)

    def _context_error(self, call: Call, deployments: tuple[Deployment, ...]) -> GatewayError:
        limit = max(d.max_input_tokens or 0 for d in deployments)
        return errors.invalid_request(
            f"This model's maximum context length is {limit} tokens; the request's prompt is about "
            f"{call.prompt_estimate} tokens and no larger-context fallback is configured for '{call.alias}'.",
            call.api.prompt_param, "context_length_exceeded")

    async def _attempts(self, call: Call, send: Send, config: GatewayConfig, alias: str,
                        deployments: tuple[Deployment, ...]) -> None:
        router = self.router
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
            self.metrics.child(self.metrics.routing_decisions, alias, settings.routing_strategy,
                               decision.reason).inc()
            if attempts:
                prev = attempts[-1]
                self.metrics.retries.labels(alias, prev.deployment, prev.error.reason).inc()
            tried.add(dep.id)
            try:
                await self._send_to(call, send, dep, settings.stream_timeout)
                return
            except UpstreamError as exc:
                if exc.context_exceeded:
                    raise _ContextExceeded(errors.invalid_request(
                        upstream_message(exc.body), call.api.prompt_param, "context_length_exceeded")) from None
                if not exc.retryable:
                    raise upstream_client_error(exc.status or 400, exc.body) from None
                attempts.append(Attempt(dep.id, exc))
                if exc.policy.cooldown and router.record_failure(dep, settings, len(config.aliases[alias])):
                    self.metrics.cooldowns.labels(alias, dep.id).inc()
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

    async def _send_to(self, call: Call, send: Send, dep: Deployment, stream_timeout: float | None) -> None:
        st = self.router.state(dep)
        st.in_flight += 1
        st.note_request(dep, self.router.clock())
        gauge = self.metrics.child(self.metrics.in_flight, dep.alias, dep.id)
        gauge.inc()
        call.deployment = dep
        try:
            api = call.api
            native = api.support in dep.supports
            first_byte_timeout = dep.stream_timeout or stream_timeout
            upstream = self.upstreams.for_deployment(dep)
            if native:
                reply: UpstreamReply | EventStream = await upstream.send(dep, UpstreamRequest(
                    endpoint=api.name, path=api.upstream_path, body=call.body,
                    payload=orjson.dumps(api.upstream_body(call.body, dep.served_model, call.stream,
                                                           call.wants_usage)) if dep.native else b"",
                    stream=call.stream, request_id=call.upstream_request_id, first_byte_timeout=first_byte_timeout,
                    headers=api.upstream_headers(call.headers)))
            elif (local := api.answer_locally(call.body)) is not None:
                reply = UpstreamReply(200, orjson.dumps(local), 0.0)
            else:
                reply = await send_translated(upstream, dep, api, call.body, call.alias, call.context, call.stream,
                                              call.upstream_request_id, first_byte_timeout)
            if isinstance(reply, UpstreamReply):
                call.upstream_wait += reply.elapsed
                call.response_started = True
                await Response(reply.body, 200, call.response_headers(dep)).send_to(send)
                call.first_byte_at = time.perf_counter()
                if api.metered:
                    self.accounting.after_plain(call, dep, reply.body)
                if api.remembers:
                    try:
                        self._remember(call, dep, native, orjson.loads(reply.body))
                    except orjson.JSONDecodeError:
                        log.warning("request %s: the answer of %s is not JSON: no follow-up can name it",
                                    call.request_id, dep.id)
            else:
                await self._stream(call, send, dep, reply, native)
        finally:
            st.in_flight -= 1
            gauge.dec()

    async def _stream(self, call: Call, send: Send, dep: Deployment, upstream: EventStream, native: bool) -> None:
        call.upstream_wait += upstream.first_byte_elapsed
        tally = call.api.new_tally(call.wants_usage)
        try:
            call.response_started = True
            await start_sse(send, call.response_headers(dep))
            await self._pump(call, send, upstream, tally)
        finally:
            if tally.done:
                upstream.release()
            else:
                upstream.close()
            self.accounting.after_stream(call, dep, tally)
        final = getattr(tally, "final", None)
        if call.api.remembers and final is not None:
            self._remember(call, dep, native, final)

    def _remember(self, call: Call, dep: Deployment, native: bool, answer: Any) -> None:
        """Keep where a follow-up to this answer must go (and, translated, the conversation so far)."""
        rid = call.api.created_id(answer) if isinstance(answer, dict) else None
        if rid is None or call.body.get("store") is False:
            return
        items = None if native else call.api.conversation(call.body, answer, call.context)
        tenant = call.caller.tenant if call.caller is not None else "open"
        final = answer.get("response") if isinstance(answer.get("response"), dict) else answer
        self.accounting.spawn(self.followups.put(tenant, rid, dep.id, items, None if native else final))

    async def _pump(self, call: Call, send: Send, upstream: EventStream, tally: Any) -> None:
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
                timeout = exc.policy.status == 504
                call.status = 504 if timeout else 502
                log.warning("stream %s from %s broke after the first byte: %s", call.request_id,
                            call.deployment.id if call.deployment else "?", exc)
                await send({"type": "http.response.body", "more_body": False,
                            "body": call.api.stream_error(call.status, f"The upstream stream for '{call.alias}' "
                                                          f"broke: {exc}", "timeout" if timeout else "upstream_error",
                                                          None)})
                return
            if not piece:
                break
        tail = decoder.flush()
        tail = tally.process(tail) if tail else b""
        tail += call.api.stream_tail(tally)
        await send({"type": "http.response.body", "body": tail, "more_body": False})

    # -- errors and accounting -----------------------------------------------------------------------

    async def _send_error(self, send: Send, call: Call, exc: GatewayError) -> None:
        try:
            await Response(exc.body(call.api.error_style), exc.status,
                           [*call.response_headers(None), *exc.header_list()]).send_to(send)
        except OSError:
            pass

    async def _end_stream_with_error(self, send: Send, call: Call, exc: GatewayError) -> None:
        try:
            await send({"type": "http.response.body", "body": call.api.stream_error(exc.status, exc.message, exc.type,
                                                                                   exc.code), "more_body": False})
        except OSError:
            pass

    def _record_request(self, call: Call) -> None:
        if call.ticket is not None:  # release the key's slot and reservation, or settle to the real cost
            self.admission.finish(call)
        if call.mirror is not None or call.canary is not None:
            assert self.rollout is not None
            self.rollout.finish(call, call.status)
        m = self.metrics
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
