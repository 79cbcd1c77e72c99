"""Prometheus series of design.md §4, owned by one `Metrics` object per process.

With several workers, prometheus-client's multiprocess mode is used (PROMETHEUS_MULTIPROC_DIR is set
by `gateway serve` before any worker imports prometheus_client); `/metrics` then aggregates the
files of every worker. Per request the hot path does a few counter increments, nothing more.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from gateway.config import Deployment

TOKEN_LABELS = ("alias", "model", "deployment", "team", "key", "estimated")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
TTFT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
ITL_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.15, 0.3, 0.6, 1.2, 2.5)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)

UNKNOWN_ALIAS = "(unknown)"


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.multiprocess = multiprocess_dir() is not None
        r = self.registry

        def gauge(name: str, doc: str, labels: Iterable[str], mode: str) -> Gauge:
            return Gauge(name, doc, list(labels), registry=r, multiprocess_mode=mode)

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
        self.gpu_cost = gauge("oss_deployment_gpu_cost_usd_per_hour",
                              "gpu_hourly_cost_usd x gpu_count of a self-hosted deployment",
                              ("alias", "model", "deployment"), "mostrecent")
        self.in_flight = gauge("oss_in_flight_requests", "Requests in flight", ("alias", "deployment"), "livesum")
        self.retries = Counter("oss_retries", "Upstream attempts retried on another deployment",
                               ("alias", "deployment", "reason"), registry=r)
        self.fallbacks = Counter("oss_fallbacks", "Requests moved to another alias",
                                 ("from_alias", "to_alias", "reason"), registry=r)
        self.healthy = gauge("oss_deployment_healthy", "1 when the router may send to the deployment",
                             ("alias", "deployment"), "mostrecent")
        self.cooldowns = Counter("oss_deployment_cooldowns", "Times a deployment was put in cooldown",
                                 ("alias", "deployment"), registry=r)
        self.reloads = Counter("oss_config_reloads", "Config reloads by result", ("result",), registry=r)
        # labelled by store ("cache", "state"): no series at all when no Redis is configured
        self.redis_up = gauge("oss_redis_up", "1 when the shared store answers", ("store",), "mostrecent")
        self.cache_errors = Counter("oss_cache_errors", "Cache operations that failed", ("op",), registry=r)
        self.reloads.labels("ok")
        self.reloads.labels("rejected")
        # labelled children by label values: prometheus-client's labels() validates on every call,
        # a dict lookup is a tenth of that (cleared when the config changes)
        self._children: dict[tuple[Any, ...], Any] = {}
        self._scrape_collectors: list[Any] = []

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
                      estimated: bool) -> float:
        flag = "true" if estimated else "false"
        key3 = ("tokens", dep.id, team, key, flag)
        children = self._children.get(key3)
        if children is None:
            labels = (dep.alias, dep.served_model, dep.id, team, key, flag)
            children = self._children[key3] = (self.prompt_tokens.labels(*labels),
                                                self.completion_tokens.labels(*labels),
                                                self.token_cost.labels(*labels))
        cost = dep.cost(prompt, completion)
        children[0].inc(prompt)
        children[1].inc(completion)
        children[2].inc(cost)
        return cost

    def publish_deployments(self, deployments: Iterable[Deployment], previous: Iterable[Deployment] = ()) -> None:
        """Set the per-deployment gauges for a (re)loaded config; drop series of removed deployments."""
        current = {d.id: d for d in deployments}
        self._children.clear()
        for d in previous:
            if d.id not in current:
                for g, labels in ((self.gpu_cost, (d.alias, d.served_model, d.id)),
                                  (self.healthy, (d.alias, d.id)), (self.in_flight, (d.alias, d.id))):
                    try:
                        g.remove(*labels)
                    except KeyError:
                        pass
        for d in current.values():
            cost = d.gpu_cost_per_hour
            if cost is not None:
                self.gpu_cost.labels(d.alias, d.served_model, d.id).set(cost)
            self.in_flight.labels(d.alias, d.id).inc(0)

    def render(self) -> bytes:
        if self.multiprocess:
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            for collector in self._scrape_collectors:
                registry.register(collector)
            return generate_latest(registry)
        return generate_latest(self.registry)
