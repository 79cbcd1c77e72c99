"""`gateway serve | check | demo | compare | eval`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gateway import __version__


def _serve(args: argparse.Namespace) -> int:
    from gateway.server import serve
    from gateway.settings import Settings

    overrides = {k: v for k, v in (("config", args.config), ("host", args.host), ("port", args.port),
                                   ("workers", args.workers)) if v is not None}
    try:
        settings = Settings(**overrides)
    except Exception as exc:  # noqa: BLE001 - pydantic's message names the setting
        print(f"gateway: invalid settings: {exc}", file=sys.stderr)
        return 2
    return serve(settings)


def _check(args: argparse.Namespace) -> int:
    from gateway.config import ConfigError, load_file

    try:
        cfg = load_file(args.config)
    except ConfigError as exc:
        print(f"{args.config}: {len(exc.problems)} problem{'s' if len(exc.problems) != 1 else ''}", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    print(cfg.describe())
    for note in cfg.notes:
        print(f"note: {note}")
    if cfg.ignored:
        print(f"ignored (LiteLLM keys the gateway does not use): {', '.join(cfg.ignored)}")
    print(f"{args.config}: OK")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from gateway.rollout.compare import run

    return run(args)


def _eval(args: argparse.Namespace) -> int:
    from gateway.rollout.evaluate import run

    return run(args)


def _add_report_args(p: argparse.ArgumentParser) -> None:
    out = p.add_mutually_exclusive_group()
    out.add_argument("--html", type=Path, metavar="FILE", help="write a self-contained HTML report (table and plots)")
    out.add_argument("--png", type=Path, metavar="FILE", help="write the plots as one PNG")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "demo":
        from gateway.demo import main as demo_main

        return demo_main(argv[1:])
    parser = argparse.ArgumentParser(prog="gateway", description="OpenAI-compatible gateway for open-weight models")
    parser.add_argument("--version", action="version", version=f"oss-gateway {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run the gateway")
    s.add_argument("--config", type=Path, help="router.yaml (default: $GATEWAY_CONFIG or ./router.yaml)")
    s.add_argument("--host")
    s.add_argument("--port", type=int)
    s.add_argument("--workers", type=int)
    s.set_defaults(func=_serve)
    c = sub.add_parser("check", help="validate a router.yaml and print alias -> deployments")
    c.add_argument("config", type=Path)
    c.set_defaults(func=_check)
    cmp = sub.add_parser("compare", help="report shadow traffic comparisons per model pair (GET /admin/comparisons)")
    cmp.add_argument("--since", default="1h", help="window: 30s, 10m, 1h, 2d or seconds (default 1h)")
    cmp.add_argument("--url", help="the gateway (default: $GATEWAY_URL or http://127.0.0.1:4000)")
    cmp.add_argument("--key", help="master key (default: $GATEWAY_MASTER_KEY)")
    cmp.add_argument("--limit", type=int, default=100_000, help="most records to read (default 100000)")
    cmp.add_argument("--json", action="store_true", help="print the numbers as JSON instead of the table")
    _add_report_args(cmp)
    cmp.set_defaults(func=_compare)
    ev = sub.add_parser("eval", help="send a golden set to aliases through the gateway; quality, speed, cost")
    ev.add_argument("golden", type=Path, help='JSONL: {"messages": [...], "expected" | "contains" | "json_schema": ...}')
    ev.add_argument("--aliases", required=True, help="comma-separated aliases, e.g. smart,fast")
    ev.add_argument("--url", help="the gateway (default: $GATEWAY_URL or http://127.0.0.1:4000)")
    ev.add_argument("--key", help="API key: a virtual key or the master key (default: $GATEWAY_MASTER_KEY)")
    ev.add_argument("--config", type=Path, help="router.yaml: prices per deployment (list price and GPU hour)")
    ev.add_argument("--concurrency", type=int, default=4, help="requests in flight (default 4)")
    ev.add_argument("--stream", action="store_true", help="stream the answers (measures time to first token)")
    ev.add_argument("--max-tokens", type=int, default=256,
                    help="max_tokens of items that set none (default 256)")
    ev.add_argument("--temperature", type=float, default=0.0, help="sampling temperature sent (default 0)")
    ev.add_argument("--timeout", type=float, default=300.0, help="seconds per request (default 300)")
    ev.add_argument("--min-pass-rate", type=float, metavar="X",
                    help="exit 1 when an alias passes fewer than this share (0..1) of the items")
    ev.add_argument("--json", type=Path, metavar="FILE", help="write every answer and the summary as JSON")
    ev.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    _add_report_args(ev)
    ev.set_defaults(func=_eval)
    sub.add_parser("demo", help="run llama.cpp on a small model with the gateway in front (pip install -e .[demo])")
    args = parser.parse_args(argv)
    return int(args.func(args))
