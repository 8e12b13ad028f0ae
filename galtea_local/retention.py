"""Retention: the only SQL that deletes records, and it deletes synced ones only.

A record may go when it is ``synced`` (or ``cancelled``: deleted locally before
it ever left) and every operation of it is ``done``. Unsynced, in-flight, dead
and operator-dropped records are never touched here, and neither are records
imported from an air-gap bundle: their (origin store, origin seq) key is what
makes a second import of an old bundle add nothing, so it must outlive the sync. The newest record is
always kept, whatever its state: local ids derive from ``seq`` and SQLite
reuses ``max(seq) + 1`` once the top row is gone, which would hand an old
record's id to a new one.

The size cap's "refuse" verdict lives in ``meta`` under :data:`STORE_FULL`,
written by the daemon's housekeeping and read by ``create()`` inside its own
transaction (one primary-key lookup, no extra round trip).
"""

from __future__ import annotations

import sqlite3

from galtea_local.store import dialects
from galtea_local.errors import StoreFullError

STORE_FULL = "store_full"  # meta key: present (with the reason) while new records are refused

# A span or evaluation still waiting needs its trace's remote id, read from the record row.
HELD_BY_SPANS = (
    " AND NOT EXISTS (SELECT 1 FROM spans s WHERE s.record_seq = r.seq AND s.sync_state = 'queued')"
    " AND NOT EXISTS (SELECT 1 FROM evaluations e WHERE e.record_seq = r.seq AND e.sync_state = 'queued')"
)
_DELETABLE = (
    "SELECT r.seq FROM inference_results r"
    " WHERE r.sync_state IN ('synced', 'cancelled') AND r.origin_store_id IS NULL"
    " AND r.seq < (SELECT MAX(seq) FROM inference_results)"
    # Each probe matches a partial index: settled by record, dead by record, open by lane.
    " AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.record_seq = r.seq AND o.state = 'done'"
    "   AND o.settled_at > :cutoff)"
    " AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.record_seq = r.seq AND o.state = 'dead')"
    " AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.lane = r.lane AND o.state IN ('pending', 'sending')"
    "   AND o.record_seq = r.seq)"
    + HELD_BY_SPANS +
    " ORDER BY r.seq LIMIT :limit"
)


def _delete(conn: sqlite3.Connection, seqs: list[int]) -> int:
    if not seqs:
        return 0
    marks = ", ".join("?" * len(seqs))
    # The foreign key needs these gone first; a deletable record has only settled operations.
    conn.execute(f"DELETE FROM outbox WHERE record_seq IN ({marks}) AND state = 'done'", seqs)
    return conn.execute(f"DELETE FROM inference_results WHERE seq IN ({marks})", seqs).rowcount


def delete_synced_before(conn: sqlite3.Connection, cutoff: float, limit: int = 2000) -> int:
    """Delete up to ``limit`` synced records settled before ``cutoff`` (epoch s), oldest first."""
    seqs = [row[0] for row in conn.execute(_DELETABLE, {"cutoff": cutoff, "limit": limit})]
    return _delete(conn, seqs)


def delete_oldest_synced(conn: sqlite3.Connection, limit: int) -> int:
    """Delete up to ``limit`` synced records, oldest first, whenever they synced (the size cap's policy)."""
    return delete_synced_before(conn, float("inf"), limit)


def used_bytes(conn: sqlite3.Connection) -> int:
    """Bytes the database's pages hold (free pages left by deletions are reused, so they do not count)."""
    if dialects.of(conn) == dialects.POSTGRESQL:
        return conn.execute(dialects.PG_USED_BYTES).fetchone()[0]  # tables and indexes of the store's schema
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    return (pages - free) * page_size


def set_store_full(conn: sqlite3.Connection, reason: str | None) -> None:
    """Refuse new records with ``reason`` (None: accept them again)."""
    if reason is None:
        conn.execute("DELETE FROM meta WHERE key = ?", (STORE_FULL,))
    else:
        conn.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (STORE_FULL, reason),
        )


def refuse_if_full(conn: sqlite3.Connection) -> None:
    """Raise :class:`StoreFullError` while the daemon says the store is at its cap."""
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (STORE_FULL,)).fetchone()
    if row is not None:
        raise StoreFullError(row[0])
