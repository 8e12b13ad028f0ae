"""Dead letters: operations the upstream refused for good, kept for the operator.

Nothing is ever dropped silently: ``retry`` puts an operation (and every dead
operation of the same record, in order) back in its lane; ``drop`` is the
operator's explicit decision and marks the record ``dropped``.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from galtea_local.outbox.enqueue import ACTIVATE_LANE, local_id


def list_dead(conn: sqlite3.Connection, prefix: str, limit: int = 1000) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT o.seq, o.record_seq, o.lane, o.kind, o.attempts, o.last_status, o.last_error, o.settled_at,"
        " r.session_id, r.session_custom_id FROM outbox o JOIN inference_results r ON r.seq = o.record_seq"
        " WHERE o.state = 'dead' ORDER BY o.seq LIMIT ?",
        (limit,),
    ).fetchall()
    return [{"op": row["seq"], "record_id": local_id(prefix, row["record_seq"]), **{
        key: row[key] for key in ("lane", "kind", "attempts", "last_status", "last_error", "settled_at",
                                  "session_id", "session_custom_id")}} for row in rows]


def _dead_records(conn: sqlite3.Connection, record_seqs: list[int] | None) -> list[int]:
    if record_seqs is None:
        return [row[0] for row in conn.execute("SELECT DISTINCT record_seq FROM outbox WHERE state = 'dead'")]
    return record_seqs


def retry_dead(conn: sqlite3.Connection, record_seqs: list[int] | None = None) -> int:
    """Queue the dead operations of these records (all when None) again; return how many."""
    count = 0
    for record_seq in _dead_records(conn, record_seqs):
        ops = conn.execute(
            "UPDATE outbox SET state = 'pending', not_before = 0, settled_at = NULL, sending_since = NULL,"
            " sent_body = NULL WHERE record_seq = ? AND state = 'dead' RETURNING lane",
            (record_seq,),
        ).fetchall()
        if ops:
            conn.execute(ACTIVATE_LANE, (ops[0][0],))
            conn.execute("UPDATE inference_results SET sync_state = 'queued' WHERE seq = ?", (record_seq,))
        count += len(ops)
    return count


def drop_dead(conn: sqlite3.Connection, now: float, record_seqs: list[int] | None = None) -> int:
    """Give up on the dead operations of these records (all when None); return how many."""
    count = 0
    for record_seq in _dead_records(conn, record_seqs):
        count += conn.execute(
            "UPDATE outbox SET state = 'done', settled_at = ?, last_error = 'dropped by operator: ' || last_error"
            " WHERE record_seq = ? AND state = 'dead'",
            (now, record_seq),
        ).rowcount
        conn.execute("UPDATE inference_results SET sync_state = 'dropped' WHERE seq = ?", (record_seq,))
    return count
