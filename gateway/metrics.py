"""Prometheus series of design.md §4, owned by one `Metrics` object per process.

With several workers, prometheus-client's multiprocess mode is used (PROMETHEUS_MULTIPROC_DIR is set
by `gateway serve` before any worker imports prometheus_client); `/metrics` then aggregates the
files of every worker. Per request the hot path does a few counter increments, nothing more.

Gauges that describe the configuration or the process (GPU cost and health of each deployment, Redis
up, limits degraded) are not stored anywhere: `LiveGauges` computes them at scrape time from the
current state of the worker that answers the scrape. A deployment removed from router.yaml, or a
worker that died while Redis was down, leaves no series behind (multiprocess gauges cannot be removed).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

from gateway.config import Deployment
from gateway.engine import EngineLoad

TOKEN_LABELS = ("alias", "model", "deployment", "team", "key", "estimated", "shadow")
COMPARE_LABELS = ("alias", "shadow_alias", "side")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
TTFT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
ITL_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.15, 0.3, 0.6, 1.2, 2.5)
AGREEMENT_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)

UNKNOWN_ALIAS = "(unknown)"


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


@dataclass(slots=True)
class LiveState:
    """What the scrape-time gauges show, read from the gateway's current state."""

    deployments: Sequence[tuple[Deployment, bool]] = ()  # each deployment of the config, may the router send to it
    redis_up: dict[str, bool] = field(default_factory=dict)  # "cache" / "state": only the stores configured
    limits_mode: str = "open"                             # GATEWAY_LIMITS_FAIL_MODE
    limits_degraded: bool = False                         # the state Redis is configured and unreachable
    engines: Sequence[tuple[Deployment, EngineLoad]] = ()  # engine load as the router last read it
    canaries: Sequence[tuple[str, str, float]] = ()  # (alias, canary alias, percent of the alias's traffic now)


GPU_COST_DOC = "gpu_hourly_cost_usd x gpu_count of a self-hosted deployment"
HEALTHY_DOC = "1 when the router may send to the deployment"
REDIS_UP_DOC = "1 when the shared store answers"
DEGRADED_DOC = ("1 while the state Redis is unreachable (keys from the in-process cache; limits fail open or "
                "closed per fail_mode)")


class LiveGauges:
    """A collector computing the config and process gauges at scrape time (nothing stored, nothing to remove)."""

    def __init__(self, source: Callable[[], LiveState]) -> None:
        self.source = source

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, ...]:
        return (GaugeMetricFamily("oss_deployment_gpu_cost_usd_per_hour", GPU_COST_DOC,
                                  labels=("alias", "model", "deployment")),
                GaugeMetricFamily("oss_deployment_healthy", HEALTHY_DOC, labels=("alias", "deployment")),
                GaugeMetricFamily("oss_redis_up", REDIS_UP_DOC, labels=("store",)),
                GaugeMetricFamily("oss_limits_degraded", DEGRADED_DOC, labels=("fail_mode",)),
                GaugeMetricFamily("oss_engine_requests_running", "Requests running in the engine, as the router "
                                  "last read its /metrics", labels=("alias", "deployment")),
                GaugeMetricFamily("oss_engine_requests_waiting", "Requests waiting in the engine's queue, as the "
                                  "router last read its /metrics", labels=("alias", "deployment")),
                GaugeMetricFamily("oss_engine_kv_cache_usage", "KV-cache usage of the engine (0-1), as the router "
                                  "last read its /metrics", labels=("alias", "deployment")),
                GaugeMetricFamily("oss_canary_percent", "Share (0-100) of the alias's requests sent to its canary "
                                  "alias now (router_settings.canary)", labels=("alias", "to")))

    def describe(self) -> Iterator[Metric]:
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        state = self.source()
        gpu, healthy, redis_up, degraded, running, waiting, kv, canary = self._families()
        for dep, up in state.deployments:
            cost = dep.gpu_cost_per_hour
            if cost is not None:
                gpu.add_metric((dep.alias, dep.served_model, dep.id), cost)
            healthy.add_metric((dep.alias, dep.id), 1 if up else 0)
        for store, up in sorted(state.redis_up.items()):
            redis_up.add_metric((store,), 1 if up else 0)
        degraded.add_metric((state.limits_mode,), 1 if state.limits_degraded else 0)
        for dep, load in state.engines:
            running.add_metric((dep.alias, dep.id), load.running)
            waiting.add_metric((dep.alias, dep.id), load.waiting)
            kv.add_metric((dep.alias, dep.id), load.kv_usage)
        for alias, to, pct in state.canaries:
            canary.add_metric((alias, to), pct)
        return iter((gpu, healthy, redis_up, degraded, running, waiting, kv, canary))


class _CurrentDeployments:
    """The multiprocess files, minus idle in-flight series of deployments no longer in the config."""

    def __init__(self, inner: MultiProcessCollector, current: Callable[[], set[tuple[str, str]]]) -> None:
        self.inner = inner
        self.current = current

    def collect(self) -> Iterator[Metric]:
        keep = self.current()
        for family in self.inner.collect():
            if family.name == "oss_in_flight_requests":
                family.samples = [s for s in family.samples
                                  if s.value or (s.labels.get("alias"), s.labels.get("deployment")) in keep]
            yield family


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.multiprocess = multiprocess_dir() is not None
        r = self.registry

        self.prompt_tokens = Counter("oss_prompt_tokens", "Prompt tokens served by upstreams", TOKEN_LABELS,
                                     registry=r)
        self.completion_tokens = Counter("oss_completion_tokens", "Completion tokens served by upstreams",
                                         TOKEN_LABELS, registry=r)
        self.token_cost = Counter("oss_token_cost_usd", "USD cost of the tokens served, at list price",
                                  TOKEN_LABELS, registry=r)
        self.requests = Counter("oss_requests", "Requests by status class and cache result",
                                ("alias", "status_class", "cache", "team", "key"), registry=r)
        self.duration = Histogram("oss_request_duration_seconds", "Whole request as the client saw it",
                                  ("alias", "deployment", "stream"), buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("oss_time_to_first_token_seconds", "Streaming: time to the first token",
                              ("alias", "deployment"), buckets=TTFT_BUCKETS, registry=r)
        self.itl = Histogram("oss_inter_token_latency_seconds", "Streaming: mean time between chunks of a request",
                             ("alias", "deployment"), buckets=ITL_BUCKETS, registry=r)
        self.overhead = Histogram("oss_gateway_overhead_seconds", "Time spent in the gateway itself",
                                  ("alias",), buckets=OVERHEAD_BUCKETS, registry=r)
        self.cache_saved = Counter("oss_cache_saved_usd", "List-price cost of the upstream calls the cache answered",
                                   ("alias", "model", "team", "key"), registry=r)
        self.in_flight = Gauge("oss_in_flight_requests", "Requests in flight", ("alias", "deployment"), registry=r,
                               multiprocess_mode="livesum")
        self.retries = Counter("oss_retries", "Upstream attempts retried on another deployment",
                               ("alias", "deployment", "reason"), registry=r)
        self.fallbacks = Counter("oss_fallbacks", "Requests moved to another alias",
                                 ("from_alias", "to_alias", "reason"), registry=r)
        self.cooldowns = Counter("oss_deployment_cooldowns", "Times a deployment was put in cooldown",
                                 ("alias", "deployment"), registry=r)
        self.reloads = Counter("oss_config_reloads", "Config reloads by result", ("result",), registry=r)
        self.cache_errors = Counter("oss_cache_errors", "Cache operations that failed", ("op",), registry=r)
        self.routing_decisions = Counter("oss_routing_decisions", "Deployments picked, by strategy and reason",
                                         ("alias", "strategy", "reason"), registry=r)
        # shadow traffic and model comparison (gateway/rollout)
        self.shadow_requests = Counter("oss_shadow_requests", "Shadow calls by result (ok, error, dropped: the "
                                       "shadow was saturated or had no deployment free)",
                                       ("alias", "shadow_alias", "result"), registry=r)
        self.compare_duration = Histogram("oss_compare_duration_seconds", "Mirrored requests: the whole call on "
                                          "each side", COMPARE_LABELS, buckets=LATENCY_BUCKETS, registry=r)
        self.compare_ttft = Histogram("oss_compare_ttft_seconds", "Mirrored streamed requests: time to first "
                                      "token on each side", COMPARE_LABELS, buckets=TTFT_BUCKETS, registry=r)
        self.compare_prompt = Counter("oss_compare_prompt_tokens", "Mirrored requests: prompt tokens on each side",
                                      COMPARE_LABELS, registry=r)
        self.compare_completion = Counter("oss_compare_completion_tokens", "Mirrored requests: completion tokens "
                                          "on each side", COMPARE_LABELS, registry=r)
        self.compare_cost = Counter("oss_compare_cost_usd", "Mirrored requests: list-price cost on each side",
                                    COMPARE_LABELS, registry=r)
        self.compare_errors = Counter("oss_compare_errors", "Mirrored requests that failed on a side",
                                      COMPARE_LABELS, registry=r)
        self.compare_agreement = Histogram("oss_compare_agreement", "How far the two answers agree (0-1), by "
                                           "how it was judged", ("alias", "shadow_alias", "method"),
                                           buckets=AGREEMENT_BUCKETS, registry=r)
        self.canary_steps = Counter("oss_canary_steps", "Canary rollout transitions (start, advance, abort, "
                                    "complete, restart)", ("alias", "to", "action"), registry=r)
        self.reloads.labels("ok")
        self.reloads.labels("rejected")
        # labelled children by label values: prometheus-client's labels() validates on every call,
        # a dict lookup is a tenth of that (cleared when the config changes)
        self._children: dict[tuple[Any, ...], Any] = {}
        # oss_deployment_gpu_cost_usd_per_hour, oss_deployment_healthy, oss_redis_up, oss_limits_degraded
        self.live = LiveGauges(LiveState)
        self.registry.register(self.live)
        self._deployments: set[tuple[str, str]] = set()
        self._scrape_collectors: list[Any] = []  # others computed at scrape time (oss_cache_entries)

    def add_collector(self, collector: Any) -> None:
        """A collector computed at scrape time in this process (not through the multiprocess files)."""
        self._scrape_collectors.append(collector)
        if not self.multiprocess:
            self.registry.register(collector)

    def child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        c = self._children.get(key)
        if c is None:
            c = self._children[key] = metric.labels(*labels)
        return c

    # -- recording helpers (each a few increments) ---------------------------------------------------

    def record_tokens(self, dep: Deployment, prompt: int, completion: int, team: str, key: str,
                      estimated: bool, shadow: bool = False) -> float:
        flag = "true" if estimated else "false"
        key3 = ("tokens", dep.id, team, key, flag, shadow)
        children = self._children.get(key3)
        if children is None:
            labels = (dep.alias, dep.served_model, dep.id, team, key, flag, "true" if shadow else "false")
            children = self._children[key3] = (self.prompt_tokens.labels(*labels),
                                                self.completion_tokens.labels(*labels),
                                                self.token_cost.labels(*labels))
        cost = dep.cost(prompt, completion)
        children[0].inc(prompt)
        children[1].inc(completion)
        children[2].inc(cost)
        return cost

    def record_comparison(self, c: Any) -> None:
        """Both sides of a mirrored request (a gateway.rollout.records.Comparison), off the request path."""
        shadow_alias = c.shadow.alias
        for side, s in (("primary", c.primary), ("shadow", c.shadow)):
            labels = (c.primary.alias, shadow_alias, side)
            if s.error is not None:
                self.compare_errors.labels(*labels).inc()
            if s.status:
                self.compare_duration.labels(*labels).observe(s.latency_s)
            if s.ttft_s is not None:
                self.compare_ttft.labels(*labels).observe(s.ttft_s)
            self.compare_prompt.labels(*labels).inc(s.prompt_tokens)
            self.compare_completion.labels(*labels).inc(s.completion_tokens)
            self.compare_cost.labels(*labels).inc(s.cost_usd)
        if c.agreement is not None and c.method is not None:
            self.compare_agreement.labels(c.primary.alias, shadow_alias, c.method).observe(c.agreement)

    def publish_deployments(self, deployments: Iterable[Deployment]) -> None:
        """A (re)loaded config: in-flight series for its deployments, none for removed ones."""
        current = {(d.alias, d.id) for d in deployments}
        self._children.clear()
        if not self.multiprocess:  # (in multiprocess mode render() leaves the removed ones out)
            for labels in self._deployments - current:
                try:
                    self.in_flight.remove(*labels)
                except KeyError:
                    pass
        self._deployments = current
        for alias, dep_id in current:
            self.in_flight.labels(alias, dep_id).inc(0)

    def render(self) -> bytes:
        if self.multiprocess:
            registry = CollectorRegistry()
            registry.register(_CurrentDeployments(MultiProcessCollector(None), lambda: self._deployments))
            registry.register(self.live)
            for collector in self._scrape_collectors:
                registry.register(collector)
            return generate_latest(registry)
        return generate_latest(self.registry)
