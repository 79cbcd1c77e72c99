"""Who is calling: the master key, a virtual key, or nobody (auth off).

A caller has two kinds of names. Labels (`key_alias`, `team`) are for people: metric labels, log
lines, error messages. The tenant is for machines: a stable id that partitions the response cache
and is never chosen by an admin-typed name, so two tenants can never share one by picking the same
alias. Tenants are `t:<team_id>` for a key in a team (the team shares its cached answers),
`k:<id derived from the key's hash>` for a key without a team, `master` for the master key and
`open` when auth is off; the prefixes keep the four kinds apart.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from gateway import errors

BEARER = b"bearer "


@dataclass(frozen=True, slots=True)
class Caller:
    key_alias: str = ""  # label: the key's alias, the only name of a key that reaches logs and metrics
    team: str = ""       # label: the team's alias (or id)
    models: frozenset[str] | None = None  # aliases this caller may use; None = all
    is_admin: bool = False
    tenant: str = "open"  # stable id: cache partition (see the module docstring)

    def may_use(self, alias: str) -> bool:
        return self.models is None or alias in self.models


TENANT_OPEN = "open"
TENANT_MASTER = "master"
MASTER_LABEL = "master"  # the master key's `key` label: reserved, no virtual key may take it

OPEN = Caller(tenant=TENANT_OPEN)
MASTER = Caller(key_alias=MASTER_LABEL, is_admin=True, tenant=TENANT_MASTER)


def team_tenant(team_id: str) -> str:
    return "t:" + team_id


def key_tenant(token_hash: str) -> str:
    """A teamless key's tenant: derived from its token hash (one-way again, so the cache Redis, which may
    be less guarded than the state Redis, never holds something that identifies the key's record)."""
    return "k:" + hashlib.sha256(b"oss-gateway tenant\0" + token_hash.encode()).hexdigest()[:32]


def bearer_token(headers: dict[bytes, bytes]) -> str | None:
    value = headers.get(b"authorization")
    if value is None:
        api_key = headers.get(b"x-api-key") or headers.get(b"api-key")
        return api_key.decode("latin-1").strip() if api_key else None
    if value[:7].lower() == BEARER:
        return value[7:].decode("latin-1").strip() or None
    return value.decode("latin-1").strip() or None


def is_master(token: str | None, master_key: str | None) -> bool:
    return bool(token and master_key and hmac.compare_digest(token.encode(), master_key.encode()))


def require_admin(headers: dict[bytes, bytes], master_key: str | None) -> None:
    """Admin endpoints: disabled without a master key, and only the master key opens them."""
    if not master_key:
        raise errors.GatewayError(403, "Admin endpoints are disabled: no master_key is configured",
                                  "permission_denied", None, "admin_disabled")
    token = bearer_token(headers)
    if token is None:
        raise errors.authentication_error("Missing API key: send 'Authorization: Bearer <master key>'")
    if not is_master(token, master_key):
        raise errors.authentication_error("This endpoint needs the master key")
