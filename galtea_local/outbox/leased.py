"""What the spans and evaluations queues share: rows leased as a whole, counted by state.

Both tables carry ``sync_state``, ``attempts``, ``lease_owner``/``lease_until`` and
``not_before``; these helpers are the statements written alike for both: what is due,
the claim, the count by state.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

STATES = ("queued", "synced", "dead", "cancelled")


def lease(conn: sqlite3.Connection, table: str, seqs: Sequence[int], owner: str, until: float,
          mark_sending_at: float | None = None) -> None:
    """Lease these rows to ``owner`` and count an attempt; with ``mark_sending_at``, also set the
    write-ahead mark (kept when an earlier attempt already set it)."""
    if not seqs:
        return
    marks = ", ".join("?" * len(seqs))
    mark = ", sending_since = COALESCE(sending_since, ?)" if mark_sending_at is not None else ""
    params = (owner, until, *((mark_sending_at,) if mark_sending_at is not None else ()), *seqs)
    conn.execute(f"UPDATE {table} SET lease_owner = ?, lease_until = ?, attempts = attempts + 1{mark}"
                 f" WHERE seq IN ({marks})", params)


def due_where(alias: str) -> str:
    """The condition for a row of the queue aliased ``alias`` that may go now (two ``?``: now, now)."""
    return (f"{alias}.sync_state = 'queued' AND {alias}.not_before <= ?"
            f" AND ({alias}.lease_until IS NULL OR {alias}.lease_until < ?)")


def due_rows(conn: sqlite3.Connection, sql: str, now: float, limit: int) -> list[dict[str, Any]]:
    """The rows ``sql`` (parameters: now, now, limit) selects, as dicts (a read: nothing is claimed)."""
    return [dict(row) for row in conn.execute(sql, (now, now, limit))]


def claim(conn: sqlite3.Connection, table: str, sql: str, owner: str, now: float, lease_s: float, limit: int, *,
          mark_sending: bool = False) -> list[dict[str, Any]]:
    """Lease the due rows ``sql`` selects to ``owner`` and count the attempt (with ``mark_sending``,
    mark it write-ahead first, as :func:`lease` does); return them."""
    rows = due_rows(conn, sql, now, limit)
    lease(conn, table, [row["seq"] for row in rows], owner, now + lease_s, mark_sending_at=now if mark_sending else None)
    return rows


def count_states(conn: sqlite3.Connection, table: str) -> dict[str, int]:
    """Rows of ``table`` by sync state, every state present (for ``status`` and metrics)."""
    found = dict.fromkeys(STATES, 0)
    for state, count in conn.execute(f"SELECT sync_state, COUNT(*) FROM {table} GROUP BY sync_state"):
        found[state] = count
    return found


def release_all(conn: sqlite3.Connection) -> int:
    """Drop every lease on spans and evaluation requests: for a pusher holding the store's exclusive
    lock, each one is a dead pusher's (a SIGKILLed sync must not hold its rows for a lease's length)."""
    return sum(conn.execute(f"UPDATE {table} SET lease_owner = NULL, lease_until = NULL"
                            " WHERE lease_until IS NOT NULL").rowcount for table in ("spans", "evaluations", "versions"))
