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

from collections.abc import Iterable

from galtea_local.batching import batched
from galtea_local.outbox import health
from galtea_local.outbox.kinds import OPEN
from galtea_local.store import Store
from galtea_local.store.contract import StoreConnection

HANDED_OVER = 1e18  # not_before of an exported operation: never due
HANDED_OVER_COUNT = "handed_over_operations"  # meta: how many wait for a receipt (status shows it)
_CHUNK = 5000  # operations per write transaction
_IN_LIST = 500  # seqs per statement's IN (...) list


def _mark(conn: StoreConnection, column: str, seqs: Iterable[int], not_before: float, where: str) -> int:
    count = 0
    for chunk in batched(seqs, _IN_LIST):
        marks = ", ".join("?" * len(chunk))
        count += conn.execute(f"UPDATE outbox SET not_before = ? WHERE {column} IN ({marks}) AND {where}",
                              (not_before, *chunk)).rowcount
    return count


def hand_over(conn: StoreConnection, record_seqs: Iterable[int], session_seqs: Iterable[int]) -> int:
    """Hold the open operations of these exported records and sessions until a receipt or a reclaim."""
    return (_mark(conn, "record_seq", record_seqs, HANDED_OVER, OPEN)
            + _mark(conn, "session_seq", session_seqs, HANDED_OVER, OPEN))


def hand_over_all(store: Store, record_seqs: Iterable[int], session_seqs: Iterable[int]) -> int:
    """:func:`hand_over` in short write transactions (an app's create() never waits long), then recount."""
    count = sum(store.transaction(hand_over, [], chunk) for chunk in batched(session_seqs, _CHUNK))
    count += sum(store.transaction(hand_over, chunk, []) for chunk in batched(record_seqs, _CHUNK))
    recount(store)
    return count


def reclaim(conn: StoreConnection, record_seqs: list[int] | None = None,
            session_seqs: list[int] | None = None) -> int:
    """Take handed-over operations back (all when both are None): the daemon pushes them again.
    The caller then runs :func:`recount`."""
    held = f"{OPEN} AND not_before >= {HANDED_OVER!r}"
    if record_seqs is None and session_seqs is None:
        return conn.execute(f"UPDATE outbox SET not_before = 0 WHERE {held}").rowcount
    return (_mark(conn, "record_seq", record_seqs or [], 0.0, held)
            + _mark(conn, "session_seq", session_seqs or [], 0.0, held))


def count_held(conn: StoreConnection) -> int:
    return conn.execute(f"SELECT COUNT(*) FROM outbox WHERE {OPEN} AND not_before >= ?", (HANDED_OVER,)).fetchone()[0]


def recount(store: Store) -> int:
    """Count the held operations (a read: export, receipt and reclaim only) into ``meta`` for status."""
    count = store.read(count_held)
    store.transaction(health.put, HANDED_OVER_COUNT, count or None)
    return count
