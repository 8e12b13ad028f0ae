"""A small, bounded pool of PostgreSQL connections for one store object.

PostgreSQL counts connections, and an app host's idle ones used to starve the
daemons under a connection limit. So:

- at most ``size`` connections are open at once per store object; a thread
  that needs one more waits (up to ``busy_timeout_s``) for one to come back;
- a connection idle for ``idle_s`` is closed by a timer, so an app that has
  stopped writing holds no connection at all;
- a connection older than :data:`MAX_LIFETIME_S` is closed when it comes back,
  so every session eventually picks up the server's current settings and host
  (after a failover, a DNS switch, an ``ALTER DATABASE ... SET``);
- before a pooled connection is handed out, its socket is polled (no round
  trip): a server that killed the session has already sent its farewell or
  closed the socket, so a dead connection is dropped instead of failing the
  caller's BEGIN;
- a connection whose error poisoned its session is discarded, never pooled.

A forked child never uses its parent's connections.
"""

from __future__ import annotations

import os
import select
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg

from galtea_local.errors import StoreTimeoutError

MAX_LIFETIME_S = 300.0


class Pool:
    """``get()`` a connection, then ``put()`` it back (``reusable=False`` to close it instead)."""

    def __init__(self, connect: Callable[[], psycopg.Connection[Any]], *, size: int, idle_s: float,
                 wait_s: float, where: str) -> None:
        self._connect = connect
        self.size = size
        self.idle_s = idle_s
        self._wait_s = wait_s
        self._where = where
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(size)
        self._idle: list[tuple[psycopg.Connection[Any], float, float]] = []  # (conn, born, idle since)
        self._born: dict[int, float] = {}
        self._reaper: threading.Timer | None = None
        self._pid = os.getpid()

    def get(self) -> psycopg.Connection[Any]:
        self._forget_parent()
        if not self._slots.acquire(timeout=self._wait_s):
            raise StoreTimeoutError(
                f"store {self._where}: all {self.size} connections of this process stayed busy for "
                f"store.busy_timeout_s = {self._wait_s:g}s; nothing was written. Raise store.pool_size, or look "
                "for a slow transaction"
            )
        try:
            return self._take_idle() or self._open()
        except BaseException:
            self._slots.release()
            raise

    def _open(self) -> psycopg.Connection[Any]:
        raw = self._connect()
        with self._lock:
            self._born[id(raw)] = time.monotonic()
        return raw

    def _take_idle(self) -> psycopg.Connection[Any] | None:
        while True:
            with self._lock:
                if not self._idle:
                    return None
                raw, born, _ = self._idle.pop()
                self._born[id(raw)] = born
            if _alive(raw):
                return raw
            self._close(raw)

    def put(self, raw: psycopg.Connection[Any], *, reusable: bool) -> None:
        """Give a connection back; it is closed unless reusable, healthy, young and this process's own."""
        now = time.monotonic()
        idle = psycopg.pq.TransactionStatus.IDLE
        with self._lock:
            born = self._born.get(id(raw), now)
            keep = (reusable and not raw.closed and raw.info.transaction_status == idle
                    and now - born < MAX_LIFETIME_S and self._pid == os.getpid())
            if keep:
                self._idle.append((raw, born, now))
                self._arm_reaper()
        if not keep:
            self._close(raw)
        if self._pid == os.getpid():
            self._slots.release()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
            if self._reaper is not None:
                self._reaper.cancel()
                self._reaper = None
        for raw, _, _ in idle:
            self._close(raw)

    def idle_count(self) -> int:
        with self._lock:
            return len(self._idle)

    def _close(self, raw: psycopg.Connection[Any]) -> None:
        with self._lock:
            self._born.pop(id(raw), None)
        try:
            raw.close()
        except Exception:  # closing a broken socket may complain; it is closed either way
            pass

    def _arm_reaper(self) -> None:
        # Called with the lock held. One timer at a time; it re-arms itself while connections idle.
        if self._reaper is None:
            self._reaper = threading.Timer(self.idle_s, self._reap)
            self._reaper.daemon = True
            self._reaper.start()

    def _reap(self) -> None:
        now = time.monotonic()
        with self._lock:
            self._reaper = None
            stale = [entry for entry in self._idle if now - entry[2] >= self.idle_s]
            self._idle = [entry for entry in self._idle if now - entry[2] < self.idle_s]
            if self._idle:
                self._arm_reaper()
        for raw, _, _ in stale:
            self._close(raw)

    def _forget_parent(self) -> None:
        if self._pid != os.getpid():  # a forked child: the sockets are the parent's
            with self._lock:
                self._idle, self._born, self._reaper = [], {}, None
                self._slots = threading.BoundedSemaphore(self.size)
                self._pid = os.getpid()


def _alive(raw: psycopg.Connection[Any]) -> bool:
    """An idle connection's socket has nothing to read unless the server ended the session."""
    if raw.closed or raw.broken:
        return False
    try:
        readable, _, _ = select.select([raw.fileno()], [], [], 0)
    except (OSError, ValueError, psycopg.Error):
        return False
    return not readable
