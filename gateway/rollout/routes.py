"""Admin endpoints of the rollout machinery (master key): comparison records for `gateway compare`, the
state of each canary, and an operator's abort / advance / restart."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Query, Request

from gateway import errors
from gateway.auth import require_admin
from gateway.rollout.canary import Canaries
from gateway.rollout.comparisons import MAX_READ, ComparisonLog

MAX_SINCE = 400 * 86400.0
ACTIONS = ("abort", "advance", "restart")


def build_router(comparisons: ComparisonLog, canaries: Canaries, master_key: Callable[[], str | None]
                 ) -> APIRouter:
    router = APIRouter(tags=["admin"])

    @router.get("/admin/comparisons")
    async def list_comparisons(request: Request, since: float = Query(3600.0, gt=0, le=MAX_SINCE),
                               limit: int = Query(MAX_READ, ge=1, le=MAX_READ)) -> dict[str, Any]:
        """Comparison records of mirrored requests (router_settings.shadow) of the last `since` seconds,
        oldest first; `truncated` when more than `limit` matched (the newest are returned)."""
        require_admin(dict(request.scope["headers"]), master_key())
        records, truncated = await comparisons.since(since, limit)
        return {"records": records, "truncated": truncated}

    @router.get("/admin/canary")
    async def canary_state(request: Request) -> dict[str, Any]:
        """Each canary rollout (router_settings.canary): step, share of traffic now, state and why."""
        require_admin(dict(request.scope["headers"]), master_key())
        return {"canaries": canaries.describe()}

    @router.post("/admin/canary/{alias}/{action}")
    async def canary_command(alias: str, action: str, request: Request) -> dict[str, Any]:
        """`abort` (all traffic back on the alias), `advance` (next step now) or `restart` (first step)."""
        require_admin(dict(request.scope["headers"]), master_key())
        if action not in ACTIONS:
            raise errors.invalid_request(f"action must be one of {', '.join(ACTIONS)}", "action")
        try:
            await canaries.command(alias, action)
        except KeyError:
            raise errors.invalid_request("no canary is configured for that alias "
                                         "(router_settings.canary)", "alias", "not_found") from None
        return {"canaries": [c for c in canaries.describe() if c["alias"] == alias]}

    return router
