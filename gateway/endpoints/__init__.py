"""The endpoint registry: every API endpoint the gateway serves, one module each. Adding an endpoint is
one module plus one line in `ENDPOINTS`."""

from __future__ import annotations

from collections.abc import Mapping

from gateway.endpoints.base import Endpoint
from gateway.endpoints.chat import Chat
from gateway.endpoints.completions import Completions
from gateway.endpoints.embeddings import Embeddings
from gateway.endpoints.messages import CountTokens, Messages
from gateway.endpoints.responses import Responses

ENDPOINTS: tuple[Endpoint, ...] = (Chat(), Completions(), Embeddings(), Responses(), Messages(), CountTokens())

BY_NAME: Mapping[str, Endpoint] = {e.name: e for e in ENDPOINTS}
BY_PATH: Mapping[str, Endpoint] = {p: e for e in ENDPOINTS for p in e.paths}

__all__ = ["BY_NAME", "BY_PATH", "ENDPOINTS", "Endpoint"]
