"""Virtual keys on the hot path: verify, admit (limits + budget reservation), settle after the response.

Per request with a virtual key:
1. sha256 of the bearer token (the secret itself is never stored, logged or used as a label);
2. a key (and its team) with no limits, verified by the store less than GATEWAY_KEY_CACHE_TTL seconds
   ago, is served from the in-process cache: no Redis round trip. Every admin write that changes or
   removes a key or team publishes its id on P:inval (from inside its Lua script); each worker listens
   on its own connection and drops its copy when the message arrives, so a deleted or blocked key stops
   everywhere within milliseconds. While that channel is not connected, the cache is not trusted (every
   request asks Redis); after a reconnect, entries verified before it are checked again;
3. otherwise ONE Lua script checks existence, expiry, allowed models, RPM/TPM (sliding 60 s),
   parallel requests and budgets of the key and its team, and reserves the request's worst-case cost
   — atomically, so N workers/replicas on one Redis enforce one limit;
4. after the response (`on_usage` from `Accounting.record`, `finish` from the request's end), the
   real cost replaces the reservation, spend and the ledger are written: batched, off the hot path.
   The parallel slot is freed as soon as the client is gone or the response is out (`release`), even
   when the cost is still being counted (a stream without usage): the reservation waits for the cost.

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
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter

from gateway import errors
from gateway.auth import MASTER, OPEN, Caller, bearer_token, is_master, key_tenant, team_tenant
from gateway.errors import GatewayError
from gateway.keys.ledger import entry_fields
from gateway.keys.models import NANO, Record, iso, key_label, now_ms
from gateway.keys.resp import Subscriber
from gateway.keys.store import AdmitResult, MemoryStore, RedisStore, ReplyError, Settlement, StoreUnavailable

if TYPE_CHECKING:
    from gateway.call import Call
    from gateway.config import Deployment, GatewayConfig
    from gateway.metrics import Metrics
    from gateway.settings import Settings
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
    prompt: int = 0
    completion: int = 0
    cost: int = 0
    estimated: bool = False
    model: str = ""
    dep: str = ""
    used: bool = False
    finished: bool = False
    released: bool = False  # parallel slots freed (the response is over for the client)
    done: bool = False
    rid: str = ""
    alias: str = ""
    cache: str = ""
    status: int = 0
    stream: bool = False
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)

    @property
    def holds_slot(self) -> bool:
        """A parallel slot (max_parallel_requests) in the store: a client leaving must free it at once."""
        return bool(self.flags & 80) and not self.released  # 16 key, 64 team (limits.py ADMIT)


def _label_of_team(rec: Record | None, team_id: str) -> str:
    if rec is None:
        return team_id
    return rec.alias or rec.id


Price = tuple[float, float, int | None]  # (input USD/token, output USD/token, output token cap) of an alias


def reachable_aliases(config: GatewayConfig, alias: str) -> list[str]:
    """The alias and every alias a request for it can be served by, as Proxy._serve walks them: its
    `fallbacks` (else `default_fallbacks`, for the requested alias only) and `context_window_fallbacks`,
    transitively."""
    r = config.router
    out, todo = [alias], [alias]
    while todo:
        a = todo.pop()
        nxt = r.fallbacks.get(a)
        if nxt is None and a == alias:
            nxt = r.default_fallbacks
        for b in (*(nxt or ()), *r.context_window_fallbacks.get(a, ())):
            if b not in out and b in config.aliases:
                out.append(b)
                todo.append(b)
    return out


def _usd(nano: int) -> str:
    return f"${nano / NANO:.6f}".rstrip("0").rstrip(".") if nano else "$0"


class KeyService:
    """Virtual keys on the hot path: who is calling, whether their key/team limits admit the request, and
    the settlement of its cost (spend, ledger) after it."""

    def __init__(self, settings: Settings, metrics: Metrics, config: Callable[[], GatewayConfig],
                 master_key: Callable[[], str | None], spawn: Callable[[Coroutine[Any, Any, Any]], None]) -> None:
        self._config = config
        self._master_key = master_key
        self._spawn = spawn
        s = settings
        self._workers = settings.workers
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
        # the local cache may serve a key only while the invalidation channel is connected (`_listening`),
        # for entries verified after the last (re)subscription (`_valid_after`); `_gen` counts invalidations,
        # so a verification that was in flight while one arrived is not trusted
        self._listening = isinstance(self.store, MemoryStore)  # one process: admin writes drop the entry
        self._valid_after = 0.0
        self._gen = 0
        self.subscriber = (Subscriber(self.store.link, f"{self.prefix}:inval", self._on_invalidation,
                                      self._on_listening, self._on_deaf)
                           if isinstance(self.store, RedisStore) else None)
        self._prices_for: GatewayConfig | None = None
        self._prices: dict[str, tuple[Price, ...]] = {}
        self._sent: list[tuple[Settlement, asyncio.Future[Any]]] = []  # written, reply not read yet
        self._collecting = False
        self._backlog: deque[Settlement] = deque()
        self._backlog_max = s.ledger_backlog
        self._tid_prefix = secrets.token_hex(4) + format(os.getpid() % 4096, "x") + "."
        self._tid_count = itertools.count(1)
        self._last_store_error = 0.0
        r = metrics.registry  # oss_limits_degraded and oss_redis_up{store="state"} are read at scrape time
        self.rejections = Counter("oss_limit_rejections", "Requests refused by a key/team limit",
                                  ("scope", "limit"), registry=r)
        self.auth_failures = Counter("oss_auth_failures", "Requests refused by virtual-key auth", ("reason",),
                                     registry=r)
        self.dropped = Counter("oss_ledger_dropped", "Settlements (spend + ledger entries) dropped because the "
                                                     "state Redis was down longer than the backlog holds", registry=r)
        self.mode = "open" if self.fail_open else "closed"

    # -- lifecycle --------------------------------------------------------------------------------------

    async def start(self) -> None:
        auth_on = bool(self._master_key())
        if isinstance(self.store, MemoryStore):
            if auth_on:
                workers = self._workers
                log.warning("keys: no state Redis (GATEWAY_STATE_REDIS_URL or GATEWAY_REDIS_URL): virtual keys, teams, "
                            "spend and limits live in this process's memory and are LOST ON RESTART%s",
                            f"; each of the {workers} workers has its own" if workers > 1 else "")
            return
        await self.store.start()
        if self.subscriber is not None:
            self.subscriber.start()
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
        """Read the replies of what was written (SIGTERM drain), then disconnect."""
        sent, self._sent = self._sent, []
        if sent:
            await self._collect_sent(sent)
        if self.subscriber is not None:
            await self.subscriber.close()
        if self._backlog:
            log.error("keys: %d settlements (spend + ledger) could not be written before shutdown: the state Redis "
                      "was down", len(self._backlog))
        await self.store.close()

    def _on_state(self, up: bool) -> None:
        if up:
            self._spawn(self._index_teams())
        elif self.subscriber is not None:
            self.subscriber.reset()  # the same Redis: do not trust a subscription that may be just as dead
        if up and self._backlog:
            log.info("keys: writing %d settlements kept while the state Redis was down", len(self._backlog))
            batch = list(self._backlog)
            self._backlog.clear()
            self._send(batch)

    async def _index_teams(self) -> None:
        try:
            shared = await self.store.index_teams()
        except (StoreUnavailable, ReplyError):
            return
        for name, team, owner in shared:
            log.warning("keys: teams '%s' and '%s' share the name '%s' (created before team aliases were unique): "
                        "their metrics and logs carry the same team label; rename one with POST /team/update",
                        owner, team, name)

    # -- invalidation (P:inval) -------------------------------------------------------------------------

    def _on_invalidation(self, data: bytes) -> None:
        self._gen += 1
        for item in data.decode("utf-8", "replace").split("\n"):
            kind, _, ident = item.partition(":")
            if kind == "k":
                self._cache.pop(ident, None)
            elif kind == "t":
                self.forget_team(ident)

    def _on_listening(self) -> None:
        self._gen += 1
        self._valid_after = time.monotonic()  # anything may have changed while nobody listened
        self._listening = True

    def _on_deaf(self) -> None:
        self._listening = False

    # -- the hot path -----------------------------------------------------------------------------------

    async def admit(self, headers: dict[bytes, bytes], alias: str, call: Call | None = None) -> Caller:
        """The caller of a request (master key, virtual key, or anyone when auth is off); with `call` (the
        hot path) also admits it against the key's and team's limits."""
        master = self._master_key()
        if not master:
            return OPEN
        token = bearer_token(headers)
        if token is None:
            raise errors.authentication_error("Missing API key: send 'Authorization: Bearer <key>'")
        if is_master(token, master):
            if call is not None:
                self.master_ticket(call)
            return MASTER
        return await self.authenticate(token, alias, call)

    async def authenticate(self, token: str, alias: str, call: Call | None) -> Caller:
        """A virtual key → its Caller; with `call`, also admits the request (limits, reservation)."""
        h = hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()
        entry = self._cache.get(h)
        mono = time.monotonic()
        config = self._config()
        known = alias in config.aliases
        if (entry is not None and not entry.limited and mono - entry.checked < self.cache_ttl
                and self._listening and entry.checked > self._valid_after):
            self._check_local(entry, alias if known else "")
            if call is not None and known:
                call.ticket = self._ticket(h, entry.caller, entry.key.team, 0, 0, 0, now_ms())
            return entry.caller
        if not self.store.up:
            return self._degraded(h, entry, alias, known, call, mono)
        admit = call is not None and known
        reserve, est = self._worst_case(call, alias, config) if admit else (0, 0)  # type: ignore[arg-type]
        tid = f"{self._tid_prefix}{next(self._tid_count):x}"
        gen = self._gen
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
        # an invalidation that arrived meanwhile may be newer than this answer: use it once, do not cache it
        entry = self._refresh(h, entry, r, mono if gen == self._gen else mono - self.cache_ttl)
        if r.status != 1:
            self._refuse(entry, r, alias)
        if admit:
            call.ticket = Ticket(tid, h, entry.caller.key_alias, entry.key.team, r.now, r.flags,  # type: ignore[union-attr]
                                 reserve, est)
        return entry.caller

    def master_ticket(self, call: Call) -> None:
        """Master-key requests are not limited but are written to the ledger."""
        if call.alias in self._config().aliases:
            call.ticket = Ticket("", "", "master", "", now_ms(), 0, 0, 0)

    def _ticket(self, h: str, caller: Caller, team: str, flags: int, reserve: int, est: int, now: int) -> Ticket:
        return Ticket(f"{self._tid_prefix}{next(self._tid_count):x}", h, caller.key_alias, team, now, flags, reserve,
                      est)

    def _worst_case(self, call: Call, alias: str, config: GatewayConfig) -> tuple[int, int]:
        """(reservation in nano-USD, prompt-token estimate): the dearest alias the request can be served by
        (the alias or one of its fallbacks), at its dearest deployment."""
        if self._prices_for is not config:
            own: dict[str, Price] = {}
            for a, deps in config.aliases.items():
                caps = [d.max_output_tokens for d in deps if d.max_output_tokens]
                own[a] = (max(d.input_cost_per_token for d in deps), max(d.output_cost_per_token for d in deps),
                          max(caps) if caps else None)
            self._prices = {a: tuple(dict.fromkeys(own[b] for b in reachable_aliases(config, a))) for a in own}
            self._prices_for = config
        prompt = call.estimate_prompt()
        prices = self._prices[alias]
        if all(not pin and not pout for pin, pout, _ in prices):
            return 0, prompt
        worst = 0.0
        for pin, pout, cap in prices:
            out = call.api.worst_case_output(call.body, cap or self.default_max_tokens)
            worst = max(worst, (prompt * PROMPT_MARGIN + PROMPT_MARGIN_TOKENS) * pin + out * pout)
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
        caller = Caller(key_alias=key_label(key.alias, h), team=_label_of_team(team, key.team) if key.team else "",
                        models=models, tenant=team_tenant(key.team) if key.team else key_tenant(h))
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
        if entry.key.blocked or (entry.team is not None and entry.team.blocked):
            self._blocked(entry, "key" if entry.key.blocked else "team")
        if alias and not entry.caller.may_use(alias):
            which = "key" if entry.key.models and alias not in entry.key.models else "team"
            self._forbid(entry, alias, which)

    def _forbid(self, entry: _Entry, alias: str, which: str) -> None:
        self.auth_failures.labels("model_not_allowed").inc()
        allowed = sorted(entry.caller.models or ())
        who = "This key" if which == "key" else f"This key's team '{entry.caller.team}'"
        raise errors.permission_denied(f"{who} may not use model '{alias}'. Allowed: {', '.join(allowed) or '(none)'}",
                                       "model")

    def _blocked(self, entry: _Entry, which: str) -> None:
        self.auth_failures.labels("blocked").inc()
        what = "This key is blocked" if which == "key" else f"This key's team '{entry.caller.team}' is blocked"
        raise GatewayError(401, f"{what}: an admin can unblock it with POST /{which}/unblock",
                           "authentication_error", None, f"{which}_blocked")

    def _refuse(self, entry: _Entry, r: AdmitResult, alias: str) -> None:
        if r.status == 2:
            self.auth_failures.labels("expired").inc()
            raise errors.authentication_error(f"API key expired at {iso(entry.key.expires)}")
        if r.status == 6:
            self._blocked(entry, r.detail)
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
            call.ticket = self._ticket(h, entry.caller, entry.key.team, 0, 0, 0, now_ms())
        return entry.caller

    def _store_error(self, exc: Exception) -> None:
        now = time.monotonic()
        if isinstance(exc, ReplyError) and now - self._last_store_error > 60:
            self._last_store_error = now
            log.error("keys: state Redis refused a command (%s); treating it as unavailable", exc)

    # -- after the response -----------------------------------------------------------------------------

    def on_usage(self, call: Call, dep: Deployment, usage: Usage, cost: float) -> None:
        """From Accounting.record: the upstream's real usage and cost of this request."""
        t: Ticket = call.ticket
        t.prompt += usage.prompt_tokens
        t.completion += usage.completion_tokens
        t.cost += round(cost * NANO)
        t.estimated = t.estimated or usage.estimated
        t.model, t.dep, t.used = dep.served_model, dep.id, True
        if t.finished:
            self._settle(t)

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
            self.release(call)  # ... but not with the parallel slot
            t.timer = asyncio.get_running_loop().call_later(USAGE_WAIT_S, self._settle, t)

    def release(self, call: Call) -> None:
        """The request is over for its client (the response is out, or the client went away: called by the
        proxy the moment it sees the disconnect): free the parallel slots now. The budget reservation stays
        until the cost is settled. The release is on the Redis connection before this returns, so a request
        the same client sends next is admitted after it."""
        t: Ticket | None = call.ticket
        if t is None or not t.holds_slot or t.done:
            return
        t.released = True
        self.store.release(t.token, t.team, t.tid, t.flags)

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
        self._send([Settlement(t.token, t.team, t.tid, t.admitted, t.flags, t.cost, t.est, t.prompt + t.completion, 0,
                               self.retention_ms, ledger)])

    def _send(self, batch: list[Settlement]) -> None:
        """Put settlements on the connection now — so the next admission of the same key, sent after this,
        sees its slot free — and read the replies off the hot path, batched per event-loop iteration (the
        connection itself writes everything queued in one iteration at once)."""
        if isinstance(self.store, MemoryStore):
            for st in batch:
                self.store.settle(st)
            return
        if not self.store.up:
            self._defer(batch)
            return
        try:
            futs = self.store.send_settlements(batch)
        except StoreUnavailable:
            self._defer(batch)
            return
        self._sent.extend(zip(batch, futs, strict=True))
        if not self._collecting:
            self._collecting = True
            asyncio.get_running_loop().call_soon(self._collect)

    def _collect(self) -> None:
        self._collecting = False
        sent, self._sent = self._sent, []
        if sent:
            self._spawn(self._collect_sent(sent))

    async def _collect_sent(self, sent: list[tuple[Settlement, asyncio.Future[Any]]]) -> None:
        assert isinstance(self.store, RedisStore)
        try:
            failed = await self.store.collect_settlements(sent)
        except Exception:  # noqa: BLE001 - never let accounting break serving; say so loudly
            log.exception("keys: writing %d settlements failed", len(sent))
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
