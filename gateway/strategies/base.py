"""What a routing strategy is: given the deployments of an alias that may take a request now, pick one.

A strategy is a class with `pick(...)` and its own state (one instance per gateway process). It sees the
router's runtime view of each deployment (`RouterView`) and the request's routing features
(`RouteRequest`), and answers with a `Decision` whose `reason` labels `oss_routing_decisions_total`.
Health, cooldown and rpm/tpm/parallel limits are not a strategy's business: `RouterState` has already
removed the deployments that cannot take the request.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Protocol, TypeVar


class Target(Protocol):
    """A deployment as strategies see it (gateway.config.Deployment is one)."""

    @property
    def id(self) -> str: ...

    @property
    def weight(self) -> float: ...


T = TypeVar("T", bound=Target)


@dataclass(frozen=True, slots=True)
class Decision(Generic[T]):
    deployment: T
    reason: str  # e.g. "weight", "load", "only"


@dataclass(slots=True)
class RouteRequest:
    """What a strategy may know of the request: the alias and the parsed body (never the key)."""

    alias: str
    body: dict[str, Any] = field(default_factory=dict)
    headers: dict[bytes, bytes] = field(default_factory=dict)


class RouterView(Protocol):
    """The router's runtime view that strategies read."""

    rng: random.Random

    def in_flight(self, dep: Target) -> int: ...

    def engine(self, dep: Target) -> Any:
        """The engine's load as last read (gateway.engine.EngineLoad), or None when unknown."""
        ...


class Strategy(Protocol):
    name: ClassVar[str]

    def pick(self, candidates: Sequence[T], view: RouterView, request: RouteRequest) -> Decision[T]: ...


def weighted_choice(candidates: Sequence[T], rng: random.Random) -> T:
    """A deployment drawn by `weight` (uniform when every weight is 0)."""
    weights = [d.weight for d in candidates]
    if sum(weights) <= 0:
        return rng.choice(list(candidates))
    return rng.choices(list(candidates), weights=weights, k=1)[0]
