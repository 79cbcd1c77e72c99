"""Cache controls and keys: what a request asks of the cache, and the hashes that partition it.

- exact key: a hash of everything that can change the answer (endpoint, alias, tenant, namespace and the
  whole body except transport fields such as ``stream``);
- semantic partition: the same hash with the last user message left out; the last user message is the
  text that gets embedded and compared inside its partition.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.endpoints import BY_NAME

from .types import CacheRequest, CacheSettings

# Body fields that never change the answer (transport, bookkeeping, the cache controls themselves).
IGNORED_FIELDS = frozenset({"cache", "stream", "stream_options", "user", "metadata", "model",
                            "store", "service_tier", "request_id", "extra_headers"})
_NS_SAFE = re.compile(r"[^A-Za-z0-9_.-]")
DEFAULT_NAMESPACE = "default"


@dataclass(frozen=True)
class Controls:
    """Per-request controls from the body ``cache`` field and the ``Cache-Control`` header."""

    no_cache: bool = False      # do not serve from the cache (the answer may still be stored)
    no_store: bool = False      # do not store this answer
    ttl: float | None = None    # store this answer for this many seconds
    max_age: float | None = None  # only serve entries at most this old (``s-maxage`` / ``max-age``)
    namespace: str | None = None


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def parse_controls(body: dict[str, Any], header: str | None) -> Controls:
    raw = body.get("cache")
    spec: dict[str, Any] = raw if isinstance(raw, dict) else {}
    norm = {str(k).lower().replace("_", "-"): v for k, v in spec.items()}
    no_cache = _flag(norm.get("no-cache", False))
    no_store = _flag(norm.get("no-store", False))
    ttl = _num(norm.get("ttl"))
    max_age = _num(norm.get("s-maxage", norm.get("max-age")))
    ns = norm.get("namespace")
    namespace = str(ns) if isinstance(ns, (str, int)) and str(ns) else None
    if header:
        for part in header.split(","):
            token = part.strip().lower()
            if token == "no-cache":
                no_cache = True
            elif token == "no-store":
                no_store = True
            elif token.startswith(("s-maxage=", "max-age=")):
                age = _num(token.split("=", 1)[1].strip().strip('"'))
                if age is not None:
                    max_age = age if max_age is None else min(max_age, age)
    return Controls(no_cache=no_cache, no_store=no_store, ttl=ttl, max_age=max_age, namespace=namespace)


def namespace_tag(namespace: str | None) -> str:
    """A namespace as it appears inside Redis key names (no ':' or glob characters)."""
    ns = namespace or DEFAULT_NAMESPACE
    return _NS_SAFE.sub(lambda m: f"%{ord(m.group(0)):02X}", ns)


def _digest(obj: Any) -> str:
    data = orjson.dumps(obj, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    return hashlib.blake2b(data, digest_size=16).hexdigest()


@dataclass(frozen=True)
class PreparedKeys:
    controls: Controls
    namespace: str           # the namespace tag used in Redis key names
    exact: str               # hash of everything
    partition: str | None    # hash of everything but the last user message (None: not semantic-eligible)
    text: str | None         # the last user message
    temperature_ok: bool     # the semantic cache may serve this temperature


def prepare(req: CacheRequest, settings: CacheSettings, embedder_id: str) -> PreparedKeys:
    controls = parse_controls(req.body, req.cache_control_header)
    namespace = namespace_tag(controls.namespace or settings.namespace)
    body = {k: v for k, v in req.body.items() if k not in IGNORED_FIELDS}
    base = {"endpoint": req.endpoint, "alias": req.alias, "tenant": req.tenant, "ns": namespace}
    exact = _digest({**base, "body": body})

    partition: str | None = None
    text: str | None = None
    endpoint = BY_NAME.get(req.endpoint)
    split = endpoint.semantic_split(body, settings.max_text_chars) if endpoint is not None else None
    if split is not None:  # the endpoint's semantic text (chat: the last user message) is compared by meaning
        stripped, text = split
        partition = _digest({**base, "body": stripped, "embedder": embedder_id})
    temperature = _num(req.body.get("temperature"))
    temp_ok = temperature is None or temperature <= settings.max_temperature
    return PreparedKeys(controls=controls, namespace=namespace, exact=exact, partition=partition,
                        text=text, temperature_ok=temp_ok)
