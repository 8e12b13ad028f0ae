"""Dead letters: operations the upstream refused for good, kept for the operator.

Nothing is ever dropped silently: ``retry`` puts a target's dead operations
(a record's, or an offline session's) back in their lane, in their original
order, still "maybe sent" when an attempt may have reached the server; ``drop`` is the operator's explicit decision and marks the target
``dropped``. A session's turns wait behind its dead create, so retrying the
session releases them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from galtea_local.outbox import batch
from galtea_local.outbox.attempts import Attempt, settle_dead
from galtea_local.outbox.enqueue import ACTIVATE_LANE, local_id
from galtea_local.outbox.kinds import OPEN
from galtea_local.outbox.sessions import local_session_id, session_lane
from galtea_local.store.contract import StoreConnection

_TARGETS = (("record_seq", "inference_results"), ("session_seq", "sessions"))


def list_dead(conn: StoreConnection, prefix: str, limit: int = 1000) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT o.seq, o.record_seq, o.session_seq, o.lane, o.kind, o.attempts, o.last_status, o.last_error,"
        " o.settled_at, COALESCE(r.session_id, r.session_custom_id, s.custom_id) AS session"
        " FROM outbox o LEFT JOIN inference_results r ON r.seq = o.record_seq"
        " LEFT JOIN sessions s ON s.seq = o.session_seq WHERE o.state = 'dead' ORDER BY o.seq LIMIT ?",
        (limit,),
    ).fetchall()
    return [
        {
            "op": row["seq"],
            "id": local_id(prefix, row["record_seq"]) if row["record_seq"] is not None
            else local_session_id(prefix, row["session_seq"]),
            "record_id": local_id(prefix, row["record_seq"]) if row["record_seq"] is not None else None,
            **{key: row[key] for key in ("lane", "kind", "attempts", "last_status", "last_error", "settled_at",
                                         "session")},
        }
        for row in rows
    ]


def _dead_targets(conn: StoreConnection, column: str, seqs: Iterable[int] | None) -> list[int]:
    if seqs is not None:
        return list(seqs)
    return [row[0] for row in conn.execute(f"SELECT DISTINCT {column} FROM outbox WHERE state = 'dead'"
                                           f" AND {column} IS NOT NULL")]


def settle_unencodable(conn: StoreConnection, attempt: Attempt, now: float, error: str) -> None:
    """Dead-letter an operation whose request could not be built from its row (a poison row).

    Nothing left: the build failed before the write-ahead mark. So unless an
    earlier attempt may have reached the server, the create never left, and a
    later ``update()`` that fixes the row must fold into it (``create_sent = 0``).
    """
    settle_dead(conn, attempt, now, error, None)
    if attempt.kind in ("create", "session_create") and attempt.maybe_sent_since is None:
        table = "sessions" if attempt.kind == "session_create" else "inference_results"
        conn.execute(f"UPDATE {table} SET create_sent = 0 WHERE seq = ?", (attempt.record["seq"],))


def retry_dead(conn: StoreConnection, record_seqs: list[int] | None = None,
               session_seqs: list[int] | None = None) -> int:
    """Queue the dead operations of these records/sessions (all when both are None) again."""
    every = record_seqs is None and session_seqs is None
    count = 0
    for (column, table), chosen in zip(_TARGETS, (record_seqs, session_seqs)):
        for seq in _dead_targets(conn, column, None if every else (chosen or [])):
            ops = conn.execute(
                # One that may have been sent keeps its mark: the engine reconciles it before any
                # re-send (a dead create may exist upstream, e.g. after a refused reconciliation read).
                "UPDATE outbox SET state = CASE WHEN sent_body IS NULL THEN 'pending' ELSE 'sending' END,"
                f" not_before = 0, settled_at = NULL WHERE {column} = ? AND state = 'dead'"
                " RETURNING lane, kind, payload",
                (seq,),
            ).fetchall()
            if ops:
                conn.execute(ACTIVATE_LANE, (ops[0][0],))
                conn.execute(f"UPDATE {table} SET sync_state = 'queued' WHERE seq = ?", (seq,))
                batch.share_state(conn, ops, "queued")
            count += len(ops)
    return count


def drop_dead(conn: StoreConnection, now: float, record_seqs: list[int] | None = None,
              session_seqs: list[int] | None = None) -> int:
    """Give up on the dead operations of these records/sessions (all when both are None)."""
    every = record_seqs is None and session_seqs is None
    count = 0
    for (column, table), chosen in zip(_TARGETS, (record_seqs, session_seqs)):
        for seq in _dead_targets(conn, column, None if every else (chosen or [])):
            ops = conn.execute(
                "UPDATE outbox SET state = 'done', settled_at = ?,"
                f" last_error = 'dropped by operator: ' || last_error WHERE {column} = ? AND state = 'dead'"
                ""
                " RETURNING lane, kind, payload",
                (now, seq),
            ).fetchall()
            count += len(ops)
            conn.execute(f"UPDATE {table} SET sync_state = 'dropped' WHERE seq = ?", (seq,))
            batch.share_state(conn, ops, "dropped")
            if table == "sessions":
                count += _drop_held_turns(conn, now, seq)
    return count


def _drop_held_turns(conn: StoreConnection, now: float, session_seq: int) -> int:
    """A dropped session's turns can never go upstream: they are dropped with it, not left waiting."""
    lane = session_lane(session_seq)
    conn.execute(
        "UPDATE inference_results SET sync_state = 'dropped' WHERE seq IN (SELECT record_seq FROM outbox"
        f" WHERE lane = ? AND {OPEN} AND record_seq IS NOT NULL)",
        (lane,),
    )
    return conn.execute(
        "UPDATE outbox SET state = 'done', settled_at = ?, last_error = 'dropped with its session'"
        f" WHERE lane = ? AND {OPEN}",
        (now, lane),
    ).rowcount
