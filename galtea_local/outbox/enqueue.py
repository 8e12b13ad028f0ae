"""What the library appends to the outbox, in the same transaction as the record row.

Ordering: operations carry a global ``seq``; within a lane (a session) they go
upstream in ``seq`` order.
"""

from __future__ import annotations

import json
from typing import Any

from galtea_local import retention
from galtea_local.outbox import probes
from galtea_local.errors import NotFoundError
from galtea_local.store.contract import StoreConnection

_INSERT_OP = (
    "INSERT INTO outbox (record_seq, lane, kind, payload, state, attempts, not_before, created_at)"
    " VALUES (?, ?, ?, ?, 'pending', 0, 0, ?)"
)
# Re-activating an already active lane writes nothing (the WHERE is false). ``lanes.active`` is
# qualified because PostgreSQL would find ``active`` ambiguous (the row or ``excluded``); SQLite accepts both.
ACTIVATE_LANE = (
    "INSERT INTO lanes (key, active) VALUES (?, 1) ON CONFLICT(key) DO UPDATE SET active = 1 WHERE lanes.active = 0"
)


def lane_for(session_id: str | None, custom_id: str | None, version_id: str | None, product_id: str | None) -> str:
    """The ordering key: one lane per upstream session."""
    if session_id is not None:
        return "s:" + session_id
    anchor = ("v:" + version_id) if version_id is not None else ("p:" + str(product_id))
    return f"c:{anchor}:{custom_id}"


# The daemon's size-cap verdict rides on the insert itself: one statement fewer on the hot path
# than a separate lookup of the flag.
_INSERT_CREATE = (
    "INSERT INTO outbox (record_seq, lane, kind, payload, state, attempts, not_before, created_at)"
    " SELECT ?, ?, 'create', NULL, 'pending', 0, 0, ?"
    f" WHERE NOT EXISTS (SELECT 1 FROM meta WHERE key = '{retention.STORE_FULL}')"
)


def open_lane(conn: StoreConnection, lane: str) -> None:
    """Activate the lane *before* inserting the record: on PostgreSQL the upsert locks the
    lane row (even when it changes nothing) until commit, so two processes creating in one
    session take their ``seq`` in commit order and the session's order upstream is theirs."""
    conn.execute(ACTIVATE_LANE, (lane,))


def enqueue_create(conn: StoreConnection, record_seq: int, lane: str, now: float) -> None:
    """Queue a record's create (after :func:`open_lane`); :class:`StoreFullError` while the
    store is at its cap (policy "refuse")."""
    if conn.execute(_INSERT_CREATE, (record_seq, lane, now)).rowcount == 0:
        retention.refuse_if_full(conn)  # raises, with the daemon's reason; the caller's transaction rolls back


def enqueue_update(conn: StoreConnection, record: Any, changes: dict[str, Any], now: float) -> bool:
    """Queue a PATCH unless the create never left; return True if the change folded.

    ``changes`` maps column names to plain values (``input``/``actual_output``
    as JSON text). Folding needs nothing more: a create sends the record row as
    it is when the create leaves, which already has the change applied. The
    engine sets ``create_sent`` in the same transaction as its write-ahead mark,
    so a change never folds into a create that is already on its way.
    """
    if not record["create_sent"]:
        return True
    conn.execute(_INSERT_OP, (record["seq"], record["lane"], "update", json.dumps(changes), now))
    conn.execute(ACTIVATE_LANE, (record["lane"],))
    return False


def enqueue_delete(conn: StoreConnection, record: Any, now: float) -> bool:
    """Queue a DELETE; a record whose create never left is cancelled instead.

    Returns True when the record will never reach upstream (cancelled locally).
    """
    if not record["create_sent"]:
        conn.execute(
            "UPDATE outbox SET state = 'done', settled_at = ?, last_error = 'cancelled: deleted before sync'"
            f" WHERE {probes.open_of_record('?', 'outbox')}",
            (now, record["seq"]),
        )
        return True
    conn.execute(_INSERT_OP, (record["seq"], record["lane"], "delete", None, now))
    conn.execute(ACTIVATE_LANE, (record["lane"],))
    return False


def format_id(tag: str, prefix: str, seq: int) -> str:
    """A local id: a tag (``loc`` records, ``ses`` sessions), the store's prefix and a never-reused ``seq``."""
    return f"{tag}_{prefix}_{seq}"


def parse_id(tag: str, prefix: str, any_id: str) -> int | None:
    """The ``seq`` of a local id with this tag of this store, or None for anything else (a remote id)."""
    head = f"{tag}_{prefix}_"
    digits = any_id[len(head):]
    # ASCII digits only (str.isdigit() takes '²'), and few enough to fit SQLite's 64-bit integer.
    if any_id.startswith(head) and digits.isascii() and digits.isdigit() and len(digits) <= 18:
        return int(digits)
    return None


def local_id(prefix: str, seq: int) -> str:
    """A record's local id."""
    return format_id("loc", prefix, seq)


def parse_local_id(prefix: str, any_id: str) -> int | None:
    """The ``seq`` of a record's local id of this store, or None (a remote id)."""
    return parse_id("loc", prefix, any_id)


def require_record(conn: StoreConnection, prefix: str, any_id: str) -> Any:
    """The live record with this local or remote id, else :class:`NotFoundError`."""
    seq = parse_local_id(prefix, any_id)
    if seq is not None:
        row = conn.execute("SELECT * FROM inference_results WHERE seq = ?", (seq,)).fetchone()
    else:
        row = conn.execute("SELECT * FROM inference_results WHERE remote_id = ?", (any_id,)).fetchone()
    if row is None or row["deleted"]:
        raise NotFoundError(f"inference result {any_id!r}: no such record in this store (local or remote id)")
    return row
