"""The SQL that differs between SQLite and PostgreSQL, all of it in this module.

Everything else is written once, in the SQL both engines accept (``?`` or
``:name`` placeholders; the PostgreSQL adapter translates them). Only what
pays for itself is dialect-specific:

- claiming lanes: PostgreSQL locks the lanes it claims with
  ``FOR UPDATE SKIP LOCKED``, so several daemons claiming at once each get
  different lanes instead of queueing behind one another (SQLite has one
  writer at a time: a plain ``UPDATE`` is enough);
- how many bytes the store holds (``PRAGMA`` page counts vs relation sizes);
- the schema DDL (:mod:`galtea_local.store.migrations` and :mod:`galtea_local.store.pg_migrations`).

A function called through ``store.transaction`` gets an ``sqlite3.Connection``
or the PostgreSQL adapter; :func:`of` tells which.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

SQLITE = "sqlite"
POSTGRESQL = "postgresql"
# "No limit" in a ``LIMIT ? OFFSET ?`` both engines accept (SQLite's -1 is an error on PostgreSQL).
NO_LIMIT = 2**63 - 1

F = TypeVar("F", bound=Callable[..., Any])


def is_postgres_url(location: str) -> bool:
    """Whether a store location names a PostgreSQL database (``postgresql+psycopg://...``)."""
    return location.startswith(("postgresql:", "postgresql+", "postgres:"))


def of(conn: Any) -> str:
    """``"postgresql"`` for the PostgreSQL adapter, ``"sqlite"`` for an ``sqlite3.Connection``."""
    return getattr(conn, "dialect", SQLITE)


# The database's clock, in epoch seconds, plus a shift (see lease_clock).
_PG_CLOCK = "(EXTRACT(EPOCH FROM clock_timestamp())::DOUBLE PRECISION + ?)"


def lease_clock(conn: Any, now: float) -> tuple[str, float]:
    """``(SQL expression, its parameter)`` for "now" in lease arithmetic.

    SQLite: the caller's ``now`` (one host, one clock). PostgreSQL: the
    database's clock, so daemons on hosts whose clocks disagree still agree
    on when a lease ends. The caller's ``now`` is read as an offset from its
    own clock (zero in production), so a test that passes a future ``now`` to
    expire a lease still can.
    """
    if of(conn) == POSTGRESQL:
        return _PG_CLOCK, now - time.time()
    return "?", now


def read_committed(fn: F) -> F:
    """Mark a transaction function to run at READ COMMITTED on PostgreSQL (SQLite ignores it).

    For a statement whose row locks already give the guarantee it needs, where
    SERIALIZABLE would only add aborts: see :data:`PG_CLAIM_LANES`.
    """
    fn.pg_isolation = "READ COMMITTED"  # type: ignore[attr-defined]
    return fn


# Unleased lanes (no owner, or a lease past on the database's clock) whose head operation is
# due, least recently served first, locked as they are read.
# Runs at READ COMMITTED (see read_committed): a lane another daemon locked is skipped, and
# one it leased and committed meanwhile is re-checked by PostgreSQL against its newest row
# (the lease condition is in the WHERE), so two daemons never lease the same lane. The head
# is read from the statement's snapshot; next_attempt re-reads it under the lease anyway.
PG_CLAIM_LANES = (
    "SELECT l.key FROM lanes l"
    " CROSS JOIN LATERAL (SELECT o.seq, o.kind, o.not_before"
    "    , o.waits_version FROM outbox o"
    "   WHERE o.lane = l.key AND o.state IN ('pending', 'sending') ORDER BY o.seq LIMIT 1) h"
    f" WHERE l.active = 1 AND (l.lease_owner IS NULL OR l.lease_until < {_PG_CLOCK}) AND h.not_before <= ?"
    " AND h.waits_version IS NULL"  # a head naming a version made offline waits for its push
    " AND NOT (l.key LIKE 'ls:%' AND l.remote_session_id IS NULL AND h.kind != 'session_create')"
    " ORDER BY COALESCE(l.lease_until, 0), h.seq LIMIT ?"  # round robin, as due_lanes
    " FOR UPDATE OF l SKIP LOCKED"
)

# Bytes the store's tables and their indexes hold in the current schema (the size cap).
PG_USED_BYTES = (
    "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0)::BIGINT FROM pg_class c"
    " JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE n.nspname = current_schema() AND c.relkind = 'r'"
)
