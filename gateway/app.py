"""The app factory: one `Gateway` per worker process, and all the wiring in one place.

`Gateway` holds the worker's state (current config, router state, metrics, upstream client, cache,
background tasks); `create_app` puts the raw-ASGI hot path in front of a FastAPI app that serves
everything else (health, models, metrics, admin) and the OpenAPI spec.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import orjson

from gateway import errors
from gateway.auth import MASTER, OPEN, Caller, bearer_token, is_master
from gateway.config import ConfigError, Deployment, GatewayConfig, load_file, load_text
from gateway.health import HealthChecker
from gateway.keys import KeyService
from gateway.litellm_upstream import LiteLLMUpstream
from gateway.metrics import Metrics
from gateway.proxy import Call, Proxy, Receive, Scope, Send
from gateway.reload import ConfigWatcher
from gateway.router import RouterState
from gateway.settings import Settings
from gateway.streaming import StreamTally
from gateway.tokens import TokenCounter
from gateway.upstream import OpenAICompatible
from gateway.usage import Usage, estimate_plain, estimate_stream, parse_plain, usage_tail

log = logging.getLogger("gateway")

class Gateway:
    """One worker's gateway: config, routing state, clients and background tasks."""

    def __init__(self, settings: Settings, config: GatewayConfig, config_path: Path | None = None) -> None:
        self.settings = settings
        self.config = config
        self.config_path = config_path
        self.metrics = Metrics()
        self.router = RouterState()
        self.upstream = OpenAICompatible(settings.upstream_connections)
        self.tokens = TokenCounter(self.upstream.post_json)
        self.litellm = LiteLLMUpstream()
        self.cache: Any = self._build_cache(config)
        self.keys = KeyService(self)  # virtual keys, limits, spend ledger (gateway/keys)
        self.proxy = Proxy(self)
        self.watcher = (ConfigWatcher(config_path, settings.reload_interval, self.reload_text)
                        if config_path is not None else None)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loops: list[asyncio.Task[Any]] = []
        self.started_at = time.time()
        self._apply(config, previous=None)

    # -- lifecycle -----------------------------------------------------------------------------------

    async def startup(self) -> None:
        await self.upstream.start()
        await self.keys.start()
        if self.cache is not None:
            probe = getattr(self.cache.embedder, "probe", None) if self.cache.semantic else None
            if probe is not None:
                await probe()  # an embeddings alias: the vector size, before the index is built
            if self.cache.backend == "redis":
                self.metrics.redis_up.labels("cache").set(1 if self.cache.redis_up else 0)
            await self.cache.start()
            log.info("response cache on: %s (%s)", self.config.cache.type, self.cache.backend)
        for line in self.config.notes:
            log.info("config: %s", line)
        if self.config.ignored:
            log.info("config: ignored LiteLLM keys the gateway does not use: %s", ", ".join(self.config.ignored))
        if not self.master_key:
            log.warning("auth is OFF: no general_settings.master_key / GATEWAY_MASTER_KEY; the gateway is open "
                        "and admin endpoints are disabled")
        if not (self.settings.redis_url or self.settings.state_redis_url or self.config.cache.redis_url):
            log.info("no Redis configured: running on in-process defaults (memory cache, local limits)")
        health = HealthChecker(self.upstream, lambda: self.config, self.settings.health_check_interval,
                               self.settings.health_check_timeout, self._on_health)
        self._loops.append(asyncio.create_task(health.run(), name="health-checks"))
        if self.watcher is not None:
            self._loops.append(asyncio.create_task(self.watcher.run(), name="config-watcher"))
        try:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.reload_file)
        except (NotImplementedError, RuntimeError, ValueError):
            pass
        log.info("gateway ready: %d aliases, %d deployments (pid %d)", len(self.config.aliases),
                 len(self.config.deployments), os.getpid())

    async def shutdown(self) -> None:
        for task in self._loops:
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        await self.keys.close()
        await self.upstream.close()
        if self.cache is not None:
            await self.cache.close()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run work off the hot path, keeping a reference until it finishes."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- config --------------------------------------------------------------------------------------

    @property
    def master_key(self) -> str | None:
        return self.config.master_key or self.settings.master_key

    @property
    def max_request_bytes(self) -> int:
        return self.config.max_request_bytes or self.settings.max_request_bytes

    def _build_cache(self, config: GatewayConfig) -> Any:
        from gateway.cache.factory import cache_settings

        settings = cache_settings(config.cache, self.settings.redis_url)
        if settings is None:
            return None
        from gateway.cache import ResponseCache
        from gateway.cache.gauge import CacheEntriesCollector
        from gateway.cache.process import SOCKET_ENV

        cp = config.cache
        alias = cp.params.get("redis_semantic_cache_embedding_model")
        embedder = None
        if isinstance(alias, str) and alias:
            from gateway.embeddings import AliasEmbedder

            dim = cp.params.get("embedding_dim")
            embedder = AliasEmbedder(self, alias, int(dim) if isinstance(dim, int) else None)
        # several workers: the replica's cache process (started by the supervisor) holds model and index
        remote = os.environ.get(SOCKET_ENV) or None if self.settings.workers > 1 else None
        cache = ResponseCache(settings, embedder=embedder, remote=remote)
        cache.on_error = lambda kind, _exc: self.metrics.cache_errors.labels(kind).inc()
        cache.on_redis_state = lambda up: self.metrics.redis_up.labels("cache").set(1 if up else 0)
        self.metrics.add_collector(CacheEntriesCollector(cache))
        return cache

    def _apply(self, new: GatewayConfig, previous: GatewayConfig | None) -> None:
        self.router.sync(new.deployments)
        self.metrics.publish_deployments(new.deployments, previous.deployments if previous else ())
        self.config = new  # one reference swap: requests in flight keep the snapshot they started with
        for d in new.deployments:
            self.publish_health(d)

    def reload_text(self, text: str) -> bool:
        try:
            new = load_text(text)
        except ConfigError as exc:
            self.metrics.reloads.labels("rejected").inc()
            for problem in exc.problems:
                log.error("config reload rejected, routes unchanged: %s", problem)
            return False
        old = self.config
        if new.cache != old.cache:
            log.warning("config: cache settings changed; they take effect at the next restart")
        self._apply(new, old)
        self.metrics.reloads.labels("ok").inc()
        log.info("config reloaded: %s", ", ".join(f"{a}→{'+'.join(d.id for d in ds)}" for a, ds in new.aliases.items()))
        return True

    def reload_file(self) -> bool:
        if self.config_path is None:
            return False
        try:
            text = self.config_path.read_text()
        except OSError as exc:
            self.metrics.reloads.labels("rejected").inc()
            log.error("config reload rejected, routes unchanged: %s: cannot read (%s)", self.config_path, exc.strerror)
            return False
        ok = self.reload_text(text)
        if self.watcher is not None:
            self.watcher.mark_current()
        return ok

    # -- auth ----------------------------------------------------------------------------------------

    async def authenticate(self, headers: dict[bytes, bytes], alias: str, call: Call | None = None) -> Caller:
        """The caller of a request; with `call` (the hot path) also admits it against key/team limits."""
        master = self.master_key
        if not master:
            return OPEN
        token = bearer_token(headers)
        if token is None:
            raise errors.authentication_error("Missing API key: send 'Authorization: Bearer <key>'")
        if is_master(token, master):
            if call is not None:
                self.keys.master_ticket(call)
            return MASTER
        return await self.keys.authenticate(token, alias, call)

    def visible_aliases(self, caller: Caller | None, config: GatewayConfig) -> list[str]:
        return [a for a in config.aliases if caller is None or caller.may_use(a)]

    # -- health --------------------------------------------------------------------------------------

    def _on_health(self, dep: Deployment, healthy: bool, error: str | None) -> None:
        if self.router.set_health(dep, healthy, error):
            if healthy:
                log.info("deployment %s of %s is healthy again", dep.id, dep.alias)
            else:
                log.warning("deployment %s of %s failed its health check (%s): taken out of routing",
                            dep.id, dep.alias, error)
        self.publish_health(dep)

    def publish_health(self, dep: Deployment) -> None:
        st = self.router.state(dep)
        up = st.healthy and st.cooldown_until <= self.router.clock()
        self.metrics.healthy.labels(dep.alias, dep.id).set(1 if up else 0)

    # -- accounting (after the response is out) -------------------------------------------------------

    def record_usage(self, call: Call, dep: Deployment, usage: Usage) -> float:
        self.router.state(dep).note_tokens(dep, usage.total, self.router.clock())
        cost = self.metrics.record_tokens(dep, usage.prompt_tokens, usage.completion_tokens, call.team, call.key,
                                          usage.estimated)
        if call.ticket is not None:  # settle the key's reservation to the real cost, write the ledger
            self.keys.on_usage(call, dep, usage, cost)
        return cost

    def after_plain(self, call: Call, dep: Deployment, body: bytes) -> None:
        usage = usage_tail(body)
        if usage is None:
            data, usage = parse_plain(body)
            if usage is None:
                usage = estimate_plain(call.body, data)
        self.record_usage(call, dep, usage)
        if self.cache is not None and call.cache_status in ("miss", "bypass"):  # no-cache still stores
            self.spawn(self.cache_store(call, body))

    def after_stream(self, call: Call, dep: Deployment, tally: StreamTally) -> None:
        now = time.perf_counter()
        if call.first_byte_at is not None:
            self.metrics.child(self.metrics.ttft, dep.alias, dep.id).observe(call.first_byte_at - call.started)
            if tally.events > 2:
                self.metrics.child(self.metrics.itl, dep.alias, dep.id).observe(
                    (now - call.first_byte_at) / (tally.events - 1))
        if tally.usage is not None:
            usage = Usage(int(tally.usage.get("prompt_tokens") or 0), int(tally.usage.get("completion_tokens") or 0),
                          False)
            self.record_usage(call, dep, usage)
        elif tally.events:
            self.spawn(self._estimate_stream(call, dep, tally))
        if self.cache is not None and call.cache_status in ("miss", "bypass") and tally.done and call.status == 200:
            from gateway.cache import assemble_stream

            self.spawn(self.cache_store(call, assemble_stream(tally.chunks())))

    async def _estimate_stream(self, call: Call, dep: Deployment, tally: StreamTally) -> None:
        usage, text = estimate_stream(call.body, tally)
        completion = await self.tokens.count(dep.id, dep.api_base if dep.native else None, dep.served_model, text,
                                             dep.api_key, usage.completion_tokens)
        self.record_usage(call, dep, Usage(usage.prompt_tokens, completion, True))

    async def ready_problems(self) -> list[str]:
        """Why the gateway is not ready (empty when ready): one dead GPU is not a reason."""
        problems: list[str] = []
        if not self.config.aliases:
            problems.append("no routes loaded")
        if self.cache is not None and self.cache.backend == "redis" and not self.cache.redis_up:
            problems.append("cache Redis unreachable")
        problems.extend(self.keys.ready_problems())
        return problems

    # -- cache ---------------------------------------------------------------------------------------

    async def cache_lookup(self, call: Call, send: Send) -> bool:
        """Answer from the cache when it can; returns True when the response was sent."""
        from gateway.cache import CacheRequest, sse_replay

        caller = call.caller
        tenant = (caller.team or caller.key_alias or None) if caller is not None else None
        cc = call.headers.get(b"cache-control")
        call.cache_req = CacheRequest(alias=call.alias, endpoint=call.endpoint, body=call.body, tenant=tenant,
                                      cache_control_header=cc.decode("latin-1") if cc else None)
        result = await self.cache.lookup(call.cache_req)
        call.cache_status = result.status
        if result.status not in ("hit", "semantic_hit") or result.body is None:
            return False
        if call.stream:
            await self.proxy.start_stream(send, call, None)
            events = sse_replay(result.body, include_usage=call.wants_usage)
            await send({"type": "http.response.body", "body": b"".join(events), "more_body": False})
            call.first_byte_at = time.perf_counter()
        else:
            await self.proxy.send_json(send, call, None, result.body)
        self._record_saved(call, result.usage)
        return True

    def _record_saved(self, call: Call, usage: dict[str, Any] | None) -> None:
        deployments = self.config.aliases.get(call.alias)
        if not deployments or not isinstance(usage, dict):
            return
        dep = deployments[0]
        saved = dep.cost(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))
        self.metrics.cache_saved.labels(call.alias, dep.served_model, call.team, call.key).inc(saved)

    async def cache_store(self, call: Call, body: bytes) -> None:
        if call.cache_req is not None:
            await self.cache.store(call.cache_req, body)


class GatewayASGI:
    """Raw-ASGI front: the lifespan, `/health/live` and `/health/ready`, and the OpenAI POST endpoints are
    served here directly; everything else goes to a FastAPI app that is built once the gateway is ready
    (its import is the slowest part of a start, and nothing on the hot path needs it)."""

    HOT = {
        "/v1/chat/completions": "chat", "/chat/completions": "chat",
        "/v1/completions": "completions", "/completions": "completions",
        "/v1/embeddings": "embeddings", "/embeddings": "embeddings",
    }

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self._api: Any = None
        self._api_building: asyncio.Task[Any] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            path = scope["path"]
            if scope["method"] == "POST":
                endpoint = self.HOT.get(path)
                if endpoint is not None:
                    await self.gw.proxy(endpoint, scope, receive, send)
                    return
            elif path in ("/health/live", "/health/liveliness"):  # LiteLLM's probe paths work too
                await _send_json(send, 200, {"status": "ok"})
                return
            elif path in ("/health/ready", "/health/readiness"):
                problems = await self.gw.ready_problems()
                if problems:
                    await _send_json(send, 503, {"status": "not ready", "problems": problems})
                else:
                    await _send_json(send, 200, {"status": "ready", "config": self.gw.config.digest,
                                                 "aliases": list(self.gw.config.aliases)})
                return
        elif kind == "lifespan":
            await self._lifespan(receive, send)
            return
        api = self._api or await self.api()
        await api(scope, receive, send)

    async def api(self) -> Any:
        """The FastAPI app, built on first use (or in the background right after start)."""
        if self._api is None:
            if self._api_building is None:
                self._api_building = asyncio.get_running_loop().create_task(self._build_api())
            self._api = await asyncio.shield(self._api_building)
        return self._api

    async def _build_api(self) -> Any:
        import importlib

        # the imports (most of the cost) run in a thread, so requests keep flowing meanwhile
        module = await asyncio.to_thread(importlib.import_module, "gateway.api")
        return module.create_fastapi(self.gw)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.gw.startup()
                except Exception as exc:  # noqa: BLE001 - reported to the server, which exits
                    await self.gw.shutdown()
                    await send({"type": "lifespan.startup.failed", "message": f"{type(exc).__name__}: {exc}"})
                    return
                self.gw.spawn(self.api())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.gw.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return


async def _send_json(send: Send, status: int, payload: Any) -> None:
    body = orjson.dumps(payload)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def build_gateway(settings: Settings) -> Gateway:
    path = settings.config
    config = load_file(path)
    return Gateway(settings, config, path)


def create_app(settings: Settings | None = None, gateway: Gateway | None = None) -> GatewayASGI:
    settings = settings or Settings()
    gw = gateway or build_gateway(settings)
    return GatewayASGI(gw)
