"""Retention for spans and evaluation requests: the only SQL that deletes them.

Only settled rows go: ``synced`` (upstream has them) or ``cancelled`` (deleted before
they left). Queued and dead ones stay, whatever their age: they are not upstream yet.
A queued span or evaluation also holds its trace's record (see
:data:`galtea_local.retention.HELD_BY_SPANS`), since it needs the record's remote id.
Deletes run in bounded batches, each its own short transaction.
"""

from __future__ import annotations

import sqlite3

TABLES = ("spans", "evaluations")


def delete_settled_before(conn: sqlite3.Connection, cutoff: float, limit: int = 2000) -> int:
    """Delete up to ``limit`` settled spans and evaluation requests settled before ``cutoff``."""
    total = 0
    for table in TABLES:
        if table == "evaluations":  # its upstream ids go with it
            conn.execute(
                "DELETE FROM evaluation_ids WHERE evaluation_seq IN (SELECT seq FROM evaluations"
                " WHERE sync_state IN ('synced', 'cancelled') AND settled_at < ? ORDER BY seq LIMIT ?)",
                (cutoff, limit),
            )
        total += conn.execute(
            f"DELETE FROM {table} WHERE seq IN (SELECT seq FROM {table}"
            " WHERE sync_state IN ('synced', 'cancelled') AND settled_at < ? ORDER BY seq LIMIT ?)",
            (cutoff, limit),
        ).rowcount
    return total


def delete_oldest_settled(conn: sqlite3.Connection, limit: int) -> int:
    """The size cap's policy: the oldest settled rows, whenever they settled."""
    return delete_settled_before(conn, float("inf"), limit)
