"""Virtual keys and teams: request schemas of the admin API, and the records kept in the state store.

Money is kept in whole nano-dollars (1e-9 USD) everywhere it is stored or compared, so sums are
exact (no float drift at a budget's edge); the API speaks USD floats. Durations are LiteLLM's
strings: "30s", "10m", "1h", "30d", "2w", "1mo" (30 days), or a number of seconds.
"""

from __future__ import annotations

import hashlib
import math
import re
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, field_validator

NANO = 1_000_000_000
MAX_BUDGET_USD = 1_000_000.0  # stored in nano-USD, compared by Redis Lua as doubles: stay well below 2**53
MAX_LIMIT = 1_000_000_000
MAX_DURATION_S = 100 * 365 * 86400

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|hr|d|w|mo)?\s*$", re.IGNORECASE)
_UNIT_S = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600, "d": 86400, "w": 7 * 86400,
           "mo": 30 * 86400, None: 1}


def duration_seconds(value: str | int | float | None) -> int | None:
    """"30s" → 30, "10m" → 600, "1h", "30d", "2w", "1mo" (30 d); a bare number is seconds."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError("not a duration")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        m = _DURATION.match(value)
        if not m:
            raise ValueError(f"not a duration: {value!r} (use e.g. 30s, 10m, 1h, 30d, 1mo)")
        seconds = float(m.group(1)) * _UNIT_S[(m.group(2) or "").lower() or None]
    if not math.isfinite(seconds) or seconds < 1 or seconds > MAX_DURATION_S:
        raise ValueError(f"duration out of range (1 s .. 100 years): {value!r}")
    return int(seconds)


def usd_to_nano(usd: float) -> int:
    return int(round(usd * NANO))


def nano_to_usd(nano: int) -> float:
    return round(nano / NANO, 9)


def hash_key(secret: str) -> str:
    """The id a key is stored under: sha256 of the secret (hex), as LiteLLM's `token`."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def new_secret() -> str:
    return "sk-" + secrets.token_urlsafe(24)


def is_token_hash(value: str) -> bool:
    return len(value) == 64 and all(c in "0123456789abcdef" for c in value)


RESERVED_KEY_ALIASES = frozenset({"master"})  # the master key's label
_GENERATED_LABEL = re.compile(r"key-[0-9a-f]+")


def key_label(alias: str, token_hash: str) -> str:
    """A key's `key` label in metrics, logs and the ledger: its alias, or `key-<first 12 hex of its token>`
    when it has none — or when its alias is reserved (a key stored before the alias was refused must not
    take the master key's label, nor another key's generated one)."""
    if alias and not reserved_key_alias(alias):
        return alias
    return f"key-{token_hash[:12]}"


def reserved_key_alias(alias: str) -> bool:
    return alias.casefold() in RESERVED_KEY_ALIASES or _GENERATED_LABEL.fullmatch(alias) is not None


def _free_key_alias(v: str | None) -> str | None:
    if v is not None and reserved_key_alias(v):
        raise ValueError(f"{v!r} is reserved: 'master' is the master key's label and 'key-<hex>' the label of a "
                         "key without alias; choose another key_alias")
    return v


def iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def now_ms() -> int:
    return int(time.time() * 1000)


# -- request schemas (the OpenAPI spec declares every one) --------------------------------------------

def _utf8(v: str) -> str:
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("not valid UTF-8 text (lone surrogate)") from None
    return v


Name = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$"),
                 AfterValidator(_utf8)]
# a team id is part of Redis key names (P:team:<id>:keys): no ":"
TeamId = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f:]+$"),
                   AfterValidator(_utf8)]
Alias = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=r"^[^\x00-\x1f\x7f]+$"),
                  AfterValidator(_utf8)]
Budget = Annotated[float, Field(ge=0, le=MAX_BUDGET_USD, allow_inf_nan=False)]
Limit = Annotated[int, Field(ge=0, le=MAX_LIMIT)]
Duration = Annotated[str, StringConstraints(max_length=32)] | Annotated[int, Field(ge=1, le=MAX_DURATION_S)]


def _check_duration(v: Any) -> Any:
    if v is not None:
        duration_seconds(v)
    return v


def _check_metadata(v: dict[str, Any] | None) -> dict[str, Any] | None:
    if v is None:
        return v
    try:
        size = len(orjson.dumps(v))
    except orjson.JSONEncodeError as exc:
        raise ValueError(f"metadata cannot be stored: {exc}") from None
    if size > 16384:
        raise ValueError("metadata is larger than 16 KiB")
    return v


class _Limits(BaseModel):
    """Fields shared by keys and teams (LiteLLM names)."""

    model_config = ConfigDict(extra="allow")  # LiteLLM fields the gateway does not use are accepted and reported

    models: list[Alias] | None = Field(None, max_length=512,
                                       description="aliases from router.yaml this key/team may use; empty = all")
    max_budget: Budget | None = Field(None, description="USD per budget_duration (or for ever)")
    budget_duration: Duration | None = Field(None, description='budget window: "30s", "10m", "1h", "30d", "1mo"')
    rpm_limit: Limit | None = Field(None, description="requests per minute (sliding 60 s window)")
    tpm_limit: Limit | None = Field(None, description="tokens per minute (sliding 60 s window)")
    max_parallel_requests: Limit | None = Field(None, description="requests in flight at once")
    blocked: bool | None = Field(None, description="true: every request is refused (401) until unblocked")
    metadata: dict[str, Any] | None = None

    @field_validator("budget_duration")
    @classmethod
    def _dur(cls, v: Any) -> Any:
        return _check_duration(v)

    @field_validator("metadata")
    @classmethod
    def _meta(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        return _check_metadata(v)

    def ignored_fields(self) -> list[str]:
        return sorted(self.model_extra or ())


class GenerateKeyRequest(_Limits):
    key_alias: Name | None = Field(None, description="unique name; the key's label in metrics and logs "
                                                     "('master' and 'key-<hex>' are reserved)")
    team_id: TeamId | None = Field(None, description="team this key belongs to (must exist: POST /team/new)")
    duration: Duration | None = Field(None, description='time until the key expires: "30d", "1h"; none = never')
    key: Annotated[str, StringConstraints(min_length=20, max_length=256, pattern=r"^sk-[A-Za-z0-9_\-]+$")] | None = \
        Field(None, description="bring your own secret (sk-..., at least 20 characters); default: generated")

    @field_validator("duration")
    @classmethod
    def _expiry(cls, v: Any) -> Any:
        return _check_duration(v)

    @field_validator("key_alias")
    @classmethod
    def _alias(cls, v: str | None) -> str | None:
        return _free_key_alias(v)


KeyRef = Annotated[str, StringConstraints(min_length=1, max_length=256), AfterValidator(_utf8)]


class UpdateKeyRequest(_Limits):
    key: KeyRef = Field(description="the key (sk-...) or its token hash")
    key_alias: Name | None = None
    team_id: TeamId | None = None
    duration: Duration | None = Field(None, description="new expiry counted from now; null = never expires")

    @field_validator("duration")
    @classmethod
    def _expiry(cls, v: Any) -> Any:
        return _check_duration(v)

    @field_validator("key_alias")
    @classmethod
    def _alias(cls, v: str | None) -> str | None:
        return _free_key_alias(v)


class BlockKeyRequest(BaseModel):
    key: KeyRef = Field(description="the key (sk-...) or its token hash")


class DeleteKeyRequest(BaseModel):
    keys: list[KeyRef] = Field(default_factory=list, max_length=1000, description="keys (sk-...) or token hashes")
    key_aliases: list[Name] = Field(default_factory=list, max_length=1000)


class NewTeamRequest(_Limits):
    team_id: TeamId | None = Field(None, description="default: a new UUID")
    team_alias: Name | None = Field(None, description="the team's label in metrics and logs (default: team_id); "
                                                      "unique among team aliases and team ids")


class UpdateTeamRequest(_Limits):
    team_id: TeamId
    team_alias: Name | None = None


class BlockTeamRequest(BaseModel):
    team_id: TeamId


class DeleteTeamRequest(BaseModel):
    team_ids: list[TeamId] = Field(min_length=1, max_length=1000)


# -- stored records -----------------------------------------------------------------------------------

def _int(v: Any) -> int | None:
    if v is None or v in (b"", ""):
        return None
    return int(v)


def _s(v: Any) -> str:
    if v is None:
        return ""
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def models_field(models: list[str] | tuple[str, ...] | None) -> str:
    """Allowed aliases as stored: "\\na\\nb\\n" (so Lua can test membership with one plain find); "" = all."""
    return "\n" + "\n".join(models) + "\n" if models else ""


def parse_models(value: str) -> tuple[str, ...]:
    return tuple(m for m in value.split("\n") if m)


@dataclass(slots=True)
class Record:
    """A key or a team as stored (one Redis hash); money in nano-USD, times in unix ms."""

    id: str                     # key: token hash; team: team_id
    alias: str
    models: tuple[str, ...]
    budget: int | None
    bdur: int | None            # seconds
    breset: int | None          # ms
    spend: int
    total: int
    reserved: int
    rpm: int | None
    tpm: int | None
    par: int | None
    created: int
    meta: dict[str, Any]
    v: str
    team: str = ""              # keys only
    expires: int | None = None  # keys only
    blocked: bool = False

    @property
    def limited(self) -> bool:
        return not (self.rpm is None and self.tpm is None and self.par is None and self.budget is None)

    def current_spend(self, now: int) -> int:
        """Spend in the current budget window (a window that has ended counts as reset)."""
        if self.bdur and self.breset is not None and self.breset <= now:
            return 0
        return self.spend

    def next_reset(self, now: int) -> int | None:
        if not self.bdur or self.breset is None:
            return None
        if self.breset > now:
            return self.breset
        period = self.bdur * 1000
        return self.breset + ((now - self.breset) // period + 1) * period

    @classmethod
    def from_fields(cls, fields: dict[str, Any], kind: str) -> Record:
        g = fields.get
        try:
            meta = orjson.loads(g("meta") or b"{}")
        except orjson.JSONDecodeError:
            meta = {}
        return cls(
            id=_s(g("token") if kind == "key" else g("id")),
            alias=_s(g("alias")),
            models=parse_models(_s(g("models"))),
            budget=_int(g("budget")), bdur=_int(g("bdur")), breset=_int(g("breset")),
            spend=_int(g("spend")) or 0, total=_int(g("total")) or 0, reserved=_int(g("reserved")) or 0,
            rpm=_int(g("rpm")), tpm=_int(g("tpm")), par=_int(g("par")),
            created=_int(g("created")) or 0, meta=meta if isinstance(meta, dict) else {}, v=_s(g("v")),
            team=_s(g("team")), expires=_int(g("expires")), blocked=_s(g("blocked")) == "1",
        )

    def limits_view(self, now: int) -> dict[str, Any]:
        return {
            "models": list(self.models),
            "max_budget": nano_to_usd(self.budget) if self.budget is not None else None,
            "budget_duration": f"{self.bdur}s" if self.bdur else None,
            "budget_reset_at": iso(self.next_reset(now)),
            "spend": nano_to_usd(self.current_spend(now)),
            "total_spend": nano_to_usd(self.total),
            "reserved": nano_to_usd(self.reserved),
            "rpm_limit": self.rpm, "tpm_limit": self.tpm, "max_parallel_requests": self.par,
            "blocked": self.blocked, "metadata": self.meta, "created_at": iso(self.created),
        }

    def key_view(self, now: int) -> dict[str, Any]:
        return {"token": self.id, "key_alias": self.alias or None, "key_name": f"sk-...{self.id[-4:]}",
                "team_id": self.team or None, "expires": iso(self.expires),
                "expired": self.expires is not None and self.expires <= now, **self.limits_view(now)}

    def team_view(self, now: int) -> dict[str, Any]:
        return {"team_id": self.id, "team_alias": self.alias or None, **self.limits_view(now)}


def limit_fields(req: _Limits, fields_set: set[str], now: int) -> tuple[dict[str, str], list[str]]:
    """Hash fields to write for the limit fields present in a request; a null removes that limit."""
    out: dict[str, str] = {}
    drop: list[str] = []

    def put(name: str, value: Any) -> None:
        if value is None:
            drop.append(name)
        else:
            out[name] = str(value)

    if "models" in fields_set:
        out["models"] = models_field(req.models)
    if "max_budget" in fields_set:
        put("budget", usd_to_nano(req.max_budget) if req.max_budget is not None else None)
    if "budget_duration" in fields_set:
        dur = duration_seconds(req.budget_duration)
        put("bdur", dur)
        put("breset", now + dur * 1000 if dur else None)
    for src, dst in (("rpm_limit", "rpm"), ("tpm_limit", "tpm"), ("max_parallel_requests", "par")):
        if src in fields_set:
            put(dst, getattr(req, src))
    if "blocked" in fields_set:
        put("blocked", "1" if req.blocked else None)
    if "metadata" in fields_set:
        out["meta"] = orjson.dumps(req.metadata or {}).decode()
    return out, drop
