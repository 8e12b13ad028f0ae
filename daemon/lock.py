"""One pusher per store: an OS file lock beside the store file.

``flock`` is released by the kernel when the process dies, however it dies,
so a SIGKILLed daemon never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from galtea_local.errors import StoreError


class PusherLockedError(StoreError):
    """Another daemon or ``sync`` already pushes this store."""


class PusherLock:
    """Hold ``<store>.lock`` exclusively for the life of this object."""

    def __init__(self, store_path: Path) -> None:
        self.path = Path(f"{store_path}.lock")
        self._fd: int | None = None

    def acquire(self) -> PusherLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise PusherLockedError(
                f"another galtea-local daemon or sync (pid {holder}) holds the lock {self.path}; "
                "one pusher per store"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> PusherLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
