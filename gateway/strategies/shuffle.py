"""`simple-shuffle` (LiteLLM's default): a weighted random draw among the available deployments."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from gateway.strategies.base import Decision, RouteRequest, RouterView, T, weighted_choice


class SimpleShuffle:
    name: ClassVar[str] = "simple-shuffle"

    def pick(self, candidates: Sequence[T], view: RouterView, request: RouteRequest) -> Decision[T]:
        return Decision(weighted_choice(candidates, view.rng), "weight")
