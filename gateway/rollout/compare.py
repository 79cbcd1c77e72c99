"""`gateway compare`: fetch the comparison records of a running gateway and report per model pair.

    gateway compare --since 1h [--url http://127.0.0.1:4000] [--key KEY] [--html F | --png F] [--json]

Reads `GET /admin/comparisons?since=<seconds>&limit=<n>` (master key), prints the table of
gateway/rollout/report.py (or, with --json, the same numbers as JSON) and writes the report file.
Exit status: 0 done, 1 the gateway could not give records (unreachable, refused, none in the window),
2 usage errors.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gateway.rollout.client import error_message, gateway_url
from gateway.rollout.options import parse_duration
from gateway.rollout.records import Comparison
from gateway.rollout.report import (
    ReportError,
    format_table,
    pair_reports,
    pair_section,
    require_matplotlib,
    write_report,
)

MAX_BYTES = 256 * 1024 * 1024  # the most of an answer read (a record is ~600 bytes)


class CompareError(Exception):
    """Why no records could be read; the message is for the user."""


def parse_since(text: str) -> float:
    """`30s`, `10m`, `1h`, `2d` or plain seconds -> seconds (> 0), as router.yaml's durations."""
    seconds = parse_duration(text)
    if not seconds:
        raise ValueError(f"--since must be a duration like 30s, 10m, 1h, 2d or seconds; got {text!r}")
    return seconds


def read_bounded(resp: Any, limit: int = MAX_BYTES) -> bytes:
    data = resp.read(limit + 1)
    if len(data) > limit:
        raise CompareError(f"the answer is over {limit // (1024 * 1024)} MB: use a shorter --since or a "
                           "smaller --limit")
    return bytes(data)


@dataclass(frozen=True)
class Fetched:
    records: list[Comparison]
    truncated: bool


def fetch(url: str, key: str, since_s: float, limit: int, timeout: float = 60.0) -> Fetched:
    """The records of the last `since_s` seconds (oldest first; the newest `limit` when `truncated`); raises
    CompareError with the reason."""
    query = urllib.parse.urlencode({"since": f"{since_s:g}", "limit": str(limit)})
    endpoint = f"{url.rstrip('/')}/admin/comparisons?{query}"
    req = urllib.request.Request(endpoint, headers={"Authorization": f"Bearer {key}",
                                                    "Accept": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - the user's own gateway URL
            body = read_bounded(resp)
    except urllib.error.HTTPError as exc:
        detail = error_message(exc.read(64 * 1024))
        if exc.code == 401:
            raise CompareError(f"{url}: 401 unauthorized ({detail}): pass the master key with --key or "
                               "GATEWAY_MASTER_KEY") from None
        if exc.code == 403:
            raise CompareError(f"{url}: 403 forbidden ({detail})") from None
        if exc.code == 404:
            raise CompareError(f"{url}: 404 for /admin/comparisons ({detail}): is this an oss-gateway with "
                               "shadow traffic support?") from None
        raise CompareError(f"{url}: HTTP {exc.code} ({detail})") from None
    except urllib.error.URLError as exc:
        raise CompareError(f"cannot reach the gateway at {url} ({exc.reason}): is it running? (--url)") from None
    except (TimeoutError, OSError) as exc:
        raise CompareError(f"cannot reach the gateway at {url} ({exc})") from None
    try:
        data = json.loads(body)
        records = [Comparison.from_dict(r) for r in data["records"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise CompareError(f"{url}: unexpected answer from /admin/comparisons ({exc!r})") from None
    return Fetched(records, bool(data.get("truncated", False)))


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def run(args: argparse.Namespace) -> int:
    try:
        since = parse_since(args.since)
    except ValueError as exc:
        print(f"gateway compare: {exc}", file=sys.stderr)
        return 2
    key = args.key or os.environ.get("GATEWAY_MASTER_KEY")
    if not key:
        print("gateway compare: no master key: pass --key or set GATEWAY_MASTER_KEY", file=sys.stderr)
        return 2
    url = gateway_url(args.url)
    if args.html or args.png:
        try:
            require_matplotlib()
        except ReportError as exc:
            print(f"gateway compare: {exc}", file=sys.stderr)
            return 2
    try:
        fetched = fetch(url, key, since, args.limit)
    except CompareError as exc:
        print(f"gateway compare: {exc}", file=sys.stderr)
        return 1
    if not fetched.records:
        print(f"gateway compare: no comparison records in the last {args.since} at {url}: is shadow traffic "
              "configured (router_settings.shadow) and receiving requests?", file=sys.stderr)
        return 1
    pairs = pair_reports(fetched.records)
    sections = [pair_section(p) for p in pairs]
    first, last = min(p.first_ts for p in pairs), max(p.last_ts for p in pairs)
    subtitle = (f"{len(fetched.records)} comparison records from {_when(first)} to {_when(last)} "
                f"({url}, --since {args.since})")
    if fetched.truncated:
        print(f"gateway compare: warning: more records than --limit in the window: the report covers the newest "
              f"{len(fetched.records)}", file=sys.stderr)
    if args.json:
        json.dump({"since_s": since, "truncated": fetched.truncated, "records": len(fetched.records),
                   "pairs": [p.to_dict() for p in pairs]}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(subtitle)
        print()
        sys.stdout.write(format_table(sections))
    if args.html or args.png:
        try:
            path = write_report(args.html or args.png, sections, "Model comparison (shadow traffic)", subtitle,
                                kind="html" if args.html else "png")
        except ReportError as exc:
            print(f"gateway compare: {exc}", file=sys.stderr)
            return 1
        print(f"report written to {path}", file=sys.stderr)
    return 0
