"""The benchmarks' process helpers: tests/procs.py is the one implementation, re-exported here.

`Procs` starts every child in its own session (its own process group), so Ctrl-C in the terminal reaches
only the benchmark script, which then stops the children itself, group by group (a server's own workers
included) — never by name. Also: free ports, readiness, and /proc readers (process tree, RSS, CPU).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.procs import (  # noqa: E402 - after the path tweak
    CLK_TCK,
    Proc,
    Procs,
    cpu_seconds,
    free_port,
    http_status,
    proc_kb_field,
    process_tree,
    rss_bytes,
    tree_cpu_seconds,
    tree_rss_bytes,
)

__all__ = ["CLK_TCK", "Proc", "Procs", "cpu_seconds", "free_port", "http_status", "proc_kb_field", "process_tree",
           "rss_bytes", "tree_cpu_seconds", "tree_rss_bytes"]
