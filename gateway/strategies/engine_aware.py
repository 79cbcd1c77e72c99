"""`engine-aware`: route on what each vLLM engine is doing, and keep a conversation where its prefix is
already cached.

Load of a deployment (lower is better), from the engine's own `/metrics` (see gateway/engine.py) plus
the gateway's fresh in-flight count:

    demand = running + waiting + max(0, in_flight_now - in_flight_at_reading)
    score  = queue_weight * demand / max_num_seqs + kv_weight * kv_cache_usage

A deployment without engine metrics scores `queue_weight * in_flight / max_num_seqs`. A deployment is
*saturated* when its demand reaches max_num_seqs (a full batch: more requests wait) or its KV cache is
nearly full. A request or two in `waiting` alone is not saturation: vLLM admits new requests at the
next step boundary, so a busy engine shows them in most readings.

Affinity: the request's affinity key is the session (`x-session-id` header, else the OpenAI `user`
field) or, without one, a hash of the start of the prompt that every turn of a conversation shares
(system prompt, tools and the first user message; the first 2,000 characters of a completions prompt).
Rendezvous hashing ranks the deployments for that key the same way on every gateway replica, with no
coordination. The first deployment in that order that is not saturated and scores within
`affinity_slack` of the least-loaded one takes the request (bounded-load affinity: reason `prefix` or
`session` when it is the key's home, `spill` when the home was too busy); without a key, or when every
ranked deployment is too busy, the least-loaded one does (reason `load`).

Defaults, measured with bench/routing_bench.py (docs/routing.md): below saturation a few more requests
in a continuous batch cost each of them little, while a conversation sent away from its home computes
its whole history again, so the home keeps a conversation until it is half a batch (`affinity_slack`
0.5 of max_num_seqs) busier than the least-loaded deployment or full. With 0.25, 6% of the calls of
the agentic workload spilled and the hit ratio fell from 0.86 to 0.82 (p99 TTFT 2.4x worse).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import orjson

from gateway.strategies.base import Decision, RouteRequest, RouterView, T, weighted_choice

PREFIX_CHARS = 2000


@dataclass(frozen=True, slots=True)
class EngineAwareOptions:
    poll_interval: float = 0.25  # seconds between reads of each engine's /metrics
    queue_weight: float = 1.0
    kv_weight: float = 0.5
    affinity_slack: float = 0.5  # a key's home may score this much above the least-loaded deployment
    max_num_seqs: int = 256  # vLLM's default batch size; model_info.max_num_seqs overrides per deployment
    kv_saturated: float = 0.95

    NUMBERS: ClassVar[tuple[str, ...]] = ("poll_interval", "queue_weight", "kv_weight", "affinity_slack",
                                          "kv_saturated")

    @classmethod
    def parse(cls, raw: Mapping[str, Any], path: str) -> tuple[EngineAwareOptions, list[str]]:
        """Options from `router_settings.engine_aware`; problems name their YAML path."""
        problems: list[str] = []
        values: dict[str, Any] = {}
        for key, value in raw.items():
            where = f"{path}.{key}"
            if key in cls.NUMBERS:
                if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                    problems.append(f"{where}: must be a number >= 0")
                else:
                    values[key] = float(value)
            elif key == "max_num_seqs":
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    problems.append(f"{where}: must be an integer >= 1")
                else:
                    values[key] = value
            else:
                problems.append(f"{where}: unknown option (use one of: {', '.join((*cls.NUMBERS, 'max_num_seqs'))})")
        if values.get("poll_interval", 1.0) == 0:
            problems.append(f"{path}.poll_interval: must be > 0")
        return cls(**values), problems


def affinity_key(request: RouteRequest) -> tuple[str, bytes] | None:
    """(reason, key) for the request's affinity, or None when it has nothing to stick to."""
    session = request.headers.get(b"x-session-id")
    if session:
        return "session", session[:256]
    body = request.body
    user = body.get("user")
    if isinstance(user, str) and user:
        return "session", user[:256].encode()
    messages = body.get("messages")
    if isinstance(messages, list) and messages:
        head: list[Any] = []
        for m in messages:
            head.append(m)
            if isinstance(m, dict) and m.get("role") == "user":
                break
        try:
            data = orjson.dumps([body.get("tools"), head])
        except TypeError:
            return None
        return "prefix", hashlib.blake2b(data, digest_size=16).digest()
    for field in ("prompt", "input", "system"):
        value = body.get(field)
        if isinstance(value, str) and value:
            return "prefix", value[:PREFIX_CHARS].encode("utf-8", "replace")
    return None


def rendezvous_order(key: bytes, candidates: Sequence[T]) -> list[T]:
    """Candidates ranked for `key` by highest random weight: the same order on every replica."""
    def rank(d: T) -> bytes:
        return hashlib.blake2b(key + b"\x00" + d.id.encode(), digest_size=8).digest()

    return sorted(candidates, key=rank, reverse=True)


class EngineAware:
    name: ClassVar[str] = "engine-aware"

    def __init__(self, options: EngineAwareOptions | None = None) -> None:
        self.options = options or EngineAwareOptions()

    def _capacity(self, d: Any) -> int:
        return getattr(d, "max_num_seqs", None) or self.options.max_num_seqs

    def _load(self, d: Any, view: RouterView) -> tuple[float, bool]:
        """(score, saturated) of one deployment."""
        o = self.options
        cap = self._capacity(d)
        local = view.in_flight(d)
        e = view.engine(d)
        if e is None:
            return o.queue_weight * local / cap, local >= cap
        demand = e.running + e.waiting + max(0, local - e.in_flight_at)
        score = o.queue_weight * demand / cap + o.kv_weight * e.kv_usage
        # a request or two waiting for the engine's next step is routine (vLLM admits new requests at step
        # boundaries); a full batch or a full KV cache is not
        return score, e.kv_usage >= o.kv_saturated or demand >= cap

    def pick(self, candidates: Sequence[T], view: RouterView, request: RouteRequest) -> Decision[T]:
        loads = {d.id: self._load(d, view) for d in candidates}
        best = min(score for score, _ in loads.values())
        key = affinity_key(request)
        if key is not None:
            reason, k = key
            bound = best + self.options.affinity_slack
            for i, d in enumerate(rendezvous_order(k, candidates)):
                score, saturated = loads[d.id]
                if not saturated and score <= bound:
                    return Decision(d, reason if i == 0 else "spill")
        lowest = [d for d in candidates if loads[d.id][0] == best]
        return Decision(lowest[0] if len(lowest) == 1 else weighted_choice(lowest, view.rng), "load")
