"""Custody across the air gap: what ``export`` put in a bundle is the importing side's to push.

Once a bundle is written, the origin must not push the exported operations
itself, or every record would go up twice (once from each side). They are
handed over: due at :data:`HANDED_OVER`, a time that never comes, so the engine
never claims them, and a session's later turns wait behind them in order. They
stay in the store, queued, so a lost bundle loses nothing. A receipt settles
them (``import-receipt``); ``galtea-local reclaim`` takes them back explicitly
(the bundle was lost, or will never be imported).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

from galtea_local.outbox import health
from galtea_local.outbox.kinds import OPEN

HANDED_OVER = 1e18  # not_before of an exported operation: never due
HANDED_OVER_COUNT = "handed_over_operations"  # meta: how many wait for a receipt (status shows it)
_BATCH = 500


def _batches(seqs: Iterable[int]) -> Iterable[list[int]]:
    chunk: list[int] = []
    for seq in seqs:
        chunk.append(seq)
        if len(chunk) == _BATCH:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _mark(conn: sqlite3.Connection, column: str, seqs: Iterable[int], not_before: float, where: str) -> int:
    count = 0
    for chunk in _batches(seqs):
        marks = ", ".join("?" * len(chunk))
        count += conn.execute(f"UPDATE outbox SET not_before = ? WHERE {column} IN ({marks}) AND {where}",
                              (not_before, *chunk)).rowcount
    return count


def hand_over(conn: sqlite3.Connection, record_seqs: Iterable[int], session_seqs: Iterable[int]) -> int:
    """Hold the open operations of these exported records and sessions until a receipt or a reclaim."""
    count = _mark(conn, "record_seq", record_seqs, HANDED_OVER, OPEN)
    count += _mark(conn, "session_seq", session_seqs, HANDED_OVER, OPEN)
    recount(conn)
    return count


def reclaim(conn: sqlite3.Connection, record_seqs: list[int] | None = None,
            session_seqs: list[int] | None = None) -> int:
    """Take handed-over operations back (all when both are None): the daemon pushes them again."""
    held = f"{OPEN} AND not_before >= {HANDED_OVER!r}"
    if record_seqs is None and session_seqs is None:
        count = conn.execute(f"UPDATE outbox SET not_before = 0 WHERE {held}").rowcount
    else:
        count = _mark(conn, "record_seq", record_seqs or [], 0.0, held)
        count += _mark(conn, "session_seq", session_seqs or [], 0.0, held)
    recount(conn)
    return count


def recount(conn: sqlite3.Connection) -> int:
    """Count the held operations into ``meta`` (a scan: export, receipt and reclaim only)."""
    count = conn.execute(f"SELECT COUNT(*) FROM outbox WHERE {OPEN} AND not_before >= ?", (HANDED_OVER,)).fetchone()[0]
    health.put(conn, HANDED_OVER_COUNT, count or None)
    return count
