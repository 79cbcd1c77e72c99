"""Usage accounting after a response is out: tokens and cost into the metrics, the key's reservation
settled to the real cost (spend, ledger), the deployment's tpm window, and the answer handed to the cache.

Token counts come from the upstream's own `usage`; where there is none, the gateway counts them itself
(the endpoint's estimate, refined off the hot path by the upstream's `/tokenize`) and labels them
`estimated="true"` — never a silent zero.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

import orjson

from gateway.call import Call
from gateway.config import Deployment
from gateway.endpoints.base import estimate_text_tokens
from gateway.metrics import Metrics
from gateway.router import RouterState
from gateway.streaming import StreamTally
from gateway.tokens import TokenCounter
from gateway.usage import Usage, usage_tail


class Settler(Protocol):
    def on_usage(self, call: Call, dep: Deployment, usage: Usage, cost: float) -> None: ...


class AnswerStore(Protocol):
    def store_plain(self, call: Call, body: bytes) -> None: ...

    def store_stream(self, call: Call, tally: StreamTally) -> None: ...


class Accounting:
    def __init__(self, router: RouterState, metrics: Metrics, keys: Settler, tokens: TokenCounter,
                 spawn: Callable[[Coroutine[Any, Any, Any]], None], cache: AnswerStore | None) -> None:
        self.router = router
        self.metrics = metrics
        self.keys = keys
        self.tokens = tokens
        self.spawn = spawn
        self.cache = cache

    def record(self, call: Call, dep: Deployment, usage: Usage) -> float:
        self.router.state(dep).note_tokens(dep, usage.total, self.router.clock())
        cost = self.metrics.record_tokens(dep, usage.prompt_tokens, usage.completion_tokens, call.team, call.key,
                                          usage.estimated)
        if call.ticket is not None:  # settle the key's reservation to the real cost, write the ledger
            self.keys.on_usage(call, dep, usage, cost)
        if call.mirror is not None:  # a mirrored request: its shadow compares tokens and cost
            call.mirror.on_usage(usage, cost)
        return cost

    def after_plain(self, call: Call, dep: Deployment, body: bytes) -> None:
        usage = usage_tail(body, call.api.usage)
        if usage is None:
            usage = self._plain_usage(call, body)
        if call.mirror is not None:
            call.mirror.body = body
        self.record(call, dep, usage)
        if self.cache is not None:
            self.cache.store_plain(call, body)

    def _plain_usage(self, call: Call, body: bytes) -> Usage:
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            data = None
        if isinstance(data, dict):
            usage = call.api.usage(data.get("usage"))
            if usage is not None:
                return usage
            text = call.api.output_text(data)
        else:
            text = ""
        return Usage(call.estimate_prompt(), estimate_text_tokens(text), True)

    def after_stream(self, call: Call, dep: Deployment, tally: Any) -> None:
        now = time.perf_counter()
        if call.first_byte_at is not None:
            self.metrics.child(self.metrics.ttft, dep.alias, dep.id).observe(call.first_byte_at - call.started)
            if tally.events > 1:
                self.metrics.child(self.metrics.itl, dep.alias, dep.id).observe(
                    (now - call.first_byte_at) / (tally.events - 1))
        if call.mirror is not None:
            call.mirror.tally = tally
        usage = call.api.usage(tally.usage) if tally.usage is not None else None
        if usage is not None:
            self.record(call, dep, usage)
        elif tally.events:
            self.spawn(self._estimate_stream(call, dep, tally))
        if self.cache is not None and tally.done and call.status == 200:
            self.cache.store_stream(call, tally)

    async def _estimate_stream(self, call: Call, dep: Deployment, tally: StreamTally) -> None:
        estimate, text = call.api.estimate_stream_tokens(tally.chunks())
        completion = await self.tokens.count(dep.id, dep.api_base if dep.native else None, dep.served_model, text,
                                             dep.api_key, estimate)
        self.record(call, dep, Usage(call.estimate_prompt(), completion, True))
