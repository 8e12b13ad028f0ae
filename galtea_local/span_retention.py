"""Retention for spans and evaluation requests: the only SQL that deletes them.

Only settled rows go: ``synced`` (upstream has them) or ``cancelled`` (deleted before
they left). Queued and dead ones stay, whatever their age: they are not upstream yet.
A queued span or evaluation also holds its trace's record (see
:data:`galtea_local.retention.HELD_BY_SPANS`), since it needs the record's remote id.

As for records (:mod:`galtea_local.retention`), candidates are found in read
transactions a page at a time (by primary key), and deleted in write transactions of
:data:`~galtea_local.retention.DELETE_BATCH` rows that re-check each one: the write
lock is held for a few milliseconds at a time, whatever the store holds.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from galtea_local.batching import batched
from galtea_local.retention import DELETE_BATCH, PAGE_ROWS

TABLES = ("spans", "evaluations")
_SETTLED = "sync_state IN ('synced', 'cancelled') AND settled_at < ?"


def settled_page(conn: sqlite3.Connection, table: str, after: int, cutoff: float,
                 span: int = PAGE_ROWS) -> tuple[list[int], int | None]:
    """The settled rows among the next ``span`` rows of ``table`` past seq ``after``, and where
    the next page starts (None: the end). Run it in a read transaction."""
    rows = conn.execute(f"SELECT seq, CASE WHEN {_SETTLED} THEN 1 ELSE 0 END FROM {table}"
                        " WHERE seq > ? ORDER BY seq LIMIT ?", (cutoff, after, span)).fetchall()
    return [row[0] for row in rows if row[1]], rows[-1][0] if len(rows) == span else None


def delete_verified(conn: sqlite3.Connection, table: str, seqs: list[int], cutoff: float) -> int:
    """Delete those of ``seqs`` still settled before ``cutoff`` (checked again under the write lock)."""
    if not seqs:
        return 0
    marks = ", ".join("?" * len(seqs))
    if table == "evaluations":  # its upstream ids go with it
        conn.execute(f"DELETE FROM evaluation_ids WHERE evaluation_seq IN (SELECT seq FROM evaluations"
                     f" WHERE seq IN ({marks}) AND {_SETTLED})", (*seqs, cutoff))
    return conn.execute(f"DELETE FROM {table} WHERE seq IN ({marks}) AND {_SETTLED}", (*seqs, cutoff)).rowcount


def delete_settled(store: Any, cutoff: float, limit: int | None = None) -> int:
    """Walk both tables oldest first, deleting rows settled before ``cutoff`` (at most ``limit``)."""
    total = 0
    for table in TABLES:
        after: int | None = 0
        while after is not None and (limit is None or total < limit):
            seqs, after = store.read(settled_page, table, after, cutoff)
            seqs = seqs if limit is None else seqs[:limit - total]
            for batch in batched(seqs, DELETE_BATCH):
                total += store.transaction(delete_verified, table, batch, cutoff)
    return total
