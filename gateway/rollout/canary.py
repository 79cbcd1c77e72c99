"""Stepped canary rollouts: an alias's traffic moves to another alias in steps that advance, abort and roll
back on their own (router_settings.canary, gateway/rollout/options.py).

The state of each rollout — which step, since when, running / aborted / complete — lives in the shared store
(`CanaryStore`: Redis when one is configured, so every replica and worker follows one rollout and a restart
or hot reload resumes where it was; else this process). Each worker keeps the outcomes of its canary requests
in memory and flushes them to the store once per tick; one tick evaluates the step: abort when the step's
error rate or p95 time to first token / latency is over `abort_if` (with at least `min_requests` seen), else
advance when the step has lasted `every` and seen `min_requests`. Transitions are compare-and-set, so with many
workers exactly one makes (and logs) each. The request path only reads `percent` (a dict lookup) and appends
to a list.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from gateway.rollout.options import CanaryOptions

log = logging.getLogger("gateway.canary")

MAX_SAMPLES = 2000  # latency samples kept per step (the newest): p95 of the last 2000 canary requests
RUNNING, ABORTED, COMPLETE = "running", "aborted", "complete"


@dataclass(frozen=True, slots=True)
class CanaryState:
    rollout: str  # CanaryOptions.rollout_id
    to: str
    step: int  # index into steps
    since: float  # unix time the step began
    state: str = RUNNING
    reason: str = ""  # why it aborted / what the last transition saw

    @property
    def step_key(self) -> str:
        """Names this step's outcomes: a restarted rollout's step starts counting afresh."""
        return f"{self.rollout}:{self.step}:{self.since:.3f}"

    def percent(self, opts: CanaryOptions) -> float:
        if self.state == ABORTED:
            return 0.0
        return opts.steps[min(self.step, len(opts.steps) - 1)]

    def dumps(self) -> bytes:
        return orjson.dumps({"rollout": self.rollout, "to": self.to, "step": self.step, "since": self.since,
                             "state": self.state, "reason": self.reason})

    @staticmethod
    def loads(raw: bytes | str | None) -> CanaryState | None:
        if raw is None:
            return None
        try:
            d = orjson.loads(raw)
            return CanaryState(str(d["rollout"]), str(d["to"]), int(d["step"]), float(d["since"]),
                               str(d.get("state", RUNNING)), str(d.get("reason", "")))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None


@dataclass(slots=True)
class StepStats:
    requests: int = 0
    errors: int = 0
    ttft_ms: list[float] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


def p95(values: list[float]) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(0.95 * len(s)) - 1))]


def judge(opts: CanaryOptions, st: CanaryState, stats: StepStats, now: float) -> tuple[str, str] | None:
    """The transition a running step is due for: ("abort" | "advance" | "complete", why) or None."""
    if st.state != RUNNING:
        return None
    enough = stats.requests >= max(1, opts.min_requests)
    ab = opts.abort_if
    if enough:
        if ab.error_rate_over is not None and stats.error_rate > ab.error_rate_over:
            return "abort", (f"error rate {stats.error_rate:.3f} over {ab.error_rate_over:g} "
                             f"({stats.errors}/{stats.requests} requests)")
        t = p95(stats.ttft_ms)
        if ab.p95_ttft_over_ms is not None and t is not None and t > ab.p95_ttft_over_ms:
            return "abort", f"p95 time to first token {t:.0f} ms over {ab.p95_ttft_over_ms:g} ms"
        lat = p95(stats.latency_ms)
        if ab.p95_latency_over_ms is not None and lat is not None and lat > ab.p95_latency_over_ms:
            return "abort", f"p95 latency {lat:.0f} ms over {ab.p95_latency_over_ms:g} ms"
    if now - st.since < opts.every or (opts.min_requests and not enough):
        return None
    seen = f"{stats.requests} requests, error rate {stats.error_rate:.3f}"
    if st.step + 1 >= len(opts.steps):
        return "complete", seen
    return "advance", seen


class CanaryStore(Protocol):
    async def get(self, alias: str) -> CanaryState | None: ...

    async def swap(self, alias: str, old: CanaryState | None, new: CanaryState) -> bool:
        """Set `new` if the state is still `old` (None: absent); False when another worker moved first."""

    async def add(self, alias: str, st: CanaryState, requests: int, errors: int,
                  samples: list[tuple[float, float | None]]) -> None: ...

    async def stats(self, alias: str, st: CanaryState) -> StepStats: ...


class LocalCanaryStore:
    """This process only (no Redis): a restart starts the rollout again."""

    def __init__(self) -> None:
        self.states: dict[str, CanaryState] = {}
        self.steps: dict[tuple[str, str], StepStats] = {}

    async def get(self, alias: str) -> CanaryState | None:
        return self.states.get(alias)

    async def swap(self, alias: str, old: CanaryState | None, new: CanaryState) -> bool:
        if self.states.get(alias) != old:
            return False
        self.states[alias] = new
        for key in [k for k in self.steps if k[0] == alias and k[1] != new.step_key]:
            del self.steps[key]
        return True

    async def add(self, alias: str, st: CanaryState, requests: int, errors: int,
                  samples: list[tuple[float, float | None]]) -> None:
        s = self.steps.setdefault((alias, st.step_key), StepStats())
        s.requests += requests
        s.errors += errors
        for lat, ttft in samples:
            s.latency_ms.append(lat)
            if ttft is not None:
                s.ttft_ms.append(ttft)
        del s.latency_ms[:-MAX_SAMPLES], s.ttft_ms[:-MAX_SAMPLES]

    async def stats(self, alias: str, st: CanaryState) -> StepStats:
        s = self.steps.get((alias, st.step_key))
        return StepStats(s.requests, s.errors, list(s.ttft_ms), list(s.latency_ms)) if s else StepStats()


_SWAP = """
local cur = redis.call('GET', KEYS[1])
if (cur == false and ARGV[1] == '') or cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2])
  return 1
end
return 0
"""
STEP_TTL = 7 * 86400  # outcomes of a step are kept a week after their last write


class RedisCanaryStore:
    """The shared store: every replica and worker follows the same rollout; a restart resumes it."""

    def __init__(self, redis: Any, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix
        self._swap = redis.register_script(_SWAP)

    def _key(self, alias: str) -> str:
        return f"{self.prefix}:canary:{alias}"

    def _step(self, alias: str, st: CanaryState) -> str:
        return f"{self.prefix}:canary:{alias}:{st.step_key}"

    async def get(self, alias: str) -> CanaryState | None:
        return CanaryState.loads(await self.redis.get(self._key(alias)))

    async def swap(self, alias: str, old: CanaryState | None, new: CanaryState) -> bool:
        cur = await self.redis.get(self._key(alias))
        if CanaryState.loads(cur) != old:
            return False
        return bool(await self._swap(keys=[self._key(alias)], args=[cur or b"", new.dumps()]))

    async def add(self, alias: str, st: CanaryState, requests: int, errors: int,
                  samples: list[tuple[float, float | None]]) -> None:
        key = self._step(alias, st)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hincrby(key, "requests", requests)
        if errors:
            pipe.hincrby(key, "errors", errors)
        pipe.expire(key, STEP_TTL)
        if samples:
            lat_key, ttft_key = key + ":lat", key + ":ttft"
            pipe.rpush(lat_key, *[f"{lat:.1f}" for lat, _ in samples])
            pipe.ltrim(lat_key, -MAX_SAMPLES, -1)
            pipe.expire(lat_key, STEP_TTL)
            ttfts = [f"{t:.1f}" for _, t in samples if t is not None]
            if ttfts:
                pipe.rpush(ttft_key, *ttfts)
                pipe.ltrim(ttft_key, -MAX_SAMPLES, -1)
                pipe.expire(ttft_key, STEP_TTL)
        await pipe.execute()

    async def stats(self, alias: str, st: CanaryState) -> StepStats:
        key = self._step(alias, st)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(key)
        pipe.lrange(key + ":ttft", 0, -1)
        pipe.lrange(key + ":lat", 0, -1)
        counts, ttft, lat = await pipe.execute()
        return StepStats(int(counts.get(b"requests", 0)), int(counts.get(b"errors", 0)),
                         [float(x) for x in ttft], [float(x) for x in lat])


@dataclass(slots=True)
class _Pending:
    requests: int = 0
    errors: int = 0
    samples: list[tuple[float, float | None]] = field(default_factory=list)


MAX_PENDING = 10_000  # outcomes held per alias between flushes (the store down): the oldest are dropped


class Canaries:
    """One worker's view of every canary rollout: what share goes where now, and the loop that moves it."""

    def __init__(self, options: Callable[[], Mapping[str, CanaryOptions]], store: CanaryStore,
                 on_transition: Callable[[str, str, str], None] | None = None,
                 clock: Callable[[], float] = time.time, rng: Callable[[], float] = random.random,
                 tick: float = 1.0) -> None:
        self.options = options
        self.store = store
        self.on_transition = on_transition or (lambda alias, to, action: None)
        self.clock = clock
        self.rng = rng
        self.tick = tick
        self.states: dict[str, CanaryState] = {}  # as last read from the store
        self.percent: dict[str, float] = {}  # alias -> share (0-100) of its requests sent to the canary now
        self._pending: dict[tuple[str, str], _Pending] = {}

    # -- the request path ---------------------------------------------------------------------------

    def route(self, alias: str) -> tuple[str, CanaryState] | None:
        """(the canary alias, the step) when this request goes to the canary, else None."""
        pct = self.percent.get(alias)
        if not pct or self.rng() * 100 >= pct:
            return None
        st = self.states[alias]
        return st.to, st

    def observe(self, alias: str, st: CanaryState, error: bool, latency_s: float, ttft_s: float | None) -> None:
        p = self._pending.get((alias, st.step_key))
        if p is None:
            p = self._pending[(alias, st.step_key)] = _Pending()
        p.requests += 1
        p.errors += error
        if not error:
            p.samples.append((latency_s * 1000, None if ttft_s is None else ttft_s * 1000))
            if len(p.samples) > MAX_PENDING:
                del p.samples[: len(p.samples) - MAX_PENDING]

    # -- the loop ------------------------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the store is down: routes keep their last state
                log.warning("canary: the shared store failed (%s: %s); shares stay as they were",
                            type(exc).__name__, exc)
            await asyncio.sleep(self.tick)

    async def step(self) -> None:
        """One tick: flush outcomes, then for each configured canary read its state, judge it, move it."""
        pending, self._pending = self._pending, {}
        for (alias, step_key), p in pending.items():
            st = self.states.get(alias)
            if st is not None and st.step_key == step_key:
                await self.store.add(alias, st, p.requests, p.errors, p.samples)
        options = self.options()
        for alias in [a for a in self.percent if a not in options]:
            del self.percent[alias]
            self.states.pop(alias, None)
        for alias, opts in options.items():
            st = await self._current(alias, opts)
            if st.state == RUNNING:
                due = judge(opts, st, await self.store.stats(alias, st), self.clock())
                if due is not None:
                    st = await self._move(alias, opts, st, *due)
            self.states[alias] = st
            self.percent[alias] = st.percent(opts)

    async def _current(self, alias: str, opts: CanaryOptions) -> CanaryState:
        st = await self.store.get(alias)
        if st is not None and st.rollout == opts.rollout_id:
            return st
        new = CanaryState(opts.rollout_id, opts.to, 0, self.clock())
        if await self.store.swap(alias, st, new):
            log.info("canary %s -> %s: started at %g%% (steps %s, every %gs)", alias, opts.to, opts.steps[0],
                     "/".join(f"{s:g}" for s in opts.steps), opts.every)
            self.on_transition(alias, opts.to, "start")
            return new
        return await self.store.get(alias) or new

    async def _move(self, alias: str, opts: CanaryOptions, st: CanaryState, action: str, why: str) -> CanaryState:
        now = self.clock()
        if action == "abort":
            new = CanaryState(st.rollout, st.to, st.step, now, ABORTED, why)
        elif action == "complete":
            new = CanaryState(st.rollout, st.to, st.step, now, COMPLETE, why)
        else:
            new = CanaryState(st.rollout, st.to, st.step + 1, now, RUNNING, why)
        if not await self.store.swap(alias, st, new):
            return await self.store.get(alias) or st  # another worker moved it first
        if action == "abort":
            log.warning("canary %s -> %s: ABORTED at %g%%: %s; all traffic back on %s", alias, st.to,
                        opts.steps[st.step], why, alias)
        elif action == "complete":
            log.info("canary %s -> %s: complete at %g%% (%s); make %s the alias's deployments in router.yaml",
                     alias, st.to, opts.steps[st.step], why, st.to)
        else:
            log.info("canary %s -> %s: step %d/%d, %g%% -> %g%% (%s)", alias, st.to, new.step + 1, len(opts.steps),
                     opts.steps[st.step], opts.steps[new.step], why)
        self.on_transition(alias, st.to, action)
        return new

    async def command(self, alias: str, action: str) -> CanaryState:
        """An operator's `abort`, `advance` or `restart` (POST /admin/canary/{alias}/{action})."""
        opts = self.options().get(alias)
        if opts is None:
            raise KeyError(alias)
        st = await self._current(alias, opts)
        if action == "restart":
            new = CanaryState(opts.rollout_id, opts.to, 0, self.clock())
            if await self.store.swap(alias, st, new):
                log.info("canary %s -> %s: restarted by an operator at %g%%", alias, opts.to, opts.steps[0])
                self.on_transition(alias, opts.to, "restart")
            st = await self.store.get(alias) or new
        elif st.state == RUNNING:
            if action == "advance":
                done = st.step + 1 >= len(opts.steps)
                st = await self._move(alias, opts, st, "complete" if done else "advance", "by an operator")
            else:
                st = await self._move(alias, opts, st, "abort", "by an operator")
        self.states[alias] = st
        self.percent[alias] = st.percent(opts)
        return st

    def describe(self) -> list[dict[str, Any]]:
        """What GET /admin/canary shows."""
        options = self.options()
        out = []
        for alias, opts in options.items():
            st = self.states.get(alias)
            out.append({"alias": alias, "to": opts.to, "steps": list(opts.steps), "every_s": opts.every,
                        "state": st.state if st else "starting", "step": (st.step + 1) if st else None,
                        "percent": self.percent.get(alias, 0.0), "since": st.since if st else None,
                        "reason": st.reason if st else ""})
        return out
