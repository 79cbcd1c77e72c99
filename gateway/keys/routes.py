"""Admin API for keys, teams and spend (LiteLLM's paths and field names), master key only.

Every route reads at most GATEWAY_ADMIN_MAX_BODY_BYTES of body (413 beyond), needs the master key
(403 when none is configured: admin is disabled, not open), and answers 503 when the state Redis is
unreachable.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import TYPE_CHECKING, Any, Literal

import orjson
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from fastapi.routing import APIRoute
from starlette.responses import Response

from gateway import errors, safejson
from gateway.auth import require_admin
from gateway.errors import GatewayError
from gateway.keys import ledger as ledger_mod
from gateway.keys.models import (
    BlockKeyRequest,
    BlockTeamRequest,
    DeleteKeyRequest,
    DeleteTeamRequest,
    GenerateKeyRequest,
    NewTeamRequest,
    Record,
    UpdateKeyRequest,
    UpdateTeamRequest,
    duration_seconds,
    hash_key,
    is_token_hash,
    limit_fields,
    new_secret,
    now_ms,
)
from gateway.keys.store import ReplyError, StoreUnavailable
from gateway.protocol import too_deep

if TYPE_CHECKING:
    from gateway.keys.service import KeyService

PAGE = 1000


class AdminRoute(APIRoute):
    """Bounded body parsed by the bounded loader (safejson: nesting checked first, NaN/Infinity refused as
    orjson refuses them), and store failures as 503 instead of a 500."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def bounded(request: Request) -> Response:
            limit = request.app.state.gateway.settings.admin_max_body_bytes
            declared = request.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                raise errors.body_too_large(limit)
            if request.method in ("POST", "PUT", "PATCH"):
                parts: list[bytes] = []
                size = 0
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        raise errors.body_too_large(limit)
                    parts.append(chunk)
                request._body = body = b"".join(parts)
                if body:  # FastAPI uses this parse instead of Python's json (RecursionError, NaN)
                    depth = request.app.state.gateway.settings.max_json_depth
                    try:
                        request._json = safejson.loads(body, depth)
                    except safejson.TooDeep:
                        raise too_deep(depth) from None
                    except orjson.JSONDecodeError as exc:
                        raise errors.invalid_request(f"Request body is not valid JSON: {exc}") from None
            try:
                return await handler(request)
            except StoreUnavailable as exc:
                raise GatewayError(503, f"The state Redis is unreachable ({exc})", "service_unavailable", None,
                                   "key_store_unavailable", {"Retry-After": "5"}) from None
            except ReplyError as exc:
                raise GatewayError(503, f"The state Redis refused the command ({exc})", "service_unavailable",
                                   None, "key_store_error") from None

        return bounded


def build_router(svc: KeyService, master_key: Callable[[], str | None]) -> APIRouter:
    def admin(request: Request) -> None:
        require_admin(dict(request.scope["headers"]), master_key())

    router = APIRouter(route_class=AdminRoute, dependencies=[Depends(admin)])
    store = svc.store

    def bad(message: str, param: str | None = None) -> GatewayError:
        return errors.invalid_request(message, param)

    async def resolve(ref: str) -> str:
        return ref if is_token_hash(ref) else hash_key(ref)

    async def key_record(key: str | None, key_alias: str | None) -> Record:
        if key:
            h = await resolve(key)
        elif key_alias:
            found = await store.alias_lookup(key_alias)
            if found is None:
                raise errors.not_found(f"No key with key_alias '{key_alias}'")
            h = found
        else:
            raise bad("Give `key` (the key or its token hash) or `key_alias`", "key")
        fields = await store.get("key", h)
        if fields is None:
            raise errors.not_found("Key not found")
        return Record.from_fields(fields, "key")

    def check(code: int, what: str, team: str | None = None, alias: str | None = None) -> None:
        if code == 0:
            raise errors.not_found(f"{what} not found")
        if code == -1:
            raise bad(f"Team '{team}' does not exist: create it with POST /team/new", "team_id")
        if code == -2 and what == "Key":
            raise bad(f"key_alias '{alias}' is already used by another key", "key_alias")
        if code == -2:  # team aliases are labels (metrics, logs): two teams never share one
            raise bad(f"team_alias '{alias}' is already the team_alias or team_id of another team", "team_alias")
        if code == -3:
            raise bad(f"team_id '{team}' is already the team_alias of another team", "team_id")

    def extras(req: Any) -> dict[str, Any]:
        ignored = req.ignored_fields()
        return {"ignored_fields": ignored} if ignored else {}

    # -- keys -------------------------------------------------------------------------------------------

    @router.post("/key/generate", tags=["keys"], summary="Create a virtual key (the secret is shown only here)")
    async def generate_key(req: GenerateKeyRequest) -> dict[str, Any]:
        now = now_ms()
        secret = req.key or new_secret()
        h = hash_key(secret)
        fields, _ = limit_fields(req, req.model_fields_set, now)
        fields.setdefault("models", "")
        fields.setdefault("meta", "{}")
        fields.update(token=h, alias=req.key_alias or "", team=req.team_id or "", created=str(now), spend="0",
                      total="0", reserved="0")
        if req.duration is not None:
            fields["expires"] = str(now + (duration_seconds(req.duration) or 0) * 1000)
        code = await store.create("key", h, req.team_id or "", req.key_alias or "", fields)
        if code == 0:
            raise bad("This key already exists", "key")
        check(code, "Key", req.team_id, req.key_alias)
        rec = Record.from_fields(fields, "key")
        return {"key": secret, **rec.key_view(now), **extras(req)}

    @router.get("/key/info", tags=["keys"], summary="A key's settings and spend (no secret)")
    async def key_info(key: str | None = Query(None, max_length=256, description="the key (sk-...) or its token hash"),
                       key_alias: str | None = Query(None, max_length=128)) -> dict[str, Any]:
        rec = await key_record(key, key_alias)
        return {"key": rec.id, "info": rec.key_view(now_ms())}

    @router.get("/key/list", tags=["keys"], summary="All keys (optionally of one team), without secrets")
    async def key_list(team_id: str | None = Query(None, max_length=128)) -> dict[str, Any]:
        ids = await store.members(f"team:{team_id}:keys" if team_id else "keys")
        now = now_ms()
        keys = [Record.from_fields(f, "key").key_view(now) for f in await store.get_many("key", ids) if f]
        return {"keys": keys, "total_count": len(keys)}

    @router.post("/key/update", tags=["keys"], summary="Change a key's limits, models, team, alias or expiry")
    async def update_key(req: UpdateKeyRequest) -> dict[str, Any]:
        now = now_ms()
        h = await resolve(req.key)
        fs = req.model_fields_set
        fields, drop = limit_fields(req, fs, now)
        if "duration" in fs:
            if req.duration is None:
                drop.append("expires")
            else:
                fields["expires"] = str(now + (duration_seconds(req.duration) or 0) * 1000)
        team = (req.team_id or "") if "team_id" in fs else None
        alias = (req.key_alias or "") if "key_alias" in fs else None
        code = await store.update("key", h, team, alias, drop, fields)
        check(code, "Key", team, alias)
        svc.forget(h)
        rec = await key_record(h, None)
        return {"key": h, "info": rec.key_view(now), **extras(req)}

    async def block_key(ref: str, blocked: bool) -> dict[str, Any]:
        h = await resolve(ref)
        code = await store.update("key", h, None, None, [] if blocked else ["blocked"],
                                  {"blocked": "1"} if blocked else {})
        check(code, "Key")
        svc.forget(h)
        return (await key_record(h, None)).key_view(now_ms())

    @router.post("/key/block", tags=["keys"], summary="Block a key: every request with it gets 401 until unblocked")
    async def key_block(req: BlockKeyRequest) -> dict[str, Any]:
        return await block_key(req.key, True)

    @router.post("/key/unblock", tags=["keys"], summary="Unblock a key")
    async def key_unblock(req: BlockKeyRequest) -> dict[str, Any]:
        return await block_key(req.key, False)

    @router.post("/key/delete", tags=["keys"], summary="Delete keys (by key, token hash or key_alias)")
    async def delete_key(req: DeleteKeyRequest) -> dict[str, Any]:
        if not req.keys and not req.key_aliases:
            raise bad("Give `keys` and/or `key_aliases`", "keys")
        wanted: dict[str, str] = {}
        for ref in req.keys:
            wanted[await resolve(ref)] = ref
        for a in req.key_aliases:
            h = await store.alias_lookup(a)
            if h is not None:
                wanted[h] = a
        gone = await store.delete_keys(list(wanted))
        for h in gone:
            svc.forget(h)
        if not gone:
            raise errors.not_found("None of the keys exist")
        return {"deleted_keys": gone}  # token hashes: a secret is shown once, by /key/generate

    # -- teams ------------------------------------------------------------------------------------------

    @router.post("/team/new", tags=["teams"], summary="Create a team (budget, limits and models for its keys)")
    async def new_team(req: NewTeamRequest) -> dict[str, Any]:
        now = now_ms()
        team_id = req.team_id or str(uuid.uuid4())
        fields, _ = limit_fields(req, req.model_fields_set, now)
        fields.setdefault("models", "")
        fields.setdefault("meta", "{}")
        fields.update(id=team_id, alias=req.team_alias or "", created=str(now), spend="0", total="0", reserved="0")
        code = await store.create("team", team_id, "", req.team_alias or "", fields)
        if code == 0:
            raise bad(f"Team '{team_id}' already exists", "team_id")
        check(code, "Team", team_id, req.team_alias)
        return {**Record.from_fields(fields, "team").team_view(now), **extras(req)}

    async def team_record(team_id: str) -> Record:
        fields = await store.get("team", team_id)
        if fields is None:
            raise errors.not_found(f"Team '{team_id}' not found")
        return Record.from_fields(fields, "team")

    @router.get("/team/info", tags=["teams"], summary="A team's settings, spend and keys")
    async def team_info(team_id: str = Query(min_length=1, max_length=128)) -> dict[str, Any]:
        rec = await team_record(team_id)
        now = now_ms()
        ids = await store.members(f"team:{team_id}:keys")
        keys = [Record.from_fields(f, "key").key_view(now) for f in await store.get_many("key", ids) if f]
        return {"team_id": team_id, "team_info": rec.team_view(now), "keys": keys}

    @router.get("/team/list", tags=["teams"], summary="All teams")
    async def team_list() -> dict[str, Any]:
        ids = await store.members("teams")
        now = now_ms()
        return {"teams": [Record.from_fields(f, "team").team_view(now) for f in await store.get_many("team", ids) if f]}

    @router.post("/team/update", tags=["teams"], summary="Change a team's limits, models or alias")
    async def update_team(req: UpdateTeamRequest) -> dict[str, Any]:
        now = now_ms()
        fields, drop = limit_fields(req, req.model_fields_set, now)
        alias = (req.team_alias or "") if "team_alias" in req.model_fields_set else None
        code = await store.update("team", req.team_id, None, alias, drop, fields)
        check(code, f"Team '{req.team_id}'", req.team_id, alias)
        svc.forget_team(req.team_id)
        return {**(await team_record(req.team_id)).team_view(now), **extras(req)}

    async def block_team(team_id: str, blocked: bool) -> dict[str, Any]:
        code = await store.update("team", team_id, None, None, [] if blocked else ["blocked"],
                                  {"blocked": "1"} if blocked else {})
        check(code, f"Team '{team_id}'")
        svc.forget_team(team_id)
        return (await team_record(team_id)).team_view(now_ms())

    @router.post("/team/block", tags=["teams"], summary="Block a team: every request with its keys gets 401")
    async def team_block(req: BlockTeamRequest) -> dict[str, Any]:
        return await block_team(req.team_id, True)

    @router.post("/team/unblock", tags=["teams"], summary="Unblock a team")
    async def team_unblock(req: BlockTeamRequest) -> dict[str, Any]:
        return await block_team(req.team_id, False)

    @router.post("/team/delete", tags=["teams"], summary="Delete teams and their keys")
    async def delete_team(req: DeleteTeamRequest) -> dict[str, Any]:
        deleted: list[str] = []
        keys = 0
        for team_id in req.team_ids:
            ok, gone = await store.delete_team(team_id)
            for h in gone:
                svc.forget(h)
            if ok:
                deleted.append(team_id)
                keys += len(gone)
        if not deleted:
            raise errors.not_found("None of the teams exist")
        return {"deleted_teams": deleted, "deleted_keys": keys}

    # -- spend ------------------------------------------------------------------------------------------

    @router.get("/spend/logs", tags=["spend"],
                summary="The spend ledger: one row per request (JSON list, or CSV with format=csv)")
    async def spend_logs(
        api_key: str | None = Query(None, max_length=256, description="key (sk-...) or token hash"),
        key_alias: str | None = Query(None, max_length=128),
        team_id: str | None = Query(None, max_length=128),
        start_date: str | None = Query(None, max_length=40, description="YYYY-MM-DD, ISO datetime or unix s"),
        end_date: str | None = Query(None, max_length=40, description="inclusive; a date means its whole day"),
        limit: int = Query(1000, ge=1, le=1_000_000, description="rows at most"),
        format: Literal["json", "csv"] = Query("json"),  # noqa: A002 - the public parameter name
    ) -> Any:
        try:
            start = ledger_mod.parse_time(start_date, False)
            end = ledger_mod.parse_time(end_date, True)
        except ValueError as exc:
            raise bad(str(exc), "start_date" if "start" in str(exc) else "end_date") from None
        token = await resolve(api_key) if api_key else None

        async def rows() -> AsyncIterator[list[dict[str, Any]]]:
            cursor = str(start) if start is not None else "-"
            stop = str(end) if end is not None else "+"
            left = limit
            while left > 0:
                raw = await store.ledger(cursor, stop, PAGE)
                entries = ledger_mod.decode_entries(raw)
                page = [ledger_mod.row(eid, f) for eid, f in entries
                        if ledger_mod.matches(f, token, key_alias, team_id)][:left]
                left -= len(page)
                if page:
                    yield page
                if len(entries) < PAGE:
                    return
                cursor = "(" + entries[-1][0]

        if format == "csv":
            async def body() -> AsyncIterator[str]:
                yield ledger_mod.csv_text((), True)
                async for page in rows():
                    yield ledger_mod.csv_text(page, False)

            return StreamingResponse(body(), media_type="text/csv; charset=utf-8",
                                     headers={"Content-Disposition": 'attachment; filename="spend-logs.csv"'})
        out: list[dict[str, Any]] = []
        async for page in rows():
            out.extend(page)
        return out

    return router

