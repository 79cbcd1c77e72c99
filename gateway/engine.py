"""What each vLLM engine is doing, as the router sees it: requests running and waiting in its queue and
its KV-cache usage, read from the engine's own Prometheus `/metrics` off the hot path.

`EngineMonitor.run()` polls every native deployment every `interval` seconds (concurrently, each poll
bounded by the interval); `load(dep)` answers from memory. A deployment whose `/metrics` does not
answer with vLLM's series is polled again only every `retry_after` seconds and has no load (the
strategy then falls back to the gateway's own in-flight count); a reading older than `stale_after`
intervals counts as none.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

log = logging.getLogger("gateway.engine")

RUNNING = ("vllm:num_requests_running",)
WAITING = ("vllm:num_requests_waiting",)
KV_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")  # the second: vLLM before 0.10


@dataclass(frozen=True, slots=True)
class EngineLoad:
    running: float
    waiting: float
    kv_usage: float  # 0..1
    at: float  # monotonic time of the reading
    in_flight_at: int  # the gateway's own in-flight count for the deployment when it was read


def _value(line: str) -> float | None:
    try:
        return float(line.rsplit(" ", 1)[1])
    except (IndexError, ValueError):
        return None


def parse_vllm_metrics(text: str, model: str | None = None) -> tuple[float, float, float] | None:
    """(running, waiting, kv usage) summed over the engine's series for `model` (every model when None
    or when no series names it); None when the text has none of vLLM's series."""
    sums: dict[str, float] = {}
    any_for_model: dict[str, float] = {}
    found = False
    for line in text.splitlines():
        if not line.startswith("vllm:"):
            continue
        name, _, rest = line.partition("{")
        if not rest:
            name = line.split(" ", 1)[0]
        if name in RUNNING:
            key = "running"
        elif name in WAITING:
            key = "waiting"
        elif name in KV_USAGE:
            key = "kv"
        else:
            continue
        v = _value(line)
        if v is None:
            continue
        found = True
        sums[key] = sums.get(key, 0.0) + v if key != "kv" else max(sums.get(key, 0.0), v)
        if model is not None and f'model_name="{model}"' in rest:
            any_for_model[key] = any_for_model.get(key, 0.0) + v if key != "kv" else \
                max(any_for_model.get(key, 0.0), v)
    if not found:
        return None
    src = any_for_model if any_for_model else sums
    return src.get("running", 0.0), src.get("waiting", 0.0), min(1.0, max(0.0, src.get("kv", 0.0)))


@dataclass(frozen=True, slots=True)
class EngineTarget:
    """One deployment to poll: its id, the served model and the engine's metrics URL."""

    id: str
    model: str
    url: str
    api_key: str | None


def metrics_url(api_base: str) -> str:
    root = api_base.rstrip("/")
    return (root[:-3] if root.endswith("/v1") else root) + "/metrics"


class EngineMonitor:
    def __init__(self, fetch_text: Callable[[str, float, str | None], Awaitable[str]],
                 targets: Callable[[], Iterable[EngineTarget]], in_flight: Callable[[str], int],
                 interval: float = 0.25, retry_after: float = 10.0, stale_after: float = 8.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._fetch = fetch_text
        self._targets = targets
        self._in_flight = in_flight
        self.interval = interval
        self.retry_after = retry_after
        self.stale_after = stale_after
        self._clock = clock
        self._loads: dict[str, EngineLoad] = {}
        self._not_before: dict[str, float] = {}  # deployments without engine metrics: next try
        self._named: set[str] = set()  # deployments already named in the log as having no metrics

    def load(self, dep_id: str) -> EngineLoad | None:
        e = self._loads.get(dep_id)
        if e is None or self._clock() - e.at > self.stale_after * self.interval:
            return None
        return e

    def loads(self) -> dict[str, EngineLoad]:
        """Fresh readings by deployment id (for metrics and /health/deployments)."""
        return {k: v for k in list(self._loads) if (v := self.load(k)) is not None}

    async def poll_once(self) -> None:
        now = self._clock()
        targets = [t for t in self._targets() if self._not_before.get(t.id, 0.0) <= now]
        known = {t.id for t in self._targets()}
        for gone in [k for k in self._loads if k not in known]:
            del self._loads[gone]
        if targets:
            await asyncio.gather(*(self._poll(t) for t in targets))

    async def _poll(self, t: EngineTarget) -> None:
        before = self._in_flight(t.id)
        try:
            text = await self._fetch(t.url, max(1.0, self.interval * 2), t.api_key)
        except Exception as exc:  # noqa: BLE001
            if isinstance(exc, TimeoutError | OSError | ConnectionError) or "Timeout" in type(exc).__name__ \
                    or getattr(exc, "kind", "") in ("timeout", "connect", "drop"):
                # a busy engine answers its /metrics slowly: keep the last reading until it goes stale and
                # try again at the next poll (forgetting it would make a saturated engine look idle)
                return
            parsed = None
            self._forget(t, type(exc).__name__)
            return
        parsed = parse_vllm_metrics(text, t.model)
        if parsed is None:
            self._forget(t, "no vLLM series")
            return
        self._not_before.pop(t.id, None)
        running, waiting, kv = parsed
        self._loads[t.id] = EngineLoad(running, waiting, kv, self._clock(), before)

    def _forget(self, t: EngineTarget, why: str) -> None:
        """A deployment without engine metrics (404, not vLLM): in-flight counts decide; asked again later."""
        self._loads.pop(t.id, None)
        self._not_before[t.id] = self._clock() + self.retry_after
        if t.id not in self._named:
            self._named.add(t.id)
            log.info("deployment %s: no engine metrics at %s (%s); routing on in-flight counts", t.id, t.url, why)

    async def run(self) -> None:
        while True:
            started = self._clock()
            try:
                await self.poll_once()
            except Exception:  # noqa: BLE001 - never let the poller die
                log.exception("engine poll failed")
            await asyncio.sleep(max(0.0, self.interval - (self._clock() - started)))
