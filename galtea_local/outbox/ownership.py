"""How long the store remembers the remote ids its records owned (``owned_remote_ids``).

Reconciliation must never adopt an upstream record that a local record owns or
owned, even after retention deleted that row. It only looks at records created
upstream since a maybe-sent attempt began (less the clock allowance), so an id
owned before the oldest attempt that could still be reconciled can never be a
candidate again, and is forgotten. ``owned_at`` is when the store learned the
id (set by the triggers from the database clock), never earlier than the
record's ``createdAt`` upstream, up to the clock offset the margin covers.
"""

from __future__ import annotations

from galtea_local.outbox.kinds import OPEN
from galtea_local.store import dialects
from galtea_local.store.contract import StoreConnection

# Far beyond any clock offset or commit grace the engine tolerates (minutes): a week of ids
# costs about 100 bytes each.
MARGIN_S = 7 * 86_400.0
BATCH = 1000  # ids forgotten per write transaction: the write lock stays short
_OLDEST_MAYBE_SENT = f"SELECT MIN(sending_since) FROM outbox WHERE kind IN ('create', 'session_create') AND {OPEN}"


def forget_before(conn: StoreConnection, now: float, margin_s: float = MARGIN_S) -> float:
    """The time before which an owned id can be forgotten: no reconciliation still possible looks that far."""
    oldest = conn.execute(_OLDEST_MAYBE_SENT).fetchone()[0]
    return min(now, oldest if oldest is not None else now) - margin_s


def _order(conn: StoreConnection) -> str:
    """Oldest first. SQLite: ids are learned in time order, so the oldest sit at the start of the
    rowid order and both statements below stop within the first rows they read, with no index on
    ``owned_at`` to keep up on every push (one b-tree less written per record). PostgreSQL has no
    global write lock: an hourly scan there blocks nobody."""
    return "owned_at" if dialects.of(conn) == dialects.POSTGRESQL else "rowid"


def any_before(conn: StoreConnection, cutoff: float) -> bool:
    oldest = conn.execute(f"SELECT owned_at FROM owned_remote_ids ORDER BY {_order(conn)} LIMIT 1").fetchone()
    return oldest is not None and oldest[0] < cutoff


def prune(conn: StoreConnection, cutoff: float, batch: int = BATCH) -> int:
    """Forget up to ``batch`` of the oldest ids owned before ``cutoff`` (see :func:`forget_before`)."""
    return conn.execute(
        "DELETE FROM owned_remote_ids WHERE remote_id IN (SELECT remote_id FROM owned_remote_ids"
        f" WHERE owned_at < ? ORDER BY {_order(conn)} LIMIT ?)", (cutoff, batch)).rowcount


def owned_elsewhere(conn: StoreConnection, table: str, remote_id: str) -> bool:
    """Does a local record (``inference_results``, ever, retention included) or session already own it?"""
    if table == "inference_results":
        sql = "SELECT 1 FROM owned_remote_ids WHERE remote_id = ?"
    else:
        sql = "SELECT 1 FROM sessions WHERE remote_id = ?"
    return conn.execute(sql, (remote_id,)).fetchone() is not None
