"""What the spans and evaluations queues share: rows leased as a whole, counted by state.

Both tables carry ``sync_state``, ``attempts``, ``lease_owner``/``lease_until`` and
``not_before``; these helpers are the two statements written alike for both.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

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
