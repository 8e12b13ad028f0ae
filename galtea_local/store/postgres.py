"""A store in PostgreSQL, shared by many app hosts and several daemons (docs/postgres.md).

Same interface as :class:`galtea_local.store.Store`: ``transaction(fn, ...)``
runs ``fn(conn, ...)`` in one transaction and commits, ``read(fn)`` in one
snapshot; ``fn`` gets the ``sqlite3``-like adapter of :mod:`.pgadapter`, so
the outbox and service code is the same on both backends.

Isolation. That code was written for SQLite's single writer (``BEGIN
IMMEDIATE``): it reads, decides, then writes, and relies on nobody writing in
between. For example, a daemon marks a lane inactive when it sees no open
operation in it, while an app may be adding one. SERIALIZABLE gives exactly
that guarantee (every commit is equivalent to some one-at-a-time order)
without a global lock, at the price of aborts when two transactions really
collide. So transactions run SERIALIZABLE, and on a serialization failure
(40001) or a deadlock (40P01) the *whole* function runs again on a fresh
snapshot, with jittered backoff, until ``busy_timeout_s``: the same rule as
SQLITE_BUSY. Two exceptions, each argued where it is marked: claiming lanes
(``FOR UPDATE SKIP LOCKED`` at READ COMMITTED, :mod:`galtea_local.store.dialects`)
and migrations (an advisory lock at READ COMMITTED). Reads run REPEATABLE READ
READ ONLY: one consistent snapshot, never aborted.

Connections come from a small pool, not one per thread: the daemon starts new
worker threads every pass, and PostgreSQL counts connections. A connection is
held only for the length of one transaction.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pg_errors

from galtea_local.store import migrations, pg_migrations
from galtea_local.store.dialects import POSTGRESQL
from galtea_local.errors import StoreError, StoreOpenError
from galtea_local.store.pgadapter import Connection, row_factory

T = TypeVar("T")

_RETRYABLE = (pg_errors.SerializationFailure, pg_errors.DeadlockDetected)
_BEGIN = {
    "SERIALIZABLE": "BEGIN ISOLATION LEVEL SERIALIZABLE",
    "READ COMMITTED": "BEGIN ISOLATION LEVEL READ COMMITTED",
}
MAX_IDLE = 16  # idle connections kept per store object; more are closed when given back


def conninfo_from(location: str) -> str:
    """The libpq URI for an SQLAlchemy-style URL (``postgresql+psycopg://`` drops its driver)."""
    scheme, sep, rest = location.partition("://")
    if not sep or scheme.split("+")[0] not in ("postgresql", "postgres"):
        raise StoreOpenError(f"store {location!r}: not a postgresql:// URL")
    return "postgresql://" + rest


def display_location(location: str) -> str:
    """The URL with any password masked, for logs and ``status``."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(location).render_as_string(hide_password=True)
    except Exception:  # an unparsable URL is refused on connect with a clearer message
        return location.split("@")[-1]


class PostgresStore:
    """An open PostgreSQL store: its URL, settings and a pool of connections.

    ``durability``: ``"power"`` forces ``synchronous_commit = on`` (a commit is
    on disk before it returns); ``"process"`` keeps the server's setting, which
    the operator chooses (``on`` by default).
    """

    dialect = POSTGRESQL

    def __init__(self, location: str, *, durability: str = "process", busy_timeout_s: float = 30.0,
                 **_file_modes: Any) -> None:
        if durability not in ("process", "power"):
            raise StoreOpenError(f"durability {durability!r}: use 'process' or 'power'")
        self.location = location
        self.path = display_location(location)  # what messages and `status` show as "the store"
        self.durability = durability
        self.busy_timeout_s = busy_timeout_s
        self._conninfo = conninfo_from(location)
        self._lock = threading.Lock()
        self._idle: list[psycopg.Connection[Any]] = []
        self._pid = os.getpid()
        self.transaction(pg_migrations.upgrade, self.path)
        self.store_id: str = self.read(migrations.read_store_id)

    # -- connections -------------------------------------------------------

    def _open(self) -> psycopg.Connection[Any]:
        try:
            # autocommit: the store sends BEGIN/COMMIT itself, with the isolation it chose.
            raw = psycopg.connect(self._conninfo, autocommit=True, row_factory=row_factory,
                                  connect_timeout=max(1, int(self.busy_timeout_s)))
        except psycopg.Error as exc:
            raise StoreOpenError(f"store {self.path}: cannot connect ({str(exc).strip()})") from None
        if self.durability == "power":
            raw.execute("SET synchronous_commit = on")
        return raw

    @contextmanager
    def _checkout(self) -> Iterator[psycopg.Connection[Any]]:
        with self._lock:
            if self._pid != os.getpid():  # a forked child never shares its parent's sockets
                self._idle, self._pid = [], os.getpid()
            raw = self._idle.pop() if self._idle else None
        if raw is None or raw.closed:
            raw = self._open()
        try:
            yield raw
        finally:
            self._give_back(raw)

    def _give_back(self, raw: psycopg.Connection[Any]) -> None:
        healthy = not raw.closed and raw.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        with self._lock:
            if healthy and len(self._idle) < MAX_IDLE and self._pid == os.getpid():
                self._idle.append(raw)
                return
        raw.close()

    def connection(self) -> Connection:
        """An autocommit connection of its own, for ad-hoc statements (tests, tools); close ``.raw`` after."""
        return Connection(self._open())

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for raw in idle:
            raw.close()

    # -- transactions ------------------------------------------------------

    def transaction(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(conn, *args, **kwargs)`` in one transaction and commit; re-run it whole on 40001/40P01."""
        begin = _BEGIN[getattr(fn, "pg_isolation", "SERIALIZABLE")]
        deadline = time.monotonic() + self.busy_timeout_s
        pause = 0.002
        while True:
            try:
                return self._run(begin, fn, args, kwargs)
            except _RETRYABLE as exc:
                if time.monotonic() > deadline:
                    raise StoreError(f"store {self.path}: {str(exc).strip()} (still after {self.busy_timeout_s}s)")
            time.sleep(random.uniform(0, pause))  # jitter: the colliding transactions must not meet again
            pause = min(pause * 2, 0.1)

    def _run(self, begin: str, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]) -> T:
        with self._checkout() as raw:
            try:
                raw.execute(begin)
                result = fn(Connection(raw), *args, **kwargs)
                raw.execute("COMMIT")
                return result
            except BaseException as exc:
                _rollback(raw)
                if isinstance(exc, psycopg.OperationalError) and not isinstance(exc, _RETRYABLE):
                    # Connection lost: whether a COMMIT in flight landed is unknown, so no retry here.
                    raise StoreError(f"store {self.path}: {str(exc).strip()}") from exc
                raise

    def read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(conn, *args)`` on one consistent snapshot (REPEATABLE READ, READ ONLY)."""
        with self.reading() as conn:
            return fn(conn, *args)

    @contextmanager
    def reading(self) -> Iterator[Connection]:
        with self._checkout() as raw:
            raw.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            try:
                yield Connection(raw)
            finally:
                _rollback(raw)  # nothing to keep: ending the snapshot is all a read needs


def _rollback(raw: psycopg.Connection[Any]) -> None:
    if raw.closed:
        return
    try:
        if raw.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            raw.execute("ROLLBACK")
    except psycopg.Error:
        raw.close()  # a broken connection is not given back to the pool
