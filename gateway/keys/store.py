"""Where keys, teams, limits, spend and the ledger live: the state Redis (shared by every worker and
replica, counted atomically by the Lua scripts of `limits.py`), or process memory when no Redis is
configured (same semantics, one process only, lost on restart)."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.keys import limits as L
from gateway.keys.resp import RedisLink, ReplyError, StoreUnavailable

log = logging.getLogger("gateway.keys")

__all__ = ["AdmitResult", "MemoryStore", "RedisStore", "ReplyError", "Settlement", "StoreUnavailable"]


@dataclass(slots=True)
class AdmitResult:
    status: int            # 0 unknown, 1 ok, 2 expired, 3 model not allowed, 4 rate limit, 5 budget, 6 blocked
    detail: str = ""
    retry_ms: int = 0
    kv: str = ""
    tv: str = ""
    key: dict[str, str] | None = None   # the key's fields when its version differs from the caller's
    team: dict[str, str] | None = None
    flags: int = 0
    now: int = 0           # the store's clock at admission (ms)


@dataclass(slots=True)
class Settlement:
    token: str          # key hash, "" for the master key
    team: str
    tid: str
    admitted: int
    flags: int
    cost: int
    est: int
    tokens: int
    now: int
    retention: int
    ledger: list[Any]

    def args(self, prefix: str) -> list[Any]:
        return [prefix, self.token, self.team, self.tid, self.admitted, self.flags, self.cost, self.est,
                self.tokens, self.now, self.retention, *self.ledger]


def _s(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else ("" if v is None else str(v))


def _fields(flat: Sequence[Any] | None) -> dict[str, str] | None:
    if not flat:
        return None
    return {_s(flat[i]): _s(flat[i + 1]) for i in range(0, len(flat) - 1, 2)}


NUL = "\x00"


class RedisStore:
    backend = "redis"

    def __init__(self, url: str, prefix: str, timeout: float, on_state: Callable[[bool], None] | None = None) -> None:
        self.prefix = prefix
        self.link = RedisLink(url, timeout=timeout, on_state=on_state, scripts=L.ALL_SCRIPTS)

    @property
    def up(self) -> bool:
        return self.link.up

    @property
    def where(self) -> str:
        return self.link.where

    async def start(self) -> None:
        await self.link.start()

    async def close(self) -> None:
        await self.link.close()

    async def ping(self) -> bool:
        try:
            return await self.link.call("PING") == b"PONG"
        except (StoreUnavailable, ReplyError):
            return False

    async def maxmemory_policy(self) -> str | None:
        try:
            r = await self.link.call("CONFIG", "GET", "maxmemory-policy")
        except (StoreUnavailable, ReplyError):
            return None
        return _s(r[1]) if isinstance(r, list) and len(r) == 2 else None

    # -- hot path -------------------------------------------------------------------------------------

    async def admit(self, h: str, alias: str, now: int, tid: str, reserve: int, est: int, kv: str, tv: str,
                    lease: int, admit: bool) -> AdmitResult:
        r = await self.link.evalsha(L.ADMIT, (self.prefix, h, alias, now, tid, reserve, est, kv, tv, lease,
                                              b"1" if admit else b"0"))
        if r[0] == 0:
            return AdmitResult(0)
        return AdmitResult(r[0], _s(r[1]), int(r[2]), _s(r[3]), _s(r[4]), _fields(r[5]), _fields(r[6]), int(r[7]),
                           int(r[8]))

    def release(self, token: str, team: str, tid: str, flags: int) -> None:
        """Free a request's parallel slots. Queued on the connection before this returns, so any command
        sent after it (the next admission of the same key) sees the slot free; nothing to wait for."""
        args = (self.prefix, token, team, tid, flags)
        try:
            fut = self.link.send([b"EVALSHA", L.RELEASE.sha, b"0", *args])
        except StoreUnavailable:
            return  # the settlement (written when Redis is back) or the lease frees it

        def done(f: Any) -> None:
            r = f.result()
            if isinstance(r, ReplyError) and str(r).startswith("NOSCRIPT"):
                try:
                    self.link.send([b"EVAL", L.RELEASE.source, b"0", *args])
                except StoreUnavailable:
                    pass

        fut.add_done_callback(done)

    async def index_teams(self) -> list[tuple[str, str, str]]:
        """Claim the names of teams created before the name index existed; (name, team, owner) shared."""
        r = await self.link.evalsha(L.INDEX_TEAMS, (self.prefix,))
        flat = [_s(x) for x in r]
        return [(flat[i], flat[i + 1], flat[i + 2]) for i in range(0, len(flat) - 2, 3)]

    async def settle_many(self, batch: Sequence[Settlement]) -> list[Settlement]:
        """Write a batch in one pipeline; returns the settlements that could not be written (Redis down)."""
        try:
            futs = self.send_settlements(batch)
        except StoreUnavailable:
            return list(batch)
        return await self.collect_settlements(list(zip(batch, futs, strict=True)))

    def send_settlements(self, batch: Sequence[Settlement]) -> list[asyncio.Future[Any]]:
        """Queue a batch on the connection (before this returns); `collect_settlements` reads the replies."""
        return self.link.evalsha_many(L.SETTLE, [s.args(self.prefix) for s in batch])

    async def collect_settlements(self, sent: Sequence[tuple[Settlement, asyncio.Future[Any]]]) -> list[Settlement]:
        """The settlements that could not be written (Redis down); refused ones are logged; NOSCRIPT is retried."""
        failed: list[Settlement] = []
        noscript: list[Settlement] = []
        for st, f in sent:
            r = await f
            if isinstance(r, StoreUnavailable):
                failed.append(st)
            elif isinstance(r, ReplyError):
                if str(r).startswith("NOSCRIPT"):
                    noscript.append(st)
                else:  # e.g. OOM on a full noeviction Redis: this one is lost, say so
                    log.error("keys: state Redis refused a settlement (spend + ledger entry of %s): %s",
                              st.tid, r)
        for st in noscript:  # SCRIPT FLUSH since the last connect: EVAL loads it again
            try:
                await self.link.call(b"EVAL", L.SETTLE.source, b"0", *st.args(self.prefix))
            except StoreUnavailable:
                failed.append(st)
        return failed

    # -- admin ----------------------------------------------------------------------------------------

    async def create(self, kind: str, id_: str, team: str, alias: str, fields: dict[str, str]) -> int:
        flat = [x for kv in fields.items() for x in kv]
        return int(await self.link.evalsha(L.CREATE, (self.prefix, kind, id_, team, alias, *flat)))

    async def update(self, kind: str, id_: str, team: str | None, alias: str | None, drop: Sequence[str],
                     fields: dict[str, str]) -> int:
        flat = [x for kv in fields.items() for x in kv]
        return int(await self.link.evalsha(L.UPDATE, (self.prefix, kind, id_, NUL if team is None else team,
                                                      NUL if alias is None else alias, len(drop), *drop, *flat)))

    async def delete_keys(self, hashes: Sequence[str]) -> list[str]:
        if not hashes:
            return []
        return [_s(x) for x in await self.link.evalsha(L.DELETE_KEYS, (self.prefix, *hashes))]

    async def delete_team(self, team_id: str) -> tuple[bool, list[str]]:
        r = await self.link.evalsha(L.DELETE_TEAM, (self.prefix, team_id))
        return r[0] == 1, [_s(x) for x in r[1]]

    async def get(self, kind: str, id_: str) -> dict[str, str] | None:
        return _fields(await self.link.call("HGETALL", f"{self.prefix}:{kind}:{id_}"))

    async def get_many(self, kind: str, ids: Sequence[str]) -> list[dict[str, str] | None]:
        out: list[dict[str, str] | None] = []
        for start in range(0, len(ids), 500):
            rs = await self.link.pipeline([("HGETALL", f"{self.prefix}:{kind}:{i}") for i in ids[start:start + 500]])
            out.extend(None if isinstance(r, Exception) else _fields(r) for r in rs)
        return out

    async def members(self, name: str) -> list[str]:
        return sorted(_s(x) for x in await self.link.call("SMEMBERS", f"{self.prefix}:{name}"))

    async def alias_lookup(self, alias: str) -> str | None:
        r = await self.link.call("HGET", f"{self.prefix}:key_alias", alias)
        return _s(r) if r is not None else None

    async def ledger(self, start: str, end: str, count: int) -> list[Any]:
        return await self.link.call("XRANGE", f"{self.prefix}:ledger", start, end, "COUNT", count)


# -- one process, no Redis ------------------------------------------------------------------------------

def _num(x: str | None) -> int | None:
    if x is None or x == "":
        return None
    return int(x)


class MemoryStore:
    """The same operations and semantics as the Lua scripts, on dicts (single process only)."""

    backend = "memory"
    up = True
    where = "memory"

    def __init__(self, ledger_max: int = 100_000) -> None:
        self.recs: dict[tuple[str, str], dict[str, str]] = {}
        self.sets: dict[str, set[str]] = {}
        self.aliases: dict[str, str] = {}
        self.team_names: dict[str, str] = {}
        self.ver = 0
        self.rpm: dict[str, deque[tuple[int, str]]] = {}
        self.tpm: dict[str, dict[int, int]] = {}
        self.par: dict[str, dict[str, int]] = {}
        self.fly: dict[str, dict[str, int]] = {}
        self.res: dict[str, dict[str, int]] = {}
        self.log: deque[tuple[str, dict[str, str]]] = deque(maxlen=ledger_max)
        self._last_id = (0, 0)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def ping(self) -> bool:
        return True

    async def maxmemory_policy(self) -> str | None:
        return None

    @staticmethod
    def _roll(rec: dict[str, str], now: int) -> None:
        bdur = _num(rec.get("bdur"))
        if not bdur or bdur <= 0:
            return
        period = bdur * 1000
        reset = _num(rec.get("breset"))
        if reset is None:
            rec["breset"] = str(now + period)
        elif reset <= now:
            rec["breset"] = str(reset + ((now - reset) // period + 1) * period)
            rec["spend"] = "0"

    def _incr(self, rec: dict[str, str], field: str, by: int) -> None:
        rec[field] = str((_num(rec.get(field)) or 0) + by)

    async def admit(self, h: str, alias: str, now: int, tid: str, reserve: int, est: int, kv: str, tv: str,
                    lease: int, admit: bool) -> AdmitResult:
        now = now or int(time.time() * 1000)
        k = self.recs.get(("key", h))
        if k is None:
            return AdmitResult(0)
        team_id = k.get("team", "")
        t = self.recs.get(("team", team_id)) if team_id else None
        kver, tver = k.get("v", ""), (t.get("v", "") if t else "")
        kret = dict(k) if kver != kv else None
        tret = dict(t) if t is not None and tver != tv else None

        def out(status: int, detail: str = "", retry: int = 0, flags: int = 0) -> AdmitResult:
            return AdmitResult(status, detail, int(retry), kver, tver, kret, tret, flags, now)

        exp = _num(k.get("expires"))
        if exp is not None and exp <= now:
            return out(2)
        if k.get("blocked") == "1":
            return out(6, "key")
        if t is not None and t.get("blocked") == "1":
            return out(6, "team")
        if alias:
            m = k.get("models", "")
            if m and f"\n{alias}\n" not in m:
                return out(3, "key")
            if t is not None:
                m = t.get("models", "")
                if m and f"\n{alias}\n" not in m:
                    return out(3, "team")
        if not admit:
            return out(1)
        scopes = [(f"k:{h}", k, "key", 1)]
        if t is not None:
            scopes.append((f"t:{team_id}", t, "team", 4))
        for s, rec, label, _ in scopes:
            rpm, tpm, par, budget = (_num(rec.get(f)) for f in ("rpm", "tpm", "par", "budget"))
            if rpm is not None:
                log = self.rpm.setdefault(s, deque())
                while log and log[0][0] <= now - 60000:
                    log.popleft()
                if len(log) >= rpm:
                    idx = len(log) - rpm
                    retry = log[idx][0] + 60000 - now if idx < len(log) else 1000
                    return out(4, f"{label}:rpm:{rpm}", retry)
            if tpm is not None:
                buckets = self.tpm.setdefault(s, {})
                cutoff = now // 1000 - 59
                for b in [b for b in buckets if b < cutoff]:
                    del buckets[b]
                total = sum(buckets.values())
                if total >= tpm:
                    retry, left = 1000, total
                    for b in sorted(buckets):
                        left -= buckets[b]
                        if left < tpm:
                            retry = (b + 60) * 1000 - now
                            break
                    return out(4, f"{label}:tpm:{tpm}", retry)
            if par is not None:
                slots = self.par.setdefault(s, {})
                for tid_old in [x for x, exp_ in slots.items() if exp_ <= now]:
                    del slots[tid_old]
                if len(slots) >= par:
                    return out(4, f"{label}:par:{par}", 1000)
            if budget is not None:
                fly = self.fly.setdefault(s, {})
                res = self.res.setdefault(s, {})
                freed = 0
                for tid_old in [x for x, exp_ in fly.items() if exp_ <= now]:
                    del fly[tid_old]
                    freed += res.pop(tid_old, 0)
                if freed:
                    self._incr(rec, "reserved", -freed)
                self._roll(rec, now)
                spend, reserved = _num(rec.get("spend")) or 0, _num(rec.get("reserved")) or 0
                if spend >= budget or spend + reserved + reserve > budget:
                    retry = 3600000
                    reset = _num(rec.get("breset"))
                    if _num(rec.get("bdur")) and reset is not None:
                        retry = reset - now
                    elif reserved > 0:
                        retry = 1000
                    return out(5, f"{label}:budget:{budget}:{spend}:{reserved}", retry)
        flags = 0
        for s, rec, _, bit in scopes:
            rpm, tpm, par, budget = (_num(rec.get(f)) for f in ("rpm", "tpm", "par", "budget"))
            if rpm is not None:
                self.rpm.setdefault(s, deque()).append((now, tid))
            if tpm is not None:
                if est > 0:
                    b = self.tpm.setdefault(s, {})
                    b[now // 1000] = b.get(now // 1000, 0) + est
                flags += bit * 2
            if par is not None:
                self.par.setdefault(s, {})[tid] = now + lease
            if budget is not None:
                self.fly.setdefault(s, {})[tid] = now + lease
                if reserve > 0:
                    self.res.setdefault(s, {})[tid] = reserve
                    self._incr(rec, "reserved", reserve)
            if par is not None or budget is not None:
                flags += bit
            if par is not None:
                flags += bit * 16
        return out(1, "", 0, flags)

    def release(self, token: str, team: str, tid: str, flags: int) -> None:
        if token and flags & 16:
            self.par.get(f"k:{token}", {}).pop(tid, None)
        if team and flags & 64:
            self.par.get(f"t:{team}", {}).pop(tid, None)

    async def index_teams(self) -> list[tuple[str, str, str]]:
        return []

    async def settle_many(self, batch: Sequence[Settlement]) -> list[Settlement]:
        for st in batch:
            self.settle(st)
        return []

    def settle(self, st: Settlement) -> None:
        now = st.now or int(time.time() * 1000)
        def scope(rec: dict[str, str] | None, s: str, fly: bool, tpm: bool) -> None:
            if fly:
                a = self.res.get(s, {}).pop(st.tid, None)
                if a is not None and rec is not None:
                    self._incr(rec, "reserved", -a)
                self.fly.get(s, {}).pop(st.tid, None)
                self.par.get(s, {}).pop(st.tid, None)
            if tpm and st.tokens != st.est:  # as the SETTLE script: see limits.py
                b = self.tpm.setdefault(s, {})
                sec, asec = now // 1000, st.admitted // 1000
                if st.tokens > st.est:
                    b[sec] = b.get(sec, 0) + st.tokens - st.est
                elif asec >= sec - 59 and asec in b:
                    b[asec] += st.tokens - st.est
            if rec is not None and st.cost > 0:
                self._roll(rec, now)
                self._incr(rec, "spend", st.cost)
                self._incr(rec, "total", st.cost)

        if st.token:
            scope(self.recs.get(("key", st.token)), f"k:{st.token}", st.flags & 1 == 1, st.flags & 2 == 2)
        if st.team:
            scope(self.recs.get(("team", st.team)), f"t:{st.team}", st.flags & 4 == 4, st.flags & 8 == 8)
        if st.retention > 0:
            ms, seq = now, 0
            if ms <= self._last_id[0]:
                ms, seq = self._last_id[0], self._last_id[1] + 1
            self._last_id = (ms, seq)
            self.log.append((f"{ms}-{seq}", dict(zip(st.ledger[::2], st.ledger[1::2], strict=False))))
            cutoff = now - st.retention
            while self.log and int(self.log[0][0].split("-")[0]) < cutoff:
                self.log.popleft()

    async def create(self, kind: str, id_: str, team: str, alias: str, fields: dict[str, str]) -> int:
        if (kind, id_) in self.recs:
            return 0
        if team and ("team", team) not in self.recs:
            return -1
        if kind == "key" and alias:
            if alias in self.aliases:
                return -2
            self.aliases[alias] = id_
        if kind == "team":
            if self.team_names.get(id_, id_) != id_:
                return -3
            if alias and self.team_names.get(alias, id_) != id_:
                return -2
            self.team_names[id_] = id_
            if alias:
                self.team_names[alias] = id_
        self.ver += 1
        self.recs[(kind, id_)] = {**fields, "v": str(self.ver)}
        self.sets.setdefault(f"{kind}s", set()).add(id_)
        if team:
            self.sets.setdefault(f"team:{team}:keys", set()).add(id_)
        return 1

    async def update(self, kind: str, id_: str, team: str | None, alias: str | None, drop: Sequence[str],
                     fields: dict[str, str]) -> int:
        rec = self.recs.get((kind, id_))
        if rec is None:
            return 0
        names = self.aliases if kind == "key" else self.team_names
        old_alias = rec.get("alias", "")
        if team and ("team", team) not in self.recs:
            return -1
        if alias and alias != old_alias and names.get(alias, id_) != id_:
            return -2
        if team is not None:
            old = rec.get("team", "")
            if old:
                self.sets.get(f"team:{old}:keys", set()).discard(id_)
            if team:
                self.sets.setdefault(f"team:{team}:keys", set()).add(id_)
            rec["team"] = team
        if alias is not None:
            if alias != old_alias:
                if alias:
                    names[alias] = id_
                if old_alias and not (kind == "team" and old_alias == id_) and names.get(old_alias) == id_:
                    del names[old_alias]
            rec["alias"] = alias
        for f in drop:
            rec.pop(f, None)
        self.ver += 1
        rec.update(fields)
        rec["v"] = str(self.ver)
        return 1

    def _delete_key(self, h: str) -> bool:
        rec = self.recs.pop(("key", h), None)
        if rec is None:
            return False
        if rec.get("team"):
            self.sets.get(f"team:{rec['team']}:keys", set()).discard(h)
        if rec.get("alias") and self.aliases.get(rec["alias"]) == h:
            del self.aliases[rec["alias"]]
        self.sets.get("keys", set()).discard(h)
        for d in (self.rpm, self.tpm, self.par, self.fly, self.res):
            d.pop(f"k:{h}", None)  # type: ignore[attr-defined]
        return True

    async def delete_keys(self, hashes: Sequence[str]) -> list[str]:
        return [h for h in hashes if self._delete_key(h)]

    async def delete_team(self, team_id: str) -> tuple[bool, list[str]]:
        if ("team", team_id) not in self.recs:
            return False, []
        gone = [h for h in sorted(self.sets.get(f"team:{team_id}:keys", set())) if self._delete_key(h)]
        rec = self.recs.pop(("team", team_id))
        for name in (team_id, rec.get("alias", "")):
            if name and self.team_names.get(name) == team_id:
                del self.team_names[name]
        self.sets.pop(f"team:{team_id}:keys", None)
        self.sets.get("teams", set()).discard(team_id)
        for d in (self.rpm, self.tpm, self.par, self.fly, self.res):
            d.pop(f"t:{team_id}", None)  # type: ignore[attr-defined]
        return True, gone

    async def get(self, kind: str, id_: str) -> dict[str, str] | None:
        rec = self.recs.get((kind, id_))
        return dict(rec) if rec is not None else None

    async def get_many(self, kind: str, ids: Sequence[str]) -> list[dict[str, str] | None]:
        return [await self.get(kind, i) for i in ids]

    async def members(self, name: str) -> list[str]:
        return sorted(self.sets.get(name, set()))

    async def alias_lookup(self, alias: str) -> str | None:
        return self.aliases.get(alias)

    async def ledger(self, start: str, end: str, count: int) -> list[Any]:
        def bound(eid: str, is_start: bool) -> tuple[float, float]:
            if eid in ("-", "+"):
                return (-math.inf, -math.inf) if eid == "-" else (math.inf, math.inf)
            exclusive = eid.startswith("(")
            ms, _, seq = eid.lstrip("(").partition("-")
            seq_v: float = int(seq) if seq else (0 if is_start else math.inf)
            if exclusive:
                seq_v += 0.5 if is_start else -0.5
            return (int(ms), seq_v)

        lo, hi = bound(start, True), bound(end, False)
        out: list[Any] = []
        for eid, fields in self.log:
            ms, _, seq = eid.partition("-")
            k = (int(ms), int(seq))
            if lo <= k <= hi:
                out.append([eid, [x for kv in fields.items() for x in kv]])
                if len(out) >= count:
                    break
        return out
