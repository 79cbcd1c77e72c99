"""The gateway as `gateway compare` and `gateway eval` reach it: which URL, and what an error answer says."""

from __future__ import annotations

import json
import os

DEFAULT_URL = "http://127.0.0.1:4000"


def gateway_url(given: str | None) -> str:
    """--url, else $GATEWAY_URL, else the default port of `gateway serve` on this host."""
    return (given or os.environ.get("GATEWAY_URL") or DEFAULT_URL).rstrip("/")


def error_message(body: bytes, limit: int = 300) -> str:
    """The `error.message` of an OpenAI-shaped error body, else the start of the body."""
    try:
        return str(json.loads(body)["error"]["message"])[:limit]
    except (ValueError, KeyError, TypeError):
        return body[:limit].decode("utf-8", "replace").strip()
