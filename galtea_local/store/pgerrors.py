"""psycopg's errors, classified and translated at the store's boundary.

Nothing above :mod:`galtea_local.store.postgres` sees a psycopg exception
(the httpx habit: ``map_httpcore_exceptions``). Two questions are asked of
each error:

- does it *poison the session*, so the connection must be thrown away rather
  than given back to the pool? A lost or killed connection, and a session that
  refuses writes: a session opened while the database was read-only (a
  failover, ``default_transaction_read_only``) stays read-only after the
  database is writable again, so only a new connection recovers;
- which project error tells the caller what happened and what to do.
"""

from __future__ import annotations

import psycopg
from psycopg import errors as pg_errors

from galtea_local.errors import (
    StoreError,
    StoreReadOnlyError,
    StoreTimeoutError,
    StoreUnavailableError,
)

# Serialization failure, deadlock: the whole transaction runs again on a fresh snapshot.
RETRYABLE = (pg_errors.SerializationFailure, pg_errors.DeadlockDetected)

# SQLSTATEs meaning "this connection is finished": class 08 (connection exception) and the
# operator interventions other than a cancelled query (57P01 admin shutdown, 57P02 crash
# shutdown, 57P03 cannot connect now, 57P04 database dropped, 57P05 idle session timeout),
# plus 25P03 (idle-in-transaction timeout: the server closed the session).
_GONE_STATES = frozenset({"57P01", "57P02", "57P03", "57P04", "57P05", "25P03"})


def is_connection_loss(exc: BaseException) -> bool:
    """The connection is gone or going: nothing more can be sent on it."""
    if isinstance(exc, psycopg.InterfaceError):  # "the connection is closed"
        return True
    if not isinstance(exc, psycopg.Error):
        return False
    state = exc.sqlstate
    if state is None:  # libpq-level: socket closed, server closed the connection unexpectedly
        return isinstance(exc, psycopg.OperationalError)
    return state.startswith("08") or state in _GONE_STATES


def is_read_only(exc: BaseException) -> bool:
    return isinstance(exc, pg_errors.ReadOnlySqlTransaction)


def poisons(exc: BaseException) -> bool:
    """The connection must not go back to the pool after this error."""
    return is_connection_loss(exc) or is_read_only(exc)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__


def translate(exc: BaseException, where: str, busy_timeout_s: float) -> StoreError:
    """The project error for a psycopg error raised before any COMMIT was sent (so nothing was written)."""
    detail = first_line(exc)
    if is_read_only(exc):
        return StoreReadOnlyError(
            f"store {where}: the database refuses writes ({detail}); nothing was written. It is read-only "
            "(a failover in progress, a standby, or default_transaction_read_only): retry once it is writable"
        )
    if isinstance(exc, pg_errors.LockNotAvailable):
        return StoreTimeoutError(
            f"store {where}: waited store.busy_timeout_s = {busy_timeout_s:g}s for a lock ({detail}); nothing was "
            "written. Another session holds it: retry, or find the holder in pg_locks"
        )
    if isinstance(exc, pg_errors.QueryCanceled):
        return StoreTimeoutError(
            f"store {where}: a statement was cancelled ({detail}); nothing was written. It ran past "
            f"statement_timeout (store.busy_timeout_s = {busy_timeout_s:g}s) or an operator cancelled it: retry"
        )
    if isinstance(exc, pg_errors.TooManyConnections):
        return StoreUnavailableError(
            f"store {where}: the server has no free connection ({detail}); nothing was written. Retry later, "
            "lower store.pool_size on the app hosts, or raise max_connections (docs/postgres.md)"
        )
    if is_connection_loss(exc):
        return StoreUnavailableError(
            f"store {where}: the database connection failed ({detail}); nothing was written. "
            "Retry later: the store reconnects by itself once the server answers"
        )
    if isinstance(exc, RETRYABLE):
        return StoreTimeoutError(
            f"store {where}: {detail} (still after store.busy_timeout_s = {busy_timeout_s:g}s of retries); "
            "nothing was written. Too many writers collide on the same rows: retry"
        )
    return StoreError(f"store {where}: the database refused the statement ({detail}); nothing was written. "
                      "This is a galtea-local bug or a schema changed by hand: report it with this message")


def cannot_connect(exc: BaseException, where: str) -> StoreUnavailableError:
    """The project error for a failed connection attempt (refused, limit reached, unknown host)."""
    detail = first_line(exc)
    return StoreUnavailableError(
        f"store {where}: cannot connect to the database ({detail}); nothing was written. Retry later; "
        "check the server is up, accepts connections and has free slots (max_connections, CONNECTION LIMIT)"
    )
