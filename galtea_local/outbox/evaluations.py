"""Evaluations in the outbox: every change of an evaluation row's ``sync_state`` happens here.

Life cycle (``evaluations.sync_state``)::

    queued --claim (write-ahead: sending_since)--> sent --settle_synced--> synced
       ^  \\--settle_retry(not sent: mark cleared | maybe sent: mark kept)--+
       |   \\--settle_dead--> dead --retry_dead--> queued
       +--cancel--> cancelled (deleted before it left)

An evaluation is due once what it names is upstream: its local trace has a
``remote_id`` (the trace's create settled) or its local session has one; a remote
id given by the app is due at once. A row of a dead trace or session waits with it.
The API has no idempotency key for evaluations, so the claim marks the attempt
(``sending_since``) in the same transaction, and a maybe-sent attempt is reconciled
(by listing the session's evaluations) before anything is sent again.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

from galtea_local import retention
from galtea_local.outbox import leased

INSERT_COLUMNS = ("trace_ref", "session_ref", "metrics_json", "specification_ids_json", "run_id", "created_at")
INSERT_EVALUATION = (
    f"INSERT INTO evaluations ({', '.join(INSERT_COLUMNS)}, record_seq, session_seq, sync_state, attempts,"
    " not_before)"
    f" SELECT {', '.join('?' * len(INSERT_COLUMNS))}, (SELECT seq FROM inference_results WHERE seq = ?),"
    " (SELECT seq FROM sessions WHERE seq = ?), 'queued', 0, 0"
    f" WHERE NOT EXISTS (SELECT 1 FROM meta WHERE key = '{retention.STORE_FULL}') RETURNING seq"
)


def insert_evaluation(conn: sqlite3.Connection, values: Sequence[Any]) -> int:
    """Queue one evaluation request (INSERT_COLUMNS, then the local record and session seqs or None);
    return its seq. :class:`StoreFullError` while the store is at its cap."""
    row = conn.execute(INSERT_EVALUATION, values).fetchone()  # RETURNING: both dialects, no lastrowid
    if row is None:
        retention.refuse_if_full(conn)
    return row[0]


_UPSTREAM = (
    "COALESCE(r.remote_id, CASE WHEN e.record_seq IS NULL THEN e.trace_ref END) AS upstream_trace,"
    " COALESCE(s.remote_id, r.remote_session_id, CASE WHEN e.session_seq IS NULL THEN e.session_ref END)"
    " AS upstream_session"
)
_DUE = (
    f"SELECT e.*, {_UPSTREAM} FROM evaluations e"
    " LEFT JOIN inference_results r ON r.seq = e.record_seq LEFT JOIN sessions s ON s.seq = e.session_seq"
    f" WHERE {leased.due_where('e')}"
    " AND (e.trace_ref IS NULL OR e.record_seq IS NULL OR r.remote_id IS NOT NULL)"
    " AND (e.session_ref IS NULL OR e.session_seq IS NULL OR s.remote_id IS NOT NULL)"
    " ORDER BY e.seq LIMIT ?"
)


def due(conn: sqlite3.Connection, now: float, limit: int) -> list[dict[str, Any]]:
    """Requests that may go now, oldest first (a read: nothing is claimed)."""
    return leased.due_rows(conn, _DUE, now, limit)


def claim_due(conn: sqlite3.Connection, owner: str, now: float, lease_s: float, limit: int) -> list[dict[str, Any]]:
    """Lease due rows to ``owner``, count the attempt and mark it (write-ahead) before any request."""
    return leased.claim(conn, "evaluations", _DUE, owner, now, lease_s, limit, mark_sending=True)


def settle_synced(conn: sqlite3.Connection, seq: int, answer: list[dict[str, Any]], now: float) -> None:
    """The API created these evaluations (in metric order) for row ``seq``."""
    conn.execute(
        "UPDATE evaluations SET sync_state = 'synced', remote_json = ?, settled_at = ?, lease_owner = NULL,"
        " lease_until = NULL, last_error = NULL WHERE seq = ? AND sync_state = 'queued'",
        (json.dumps(answer), now, seq),
    )
    for position, evaluation in enumerate(answer):
        conn.execute(
            "INSERT INTO evaluation_ids (remote_id, evaluation_seq, position) VALUES (?, ?, ?)"
            " ON CONFLICT (remote_id) DO NOTHING",
            (evaluation["id"], seq, position),
        )


def settle_retry(conn: sqlite3.Connection, seq: int, not_before: float, error: str, *, maybe_sent: bool) -> None:
    """Try again after ``not_before``; a surely-unsent attempt clears its write-ahead mark."""
    conn.execute(
        "UPDATE evaluations SET not_before = ?, last_error = ?, lease_owner = NULL, lease_until = NULL,"
        " sending_since = CASE WHEN ? = 1 THEN sending_since END WHERE seq = ? AND sync_state = 'queued'",
        (not_before, error[:500], 1 if maybe_sent else 0, seq),
    )


def settle_dead(conn: sqlite3.Connection, seq: int, reason: str, now: float) -> None:
    conn.execute(
        "UPDATE evaluations SET sync_state = 'dead', last_error = ?, settled_at = ?, lease_owner = NULL,"
        " lease_until = NULL WHERE seq = ? AND sync_state = 'queued'",
        (reason[:500], now, seq),
    )


def cancel(conn: sqlite3.Connection, seq: int, now: float) -> bool:
    """Cancel a row that never left; False when it may already be upstream."""
    return conn.execute(
        "UPDATE evaluations SET sync_state = 'cancelled', settled_at = ? WHERE seq = ? AND sync_state = 'queued'"
        " AND sending_since IS NULL",
        (now, seq),
    ).rowcount == 1


def retry_dead(conn: sqlite3.Connection) -> int:
    return conn.execute(
        "UPDATE evaluations SET sync_state = 'queued', not_before = 0, attempts = 0, settled_at = NULL,"
        " sending_since = NULL WHERE sync_state = 'dead'"
    ).rowcount


def owned(conn: sqlite3.Connection, remote_ids: Iterable[str]) -> set[str]:
    """Which of these upstream evaluation ids already belong to a local row."""
    ids = list(remote_ids)
    if not ids:
        return set()
    marks = ", ".join("?" * len(ids))
    return {row[0] for row in conn.execute(f"SELECT remote_id FROM evaluation_ids WHERE remote_id IN ({marks})",
                                           ids)}


def counts(conn: sqlite3.Connection) -> dict[str, int]:
    """Evaluation requests by sync state (for ``status`` and metrics)."""
    return leased.count_states(conn, "evaluations")
