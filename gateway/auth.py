"""Who is calling: the master key, a virtual key, or nobody (auth off)."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from gateway import errors

BEARER = b"bearer "


@dataclass(frozen=True, slots=True)
class Caller:
    key_alias: str = ""  # the key's alias: the only name of a key that reaches logs and metrics
    team: str = ""
    models: frozenset[str] | None = None  # aliases this caller may use; None = all
    is_admin: bool = False

    def may_use(self, alias: str) -> bool:
        return self.models is None or alias in self.models


OPEN = Caller()
MASTER = Caller(key_alias="master", is_admin=True)


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
