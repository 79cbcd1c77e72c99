"""OpenAPI declarations of the registry's endpoints (gateway/endpoints: each declares its request model).

The hot path parses raw bytes and never goes through FastAPI; these routes exist so the served OpenAPI
spec documents every request schema. Should a request reach them (they are not reached through
`GatewayASGI`), they hand it to the same proxy, unparsed.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from pydantic import BaseModel
from starlette.responses import Response

from gateway.endpoints import ENDPOINTS, Endpoint


class _HandOff(Response):
    """Serve the request through the proxy (the body has not been read)."""

    def __init__(self, request: Request, endpoint: Endpoint) -> None:
        super().__init__()
        self._request = request
        self._endpoint = endpoint

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        gw = self._request.app.state.gateway
        await gw.proxy(self._endpoint, scope, receive, send)


def _body(model: type[BaseModel]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


def _handler(endpoint: Endpoint) -> Any:
    def handler(request: Request) -> Response:
        return _HandOff(request, endpoint)

    return handler


def declare_openai_routes(api: FastAPI) -> None:
    for endpoint in ENDPOINTS:
        api.add_api_route(endpoint.paths[0], _handler(endpoint), methods=["POST"], tags=[endpoint.tag],
                          summary=endpoint.summary, openapi_extra=_body(endpoint.openapi_model()),
                          response_class=Response)
