"""``create_batch`` operations: a conversation goes up as one ``POST /inferenceResults/batch``, as the SDK sends it.

One operation carries the whole request, built at ``create_batch()`` time (the
SDK's wire body, turn for turn), and names every local record it creates, in
the order the API pairs them. Its records are marked ``create_sent`` from the
start: the batch body holds only roles and text, so a later ``update()`` of one
of them cannot fold into it and is queued as a PATCH that follows the batch.
Settling the answer (or a reconciled lost answer) gives every record its remote
id, index and ``createdAt`` stamp, in one transaction.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import replace
from typing import Any

from galtea_local import retention
from galtea_local.outbox import stamps
from galtea_local.outbox.enqueue import ACTIVATE_LANE
from galtea_local.outbox.kinds import OpKind

KIND = OpKind.CREATE_BATCH


def enqueue_batch(conn: sqlite3.Connection, record_seqs: list[int], lane: str, body: dict[str, Any],
                  now: float) -> None:
    """Queue the one batch request for these records (after their rows); refused while the store is full."""
    retention.refuse_if_full(conn)
    payload = json.dumps({"records": record_seqs, "body": body})
    conn.execute(
        "INSERT INTO outbox (record_seq, lane, kind, payload, state, attempts, not_before, created_at)"
        " VALUES (?, ?, 'create_batch', ?, 'pending', 0, 0, ?)", (record_seqs[0], lane, payload, now))
    conn.execute(ACTIVATE_LANE, (lane,))


def wire_body(payload: dict[str, Any], lane_session_id: str | None) -> dict[str, Any]:
    """The request body; a session created offline is named by its remote id once known."""
    body = dict(payload["body"])
    if lane_session_id is not None and body.get("sessionId") is None:
        for name in ("sessionCustomId", "versionId", "productId"):
            body.pop(name, None)
        body["sessionId"] = lane_session_id
    return body


def adopt_all(conn: sqlite3.Connection, attempt: Any, remotes: list[dict[str, Any]], now: float,
              offset_s: float | None = None) -> None:
    """Give each record of the batch its upstream twin (same order), and queue their createdAt stamps."""
    from galtea_local.outbox.attempts import _adopt_record  # attempts dispatches here: import late

    for seq, remote in zip(attempt.payload["records"], remotes):
        row = dict(conn.execute("SELECT * FROM inference_results WHERE seq = ?", (seq,)).fetchone())
        # No side path sends these: they are due at once, in the lane.
        stamps.enqueue_stamp(conn, row, attempt.lane, remote, now, due_now=True, offset_s=offset_s)
        _adopt_record(conn, replace(attempt, kind=OpKind.CREATE, record=row), remote)


def set_state(conn: sqlite3.Connection, attempt: Any, state: str) -> None:
    """Every record of the batch shares its fate (a dead batch made none of them)."""
    _set_records(conn, attempt.payload["records"], state)


def share_state(conn: sqlite3.Connection, ops: list[Any], state: str) -> None:
    """After an operator's retry or drop: the records of any batch among ``ops`` (lane, kind, payload) follow it."""
    for op in ops:
        if op[1] == KIND:
            _set_records(conn, json.loads(op[2])["records"], state)


def _set_records(conn: sqlite3.Connection, seqs: list[int], state: str) -> None:
    conn.execute(f"UPDATE inference_results SET sync_state = ? WHERE seq IN ({', '.join('?' * len(seqs))})",
                 (state, *seqs))
