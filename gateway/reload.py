"""Watching router.yaml: a cheap stat() poll that also sees rename and symlink swaps.

Editors save by writing a new file and renaming it over the old one; Kubernetes swaps a ConfigMap
volume's `..data` symlink. stat() follows symlinks, so inode, size or mtime change in every case;
the content digest then decides whether anything really changed.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("gateway.reload")

Signature = tuple[int, int, int, int]


def file_signature(path: Path) -> Signature | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class ConfigWatcher:
    """Calls `on_change(text)` when the file's content changes; polls every `interval` seconds."""

    def __init__(self, path: Path, interval: float, on_change: Callable[[str], object]) -> None:
        self.path = path
        self.interval = interval
        self.on_change = on_change
        self._signature = file_signature(path)
        self._digest = self._read_digest()[1]

    def _read_digest(self) -> tuple[str | None, str | None]:
        try:
            text = self.path.read_text()
        except OSError:
            return None, None
        return text, hashlib.sha256(text.encode()).hexdigest()

    def check(self) -> bool:
        """One poll; returns True when the content changed (and on_change was called)."""
        sig = file_signature(self.path)
        if sig is None or sig == self._signature:
            return False
        self._signature = sig
        text, digest = self._read_digest()
        if text is None or digest == self._digest:
            return False
        self._digest = digest
        self.on_change(text)
        return True

    def mark_current(self) -> None:
        """Take the file as it is now as the applied version (after an explicit reload)."""
        self._signature = file_signature(self.path)
        self._digest = self._read_digest()[1]

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.check()
            except Exception:  # noqa: BLE001 - a watcher must survive anything
                log.exception("config watcher failed; will retry")
