"""What wakes the daemon early: another process wrote to the store.

- SQLite: ``PRAGMA data_version`` on a dedicated connection (it changes when
  any *other* connection commits);
- PostgreSQL: the outbox's top ``seq`` (a new operation raises it).

:class:`Watcher` polls on its own thread, so a slow or locked store never
delays the main loop's reaction to a signal.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable

from galtea_local.store import Store

log = logging.getLogger("galtea_local.daemon")


class StoreWatch:
    """Tells when another connection committed to the store (``PRAGMA data_version``)."""

    def __init__(self, store: Store) -> None:
        self._conn = sqlite3.connect(store.path, timeout=store.busy_timeout_s, isolation_level=None)
        self._version = self._read()

    def _read(self) -> int:
        return self._conn.execute("PRAGMA data_version").fetchone()[0]

    def changed(self) -> bool:
        try:
            version = self._read()
        except sqlite3.Error as exc:  # a busy or hiccuping store: the interval still runs passes
            log.debug("data_version poll failed: %s", exc)
            return False
        changed, self._version = version != self._version, version
        return changed

    def close(self) -> None:
        self._conn.close()


class OutboxWatch:
    """PostgreSQL's stand-in for :class:`StoreWatch`: a new operation raises the outbox's top ``seq``.

    One index probe per poll; the daemons' own settling does not count as a change.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._top = self._read()

    def _read(self) -> int:
        return self._store.read(lambda conn: conn.execute("SELECT COALESCE(MAX(seq), 0) FROM outbox").fetchone()[0])

    def changed(self) -> bool:
        try:
            top = self._read()
        except Exception as exc:  # a busy or restarting server: the interval still runs passes
            log.debug("outbox poll failed: %s", exc)
            return False
        changed, self._top = top != self._top, top
        return changed

    def close(self) -> None:
        pass


class Watcher:
    """Polls a watch every ``every_s`` on a daemon thread; calls ``on_change`` when the store was written."""

    def __init__(self, store: Store, on_change: Callable[[], None], every_s: float) -> None:
        self._store = store
        self._on_change = on_change
        self._every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="store-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to end; it closes its own connection (it may sit in a blocked read: not waited for)."""
        self._stop.set()

    def _run(self) -> None:
        try:
            watch: StoreWatch | OutboxWatch = (
                StoreWatch(self._store) if self._store.dialect == "sqlite" else OutboxWatch(self._store))
        except Exception as exc:  # an unreachable store at start: passes still run on the interval
            log.warning("store watch unavailable (%s); passes run every interval only", exc)
            return
        try:
            while not self._stop.wait(self._every_s):
                if watch.changed():
                    self._on_change()
        finally:
            watch.close()
