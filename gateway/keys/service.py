"""Virtual keys on the hot path: verify, admit (limits + budget reservation), settle after the response.

Per request with a virtual key:
1. sha256 of the bearer token (the secret itself is never stored, logged or used as a label);
2. a key (and its team) with no limits, verified by the store less than GATEWAY_KEY_CACHE_TTL seconds
   ago, is served from the in-process cache: no Redis round trip;
3. otherwise ONE Lua script checks existence, expiry, allowed models, RPM/TPM (sliding 60 s),
   parallel requests and budgets of the key and its team, and reserves the request's worst-case cost
   — atomically, so N workers/replicas on one Redis enforce one limit;
4. after the response (`on_usage` from `Gateway.record_usage`, `finish` from the request's end), the
   real cost replaces the reservation, spend and the ledger are written: batched, off the hot path.

State Redis down: keys verified in the last GATEWAY_KEY_GRACE_PERIOD seconds keep working from the
cache; unknown keys are refused (503, never served unauthenticated); limited keys pass (fail open)
or get 503 (fail closed) per GATEWAY_LIMITS_FAIL_MODE; `oss_limits_degraded` says so. Settlements
made while Redis is down wait in a bounded backlog and are written when it returns.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import logging
import math
import os
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import Counter

from gateway import errors
from gateway.auth import Caller
from gateway.errors import GatewayError
from gateway.keys.ledger import entry_fields
from gateway.keys.models import NANO, Record, iso, now_ms
from gateway.keys.store import AdmitResult, MemoryStore, RedisStore, ReplyError, Settlement, StoreUnavailable
from gateway.tokens import estimate_prompt_tokens, estimate_text_tokens

if TYPE_CHECKING:
    from gateway.app import Gateway
    from gateway.config import Deployment, GatewayConfig
    from gateway.proxy import Call
    from gateway.usage import Usage

log = logging.getLogger("gateway.keys")

CACHE_MAX = 50_000
USAGE_WAIT_S = 10.0  # a stream's token count may be estimated after the response: wait that long for it
PROMPT_MARGIN = 1.2  # the prompt estimate is a heuristic: reserve a margin above it
PROMPT_MARGIN_TOKENS = 8


@dataclass(slots=True)
class _Entry:
    key: Record
    team: Record | None
    caller: Caller
    limited: bool
    checked: float  # monotonic time the store last confirmed this key


@dataclass(slots=True, eq=False)
class Ticket:
    """One admitted request: what to undo and what to record when it ends."""

    tid: str
    token: str        # key hash ("" = master key)
    key_label: str
    team: str         # team_id
    admitted: int     # ms
    flags: int
    reserve: int      # nano-USD
    est: int          # prompt tokens counted into the TPM window at admission
    degraded: bool = False
    prompt: int = 0
    completion: int = 0
    cost: int = 0
    estimated: bool = False
    model: str = ""
    dep: str = ""
    used: bool = False
    finished: bool = False
    done: bool = False
    rid: str = ""
    alias: str = ""
    cache: str = ""
    status: int = 0
    stream: bool = False
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)


def _label_of_key(rec: Record) -> str:
    return rec.alias or f"key-{rec.id[:8]}"


def _label_of_team(rec: Record | None, team_id: str) -> str:
    if rec is None:
        return team_id
    return rec.alias or rec.id


def _usd(nano: int) -> str:
    return f"${nano / NANO:.6f}".rstrip("0").rstrip(".") if nano else "$0"


class KeyService:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        s = gw.settings
        url = s.state_redis_url or s.redis_url
        self.shares_cache_redis = bool(url) and not s.state_redis_url
        self.prefix = s.state_key_prefix
        self.store: RedisStore | MemoryStore = (
            RedisStore(url, self.prefix, s.state_redis_timeout, on_state=self._on_state) if url else MemoryStore())
        self.fail_open = s.limits_fail_mode == "open"
        self.cache_ttl = s.key_cache_ttl
        self.grace = s.key_grace_period
        self.lease_ms = int(s.inflight_lease_seconds * 1000)
        self.retention_ms = int(s.ledger_retention_days * 86_400_000)
        self.default_max_tokens = s.budget_default_max_tokens
        self._cache: dict[str, _Entry] = {}
        self._prices_for: GatewayConfig | None = None
        self._prices: dict[str, tuple[float, float, int | None]] = {}
        self._queue: list[Settlement] = []
        self._flushing = False
        self._backlog: deque[Settlement] = deque()
        self._backlog_max = s.ledger_backlog
        self._tid_prefix = secrets.token_hex(4) + format(os.getpid() % 4096, "x") + "."
        self._tid_count = itertools.count(1)
        self._last_store_error = 0.0
        r = gw.metrics.registry  # oss_limits_degraded and oss_redis_up{store="state"} are read at scrape time
        self.rejections = Counter("oss_limit_rejections", "Requests refused by a key/team limit",
                                  ("scope", "limit"), registry=r)
        self.auth_failures = Counter("oss_auth_failures", "Requests refused by virtual-key auth", ("reason",),
                                     registry=r)
        self.dropped = Counter("oss_ledger_dropped", "Settlements (spend + ledger entries) dropped because the "
                                                     "state Redis was down longer than the backlog holds", registry=r)
        self.mode = "open" if self.fail_open else "closed"

    # -- lifecycle --------------------------------------------------------------------------------------

    async def start(self) -> None:
        auth_on = bool(self.gw.master_key)
        if isinstance(self.store, MemoryStore):
            if auth_on:
                workers = self.gw.settings.workers
                log.warning("keys: no state Redis (GATEWAY_STATE_REDIS_URL or GATEWAY_REDIS_URL): virtual keys, teams, "
                            "spend and limits live in this process's memory and are LOST ON RESTART%s",
                            f"; each of the {workers} workers has its own" if workers > 1 else "")
            return
        await self.store.start()
        if self.store.up:
            policy = await self.store.maxmemory_policy()
            if policy is not None and policy != "noeviction":
                log.warning("keys: state Redis %s has maxmemory-policy %s: keys, spend and the ledger can be "
                            "EVICTED; use a noeviction instance (docs/keys.md)", self.store.where, policy)
        if self.shares_cache_redis and auth_on:
            log.warning("keys: GATEWAY_STATE_REDIS_URL is not set: keys and spend share the cache's Redis "
                        "(GATEWAY_REDIS_URL); give them a separate noeviction database or instance")
        log.info("keys: state Redis %s (prefix %s:), limits fail %s, key cache %gs, ledger kept %g days",
                 self.store.where, self.prefix, self.mode, self.cache_ttl, self.retention_ms / 86_400_000)

    async def close(self) -> None:
        """Write what is queued (SIGTERM drain), then disconnect."""
        batch, self._queue = self._queue, []
        if batch and isinstance(self.store, RedisStore) and self.store.up:
            await self._write(batch)
        if self._backlog:
            log.error("keys: %d settlements (spend + ledger) could not be written before shutdown: the state Redis "
                      "was down", len(self._backlog))
        await self.store.close()

    def _on_state(self, up: bool) -> None:
        if up and self._backlog:
            log.info("keys: writing %d settlements kept while the state Redis was down", len(self._backlog))
            self._queue.extend(self._backlog)
            self._backlog.clear()
            self._schedule_flush()

    # -- the hot path -----------------------------------------------------------------------------------

    async def authenticate(self, token: str, alias: str, call: Call | None) -> Caller:
        """A virtual key → its Caller; with `call`, also admits the request (limits, reservation)."""
        h = hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()
        entry = self._cache.get(h)
        mono = time.monotonic()
        config = self.gw.config
        known = alias in config.aliases
        if entry is not None and not entry.limited and mono - entry.checked < self.cache_ttl:
            self._check_local(entry, alias if known else "")
            if call is not None and known:
                call.ticket = self._ticket(h, entry.caller, entry.key.team, 0, 0, 0, now_ms())
            return entry.caller
        if not self.store.up:
            return self._degraded(h, entry, alias, known, call, mono)
        admit = call is not None and known
        reserve, est = self._worst_case(call, alias, config) if admit else (0, 0)  # type: ignore[arg-type]
        tid = f"{self._tid_prefix}{next(self._tid_count):x}"
        try:  # now=0: the store's clock, one for every replica
            r = await self.store.admit(h, alias if known else "", 0, tid, reserve, est,
                                       entry.key.v if entry else "", entry.team.v if entry and entry.team else "",
                                       self.lease_ms, admit)
        except (StoreUnavailable, ReplyError) as exc:
            self._store_error(exc)
            return self._degraded(h, entry, alias, known, call, mono)
        if r.status == 0 or (r.key is not None and not hmac.compare_digest(r.key.get("token", ""), h)):
            self._cache.pop(h, None)
            self.auth_failures.labels("unknown").inc()
            raise errors.authentication_error("Invalid API key")
        entry = self._refresh(h, entry, r, mono)
        if r.status != 1:
            self._refuse(entry, r, alias)
        if admit:
            call.ticket = Ticket(tid, h, entry.caller.key_alias, entry.key.team, r.now, r.flags,  # type: ignore[union-attr]
                                 reserve, est)
        return entry.caller

    def master_ticket(self, call: Call) -> None:
        """Master-key requests are not limited but are written to the ledger."""
        if call.alias in self.gw.config.aliases:
            call.ticket = Ticket("", "", "master", "", now_ms(), 0, 0, 0)

    def _ticket(self, h: str, caller: Caller, team: str, flags: int, reserve: int, est: int, now: int,
                degraded: bool = False) -> Ticket:
        return Ticket(f"{self._tid_prefix}{next(self._tid_count):x}", h, caller.key_alias, team, now, flags, reserve,
                      est, degraded)

    def _worst_case(self, call: Call, alias: str, config: GatewayConfig) -> tuple[int, int]:
        """(reservation in nano-USD, prompt-token estimate) for the requested alias."""
        if self._prices_for is not config:
            table: dict[str, tuple[float, float, int | None]] = {}
            for a, deps in config.aliases.items():
                caps = [d.max_output_tokens for d in deps if d.max_output_tokens]
                table[a] = (max(d.input_cost_per_token for d in deps), max(d.output_cost_per_token for d in deps),
                            max(caps) if caps else None)
            self._prices, self._prices_for = table, config
        body = call.body
        if call.endpoint == "embeddings":
            inp = body.get("input")
            texts = [inp] if isinstance(inp, str) else [x for x in inp if isinstance(x, str)] \
                if isinstance(inp, list) else []
            prompt = sum(estimate_text_tokens(t) for t in texts) or (len(inp) if isinstance(inp, list) else 0)
        else:
            if call.prompt_estimate is None:
                call.prompt_estimate = estimate_prompt_tokens(body)
            prompt = call.prompt_estimate
        pin, pout, cap = self._prices[alias]
        if not pin and not pout:
            return 0, prompt
        out = 0
        if call.endpoint != "embeddings":
            mt = body.get("max_completion_tokens")
            if not isinstance(mt, int) or isinstance(mt, bool) or mt < 0:
                mt = body.get("max_tokens")
            if not isinstance(mt, int) or isinstance(mt, bool) or mt < 0:
                mt = cap or self.default_max_tokens
            n = body.get("n")
            out = mt * (min(n, 128) if isinstance(n, int) and not isinstance(n, bool) and n > 1 else 1)
        worst = (prompt * PROMPT_MARGIN + PROMPT_MARGIN_TOKENS) * pin + out * pout
        return math.ceil(round(worst * NANO, 3)), prompt

    def _refresh(self, h: str, entry: _Entry | None, r: AdmitResult, mono: float) -> _Entry:
        if r.key is not None:
            key = Record.from_fields(r.key, "key")
        elif entry is not None:
            key = entry.key
        else:  # cannot happen: an unknown version always comes back with the record
            key = Record.from_fields({"token": h, "v": r.kv}, "key")
        if not r.tv:
            team = None
        elif r.team is not None:
            team = Record.from_fields(r.team, "team")
        else:
            team = entry.team if entry is not None else None
        if entry is not None and entry.key is key and entry.team is team:
            entry.checked = mono
            return entry
        models: frozenset[str] | None = None
        if key.models and team is not None and team.models:
            models = frozenset(key.models) & frozenset(team.models)
        elif key.models:
            models = frozenset(key.models)
        elif team is not None and team.models:
            models = frozenset(team.models)
        caller = Caller(key_alias=_label_of_key(key), team=_label_of_team(team, key.team) if key.team else "",
                        models=models)
        new = _Entry(key, team, caller, key.limited or (team is not None and team.limited), mono)
        if len(self._cache) >= CACHE_MAX and h not in self._cache:
            for old in list(itertools.islice(self._cache, CACHE_MAX // 4)):
                del self._cache[old]
        self._cache[h] = new
        return new

    def _check_local(self, entry: _Entry, alias: str) -> None:
        exp = entry.key.expires
        if exp is not None and exp <= now_ms():
            self.auth_failures.labels("expired").inc()
            raise errors.authentication_error(f"API key expired at {iso(exp)}")
        if alias and not entry.caller.may_use(alias):
            which = "key" if entry.key.models and alias not in entry.key.models else "team"
            self._forbid(entry, alias, which)

    def _forbid(self, entry: _Entry, alias: str, which: str) -> None:
        self.auth_failures.labels("model_not_allowed").inc()
        allowed = sorted(entry.caller.models or ())
        who = "This key" if which == "key" else f"This key's team '{entry.caller.team}'"
        raise errors.permission_denied(f"{who} may not use model '{alias}'. Allowed: {', '.join(allowed) or '(none)'}",
                                       "model")

    def _refuse(self, entry: _Entry, r: AdmitResult, alias: str) -> None:
        if r.status == 2:
            self.auth_failures.labels("expired").inc()
            raise errors.authentication_error(f"API key expired at {iso(entry.key.expires)}")
        if r.status == 3:
            self._forbid(entry, alias, r.detail)
        parts = r.detail.split(":")
        scope = parts[0]
        name = f"key '{entry.caller.key_alias}'" if scope == "key" else f"team '{entry.caller.team}'"
        retry = max(r.retry_ms, 1) / 1000
        if r.status == 5:
            budget, spend, reserved = (int(x) for x in parts[2:5])
            self.rejections.labels(scope, "budget").inc()
            rec = entry.key if scope == "key" else entry.team
            when = f"; the budget resets at {iso(rec.next_reset(now_ms()))}" if rec is not None and rec.bdur else ""
            raise GatewayError(429, f"Budget exceeded: {name} max_budget {_usd(budget)} (spent {_usd(spend)}, "
                                    f"{_usd(reserved)} reserved by requests in flight){when}",
                               "rate_limit_error", None, "budget_exceeded",
                               {"Retry-After": str(max(1, math.ceil(retry)))})
        kind, limit = parts[1], parts[2]
        what = {"rpm": f"rpm_limit {limit} (requests per sliding 60 s window)",
                "tpm": f"tpm_limit {limit} (tokens per sliding 60 s window)",
                "par": f"max_parallel_requests {limit}"}[kind]
        self.rejections.labels(scope, {"par": "parallel"}.get(kind, kind)).inc()
        raise errors.rate_limited(f"Rate limit exceeded: {name} {what} reached; retry after {math.ceil(retry)} s",
                                  retry)

    def _degraded(self, h: str, entry: _Entry | None, alias: str, known: bool, call: Call | None,
                  mono: float) -> Caller:
        if entry is None or mono - entry.checked > self.grace:
            self.auth_failures.labels("unverifiable").inc()
            raise GatewayError(503, "The key store is unreachable and this key was not verified recently; retry "
                                    "shortly", "service_unavailable", None, "key_store_unavailable",
                               {"Retry-After": "5"})
        self._check_local(entry, alias if known else "")
        if call is not None and known:
            if entry.limited and not self.fail_open:
                self.rejections.labels("store", "unavailable").inc()
                raise GatewayError(503, "Limits cannot be checked (the state Redis is unreachable) and "
                                        "GATEWAY_LIMITS_FAIL_MODE is closed", "service_unavailable", None,
                                   "limits_unavailable", {"Retry-After": "5"})
            call.ticket = self._ticket(h, entry.caller, entry.key.team, 0, 0, 0, now_ms(), degraded=True)
        return entry.caller

    def _store_error(self, exc: Exception) -> None:
        now = time.monotonic()
        if isinstance(exc, ReplyError) and now - self._last_store_error > 60:
            self._last_store_error = now
            log.error("keys: state Redis refused a command (%s); treating it as unavailable", exc)

    # -- after the response -----------------------------------------------------------------------------

    def on_usage(self, call: Call, dep: Deployment, usage: Usage, cost: float) -> None:
        """From Gateway.record_usage: the upstream's real usage and cost of this request."""
        t: Ticket = call.ticket
        t.prompt += usage.prompt_tokens
        t.completion += usage.completion_tokens
        t.cost += round(cost * NANO)
        t.estimated = t.estimated or usage.estimated
        t.model, t.dep, t.used = dep.served_model, dep.id, True
        if t.finished:
            self._settle(t)

    def cache_hit(self, call: Call) -> None:
        """A response served from the cache: it counted toward RPM at admission and costs nothing.
        Nothing else to do — `finish` releases the reservation with zero cost and writes the ledger entry
        with the cache result — but calling this right after the hit frees the slot a little earlier."""
        if call.ticket is not None and not call.ticket.finished:
            self.finish(call)

    def finish(self, call: Call) -> None:
        """From the end of the request (Proxy._record_request): settle now, or when the usage arrives."""
        t: Ticket = call.ticket
        if t.finished:
            return
        t.finished = True
        t.rid, t.alias, t.cache, t.status, t.stream = (call.request_id, call.alias, call.cache_status, call.status,
                                                       call.stream)
        if t.used or not (call.stream and call.response_started and call.deployment is not None):
            self._settle(t)
        else:  # the stream's token count is being estimated after the response: wait for it (bounded)
            t.timer = asyncio.get_running_loop().call_later(USAGE_WAIT_S, self._settle, t)

    def _settle(self, t: Ticket) -> None:
        if t.done:
            return
        t.done = True
        if t.timer is not None:
            t.timer.cancel()
            t.timer = None
        if not t.token and not self.retention_ms:
            return
        ledger = entry_fields(rid=t.rid, token=t.token, key=t.key_label, team=t.team, alias=t.alias, model=t.model,
                              dep=t.dep, pt=t.prompt, ct=t.completion, cost=t.cost, est=t.estimated, cache=t.cache,
                              status=t.status, stream=t.stream) if self.retention_ms else []
        self._queue.append(Settlement(t.token, t.team, t.tid, t.admitted, t.flags, t.cost, t.est,
                                      t.prompt + t.completion, 0, self.retention_ms, ledger))
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flushing = False
        batch, self._queue = self._queue, []
        if not batch:
            return
        if isinstance(self.store, MemoryStore):
            for st in batch:
                self.store.settle(st)
            return
        if not self.store.up:
            self._defer(batch)
            return
        self.gw.spawn(self._write(batch))

    async def _write(self, batch: list[Settlement]) -> None:
        assert isinstance(self.store, RedisStore)
        try:
            failed = await self.store.settle_many(batch)
        except StoreUnavailable:
            failed = batch
        except Exception:  # noqa: BLE001 - never let accounting break serving; say so loudly
            log.exception("keys: writing %d settlements failed", len(batch))
            return
        if failed:
            self._defer(failed)

    def _defer(self, batch: list[Settlement]) -> None:
        room = self._backlog_max - len(self._backlog)
        if room < len(batch):
            lost = len(batch) - max(room, 0)
            self.dropped.inc(lost)
            log.error("keys: state Redis down and the backlog is full: %d settlements (spend + ledger) dropped", lost)
            batch = batch[:max(room, 0)]
        self._backlog.extend(batch)

    # -- admin helpers ----------------------------------------------------------------------------------

    def forget(self, h: str) -> None:
        self._cache.pop(h, None)

    def forget_team(self, team_id: str) -> None:
        for h in [h for h, e in self._cache.items() if e.key.team == team_id]:
            del self._cache[h]
