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

Connections come from a small bounded pool (:mod:`.pgpool`), not one per
thread: the daemon starts new worker threads every pass, and PostgreSQL counts
connections. A connection is held only for the length of one transaction, and
closed after ``pool_idle_s`` unused.

Faults (docs/postgres.md). Every psycopg error is translated into a project
error (:mod:`.pgerrors`). A connection that failed before COMMIT was sent had
nothing committed, so the whole function runs again on a fresh connection
(a killed backend, a session left read-only by a failover); if that fails too,
the caller gets the project error. A connection lost *during* COMMIT is
resolved, not guessed: each transaction learns its id at BEGIN (same round
trip), and a fresh connection asks ``pg_xact_status()``: committed returns the
result, aborted runs the function again, and when the server cannot be asked
the caller gets :class:`~galtea_local.errors.OutcomeUnknownError`.
Every session gets ``lock_timeout`` and ``statement_timeout`` from
``busy_timeout_s``, and TCP keepalives, so neither a lock held for ever nor a
dead server makes a call hang.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import psycopg
from psycopg.conninfo import conninfo_to_dict

from galtea_local.errors import OutcomeUnknownError, StoreError, StoreOpenError, StoreUnavailableError
from galtea_local.store import migrations, pg_migrations, pgerrors
from galtea_local.store.dialects import POSTGRESQL
from galtea_local.store.pgadapter import Connection, row_factory
from galtea_local.store.pgpool import Pool

T = TypeVar("T")
log = logging.getLogger("galtea_local.store")

_BEGIN = {
    "SERIALIZABLE": "BEGIN ISOLATION LEVEL SERIALIZABLE",
    "READ COMMITTED": "BEGIN ISOLATION LEVEL READ COMMITTED",
}
# Sent with BEGIN in one round trip: the id a lost COMMIT is later looked up by.
_XID = "; SELECT pg_current_xact_id()::text"
FRESH_TRIES = 2  # fresh connections tried after one failed before COMMIT (a killed backend, a read-only session)
OUTCOME_WAIT_S = 5.0  # how long a transaction whose COMMIT was cut off may stay "in progress" before we give up
KEEPALIVE = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3}


class _NotCommitted(Exception):
    """Internal: the transaction surely did not commit; ``cause`` says why. The caller may run it again."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


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


def session_settings(conninfo: str, busy_timeout_s: float) -> dict[str, Any]:
    """Connect arguments: timeouts from ``busy_timeout_s`` (added to any ``options`` the URL has), keepalives.

    Set at connection start, so they hold whatever the database's defaults say
    (an ``ALTER DATABASE ... SET statement_timeout = '1ms'`` does not reach us).
    ``idle_in_transaction_session_timeout``: a frozen process (SIGSTOP, a VM pause) must not hold
    row locks for long; our transactions last milliseconds, and a read that pages through a large
    export idles far less than twice ``busy_timeout_s`` between fetches.
    """
    ms = max(1, int(busy_timeout_s * 1000))
    ours = (f"-c lock_timeout={ms} -c statement_timeout={ms}"
            f" -c idle_in_transaction_session_timeout={max(5_000, 2 * ms)}")
    given = conninfo_to_dict(conninfo).get("options")
    return {
        "options": f"{given} {ours}" if given else ours,
        "connect_timeout": max(2, min(10, math.ceil(busy_timeout_s))),
        "tcp_user_timeout": max(1000, min(30_000, ms)),  # unacknowledged data: give up on a dead peer
        "fallback_application_name": "galtea-local",  # how pg_stat_activity names us, unless the URL does
        **KEEPALIVE,
    }


class PostgresStore:
    """An open PostgreSQL store: its URL, settings and a pool of connections.

    ``durability``: ``"power"`` forces ``synchronous_commit = on`` (a commit is
    on disk before it returns); ``"process"`` keeps the server's setting, which
    the operator chooses (``on`` by default). ``pool_size``: the most
    connections this object opens at once; ``pool_idle_s``: an unused one
    closes after that long.
    """

    dialect = POSTGRESQL

    def __init__(self, location: str, *, durability: str = "process", busy_timeout_s: float = 30.0,
                 pool_size: int = 4, pool_idle_s: float = 10.0, **_file_modes: Any) -> None:
        if durability not in ("process", "power"):
            raise StoreOpenError(f"durability {durability!r}: use 'process' or 'power'")
        self.location = location
        self.path = display_location(location)  # what messages and `status` show as "the store"
        self.durability = durability
        self.busy_timeout_s = busy_timeout_s
        self._conninfo = conninfo_from(location)
        self._connect_args = session_settings(self._conninfo, busy_timeout_s)
        self._lock_timeout_ms = str(max(1, int(busy_timeout_s * 1000)))  # as pg_settings shows it
        self._pool = Pool(self._open, size=pool_size, idle_s=pool_idle_s, wait_s=busy_timeout_s, where=self.path)
        self.transaction(pg_migrations.upgrade, self.path)
        self.store_id: str = self.read(migrations.read_store_id)

    # -- connections -------------------------------------------------------

    def _open(self) -> psycopg.Connection[Any]:
        try:
            # autocommit: the store sends BEGIN/COMMIT itself, with the isolation it chose.
            raw = psycopg.connect(self._conninfo, autocommit=True, row_factory=row_factory, **self._connect_args)
            if self.durability == "power":
                raw.execute("SET synchronous_commit = on")
            applied = raw.execute("SELECT setting FROM pg_settings WHERE name = 'lock_timeout'").fetchone()
        except psycopg.Error as exc:
            raise pgerrors.cannot_connect(exc, self.path) from None
        if applied is None or applied[0] != self._lock_timeout_ms:
            raw.close()
            # Seen with PgBouncer's ignore_startup_parameters: no timeouts, and the URL's search_path
            # gone too, so the store would have put its tables in another schema.
            raise StoreOpenError(
                f"store {self.path}: the connection's startup options were dropped (lock_timeout is "
                f"{applied[0] if applied else None!r} ms, not {self._lock_timeout_ms}); a pooler in between "
                "(PgBouncer?) ignores them. Connect to PostgreSQL directly (docs/postgres.md)")
        return raw

    def connection(self) -> Connection:
        """An autocommit connection of its own, for ad-hoc statements (tests, tools); close ``.raw`` after."""
        return Connection(self._open())

    def close(self) -> None:
        self._pool.close()

    # -- transactions ------------------------------------------------------

    def transaction(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(conn, *args, **kwargs)`` in one transaction and commit.

        Runs ``fn`` again, whole, on a serialization failure or deadlock (until
        ``busy_timeout_s``) and on a connection that failed before COMMIT (up to
        :data:`FRESH_TRIES` fresh ones). Raises only project errors; a lost
        COMMIT answer is resolved (see the module docstring).
        """
        begin = _BEGIN[getattr(fn, "pg_isolation", "SERIALIZABLE")]
        deadline = time.monotonic() + self.busy_timeout_s
        pause, fresh = 0.002, 0
        while True:
            try:
                return self._run(begin, fn, args, kwargs)
            except _NotCommitted as again:
                cause = again.cause
                if isinstance(cause, pgerrors.RETRYABLE):
                    if time.monotonic() > deadline:
                        raise pgerrors.translate(cause, self.path, self.busy_timeout_s) from cause
                    time.sleep(random.uniform(0, pause))  # jitter: the colliding transactions must not meet again
                    pause = min(pause * 2, 0.1)
                    continue
                fresh += 1
                if fresh > FRESH_TRIES:
                    raise pgerrors.translate(cause, self.path, self.busy_timeout_s) from cause
                log.debug("store %s: retrying on a fresh connection after %s", self.path, cause)

    def _run(self, begin: str, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]) -> T:
        raw = self._pool.get()
        reusable = False
        try:
            try:
                xid, result = self._body(raw, begin, fn, args, kwargs)
            except _NotCommitted as again:
                reusable = not pgerrors.poisons(again.cause) and _idle(raw)
                raise
            except BaseException:  # fn's own error (a NotFoundError ...) or a translated one: rolled back
                reusable = _idle(raw)
                raise
            try:
                raw.execute("COMMIT")
            except psycopg.Error as exc:
                if not pgerrors.is_connection_loss(exc):  # the server answered: it did not commit
                    reusable = _rollback(raw)
                    if isinstance(exc, pgerrors.RETRYABLE):  # SERIALIZABLE may refuse at COMMIT
                        raise _NotCommitted(exc) from exc
                    raise pgerrors.translate(exc, self.path, self.busy_timeout_s) from exc
                return self._resolve(xid, result, exc)
            reusable = True
            return result
        finally:
            self._pool.put(raw, reusable=reusable)

    def _body(self, raw: psycopg.Connection[Any], begin: str, fn: Callable[..., T], args: tuple[Any, ...],
              kwargs: dict[str, Any]) -> tuple[str, T]:
        """BEGIN (learning the transaction id) and ``fn``; any failure here means nothing committed."""
        try:
            cursor = raw.execute(begin + _XID)
            cursor.nextset()
            xid: str = cursor.fetchone()[0]  # type: ignore[index]  # the SELECT always returns one row
            return xid, fn(Connection(raw), *args, **kwargs)
        except psycopg.Error as exc:
            _rollback(raw)
            if isinstance(exc, pgerrors.RETRYABLE) or pgerrors.poisons(exc):
                raise _NotCommitted(exc) from exc
            raise pgerrors.translate(exc, self.path, self.busy_timeout_s) from exc
        except BaseException:
            _rollback(raw)
            raise

    def _resolve(self, xid: str, result: T, lost: BaseException) -> T:
        """The connection broke during COMMIT: ask a fresh one whether transaction ``xid`` committed."""
        deadline = time.monotonic() + min(OUTCOME_WAIT_S, self.busy_timeout_s)
        while True:
            try:
                status = self._xact_status(xid)
            except (psycopg.Error, StoreError) as exc:
                raise self._unknown(xid, result, lost, "and the server could not be reached to ask") from exc
            if status == "committed":
                log.info("store %s: the COMMIT answer was lost, but transaction %s committed", self.path, xid)
                return result
            if status != "in progress":  # aborted, or (NULL) never reached the server's commit log
                raise _NotCommitted(lost)
            if time.monotonic() > deadline:
                raise self._unknown(xid, result, lost, "and it is still in progress on the server")
            time.sleep(0.05)

    def _xact_status(self, xid: str) -> str | None:
        raw = self._open()
        try:
            row = raw.execute("SELECT pg_xact_status(%s::xid8)", (xid,)).fetchone()
            return None if row is None else row[0]
        finally:
            raw.close()

    def _unknown(self, xid: str, result: Any, lost: BaseException, why: str) -> OutcomeUnknownError:
        detail = pgerrors.first_line(lost)
        return OutcomeUnknownError(
            f"store {self.path}: the connection broke while COMMIT was in flight ({detail}), {why}: transaction "
            f"{xid} may or may not have committed. Once the database answers, look the record up "
            "before writing it again", transaction=xid, result=result)

    def read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(conn, *args)`` on one consistent snapshot (REPEATABLE READ, READ ONLY).

        A read is idempotent: after a lost connection it runs once more on a fresh one.
        """
        for attempt in range(FRESH_TRIES + 1):
            try:
                with self.reading() as conn:
                    return fn(conn, *args)
            except StoreUnavailableError:
                if attempt == FRESH_TRIES:
                    raise
        raise AssertionError("unreachable")

    @contextmanager
    def reading(self) -> Iterator[Connection]:
        """A read snapshot; psycopg errors inside the block come out as project errors."""
        raw = self._begin_read()
        poisoned = False
        try:
            yield Connection(raw)
        except psycopg.Error as exc:
            poisoned = pgerrors.poisons(exc)
            raise pgerrors.translate(exc, self.path, self.busy_timeout_s) from exc
        finally:
            # Nothing to keep: ending the snapshot is all a read needs.
            self._pool.put(raw, reusable=not poisoned and _rollback(raw))

    def _begin_read(self) -> psycopg.Connection[Any]:
        """A pooled connection inside a read snapshot; a connection that fails at BEGIN (nothing sent
        yet) is replaced by a fresh one."""
        for attempt in range(FRESH_TRIES + 1):
            raw = self._pool.get()
            try:
                raw.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                return raw
            except psycopg.Error as exc:
                self._pool.put(raw, reusable=False)
                if not pgerrors.is_connection_loss(exc) or attempt == FRESH_TRIES:
                    raise pgerrors.translate(exc, self.path, self.busy_timeout_s) from exc
        raise AssertionError("unreachable")


def _idle(raw: psycopg.Connection[Any]) -> bool:
    """Open, not broken, outside any transaction: fit to go back to the pool."""
    return not raw.closed and not raw.broken and raw.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def _rollback(raw: psycopg.Connection[Any]) -> bool:
    """End any open transaction; False when the connection is broken and must not be pooled."""
    if raw.closed or raw.broken:
        return False
    try:
        if raw.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            raw.execute("ROLLBACK")
        return True
    except psycopg.Error:
        return False
