"""Where comparison records are kept: a capped Redis stream when a state Redis is configured (every replica
writes to it, `gateway compare` reads all of them through any replica), else a bounded list in this process."""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any

import orjson

from gateway.rollout.records import Comparison

log = logging.getLogger("gateway.comparisons")

MAX_RECORDS = 100_000  # in the Redis stream (approximately: MAXLEN ~); ~1 kB each
MAX_LOCAL = 20_000  # in this process, without Redis
MAX_READ = 100_000  # one read of GET /admin/comparisons


class ComparisonLog:
    def __init__(self, redis: Any | None, prefix: str, max_records: int = MAX_RECORDS,
                 max_local: int = MAX_LOCAL) -> None:
        self.redis = redis
        self.key = f"{prefix}:comparisons"
        self.max_records = max_records
        self._local: deque[tuple[float, bytes]] = deque(maxlen=max_local)
        self._warned = False

    async def add(self, record: Comparison) -> None:
        raw = orjson.dumps(record.to_dict())
        if self.redis is not None:
            try:
                await self.redis.xadd(self.key, {b"r": raw}, maxlen=self.max_records, approximate=True)
                self._warned = False
                return
            except Exception as exc:  # noqa: BLE001 - the store is down: keep it here meanwhile
                if not self._warned:
                    log.warning("comparison records: the shared store failed (%s); keeping them in this process",
                                type(exc).__name__)
                    self._warned = True
        self._local.append((record.ts, raw))

    async def since(self, seconds: float, limit: int = MAX_READ) -> tuple[list[dict[str, Any]], bool]:
        """Records of the last `seconds`, oldest first, at most `limit` (the newest ones); (records, truncated)."""
        limit = max(1, min(limit, MAX_READ))
        start = time.time() - seconds
        raws: list[bytes] = []
        if self.redis is not None:
            try:
                newest = await self.redis.xrevrange(self.key, "+", f"{int(start * 1000)}-0", count=limit + 1)
                raws = [fields[b"r"] for _, fields in reversed(newest)]
            except Exception as exc:  # noqa: BLE001
                log.warning("comparison records: the shared store failed (%s)", type(exc).__name__)
        raws += [raw for ts, raw in self._local if ts >= start]
        truncated = len(raws) > limit
        return [orjson.loads(r) for r in raws[-limit:]], truncated
