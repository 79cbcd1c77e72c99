"""`gateway serve | check | demo`."""

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
    sub.add_parser("demo", help="run llama.cpp on a small model with the gateway in front (pip install -e .[demo])")
    args = parser.parse_args(argv)
    return int(args.func(args))
