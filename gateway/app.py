"""The app factory: one `Gateway` per worker process, and all the wiring in one place.

`Gateway` builds the worker's collaborators (router state, metrics, upstreams, keys, cache, accounting,
the proxy) and hands each what it uses; it owns the current config, hot reload, health checks and
background tasks. `create_app` puts the raw-ASGI hot path in front of a FastAPI app that serves
everything else (health detail, models, metrics, admin) and the OpenAPI spec.
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
from urllib.parse import urlsplit

from gateway.accounting import Accounting
from gateway.asgi import Receive, Scope, Send
from gateway.config import ConfigError, Deployment, GatewayConfig, load_file, load_text
from gateway.endpoints import BY_PATH
from gateway.engine import EngineMonitor, EngineTarget, metrics_url
from gateway.followups import FollowUps
from gateway.health import HealthChecker
from gateway.keys import KeyService
from gateway.metrics import LiveState, Metrics
from gateway.proxy import Proxy
from gateway.reload import ConfigWatcher
from gateway.responses import json_response
from gateway.rollout.canary import Canaries, CanaryStore, LocalCanaryStore, RedisCanaryStore
from gateway.rollout.comparisons import ComparisonLog
from gateway.rollout.shadow import Shadows
from gateway.rollout.traffic import Rollout
from gateway.router import RouterState
from gateway.settings import Settings
from gateway.tokens import TokenCounter
from gateway.upstreams import Upstreams

log = logging.getLogger("gateway")

class Gateway:
    """One worker's gateway: config, routing state, clients and background tasks."""

    def __init__(self, settings: Settings, config: GatewayConfig, config_path: Path | None = None) -> None:
        self.settings = settings
        self.config = config
        self.config_path = config_path
        self.metrics = Metrics()
        self.router = RouterState()
        self.upstreams = Upstreams(settings.upstream_connections)
        self.tokens = TokenCounter(self.upstreams.native.post_json)
        self.cache: Any = self._build_cache(config)
        # virtual keys, limits, spend ledger (gateway/keys)
        self.keys = KeyService(settings, self.metrics, lambda: self.config, lambda: self.master_key, self.spawn)
        serving = None
        if self.cache is not None:  # the cache's modules load only when it is on
            from gateway.cache.serving import CacheService

            serving = CacheService(self.cache, self.metrics, lambda: self.config, self.spawn)
        self.accounting = Accounting(self.router, self.metrics, self.keys, self.tokens, self.spawn, serving)
        self.followups = FollowUps(settings.state_redis_url or settings.redis_url, settings.state_key_prefix)
        # shadow traffic, canaries, comparison records (gateway/rollout): state in the shared store
        state_url = settings.state_redis_url or settings.redis_url
        self._rollout_redis: Any = None
        if state_url:
            import redis.asyncio as aioredis

            self._rollout_redis = aioredis.from_url(state_url, socket_timeout=settings.state_redis_timeout,
                                                    socket_connect_timeout=settings.state_redis_timeout)
        store: CanaryStore = (RedisCanaryStore(self._rollout_redis, settings.state_key_prefix)
                              if self._rollout_redis is not None else LocalCanaryStore())
        self.comparisons = ComparisonLog(self._rollout_redis, settings.state_key_prefix, settings.comparison_records)
        self.canaries = Canaries(lambda: self.config.router.canary, store,
                                 lambda alias, to, action: self.metrics.canary_steps.labels(alias, to, action).inc(),
                                 tick=settings.canary_tick)
        self.shadows = Shadows(self.router, self.upstreams, self.metrics, self.comparisons, self.spawn,
                               self._agreement_embedder())
        self.proxy = Proxy(lambda: self.config, settings, self.keys, self.router, self.upstreams, self.accounting,
                           serving, self.metrics, self.followups, Rollout(self.shadows, self.canaries))
        self.engines = EngineMonitor(self.upstreams.native.get_text, self._engine_targets,
                                     lambda dep_id: self.router.states[dep_id].in_flight
                                     if dep_id in self.router.states else 0,
                                     interval=config.router.engine_aware.poll_interval)
        self.router.engine_load = self.engines.load
        self.watcher = (ConfigWatcher(config_path, settings.reload_interval, self.reload_text)
                        if config_path is not None else None)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loops: list[asyncio.Task[Any]] = []
        self.started_at = time.time()
        self.metrics.live.source = self.live_state
        self._apply(config)

    # -- lifecycle -----------------------------------------------------------------------------------

    async def startup(self) -> None:
        await self.upstreams.start()
        await self.followups.start()
        await self.keys.start()
        if self.cache is not None:
            probe = getattr(self.cache.embedder, "probe", None) if self.cache.semantic else None
            if probe is not None:
                await probe()  # an embeddings alias: the vector size, before the index is built
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
        health = HealthChecker(self.upstreams.native, lambda: self.config, self.settings.health_check_interval,
                               self.settings.health_check_timeout, self._on_health)
        self._loops.append(asyncio.create_task(health.run(), name="health-checks"))
        self._loops.append(asyncio.create_task(self.engines.run(), name="engine-metrics"))
        self._loops.append(asyncio.create_task(self.canaries.run(), name="canaries"))
        if self.watcher is not None:
            self._loops.append(asyncio.create_task(self.watcher.run(), name="config-watcher"))
        try:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.reload_file)
        except (NotImplementedError, RuntimeError, ValueError):
            pass
        # `gateway serve` blocks SIGHUP until here (a reload signal must not kill a starting process);
        # one that arrived meanwhile is delivered now and reloads
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
        log.info("gateway ready: %d aliases, %d deployments (pid %d)", len(self.config.aliases),
                 len(self.config.deployments), os.getpid())

    async def shutdown(self) -> None:
        for task in self._loops:
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        await self.keys.close()
        await self.upstreams.close()
        await self.followups.close()
        if self._rollout_redis is not None:
            await self._rollout_redis.aclose()
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
            embedder = AliasEmbedder(lambda: self.config, self.router, self.upstreams.native, alias,
                                     int(dim) if isinstance(dim, int) else None)
        # several workers: the replica's cache process (started by the supervisor) holds model and index
        remote = os.environ.get(SOCKET_ENV) or None if self.settings.workers > 1 else None
        cache = ResponseCache(settings, embedder=embedder, remote=remote)
        cache.on_error = lambda kind, _exc: self.metrics.cache_errors.labels(kind).inc()
        self.metrics.add_collector(CacheEntriesCollector(cache))
        return cache

    def _agreement_embedder(self) -> Any:
        """How shadow comparisons embed long answers: with the semantic cache's embedder, in this process or in
        the replica's cache process (several workers); without a semantic cache agreement falls back to word
        overlap (nothing is loaded for it)."""
        cache = self.cache
        if cache is None or not cache.semantic:
            return None

        async def embed(texts: list[str]) -> Any:
            import numpy as np

            if cache.sem is None:
                raise RuntimeError("the cache has not started")
            rows = [np.frombuffer(await cache.sem.embed(t), dtype="<f2").astype(np.float32) for t in texts]
            vectors = np.vstack(rows)
            return vectors / (np.linalg.norm(vectors, axis=1, keepdims=True) + 1e-12)

        return embed

    def _engine_targets(self) -> list[EngineTarget]:
        """The deployments whose engine metrics the router reads: every native one under engine-aware."""
        config = self.config
        if config.router.routing_strategy != "engine-aware":
            return []
        return [EngineTarget(d.id, d.served_model, metrics_url(d.api_base), d.api_key)
                for d in config.deployments if d.native and d.api_base and d.mode != "embedding"]

    def _apply(self, new: GatewayConfig) -> None:
        self.router.sync(new.deployments)
        self.router.configure(new.router)
        self.engines.interval = new.router.engine_aware.poll_interval
        self.metrics.publish_deployments(new.deployments)
        self.config = new  # one reference swap: requests in flight keep the snapshot they started with

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
        self._apply(new)
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

    # -- health --------------------------------------------------------------------------------------

    def _on_health(self, dep: Deployment, healthy: bool, error: str | None) -> None:
        if self.router.set_health(dep, healthy, error):
            if healthy:
                log.info("deployment %s of %s is healthy again", dep.id, dep.alias)
            else:
                log.warning("deployment %s of %s failed its health check (%s): taken out of routing",
                            dep.id, dep.alias, error)

    def live_state(self) -> LiveState:
        """The scrape-time gauges (oss_deployment_healthy, oss_deployment_gpu_cost_usd_per_hour, oss_redis_up,
        oss_limits_degraded), from the current config and this process's view of the deployments and Redis."""
        now = self.router.clock()
        deployments = []
        for d in self.config.deployments:
            st = self.router.state(d)
            deployments.append((d, st.healthy and st.cooldown_until <= now))
        loads = self.engines.loads()
        engines = [(d, loads[d.id]) for d in self.config.deployments if d.id in loads]
        canaries = [(alias, opts.to, self.canaries.percent.get(alias, 0.0))
                    for alias, opts in self.config.router.canary.items()]
        return LiveState(deployments, {name: up for name, up, _ in self.redis_stores()}, self.keys.mode,
                         not self.keys.store.up, engines, canaries)

    def redis_stores(self) -> list[tuple[str, bool, str]]:
        """(store, up, where) for each Redis configured: "cache" (responses) and "state" (keys, spend, limits)."""
        out: list[tuple[str, bool, str]] = []
        if self.cache is not None and self.cache.backend == "redis":
            out.append(("cache", bool(self.cache.redis_up), redis_where(self.cache.settings.redis_url)))
        if self.keys.store.backend == "redis":
            out.append(("state", self.keys.store.up, self.keys.store.where))
        return out

    def readiness(self) -> tuple[list[str], list[str]]:
        """(problems, degraded). Ready means able to serve: a config with routes is loaded. Nothing that every
        replica shares may take a replica out of the load balancer — neither one dead GPU nor a Redis outage
        (the cache is bypassed, keys and limits run degraded) — so those are reported as degraded, not as
        problems. No addresses here: the endpoint is open (the detail is in /health/deployments)."""
        problems = [] if self.config.aliases else ["no routes loaded"]
        degraded: list[str] = []
        for store, up, _ in self.redis_stores():
            if up:
                continue
            if store == "cache":
                degraded.append("cache Redis unreachable: requests bypass the cache")
            else:
                degraded.append(f"state Redis unreachable: recently verified keys work from the in-process cache, "
                                f"limits fail {self.keys.mode}, spend waits in memory")
        return problems, degraded


FOLLOW_UP_PREFIX = "/v1/responses/"  # GET / DELETE a stored Response, routed to the deployment that holds it


class GatewayASGI:
    """Raw-ASGI front: the lifespan, `/health/live` and `/health/ready`, and every endpoint of the registry
    (gateway/endpoints) are served here directly; everything else goes to a FastAPI app that is built once
    the gateway is ready (its import is the slowest part of a start, and nothing on the hot path needs it)."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self._api: Any = None
        self._api_building: asyncio.Task[Any] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            path = scope["path"]
            if scope["method"] == "POST":
                endpoint = BY_PATH.get(path)
                if endpoint is not None:
                    await self.gw.proxy(endpoint, scope, receive, send)
                    return
            elif path.startswith(FOLLOW_UP_PREFIX) and scope["method"] in ("GET", "DELETE"):
                await self.gw.proxy.stored_response(scope, send, path[len(FOLLOW_UP_PREFIX):])
                return
            elif path in ("/health/live", "/health/liveliness"):  # LiteLLM's probe paths work too
                await json_response({"status": "ok"}).send_to(send)
                return
            elif path in ("/health/ready", "/health/readiness"):
                problems, degraded = self.gw.readiness()
                if problems:
                    await json_response({"status": "not ready", "problems": problems, "degraded": degraded},
                                        503).send_to(send)
                else:
                    await json_response({"status": "degraded" if degraded else "ready", "degraded": degraded,
                                         "config": self.gw.config.digest,
                                         "aliases": list(self.gw.config.aliases)}).send_to(send)
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

        # the imports and the build (60-100 ms of CPU) run in a thread, so streams keep flowing meanwhile
        module = await asyncio.to_thread(importlib.import_module, "gateway.api")
        return await asyncio.to_thread(module.create_fastapi, self.gw)

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


def redis_where(url: str | None) -> str:
    """host:port/db of a Redis URL, never its password."""
    u = urlsplit(url or "")
    if u.scheme == "unix":
        return u.path
    return f"{u.hostname or '127.0.0.1'}:{u.port or 6379}/{u.path.strip('/') or '0'}"


def build_gateway(settings: Settings) -> Gateway:
    path = settings.config
    config = load_file(path)
    return Gateway(settings, config, path)


def create_app(settings: Settings | None = None, gateway: Gateway | None = None) -> GatewayASGI:
    settings = settings or Settings()
    gw = gateway or build_gateway(settings)
    return GatewayASGI(gw)
