"""Choosing a deployment for an alias: weights, strategy, health, cooldown and per-deployment limits.

`DeploymentState` is the runtime side of a deployment (in-flight count, failures, cooldown, health,
rpm/tpm windows). It is keyed by deployment id and carried over a config reload, so a reload neither
forgets a cooldown nor resets the in-flight count of requests still running on the old routes.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from gateway.config import Deployment, GatewayConfig, RouterSettings
from gateway.engine import EngineLoad
from gateway.strategies import STRATEGIES, Decision, RouteRequest, Strategy
from gateway.strategies.engine_aware import EngineAware, EngineAwareOptions

WINDOW = 60.0  # seconds: rpm/tpm windows and the allowed_fails window, as LiteLLM counts them


@dataclass
class DeploymentState:
    in_flight: int = 0
    failures: deque[float] = field(default_factory=deque)
    cooldown_until: float = 0.0
    healthy: bool = True
    health_error: str | None = None
    last_checked: float | None = None
    requests: deque[float] = field(default_factory=deque)
    tokens: deque[tuple[float, int]] = field(default_factory=deque)
    token_sum: int = 0

    def _trim(self, now: float) -> None:
        edge = now - WINDOW
        while self.requests and self.requests[0] < edge:
            self.requests.popleft()
        while self.tokens and self.tokens[0][0] < edge:
            self.token_sum -= self.tokens.popleft()[1]

    def limit_wait(self, dep: Deployment, now: float) -> float:
        """0 if the deployment may take a request now, else seconds until it may."""
        if dep.max_parallel_requests is not None and self.in_flight >= dep.max_parallel_requests:
            return 1.0
        if dep.rpm is None and dep.tpm is None:
            return 0.0
        self._trim(now)
        wait = 0.0
        if dep.rpm is not None and len(self.requests) >= dep.rpm:
            wait = max(wait, self.requests[0] + WINDOW - now)
        if dep.tpm is not None and self.token_sum >= dep.tpm and self.tokens:
            wait = max(wait, self.tokens[0][0] + WINDOW - now)
        return wait

    def note_request(self, dep: Deployment, now: float) -> None:
        if dep.rpm is not None:
            self.requests.append(now)

    def note_tokens(self, dep: Deployment, tokens: int, now: float) -> None:
        if dep.tpm is not None and tokens > 0:
            self.tokens.append((now, tokens))
            self.token_sum += tokens


class NoDeployment(Exception):
    """Nothing of the alias can take the request now; `reason` is 'unhealthy' or 'rate_limited'."""

    def __init__(self, alias: str, reason: str, retry_after: float) -> None:
        super().__init__(f"{alias}: {reason}")
        self.alias = alias
        self.reason = reason
        self.retry_after = retry_after


class RouterState:
    """Per-process runtime state of every deployment, across config reloads."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, rng: random.Random | None = None) -> None:
        self.clock = clock
        self.rng = rng or random.Random()
        self.states: dict[str, DeploymentState] = {}
        self._strategies: dict[str, Strategy] = {}  # one instance (with its own state) per strategy name
        self._engine_aware = EngineAwareOptions()
        self.engine_load: Callable[[str], EngineLoad | None] = lambda _dep_id: None

    def configure(self, settings: RouterSettings) -> None:
        """Take a (re)loaded config's strategy options; a strategy whose options changed starts afresh."""
        if settings.engine_aware != self._engine_aware:
            self._engine_aware = settings.engine_aware
            self._strategies.pop(EngineAware.name, None)

    def in_flight(self, dep: Deployment) -> int:
        st = self.states.get(dep.id)
        return st.in_flight if st is not None else 0

    def engine(self, dep: Deployment) -> EngineLoad | None:
        return self.engine_load(dep.id)

    def strategy(self, name: str) -> Strategy:
        s = self._strategies.get(name)
        if s is None:
            s = self._strategies[name] = EngineAware(self._engine_aware) if name == EngineAware.name \
                else STRATEGIES[name]()
        return s

    def sync(self, deployments: Iterable[Deployment]) -> None:
        """Make sure every deployment has a state; states of removed ones go once nothing is in flight."""
        ids = set()
        for d in deployments:
            ids.add(d.id)
            self.states.setdefault(d.id, DeploymentState())
        for dep_id in [i for i, s in self.states.items() if i not in ids and s.in_flight == 0]:
            del self.states[dep_id]

    def state(self, dep: Deployment) -> DeploymentState:
        st = self.states.get(dep.id)
        if st is None:
            st = self.states[dep.id] = DeploymentState()
        return st

    def available(self, dep: Deployment, now: float) -> bool:
        st = self.state(dep)
        return st.healthy and st.cooldown_until <= now and st.limit_wait(dep, now) == 0.0

    def pick(self, alias: str, deployments: Sequence[Deployment], strategy: str,
             exclude: frozenset[str] | set[str] = frozenset(), request: RouteRequest | None = None
             ) -> Decision[Deployment]:
        """A deployment of `alias` that may take the request now (healthy, not cooling down, within its
        limits, not in `exclude` unless nothing else is left), chosen by `strategy`."""
        now = self.clock()
        candidates = [d for d in deployments if d.id not in exclude and self.available(d, now)]
        if not candidates and exclude:
            # every untried deployment is out: a retry may go back to one already tried
            candidates = [d for d in deployments if self.available(d, now)]
        if not candidates:
            raise self._why_none(alias, deployments, now)
        if len(candidates) == 1:
            return Decision(candidates[0], "only")
        return self.strategy(strategy).pick(candidates, self, request or RouteRequest(alias))

    def _why_none(self, alias: str, deployments: Sequence[Deployment], now: float) -> NoDeployment:
        limited = [self.state(d).limit_wait(d, now) for d in deployments
                   if self.state(d).healthy and self.state(d).cooldown_until <= now]
        if limited:
            return NoDeployment(alias, "rate_limited", min(limited))
        cooling = [self.state(d).cooldown_until - now for d in deployments if self.state(d).cooldown_until > now]
        return NoDeployment(alias, "unhealthy", min(cooling) if cooling else 5.0)

    # -- outcome accounting ------------------------------------------------------------------------

    def record_failure(self, dep: Deployment, settings: RouterSettings, alias_size: int) -> bool:
        """Count a failure; returns True when it put the deployment into cooldown.

        As LiteLLM does, more than `allowed_fails` failures within a minute cool a deployment down for
        `cooldown_time`; an alias with a single deployment is never cooled down (that would only turn
        a transient failure into certain ones; the health check still takes a dead one out).
        """
        now = self.clock()
        st = self.state(dep)
        st.failures.append(now)
        while st.failures and st.failures[0] < now - WINDOW:
            st.failures.popleft()
        if alias_size > 1 and len(st.failures) > settings.allowed_fails and settings.cooldown_time > 0:
            st.cooldown_until = now + settings.cooldown_time
            st.failures.clear()
            return True
        return False

    def set_health(self, dep: Deployment, healthy: bool, error: str | None) -> bool:
        """Record a health-check result; returns True when the health changed."""
        st = self.state(dep)
        changed = st.healthy != healthy
        st.healthy = healthy
        st.health_error = error
        st.last_checked = time.time()
        return changed

    def report(self, config: GatewayConfig) -> list[dict[str, object]]:
        now = self.clock()
        out: list[dict[str, object]] = []
        for d in config.deployments:
            st = self.state(d)
            out.append({
                "alias": d.alias,
                "id": d.id,
                "model": d.served_model,
                "api_base": d.api_base if d.native else None,
                "provider": d.provider,
                "healthy": st.healthy,
                "health_error": st.health_error,
                "last_checked": st.last_checked,
                "in_cooldown": st.cooldown_until > now,
                "cooldown_remaining_s": round(max(0.0, st.cooldown_until - now), 3),
                "in_flight": st.in_flight,
                "recent_failures": len(st.failures),
            })
        return out
