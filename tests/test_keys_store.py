"""The state store's semantics, with a controlled clock, on the Redis Lua scripts and on the in-memory
store alike (same scenarios, same answers): sliding windows, budgets with reservations, leases,
teams, admin writes, the ledger."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest

from gateway.keys.ledger import csv_text, decode_entries, entry_fields, parse_time, row
from gateway.keys.models import duration_seconds, hash_key, models_field
from gateway.keys.store import MemoryStore, RedisStore, Settlement

T0 = 1_700_000_040_000 + 59_000  # 59 s into a UTC minute (1_700_000_040 s is a multiple of 60)
LEASE = 600_000


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    if request.param == "memory":
        yield MemoryStore()
        return
    url = request.getfixturevalue("redis_server").extra["url"]
    s = RedisStore(url, f"t{uuid.uuid4().hex[:8]}", timeout=5)
    await s.start()
    assert s.up
    yield s
    await s.close()


def key_fields(h: str, team: str = "", **extra: Any) -> dict[str, str]:
    f = {"token": h, "alias": "", "team": team, "models": "", "meta": "{}", "created": "0", "spend": "0", "total": "0",
         "reserved": "0"}
    f.update({k: str(v) for k, v in extra.items()})
    return f


async def new_key(store: Any, team: str = "", alias: str = "", **limits: Any) -> str:
    h = hash_key(f"sk-{uuid.uuid4().hex}")
    assert await store.create("key", h, team, alias, key_fields(h, team, alias=alias, **limits)) == 1
    return h


async def new_team(store: Any, team_id: str, **limits: Any) -> None:
    f = {"id": team_id, "alias": "", "models": "", "meta": "{}", "created": "0", "spend": "0", "total": "0",
         "reserved": "0", **{k: str(v) for k, v in limits.items()}}
    assert await store.create("team", team_id, "", "", f) == 1


_n = 0


async def admit(store: Any, h: str, now: int, reserve: int = 0, est: int = 0, alias: str = "smart",
                kv: str = "", tv: str = "", lease: int = LEASE) -> Any:
    global _n
    _n += 1
    r = await store.admit(h, alias, now, f"tid{_n}", reserve, est, kv, tv, lease, True)
    return SimpleNamespace(**{f: getattr(r, f) for f in r.__slots__}, tid=f"tid{_n}")


async def settle(store: Any, h: str, r: Any, now: int, cost: int = 0, est: int = 0, tokens: int = 0,
                 team: str = "", ledger: list[Any] | None = None) -> None:
    st = Settlement(h, team, r.tid, r.now, r.flags, cost, est, tokens, 0 if ledger else now,
                    86_400_000 if ledger else 0, ledger or [])
    assert await store.settle_many([st]) == []


async def test_rpm_is_a_sliding_window_without_a_burst_at_the_minute(store: Any) -> None:
    h = await new_key(store, rpm=3)
    for dt in (0, 100, 200):
        assert (await admit(store, h, T0 + dt)).status == 1
    r = await admit(store, h, T0 + 1500)  # a new clock minute has begun: a fixed window would allow 3 more
    assert r.status == 4 and r.detail == "key:rpm:3"
    assert 58_000 <= r.retry_ms <= 58_500
    assert (await admit(store, h, T0 + 60_001)).status == 1  # the first request left the window
    assert (await admit(store, h, T0 + 60_050)).status == 4  # the second is still in it


async def test_budget_reserves_worst_case_and_settles_to_real_cost(store: Any) -> None:
    h = await new_key(store, budget=25)
    a = await admit(store, h, T0, reserve=10)
    b = await admit(store, h, T0, reserve=10)
    assert (a.status, b.status) == (1, 1)
    c = await admit(store, h, T0, reserve=10)
    assert c.status == 5 and c.detail == "key:budget:25:0:20"
    await settle(store, h, a, T0 + 10, cost=5)  # real cost below the reservation gives the rest back
    rec = await store.get("key", h)
    assert (rec["spend"], rec["reserved"]) == ("5", "10")
    assert (await admit(store, h, T0 + 20, reserve=10)).status == 1  # 5 + 10 + 10 = 25 <= 25
    assert (await admit(store, h, T0 + 20, reserve=1)).status == 5
    await settle(store, h, b, T0 + 30, cost=10)
    rec = await store.get("key", h)
    assert (rec["spend"], rec["reserved"], rec["total"]) == ("15", "10", "15")


async def test_a_lease_that_never_settles_expires_and_returns_its_slot(store: Any) -> None:
    h = await new_key(store, par=1, budget=100)
    assert (await admit(store, h, T0, reserve=60, lease=1000)).status == 1
    r = await admit(store, h, T0 + 500, reserve=60)
    assert r.status == 4 and r.detail == "key:par:1"
    assert (await admit(store, h, T0 + 1001, reserve=60)).status == 1  # the crashed request's lease ran out
    assert (await store.get("key", h))["reserved"] == "60"


async def test_tpm_counts_estimates_then_real_tokens(store: Any) -> None:
    h = await new_key(store, tpm=100)
    a = await admit(store, h, T0, est=60)
    assert a.status == 1 and a.flags & 2
    assert (await admit(store, h, T0 + 10, est=60)).status == 1  # 60 < 100 when it was checked
    r = await admit(store, h, T0 + 20, est=60)
    assert r.status == 4 and r.detail == "key:tpm:100"
    await settle(store, h, a, T0 + 30, est=60, tokens=10)  # the real count was much smaller
    assert (await admit(store, h, T0 + 40, est=1)).status == 1  # 10 + 60 + 1 < 100
    assert (await admit(store, h, T0 + 61_000, est=1)).status == 1  # everything older than 60 s is gone


async def test_team_limits_apply_to_all_its_keys(store: Any) -> None:
    await new_team(store, "blue", rpm=2, budget=1000)
    k1, k2 = await new_key(store, team="blue"), await new_key(store, team="blue", rpm=100)
    assert (await admit(store, k1, T0, reserve=1)).status == 1
    r2 = await admit(store, k2, T0, reserve=1)
    assert r2.status == 1 and r2.flags & 4  # the team's in-flight lease
    r = await admit(store, k1, T0 + 1)
    assert r.status == 4 and r.detail == "team:rpm:2"
    await settle(store, k2, r2, T0 + 2, cost=7, team="blue")
    team = await store.get("team", "blue")
    assert (team["spend"], team["reserved"]) == ("7", "1")
    assert (await store.get("key", k2))["spend"] == "7"


async def test_budget_window_resets_after_budget_duration(store: Any) -> None:
    h = await new_key(store, budget=10, bdur=10, breset=T0 + 10_000)
    a = await admit(store, h, T0, reserve=10)
    await settle(store, h, a, T0 + 1, cost=10)
    r = await admit(store, h, T0 + 2)
    assert r.status == 5 and 9_000 <= r.retry_ms <= 10_000
    b = await admit(store, h, T0 + 10_001, reserve=10)
    assert b.status == 1
    rec = await store.get("key", h)
    assert rec["spend"] == "0" and int(rec["breset"]) == T0 + 20_000 and rec["total"] == "10"


async def test_models_expiry_and_versions(store: Any) -> None:
    await new_team(store, "red", models=models_field(["smart", "fast"]))
    h = await new_key(store, team="red", models=models_field(["smart", "long"]))
    r = await admit(store, h, T0, alias="smart")
    assert r.status == 1 and r.key is not None and r.team is not None  # unknown versions: records come back
    same = await admit(store, h, T0, alias="smart", kv=r.kv, tv=r.tv)
    assert same.status == 1 and same.key is None and same.team is None
    assert (await admit(store, h, T0, alias="fast", kv=r.kv, tv=r.tv)).detail == "key"
    assert (await admit(store, h, T0, alias="long", kv=r.kv, tv=r.tv)).detail == "team"
    assert await store.update("key", h, None, None, [], {"expires": str(T0 + 5)}) == 1
    r2 = await admit(store, h, T0 + 10, kv=r.kv, tv=r.tv)
    assert r2.status == 2 and r2.key is not None and r2.kv != r.kv
    assert (await admit(store, hash_key("sk-nope"), T0)).status == 0


async def test_admin_writes(store: Any) -> None:
    await new_team(store, "green")
    h = await new_key(store, team="green", alias="svc-a")
    assert await store.create("key", h, "", "", key_fields(h)) == 0
    assert await store.create("key", "x" * 64, "nosuch", "", key_fields("x" * 64)) == -1
    assert await store.create("key", "y" * 64, "", "svc-a", key_fields("y" * 64)) == -2
    assert await store.alias_lookup("svc-a") == h
    assert await store.update("key", h, "", "svc-b", ["rpm"], {"tpm": "5"}) == 1
    assert await store.members("team:green:keys") == []
    assert await store.alias_lookup("svc-a") is None and await store.alias_lookup("svc-b") == h
    assert await store.update("key", h, "nosuch", None, [], {}) == -1
    assert await store.update("key", "z" * 64, None, None, [], {}) == 0
    k2 = await new_key(store, team="green", alias="svc-c")
    ok, gone = await store.delete_team("green")
    assert ok and gone == [k2] and await store.get("key", k2) is None and await store.alias_lookup("svc-c") is None
    assert await store.delete_keys([h, "q" * 64]) == [h]
    assert await store.members("keys") == [] and await store.members("teams") == []


async def test_ledger_pages(store: Any) -> None:
    h = await new_key(store)
    for i in range(5):
        r = await admit(store, h, T0 + i)
        await settle(store, h, r, T0 + 1000 * i, cost=i, ledger=entry_fields(
            rid=f"r{i}", token=h, key="k", team="", alias="smart", model="m", dep="d", pt=1, ct=2, cost=i, est=False,
            cache="miss", status=200, stream=False))
    page = decode_entries(await store.ledger("-", "+", 2))
    assert [e["rid"] for _, e in page] == ["r0", "r1"]
    rest = decode_entries(await store.ledger("(" + page[-1][0], "+", 10))
    assert [e["rid"] for _, e in rest] == ["r2", "r3", "r4"]
    window = decode_entries(await store.ledger(page[1][0], rest[1][0], 10))
    assert [e["rid"] for _, e in window] == ["r1", "r2", "r3"]
    assert row(*window[0])["spend"] == 1e-9 and row(*window[0])["total_tokens"] == 3


def test_durations_dates_and_csv() -> None:
    assert [duration_seconds(x) for x in ("30s", "10m", "1h", "30d", "2w", "1mo", 90)] == \
        [30, 600, 3600, 2592000, 1209600, 2592000, 90]
    for bad in ("", "0s", "soon", "1y", -5):
        with pytest.raises(ValueError):
            duration_seconds(bad)
    assert parse_time("2025-01-31", False) == 1738281600000
    assert parse_time("2025-01-31", True) == 1738367999999
    assert parse_time("2025-01-31T12:00:00Z", False) == 1738324800000
    with pytest.raises(ValueError):
        parse_time("yesterday", False)
    text = csv_text([{"request_id": "=HYPERLINK(1)", "key_alias": "-x", "spend": 0.5}], True)
    assert "'=HYPERLINK(1)" in text and "'-x" in text


async def test_tokens_above_the_estimate_count_when_the_request_settles(store: Any) -> None:
    """A stream longer than the 60 s window: its completion tokens still count (from the second of settlement),
    and an over-estimate whose second has left the window is not taken back from the current window."""
    h = await new_key(store, tpm=50)
    a = await admit(store, h, T0, est=10)
    await settle(store, h, a, T0 + 70_000, est=10, tokens=100)  # 70 s later: 90 more tokens than estimated
    r = await admit(store, h, T0 + 71_000, est=1)
    assert r.status == 4 and r.detail == "key:tpm:50"
    assert 58_000 <= r.retry_ms <= 59_000  # until the settlement's second leaves the window
    assert (await admit(store, h, T0 + 130_001, est=1)).status == 1

    h2 = await new_key(store, tpm=1)
    b = await admit(store, h2, T0, est=60)
    await settle(store, h2, b, T0 + 70_000, est=60, tokens=5)  # over-estimated, but its second is gone
    assert (await admit(store, h2, T0 + 71_000, est=1)).status == 1  # window is 0, not -55
    assert (await admit(store, h2, T0 + 71_001, est=1)).status == 4


async def test_release_frees_the_parallel_slot_but_keeps_the_reservation(store: Any) -> None:
    h = await new_key(store, par=1, budget=100)
    a = await admit(store, h, T0, reserve=60)
    assert a.status == 1 and (await admit(store, h, T0 + 1, reserve=10)).detail == "key:par:1"
    store.release(h, "", a.tid, a.flags)
    b = await admit(store, h, T0 + 2, reserve=60)  # slot free, but 60 + 60 > 100: the reservation holds
    assert b.status == 5 and b.detail == "key:budget:100:0:60"
    await settle(store, h, a, T0 + 3, cost=10)
    c = await admit(store, h, T0 + 4, reserve=60)
    assert c.status == 1
    rec = await store.get("key", h)
    assert (rec["spend"], rec["reserved"]) == ("10", "60")

    await new_team(store, "duo", par=1)  # the team's slot too
    k = await new_key(store, team="duo")
    d = await admit(store, k, T0)
    assert d.status == 1 and (await admit(store, k, T0 + 1)).detail == "team:par:1"
    store.release(k, "duo", d.tid, d.flags)
    assert (await admit(store, k, T0 + 2)).status == 1


async def test_blocked_keys_and_teams(store: Any) -> None:
    await new_team(store, "grey")
    h = await new_key(store, team="grey")
    assert (await admit(store, h, T0)).status == 1
    assert await store.update("key", h, None, None, [], {"blocked": "1"}) == 1
    assert ((r := await admit(store, h, T0)).status, r.detail) == (6, "key")
    assert await store.update("key", h, None, None, ["blocked"], {}) == 1
    assert await store.update("team", "grey", None, None, [], {"blocked": "1"}) == 1
    assert ((r := await admit(store, h, T0)).status, r.detail) == (6, "team")


async def test_team_ids_and_aliases_are_one_namespace(store: Any) -> None:
    async def team(team_id: str, alias: str) -> int:
        f = {"id": team_id, "alias": alias, "models": "", "meta": "{}", "created": "0", "spend": "0", "total": "0",
             "reserved": "0"}
        return int(await store.create("team", team_id, "", alias, f))

    assert await team("red", "Shared") == 1
    assert await team("blue", "Shared") == -2  # the same alias
    assert await team("blue", "red") == -2  # another team's id (its label when it has no alias)
    assert await team("Shared", "") == -3  # another team's alias
    assert await team("blue", "Blue") == 1
    assert await store.update("team", "blue", None, "Shared", [], {}) == -2
    assert (await store.get("team", "blue"))["alias"] == "Blue"
    assert await store.update("team", "red", None, "Other", [], {}) == 1
    assert await store.update("team", "blue", None, "Shared", [], {}) == 1  # freed by the rename
    assert await team("Blue", "") == 1  # blue's old alias was freed too
    assert await store.update("team", "red", None, "", [], {}) == 1  # back to its id as label
    assert await team("green", "red") == -2  # ... which stays claimed
    assert (await store.delete_team("red"))[0]
    assert await team("red", "") == 1  # a deleted team's names are free
    # every check before any write: a refused update changes nothing
    h = await new_key(store, alias="svc-x")
    await new_key(store, alias="svc-y")
    assert await store.update("key", h, "blue", "svc-y", [], {"rpm": "1"}) == -2
    rec = await store.get("key", h)
    assert (rec["team"], rec["alias"], rec.get("rpm")) == ("", "svc-x", None)
