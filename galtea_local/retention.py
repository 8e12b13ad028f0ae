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
from dataclasses import dataclass

from galtea_local.outbox import probes
from galtea_local.store import dialects
from galtea_local.errors import StoreFullError
from galtea_local.store.contract import StoreConnection

STORE_FULL = "store_full"  # meta key: present (with the reason) while new records are refused

# A span or evaluation still waiting needs its trace's remote id, read from the record row
# (one lookup each: ix_spans_record, ix_evaluations_waiting).
HELD_BY_SPANS = (
    " AND NOT EXISTS (SELECT 1 FROM spans s WHERE s.record_seq = r.seq AND s.sync_state = 'queued')"
    " AND NOT EXISTS (SELECT 1 FROM evaluations e WHERE e.record_seq = r.seq AND e.sync_state = 'queued')"
)

PAGE_ROWS = 2000  # candidates examined per read transaction
DELETE_BATCH = 10  # records deleted per write transaction: 200 took 8-11 ms of CPU with the lock held, 20 up to 6

# A record ``r`` that retention may delete (given ``:cutoff``). Each probe is one index lookup
# (settled by record, dead by record, open by record), so checking a record costs the same
# whatever the backlog of its lane. Shared by the read that finds candidates and the write
# that re-checks them.
_DELETABLE = (
    "r.sync_state IN ('synced', 'cancelled') AND r.origin_store_id IS NULL"
    " AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.record_seq = r.seq AND o.state = 'done'"
    "   AND o.settled_at > :cutoff)"
    " AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.record_seq = r.seq AND o.state = 'dead')"
    f" AND NOT EXISTS (SELECT 1 FROM outbox o WHERE {probes.open_of_record('r.seq')})"
    + HELD_BY_SPANS
)
# Candidates come from the sync-state index, in seq order: queued records are never read.
_PAGE = (
    "SELECT r.seq, CASE WHEN " + _DELETABLE + " THEN 1 ELSE 0 END FROM inference_results r"
    " WHERE r.sync_state = :state AND r.seq > :after ORDER BY r.seq LIMIT :span"
)
_SETTLED_STATES = ("synced", "cancelled")


@dataclass(frozen=True)
class Page:
    """One page of the walk: the deletable seqs in it, and where the next page starts (None: the end)."""

    seqs: list[int]
    next_after: dict[str, int] | None


def deletable_page(conn: sqlite3.Connection, after: dict[str, int], cutoff: float, span: int = PAGE_ROWS) -> Page:
    """Examine up to ``span`` settled records past ``after`` (a seq per sync state); run it in a
    read transaction: finding candidates takes no write lock, whatever the store holds."""
    seqs: list[int] = []
    next_after = dict(after)
    more = False
    for state in _SETTLED_STATES:
        rows = conn.execute(_PAGE, {"state": state, "after": after.get(state, 0), "cutoff": cutoff,
                                    "span": span}).fetchall()
        seqs.extend(row[0] for row in rows if row[1])
        if rows:
            next_after[state] = rows[-1][0]
        more = more or len(rows) == span
    return Page(sorted(seqs), next_after if more else None)


def delete_verified(conn: sqlite3.Connection, seqs: list[int], cutoff: float) -> int:
    """Delete those of ``seqs`` that are still deletable, checked again under the write lock (an
    app may have updated one since the read). Give at most :data:`DELETE_BATCH` at a time."""
    if not seqs:
        return 0
    marks = {f"s{i}": seq for i, seq in enumerate(seqs)}
    rows = conn.execute(
        f"SELECT r.seq FROM inference_results r WHERE r.seq IN ({', '.join(':' + name for name in marks)})"
        # The newest record stays: SQLite would hand its seq (and so its local id) to the next one.
        f" AND r.seq < (SELECT MAX(seq) FROM inference_results) AND {_DELETABLE}",
        {**marks, "cutoff": cutoff},
    ).fetchall()
    return _delete(conn, [row[0] for row in rows])


def _delete(conn: sqlite3.Connection, seqs: list[int]) -> int:
    if not seqs:
        return 0
    marks = ", ".join("?" * len(seqs))
    # The foreign key needs these gone first; a deletable record has only settled operations.
    conn.execute(f"DELETE FROM outbox WHERE record_seq IN ({marks}) AND state = 'done'", seqs)
    # The rows of their files go too; the copies in the blob folder are removed after the commit
    # by whoever called (daemon/housekeeping.py), so a rollback never leaves a row without its file.
    conn.execute(f"DELETE FROM attachments WHERE record_seq IN ({marks})", seqs)
    return conn.execute(f"DELETE FROM inference_results WHERE seq IN ({marks})", seqs).rowcount


def delete_synced_before(conn: sqlite3.Connection, cutoff: float, limit: int = PAGE_ROWS) -> int:
    """Delete up to ``limit`` synced records settled before ``cutoff`` (epoch s), oldest first, in the
    caller's transaction. The daemon walks with :func:`deletable_page` and :func:`delete_verified`
    instead, so that no write transaction grows with the store."""
    page = deletable_page(conn, {}, cutoff, limit)
    return delete_verified(conn, page.seqs[:limit], cutoff)


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


def refuse_if_full(conn: StoreConnection) -> None:
    """Raise :class:`StoreFullError` while the daemon says the store is at its cap."""
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (STORE_FULL,)).fetchone()
    if row is not None:
        raise StoreFullError(row[0])


def blobs_of(conn: sqlite3.Connection, seqs: list[int]) -> set[str]:
    """The blob copies of these records' files."""
    if not seqs:
        return set()
    marks = ", ".join("?" * len(seqs))
    return {row[0] for row in conn.execute(f"SELECT blob FROM attachments WHERE record_seq IN ({marks})", seqs)}


def blobs_known(conn: sqlite3.Connection) -> set[str]:
    """Every blob an attachment row names (what a sweep of the blob folder must keep)."""
    return {row[0] for row in conn.execute("SELECT blob FROM attachments")}
