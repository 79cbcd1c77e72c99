"""The in-process follow-up store (no Redis): per tenant, bounded in entries and bytes, least recently used
out first, expired after its TTL."""

from __future__ import annotations

import asyncio

from gateway.followups import FollowUps


def test_local_store_is_per_tenant_and_bounded_in_bytes() -> None:
    async def run() -> None:
        f = FollowUps(None, "t", max_local=1000, max_local_bytes=10_000)
        big = [{"type": "message", "content": "x" * 1500}]
        for i in range(20):
            await f.put("tenant-a", f"r{i}", "dep-1", big)
        assert f._local_bytes <= 10_000
        assert await f.get("tenant-a", "r0") is None  # the oldest went first
        assert (await f.get("tenant-a", "r19"))[0] == "dep-1"  # type: ignore[index]
        assert await f.get("tenant-b", "r19") is None  # another tenant does not see it
        assert await f.delete("tenant-a", "r19") and await f.get("tenant-a", "r19") is None
        before = f._local_bytes
        await f.put("tenant-a", "r18", "dep-2", None)  # a rewrite replaces, not adds
        assert f._local_bytes < before and (await f.get("tenant-a", "r18"))[0] == "dep-2"  # type: ignore[index]

    asyncio.run(run())


def test_too_large_conversation_is_marked_not_kept() -> None:
    async def run() -> None:
        f = FollowUps(None, "t")
        await f.put("a", "r", "dep", [{"content": "x" * (2 << 20)}])
        rec = await f.get("a", "r")
        assert rec is not None and rec[1] is None and rec[2] is True

    asyncio.run(run())
