"""`least-busy`: the deployment with the fewest requests in flight from this gateway process; ties are
broken by weight."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from gateway.strategies.base import Decision, RouteRequest, RouterView, T, weighted_choice


class LeastBusy:
    name: ClassVar[str] = "least-busy"

    def pick(self, candidates: Sequence[T], view: RouterView, request: RouteRequest) -> Decision[T]:
        low = min(view.in_flight(d) for d in candidates)
        idle = [d for d in candidates if view.in_flight(d) == low]
        return Decision(idle[0] if len(idle) == 1 else weighted_choice(idle, view.rng), "load")
