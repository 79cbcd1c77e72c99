"""vLLM- and dcgm-exporter-named Prometheus series for the simulator, in a private registry.

vLLM series carry `model_name` (a served model name; requests for names not served, accepted
without --strict-models, are counted under the first served name). Gauges are computed at scrape
time from the live load, so the hot path only touches plain integers and a few counters.
DCGM series (`DCGM_FI_DEV_FB_USED`, `DCGM_FI_DEV_FB_FREE` in MiB, `DCGM_FI_DEV_GPU_UTIL` in %)
carry dcgm-exporter's labels `gpu`, `UUID`, `pci_bus_id`, `device`, `modelName`, `Hostname`.
With the engine model (`engine`), running, waiting, KV usage and GPU busy time come from it, and it
registers vLLM's engine series (prefix cache, queue and phase timings) in the same registry.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.simulator.config import GpuInfo

if TYPE_CHECKING:
    from gateway.simulator.engine import SimEngine

TTFT_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    640.0,
    2560.0,
)
E2E_BUCKETS = (
    0.3,
    0.5,
    0.8,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    120.0,
    240.0,
    480.0,
    960.0,
    1920.0,
    7680.0,
)
FINISHED_REASONS = ("stop", "length", "abort", "error", "repetition")  # vLLM 0.32 exports all five
FB_BASE_FRACTION = 0.80  # weights + activations: what vLLM pre-allocates besides the KV cache
FB_KV_FRACTION = 0.10  # KV cache share of the frame buffer, filled in proportion to kv usage


@dataclass
class ModelLoad:
    """Live load of one served model plus its bound metric children."""

    name: str
    ttft: Histogram
    e2e: Histogram
    prompt_tokens: Counter
    generation_tokens: Counter
    success: dict[str, Counter]
    running: int = 0
    waiting: int = 0
    kv_tokens: int = 0


@dataclass
class _Busy:
    """Time with at least one request running: the source of DCGM_FI_DEV_GPU_UTIL."""

    active: int = 0
    since: float = 0.0
    total: float = 0.0
    last_at: float = field(default_factory=time.monotonic)
    last_total: float = 0.0


class SimMetrics:
    def __init__(self, models: Sequence[str], kv_cache_tokens: int, gpus: Sequence[GpuInfo]) -> None:
        self.registry = CollectorRegistry()
        self.kv_cache_tokens = max(1, kv_cache_tokens)
        self.gpus = tuple(gpus)
        labels = ["model_name"]
        ttft = Histogram(
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            labels,
            buckets=TTFT_BUCKETS,
            registry=self.registry,
        )
        e2e = Histogram(
            "vllm:e2e_request_latency_seconds",
            "Histogram of e2e request latency in seconds.",
            labels,
            buckets=E2E_BUCKETS,
            registry=self.registry,
        )
        prompt = Counter(
            "vllm:prompt_tokens", "Number of prefill tokens processed.", labels, registry=self.registry
        )
        generation = Counter(
            "vllm:generation_tokens", "Number of generation tokens processed.", labels, registry=self.registry
        )
        success = Counter(
            "vllm:request_success",
            "Count of successfully processed requests.",
            ["model_name", "finished_reason"],
            registry=self.registry,
        )
        self.models: dict[str, ModelLoad] = {
            name: ModelLoad(
                name=name,
                ttft=ttft.labels(name),
                e2e=e2e.labels(name),
                prompt_tokens=prompt.labels(name),
                generation_tokens=generation.labels(name),
                success={r: success.labels(name, r) for r in FINISHED_REASONS},
            )
            for name in models
        }
        self.default = self.models[models[0]]
        self._busy = _Busy()
        self.engine: SimEngine | None = None  # with the engine model: running, waiting, KV and busy time from it
        self.registry.register(_LoadCollector(self))
        ProcessCollector(registry=self.registry)

    def model(self, name: str) -> ModelLoad:
        return self.models.get(name, self.default)

    # Request lifecycle: enqueue -> start -> (first token) -> stop.
    def start(self, load: ModelLoad, kv_tokens: int, prompt_tokens: int) -> None:
        load.running += 1
        load.kv_tokens += kv_tokens
        load.prompt_tokens.inc(prompt_tokens)
        busy = self._busy
        if busy.active == 0:
            busy.since = time.monotonic()
        busy.active += 1

    def stop(self, load: ModelLoad, kv_tokens: int) -> None:
        load.running -= 1
        load.kv_tokens -= kv_tokens
        busy = self._busy
        busy.active -= 1
        if busy.active == 0:
            busy.total += time.monotonic() - busy.since

    def kv_usage(self) -> float:
        if self.engine is not None:
            return self.engine.kv_usage()
        used = sum(m.kv_tokens for m in self.models.values())
        return min(1.0, used / self.kv_cache_tokens)

    def gpu_util(self) -> float:
        """Percent of wall time with a request running since the previous scrape."""
        busy = self._busy
        now = time.monotonic()
        if self.engine is not None:
            total = self.engine.busy_seconds()
        else:
            total = busy.total + (now - busy.since if busy.active else 0.0)
        elapsed = now - busy.last_at
        util = 100.0 * (total - busy.last_total) / elapsed if elapsed > 0 else 0.0
        busy.last_at, busy.last_total = now, total
        return max(0.0, min(100.0, util))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _LoadCollector(Collector):
    """Gauges computed from the live load at scrape time."""

    def __init__(self, metrics: SimMetrics) -> None:
        self.metrics = metrics

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        m = self.metrics
        running = GaugeMetricFamily(
            "vllm:num_requests_running",
            "Number of requests in model execution batches.",
            labels=["model_name"],
        )
        waiting = GaugeMetricFamily(
            "vllm:num_requests_waiting", "Number of requests waiting to be processed.", labels=["model_name"]
        )
        kv = GaugeMetricFamily(
            "vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", labels=["model_name"]
        )
        gpu_cache = GaugeMetricFamily(
            "vllm:gpu_cache_usage_perc",
            "GPU KV-cache usage. 1 means 100 percent usage (deprecated name).",
            labels=["model_name"],
        )
        usage = m.kv_usage()
        counts = m.engine.counts() if m.engine is not None else None
        for load in m.models.values():
            r, w = (load.running, load.waiting) if counts is None else counts.get(load.name, (0, 0))
            running.add_metric([load.name], r)
            waiting.add_metric([load.name], w)
            kv.add_metric([load.name], usage)
            gpu_cache.add_metric([load.name], usage)
        yield from (running, waiting, kv, gpu_cache)
        if not m.gpus:
            return
        gpu_labels = ["gpu", "UUID", "pci_bus_id", "device", "modelName", "Hostname"]
        fb_used = GaugeMetricFamily(
            "DCGM_FI_DEV_FB_USED", "Framebuffer memory used (in MiB).", labels=gpu_labels
        )
        fb_free = GaugeMetricFamily(
            "DCGM_FI_DEV_FB_FREE", "Framebuffer memory free (in MiB).", labels=gpu_labels
        )
        util = GaugeMetricFamily("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %).", labels=gpu_labels)
        gpu_util = round(m.gpu_util())
        for gpu in m.gpus:
            values = [
                str(gpu.index),
                gpu.uuid,
                f"00000000:{gpu.index + 0x17:02X}:00.0",
                f"nvidia{gpu.index}",
                gpu.model_name,
                gpu.hostname,
            ]
            used = round(gpu.memory_mib * (FB_BASE_FRACTION + FB_KV_FRACTION * usage))
            fb_used.add_metric(values, used)
            fb_free.add_metric(values, gpu.memory_mib - used)
            util.add_metric(values, gpu_util)
        yield from (fb_used, fb_free, util)
