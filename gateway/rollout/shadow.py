"""Shadow traffic: a share of an alias's requests is also sent to another alias (or deployment), off the
client's path, and the two answers are compared (router_settings.shadow, gateway/rollout/options.py).

The client only ever gets the primary's answer. A shadow call starts once the primary is admitted and its
cache lookup missed (a cached answer says nothing about the model); it runs as a background task of the
worker, so it never delays the primary, and a client disconnect does not cancel it. At most
`max_concurrency` shadow calls per alias are in flight in a worker: one more is dropped, never queued
(`oss_shadow_requests_total{result="dropped"}`), as is one whose target has no deployment free right now.
A shadow call goes through no key admission: it is never billed to the client's key, team or budget and never
counts in their rpm/tpm. Its tokens and cost count in the token series with `shadow="true"` (no team, no
key), and in the deployment's own in-flight count and rpm/tpm window (it does use the GPU).

When both sides are done, a `Comparison` (gateway/rollout/records.py) is written to the comparison log and to
the `oss_compare_*` series; agreement is judged off the request path (gateway/rollout/agreement.py).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.config import Deployment, GatewayConfig
from gateway.endpoints import BY_NAME, Endpoint
from gateway.endpoints.base import estimate_text_tokens
from gateway.metrics import Metrics
from gateway.rollout.agreement import Embed, agreement, judge_prompt, judge_score, structural
from gateway.rollout.comparisons import ComparisonLog
from gateway.rollout.options import ShadowOptions
from gateway.rollout.records import Comparison, Side
from gateway.router import NoDeployment, RouterState
from gateway.sse import Decoder
from gateway.strategies import RouteRequest
from gateway.upstreams import EventStream, UpstreamError, UpstreamReply, UpstreamRequest, Upstreams
from gateway.upstreams.translated import send_translated
from gateway.usage import Usage, usage_tail

log = logging.getLogger("gateway.shadow")

PRIMARY_WAIT_MARGIN = 5.0  # seconds past the longest deployment timeout the comparison waits for the primary
USAGE_WAIT = 5.0  # seconds a finished primary's estimated usage may still take (counted off the path)


class Mirror:
    """What the primary did, filled in by the request path (proxy, accounting) for the shadow task."""

    __slots__ = ("body", "tally", "usage", "cost", "status", "latency", "ttft", "deployment", "finished", "counted")

    def __init__(self) -> None:
        self.body: bytes | None = None
        self.tally: Any = None
        self.usage: Usage | None = None
        self.cost = 0.0
        self.status = 0
        self.latency = 0.0
        self.ttft: float | None = None
        self.deployment: Deployment | None = None
        self.finished = asyncio.Event()
        self.counted = asyncio.Event()

    def on_usage(self, usage: Usage, cost: float) -> None:
        self.usage, self.cost = usage, cost
        self.counted.set()

    def on_finish(self, status: int, latency: float, ttft: float | None, dep: Deployment | None) -> None:
        self.status, self.latency, self.ttft, self.deployment = status, latency, ttft, dep
        self.finished.set()


@dataclass(slots=True)
class _Outcome:
    dep: Deployment | None
    status: int
    latency: float
    ttft: float | None
    usage: Usage | None
    cost: float
    text: str
    error: str | None


class Shadows:
    """One worker's shadow calls."""

    def __init__(self, router: RouterState, upstreams: Upstreams, metrics: Metrics, log_: ComparisonLog,
                 spawn: Callable[[Coroutine[Any, Any, Any]], None], embed: Embed | None = None,
                 rng: Callable[[], float] = random.random) -> None:
        self.router = router
        self.upstreams = upstreams
        self.metrics = metrics
        self.comparisons = log_
        self.spawn = spawn
        self.embed = embed
        self.rng = rng
        self.in_flight: dict[str, int] = {}  # primary alias -> shadow calls in flight in this worker

    # -- the request path ---------------------------------------------------------------------------

    def start(self, call: Any, config: GatewayConfig) -> None:
        """Maybe mirror this request (the primary was admitted, its cache lookup missed): a dict lookup and a
        random draw for an alias without a shadow or outside the share."""
        opts = config.router.shadow.get(call.alias)
        if opts is None or not opts.share or (opts.share < 100 and self.rng() * 100 >= opts.share):
            return
        api: Endpoint = call.api
        if not api.metered or call.pinned is not None:  # count_tokens; a follow-up the shadow never saw
            return
        target = self._target(opts, config)
        if target is None:
            return
        shadow_alias, deployments = target
        n = self.in_flight.get(call.alias, 0)
        if n >= opts.max_concurrency:
            self.metrics.child(self.metrics.shadow_requests, call.alias, shadow_alias, "dropped").inc()
            return
        try:
            dep = self.router.pick(shadow_alias, deployments, config.router.routing_strategy, set(),
                                   RouteRequest(shadow_alias, call.body, call.headers)).deployment
        except NoDeployment:
            self.metrics.child(self.metrics.shadow_requests, call.alias, shadow_alias, "dropped").inc()
            return
        self.in_flight[call.alias] = n + 1
        mirror = call.mirror = Mirror()
        self.spawn(self._run(call.alias, shadow_alias, dep, api, call.body, call.headers, call.stream, mirror,
                             opts, config, time.time()))

    @staticmethod
    def _target(opts: ShadowOptions, config: GatewayConfig) -> tuple[str, tuple[Deployment, ...]] | None:
        deps = config.aliases.get(opts.to)
        if deps is not None:
            return opts.to, deps
        dep = next((d for d in config.deployments if d.id == opts.to), None)
        return None if dep is None else (dep.alias, (dep,))

    # -- the background task -------------------------------------------------------------------------

    async def _run(self, alias: str, shadow_alias: str, dep: Deployment, api: Endpoint, body: dict[str, Any],
                   headers: dict[bytes, bytes], primary_streamed: bool, mirror: Mirror, opts: ShadowOptions,
                   config: GatewayConfig, started: float) -> None:
        try:
            stream = api.streams and opts.stream_for(primary_streamed)
            out = await self._call(dep, api, body, headers, stream, opts.timeout or dep.timeout, config)
        finally:
            self.in_flight[alias] = self.in_flight.get(alias, 1) - 1
        self.metrics.child(self.metrics.shadow_requests, alias, shadow_alias,
                           "error" if out.error else "ok").inc()
        try:
            # the primary may end on any deployment (retries, fallbacks): wait as long as the longest may take
            longest = max((d.timeout for d in config.deployments), default=config.router.timeout)
            await asyncio.wait_for(mirror.finished.wait(), longest + PRIMARY_WAIT_MARGIN)
            if mirror.usage is None and mirror.status < 400:
                await asyncio.wait_for(mirror.counted.wait(), USAGE_WAIT)
        except TimeoutError:
            pass
        primary = self._primary(mirror, api, body)
        score, method = None, None
        if primary.error is None and out.error is None and (primary.text or out.text):
            score, method = await self._agree(primary.text, out.text, body, opts, config)
        record = Comparison(started, api.name, self._side(alias, primary), self._side(shadow_alias, out), score,
                            method)
        self.metrics.record_comparison(record)
        await self.comparisons.add(record)

    async def _call(self, dep: Deployment, api: Endpoint, body: dict[str, Any], headers: dict[bytes, bytes],
                    stream: bool, timeout: float, config: GatewayConfig) -> _Outcome:
        shadow_body = dict(body)
        shadow_body["stream"] = stream
        if not stream:
            shadow_body.pop("stream_options", None)
        if api.remembers:
            shadow_body["store"] = False  # the shadow's answer is never continued
        st = self.router.state(dep)
        st.in_flight += 1
        st.note_request(dep, self.router.clock())
        gauge = self.metrics.child(self.metrics.in_flight, dep.alias, dep.id)
        gauge.inc()
        t0 = time.perf_counter()
        ttft: float | None = None
        text = ""
        usage: Usage | None = None
        try:
            async with asyncio.timeout(timeout):
                upstream = self.upstreams.for_deployment(dep)
                rid = uuid.uuid4().hex
                fbt = dep.stream_timeout or config.router.stream_timeout
                if api.support in dep.supports:
                    reply: UpstreamReply | EventStream = await upstream.send(dep, UpstreamRequest(
                        endpoint=api.name, path=api.upstream_path, body=shadow_body,
                        payload=orjson.dumps(api.upstream_body(shadow_body, dep.served_model, stream, False))
                        if dep.native else b"", stream=stream, request_id=rid, first_byte_timeout=fbt,
                        headers=api.upstream_headers(headers)))
                else:
                    reply = await send_translated(upstream, dep, api, shadow_body, dep.alias, None, stream, rid, fbt)
                if isinstance(reply, UpstreamReply):
                    usage, text = self._plain(api, reply.body)
                else:
                    tally = api.new_tally(True)
                    decoder = Decoder()
                    piece = reply.first
                    try:
                        while piece:
                            complete = decoder.feed(piece)
                            if complete:
                                tally.process(complete)
                                if ttft is None and tally.events:
                                    ttft = time.perf_counter() - t0
                            piece = await reply.read()
                    finally:
                        if tally.done:
                            reply.release()
                        else:
                            reply.close()
                    usage = api.usage(tally.usage) if tally.usage is not None else None
                    estimate, text = api.estimate_stream_tokens(tally.chunks())
                    if usage is None:
                        usage = Usage(api.estimate_prompt_tokens(body), estimate, True)
            latency = time.perf_counter() - t0
            self.router.state(dep).note_tokens(dep, usage.total, self.router.clock())
            cost = self.metrics.record_tokens(dep, usage.prompt_tokens, usage.completion_tokens, "", "",
                                              usage.estimated, shadow=True)
            return _Outcome(dep, 200, latency, ttft, usage, cost, text, None)
        except UpstreamError as exc:
            if exc.policy.cooldown and self.router.record_failure(dep, config.router, len(config.aliases[dep.alias])):
                self.metrics.cooldowns.labels(dep.alias, dep.id).inc()
            status = exc.status if exc.kind == "status" and exc.status else exc.policy.status
            return _Outcome(dep, status, time.perf_counter() - t0, ttft, None, 0.0, "", exc.reason)
        except TimeoutError:
            return _Outcome(dep, 504, time.perf_counter() - t0, ttft, None, 0.0, "", "timeout")
        except Exception as exc:  # noqa: BLE001 - a shadow never takes the worker down
            log.warning("shadow call to %s failed inside the gateway: %s", dep.id, type(exc).__name__)
            return _Outcome(dep, 500, time.perf_counter() - t0, ttft, None, 0.0, "", "internal")
        finally:
            st.in_flight -= 1
            gauge.dec()

    @staticmethod
    def _plain(api: Endpoint, raw: bytes) -> tuple[Usage, str]:
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            data = None
        text = api.output_text(data) if isinstance(data, dict) else ""
        usage = usage_tail(raw, api.usage)
        if usage is None and isinstance(data, dict):
            usage = api.usage(data.get("usage"))
        return usage or Usage(0, estimate_text_tokens(text), True), text

    @staticmethod
    def _primary(m: Mirror, api: Endpoint, body: dict[str, Any]) -> _Outcome:
        text = ""
        if m.body is not None:
            try:
                data = orjson.loads(m.body)
                text = api.output_text(data) if isinstance(data, dict) else ""
            except orjson.JSONDecodeError:
                pass
        elif m.tally is not None:
            text = api.estimate_stream_tokens(m.tally.chunks())[1]
        if not m.finished.is_set():
            return _Outcome(m.deployment, 504, m.latency, m.ttft, m.usage, m.cost, text, "unfinished")
        error = None if 200 <= m.status < 300 else ("client_gone" if m.status == 499 else f"http_{m.status}")
        return _Outcome(m.deployment, m.status, m.latency, m.ttft, m.usage, m.cost, text, error)

    @staticmethod
    def _side(alias: str, o: _Outcome) -> Side:
        d = o.dep
        u = o.usage
        return Side(alias=alias, deployment=d.id if d is not None else "",
                    model=d.served_model if d is not None else "", status=o.status, latency_s=round(o.latency, 6),
                    ttft_s=None if o.ttft is None else round(o.ttft, 6),
                    prompt_tokens=u.prompt_tokens if u else 0, completion_tokens=u.completion_tokens if u else 0,
                    cost_usd=o.cost, gpu_usd_per_hour=d.gpu_cost_per_hour if d is not None else None, error=o.error)

    async def _agree(self, a: str, b: str, body: dict[str, Any], opts: ShadowOptions, config: GatewayConfig
                     ) -> tuple[float, str]:
        if opts.judge is not None and structural(a, b) is None:
            score = await self._judge(a, b, body, opts.judge, config)
            if score is not None:
                return score, "judge"
        return await agreement(a, b, self.embed)

    async def _judge(self, a: str, b: str, body: dict[str, Any], judge: str, config: GatewayConfig
                     ) -> float | None:
        deployments = config.aliases.get(judge)
        if not deployments:
            return None
        question = orjson.dumps(body.get("messages") or body.get("input") or body.get("prompt") or "").decode()
        jbody = {"model": judge, "messages": judge_prompt(question, a, b), "max_tokens": 8, "temperature": 0}
        try:
            dep = self.router.pick(judge, deployments, config.router.routing_strategy).deployment
        except NoDeployment:
            return None
        out = await self._call(dep, BY_NAME["chat"], jbody, {}, False, dep.timeout, config)
        return None if out.error else judge_score(out.text)
