"""Routing strategies by their `router_settings.routing_strategy` name. A new strategy is one module here
plus one line in `STRATEGIES`."""

from __future__ import annotations

from gateway.strategies.base import Decision, RouteRequest, RouterView, Strategy
from gateway.strategies.least_busy import LeastBusy
from gateway.strategies.shuffle import SimpleShuffle

STRATEGIES: dict[str, type[Strategy]] = {
    SimpleShuffle.name: SimpleShuffle,
    LeastBusy.name: LeastBusy,
}

__all__ = ["STRATEGIES", "Decision", "RouteRequest", "RouterView", "Strategy"]
