"""Render the dashboards from live data: a gateway under simulated traffic, scraped by a real Prometheus.

    python scripts/live_dashboards.py --minutes 5 --out docs/img/

Starts redis-server, vLLM-like simulators, a gateway (2 workers) and Prometheus on free ports (the same
stack as tests/test_prometheus_gateway.py), drives traffic for the given time, renders every dashboard
with scripts/render_dashboards.py, and stops everything.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts import render_dashboards  # noqa: E402
from tests.live_stack import live_stack  # noqa: E402
from tests.procs import start_redis  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="traffic before the render")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    args = parser.parse_args(argv)
    redis = start_redis()
    try:
        with live_stack(Path(tempfile.mkdtemp(prefix="live-dash-")), f"redis://127.0.0.1:{redis.port}/0") as stack:
            print(f"traffic for {args.minutes:g} min; Prometheus at {stack.prometheus_url}", flush=True)
            time.sleep(args.minutes * 60)
            return render_dashboards.main(["--prometheus", stack.prometheus_url, "--range",
                                           f"{max(1, int(args.minutes))}m", "--scrape-interval", "1s",
                                           "--out", str(args.out)])
    finally:
        redis.stop()


if __name__ == "__main__":
    raise SystemExit(main())
