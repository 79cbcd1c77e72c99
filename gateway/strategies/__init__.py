"""Routing strategies by their `router_settings.routing_strategy` name. A new strategy is one module here
plus one line in `STRATEGIES`."""

from __future__ import annotations

from gateway.strategies.base import Decision, RouteRequest, RouterView, Strategy
from gateway.strategies.engine_aware import EngineAware, EngineAwareOptions
from gateway.strategies.least_busy import LeastBusy
from gateway.strategies.shuffle import SimpleShuffle

STRATEGIES: dict[str, type[Strategy]] = {
    SimpleShuffle.name: SimpleShuffle,
    LeastBusy.name: LeastBusy,
    EngineAware.name: EngineAware,
}

__all__ = ["STRATEGIES", "Decision", "EngineAwareOptions", "RouteRequest", "RouterView", "Strategy"]
