"""Is the store file the daemon opened still the one at its path?

An operator who restores a backup, or a tool that writes a new file and renames
it over the old one, replaces the store under a running daemon: the path now
names a new inode while the daemon's connections keep the unlinked old file
open. It would go on pushing the old file, never see a new record, and look
healthy. The daemon checks the identity (device, inode) of the path on every
poll and, when it changed, stops and exits non-zero, so systemd
(``Restart=on-failure``) starts it again on the file now at the path.
"""

from __future__ import annotations

import os

EXIT_STORE_REPLACED = 3


class StoreFile:
    """The identity of an SQLite store file, taken at start."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._identity = self._read()

    def _read(self) -> tuple[int, int] | None:
        try:
            stat = os.stat(self.path)
        except OSError:
            return None
        return stat.st_dev, stat.st_ino

    def replaced(self) -> str | None:
        """Why the path no longer names the file we opened, or None while it does."""
        now = self._read()
        if now == self._identity:
            return None
        if now is None:
            return f"the store {self.path} was removed"
        return f"the store {self.path} was replaced by another file (new inode)"
