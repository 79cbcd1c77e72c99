"""FastAPI side of the gateway: health, models, metrics, admin and the OpenAPI spec.

Built after the gateway is ready (FastAPI is the slowest import of all), so `/health/*` and the
OpenAI endpoints answer from raw ASGI first; see GatewayASGI in app.py.
"""

from __future__ import annotations

import os
import signal
from typing import TYPE_CHECKING, Any, Protocol

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway import errors, safejson
from gateway.asgi import ClientGone, Message, Receive, Scope, Send, read_body
from gateway.auth import Caller, bearer_token, is_master, require_admin
from gateway.errors import GatewayError
from gateway.protocol import too_deep
from gateway.proxy import visible_aliases

if TYPE_CHECKING:
    from gateway.config import GatewayConfig
    from gateway.keys.service import KeyService
    from gateway.metrics import Metrics
    from gateway.rollout.canary import Canaries
    from gateway.rollout.comparisons import ComparisonLog
    from gateway.router import RouterState
    from gateway.settings import Settings


class Gateway(Protocol):
    """What the admin API uses of the worker (gateway.app.Gateway has it)."""

    config: GatewayConfig
    settings: Settings
    router: RouterState
    keys: KeyService
    metrics: Metrics
    cache: Any
    started_at: float
    comparisons: ComparisonLog
    canaries: Canaries

    @property
    def master_key(self) -> str | None: ...

    @property
    def max_request_bytes(self) -> int: ...

    def redis_stores(self) -> list[tuple[str, bool, str]]: ...

    def reload_file(self) -> bool: ...

SUPERVISOR_ENV = "GATEWAY_SUPERVISOR_PID"


def _error_response(exc: GatewayError) -> JSONResponse:
    return JSONResponse(orjson.loads(exc.body()), status_code=exc.status, headers=exc.headers)


class BoundedBody:
    """ASGI middleware in front of every FastAPI route: a request body is read up to the gateway's size
    limit (413 beyond) and its JSON nesting checked (400 beyond GATEWAY_MAX_JSON_DEPTH) before FastAPI or
    a route parses it (Python's json raises RecursionError at ~1,000 levels, orjson crashes far deeper);
    then the body is handed on unchanged."""

    def __init__(self, app: Any, gw: Gateway) -> None:
        self.app = app
        self.gw = gw

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            body = await read_body(receive, dict(scope["headers"]), self.gw.max_request_bytes)
            limit = self.gw.settings.max_json_depth
            if safejson.exceeds_depth(body, limit):
                raise too_deep(limit)
        except ClientGone:
            return
        except GatewayError as exc:
            payload = exc.body()
            await send({"type": "http.response.start", "status": exc.status,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(payload)).encode()), *exc.header_list()]})
            await send({"type": "http.response.body", "body": payload})
            return
        first = True

        async def replay() -> Message:
            nonlocal first
            if first:
                first = False
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def create_fastapi(gw: Gateway) -> FastAPI:
    """Everything but the hot path; the gateway's lifespan is run by GatewayASGI, not here."""
    api = FastAPI(title="oss-gateway", version="0.1.0",
                  description="OpenAI-compatible gateway for open-weight models")
    api.state.gateway = gw
    api.add_middleware(BoundedBody, gw=gw)

    @api.exception_handler(GatewayError)
    async def _gateway_error(_: Request, exc: GatewayError) -> JSONResponse:
        return _error_response(exc)

    @api.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = "invalid_request_error" if exc.status_code < 500 else "internal_error"
        return _error_response(GatewayError(exc.status_code, str(exc.detail), type_, None,
                                            "not_found" if exc.status_code == 404 else None))

    @api.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = ".".join(str(x) for x in first.get("loc", ()) if x not in ("body", "query"))
        return _error_response(errors.invalid_request(f"{loc or 'request'}: {first.get('msg', 'invalid')}",
                                                      loc or None))

    # /health/live and /health/ready are answered by GatewayASGI before this app exists

    @api.get("/health/deployments", tags=["health"])
    async def deployments(request: Request) -> dict[str, Any]:
        """Each deployment's health, cooldown and in-flight count, and the state of each Redis. Internal
        addresses (`api_base`, Redis host:port) only for the master key: without it this endpoint is open."""
        detail = is_master(bearer_token(dict(request.scope["headers"])), gw.master_key)  # else the summary
        report = gw.router.report(gw.config)
        if not detail:
            for d in report:
                d.pop("api_base", None)
        redis = {store: ({"up": up, "where": where} if detail else {"up": up})
                 for store, up, where in gw.redis_stores()}
        return {"deployments": report, "redis": redis, "detail": detail}

    def models_payload(caller: Caller) -> dict[str, Any]:
        created = int(gw.started_at)
        return {"object": "list", "data": [
            {"id": a, "object": "model", "created": created, "owned_by": "oss-gateway"}
            for a in visible_aliases(caller, gw.config)]}

    @api.get("/v1/models", tags=["openai"])
    async def list_models(request: Request) -> dict[str, Any]:
        return models_payload(await gw.keys.admit(dict(request.scope["headers"]), ""))

    @api.get("/models", include_in_schema=False)
    async def list_models_bare(request: Request) -> dict[str, Any]:
        return models_payload(await gw.keys.admit(dict(request.scope["headers"]), ""))

    @api.get("/v1/models/{model_id}", tags=["openai"])
    async def get_model(model_id: str, request: Request) -> dict[str, Any]:
        caller = await gw.keys.admit(dict(request.scope["headers"]), model_id)
        if model_id not in gw.config.aliases or not caller.may_use(model_id):
            raise errors.model_not_found(model_id, visible_aliases(caller, gw.config))
        return {"id": model_id, "object": "model", "created": int(gw.started_at), "owned_by": "oss-gateway"}

    @api.get("/metrics", tags=["ops"])
    async def metrics() -> Response:
        return Response(gw.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @api.post("/admin/reload", tags=["admin"])
    async def admin_reload(request: Request) -> Response:
        require_admin(dict(request.scope["headers"]), gw.master_key)
        ok = gw.reload_file()
        if ok:
            supervisor = os.environ.get(SUPERVISOR_ENV)
            if supervisor and supervisor.isdigit() and int(supervisor) == os.getppid():
                os.kill(int(supervisor), signal.SIGHUP)  # the supervisor tells every worker
            return JSONResponse({"status": "reloaded", "config": gw.config.digest,
                                 "aliases": {a: [d.id for d in ds] for a, ds in gw.config.aliases.items()}})
        return _error_response(errors.invalid_request("Config rejected; the running routes are unchanged. "
                                                      "See the gateway log for the YAML paths of the problems."))

    @api.delete("/cache", tags=["admin"])
    async def clear_cache(request: Request, namespace: str | None = None) -> dict[str, Any]:
        """Delete cached answers: one namespace (`?namespace=`), or every entry when none is given."""
        require_admin(dict(request.scope["headers"]), gw.master_key)
        if gw.cache is None:
            return {"deleted": 0, "cache": "off"}
        return {"deleted": await gw.cache.clear(namespace), "namespace": namespace}

    from gateway.schemas import declare_openai_routes

    declare_openai_routes(api)
    from gateway.keys.routes import build_router as keys_router

    api.include_router(keys_router(gw.keys, lambda: gw.master_key))
    from gateway.rollout.routes import build_router as rollout_router

    api.include_router(rollout_router(gw.comparisons, gw.canaries, lambda: gw.master_key))
    return api
