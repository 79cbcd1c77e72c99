"""The spend ledger: one entry per request, appended after the response (a Redis stream, trimmed by
age with `XADD ... MINID ~`), read back by `GET /spend/logs` as JSON or CSV.

Each stream entry has one field, `e`: a JSON object (kept for GATEWAY_LEDGER_RETENTION_DAYS) with
rid (request id), token (key hash, never the secret), key (key label), team (team_id), alias, model,
dep (deployment id), pt, ct (tokens), cost (nano-USD), est (1 = tokens counted by the gateway),
cache, status, stream. The entry id is the append time in ms.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson

from gateway.keys.models import NANO, iso

COLUMNS = ("request_id", "startTime", "api_key", "key_alias", "team_id", "model_group", "model", "model_id",
           "prompt_tokens", "completion_tokens", "total_tokens", "spend", "estimated", "cache", "status", "stream")


def entry_fields(*, rid: str, token: str, key: str, team: str, alias: str, model: str, dep: str, pt: int, ct: int,
                 cost: int, est: bool, cache: str, status: int, stream: bool) -> list[Any]:
    return ["e", orjson.dumps({"rid": rid, "token": token, "key": key, "team": team, "alias": alias, "model": model,
                               "dep": dep, "pt": pt, "ct": ct, "cost": cost, "est": int(est), "cache": cache,
                               "status": status, "stream": int(stream)})]


def _d(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def _i(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) else 0


def row(entry_id: str, e: dict[str, Any]) -> dict[str, Any]:
    ms = int(entry_id.split("-", 1)[0])
    g = e.get
    pt, ct = _i(g("pt")), _i(g("ct"))
    return {
        "request_id": g("rid", ""), "startTime": iso(ms), "api_key": g("token", ""), "key_alias": g("key", ""),
        "team_id": g("team", ""), "model_group": g("alias", ""), "model": g("model", ""), "model_id": g("dep", ""),
        "prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct,
        "spend": round(_i(g("cost")) / NANO, 9), "estimated": g("est") == 1, "cache": g("cache", ""),
        "status": _i(g("status")), "stream": g("stream") == 1,
    }


def decode_entries(raw: list[Any]) -> list[tuple[str, dict[str, Any]]]:
    """XRANGE reply → [(id, entry)]; entries that are not ours decode to {}."""
    out = []
    for item in raw or ():
        eid, flat = _d(item[0]), item[1] or []
        entry: dict[str, Any] = {}
        for i in range(0, len(flat) - 1, 2):
            if _d(flat[i]) == "e":
                try:
                    parsed = orjson.loads(flat[i + 1])
                except orjson.JSONDecodeError:
                    parsed = None
                if isinstance(parsed, dict):
                    entry = parsed
        out.append((eid, entry))
    return out


_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def parse_time(value: str | None, end: bool) -> int | None:
    """"2025-01-31" (a whole day: its end when `end`), an ISO datetime, or unix seconds → unix ms."""
    if value is None or value == "":
        return None
    v = value.strip()
    try:
        if _DATE.match(v):
            d = date.fromisoformat(v)
            dt = datetime(d.year, d.month, d.day, tzinfo=UTC)
            if end:
                dt += timedelta(days=1)
                return int(dt.timestamp() * 1000) - 1
            return int(dt.timestamp() * 1000)
        if re.match(r"^\d+(\.\d+)?$", v):
            seconds = float(v)
        else:
            dt = datetime.fromisoformat(v.replace("Z", "+00:00"))
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=UTC)
            seconds = dt.timestamp()
    except (ValueError, OverflowError, OSError) as exc:
        raise ValueError(f"not a date: {value!r} (use YYYY-MM-DD, an ISO datetime or unix seconds)") from exc
    if not 0 <= seconds < 253402300800:
        raise ValueError(f"date out of range: {value!r}")
    return int(seconds * 1000)


def matches(fields: dict[str, Any], token: str | None, key_alias: str | None, team: str | None) -> bool:
    if token is not None and fields.get("token") != token:
        return False
    if key_alias is not None and fields.get("key") != key_alias:
        return False
    return team is None or fields.get("team") == team


def _cell(v: Any) -> Any:
    """Spreadsheets run cells that start with = + - @ as formulas: quote those (CSV injection)."""
    if isinstance(v, str) and v[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + v
    return v


def csv_text(rows: Iterable[dict[str, Any]], header: bool) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
    if header:
        w.writeheader()
    for r in rows:
        w.writerow({k: _cell(v) for k, v in r.items()})
    return buf.getvalue()
