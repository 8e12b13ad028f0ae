"""Operations for air-gap bundles: queueing what a bundle brings, settling what a receipt confirms.

Two sides, both inside the caller's transaction:

- the connected machine (:func:`enqueue_imported_record`, :func:`enqueue_imported_session`):
  an imported record is an ordinary queued record of this store. Its create
  goes up like any other, or, when the origin already knew its remote id, a
  PATCH (or DELETE) of that remote record instead, so nothing is created twice.
- the origin (:func:`confirm_record`, :func:`confirm_session`): a receipt says
  a record is upstream. Its open operations are settled ``done`` (the origin's
  own daemon must never create it again) and it learns its remote id. If the
  row changed after the version the receipt confirms, one PATCH carrying the
  row's current fields is queued instead of marking it synced: the next
  export (or the origin's own daemon, should it ever get online) sends it.
"""

from __future__ import annotations

import json
from typing import Any

from galtea_local.outbox.enqueue import ACTIVATE_LANE
from galtea_local.outbox.sessions import session_lane
from galtea_local.validation import COST_KEYS, USAGE_KEYS
from galtea_local.store.contract import StoreConnection

# What a PATCH may carry for a record (the session is fixed at create time).
PATCH_COLUMNS = (
    "status", "error", "input", "actual_output", "retrieval_context", "latency", *USAGE_KEYS, *COST_KEYS,
    "conversation_simulator_version",
)
# What a session PATCH may carry; context and metadata also fold into a session create.
SESSION_PATCH_COLUMNS = ("status", "stopping_reason", "context", "metadata_json")

_INSERT_OP = (
    "INSERT INTO outbox (record_seq, session_seq, lane, kind, payload, state, attempts, not_before,"
    " sending_since, sent_body, created_at) VALUES (?, ?, ?, ?, ?, ?, 0, 0, ?, ?, ?)"
)
_REMOTE_LANE = (
    "INSERT INTO lanes (key, active, remote_session_id) VALUES (?, 0, ?)"
    " ON CONFLICT(key) DO UPDATE SET remote_session_id = excluded.remote_session_id"
)


def full_patch(row: Any) -> dict[str, Any]:
    """Every field a PATCH can set, as the row holds them now (input/output as JSON text)."""
    return {column: row[column] for column in PATCH_COLUMNS}


def session_patch(row: Any) -> dict[str, Any]:
    """A session's PATCH fields as the row holds them; an unset status is left out (null is refused)."""
    patch = {column: row[column] for column in SESSION_PATCH_COLUMNS}
    return {k: v for k, v in patch.items() if v is not None or k in ("context", "metadata_json")}


def _op(conn: StoreConnection, lane: str, kind: str, now: float, *, record: int | None = None,
        session: int | None = None, payload: dict[str, Any] | None = None,
        maybe_sent: dict[str, Any] | None = None, activate: bool = True) -> None:
    state, since, body = "pending", None, None
    if maybe_sent is not None:
        # The origin's create may already have reached the server: keep it "maybe sent", so the
        # engine reconciles (looks for it upstream) before it sends the create again.
        state, since, body = "sending", maybe_sent["since"], json.dumps(maybe_sent["body"])
    conn.execute(_INSERT_OP, (record, session, lane, kind, None if payload is None else json.dumps(payload),
                              state, since, body, now))
    if activate:
        conn.execute(ACTIVATE_LANE, (lane,))


def enqueue_imported_record(conn: StoreConnection, row: Any, now: float,
                            maybe_sent: dict[str, Any] | None = None, *, activate: bool = True) -> None:
    """Queue what an imported record needs upstream: its create, or a PATCH/DELETE of a known remote id.

    ``activate=False`` when the caller already activated the lane in this transaction.
    """
    if row["remote_id"] is None:
        _op(conn, row["lane"], "create", now, record=row["seq"], maybe_sent=maybe_sent, activate=activate)
    elif row["deleted"]:
        _op(conn, row["lane"], "delete", now, record=row["seq"], activate=activate)
    else:
        _op(conn, row["lane"], "update", now, record=row["seq"], payload=full_patch(row), activate=activate)


def enqueue_imported_session(conn: StoreConnection, seq: int, remote_id: str | None, now: float,
                             maybe_sent: dict[str, Any] | None = None) -> None:
    """Queue an imported session's create; one already upstream only lends its remote id to its lane."""
    if remote_id is None:
        _op(conn, session_lane(seq), "session_create", now, session=seq, maybe_sent=maybe_sent)
    else:
        conn.execute(_REMOTE_LANE, (session_lane(seq), remote_id))


def _settle_all(conn: StoreConnection, column: str, seq: int, now: float) -> None:
    conn.execute(
        "UPDATE outbox SET state = 'done', settled_at = ?, sent_body = NULL, last_error = 'confirmed by receipt'"
        f" WHERE {column} = ? AND state != 'done'",
        (now, seq),
    )


def confirm_record(conn: StoreConnection, row: Any, remote: dict[str, Any], changed: bool,
                   now: float) -> str:
    """Settle a record a receipt says is upstream; return its new ``sync_state``.

    ``changed``: the row was updated after the version the receipt confirms.
    """
    _settle_all(conn, "record_seq", row["seq"], now)
    conn.execute(
        "UPDATE inference_results SET remote_id = ?, remote_index = ?, remote_session_id = ?, remote_created_at = ?,"
        " create_sent = 1 WHERE seq = ?",
        (remote["remote_id"], remote.get("remote_index"), remote.get("remote_session_id"),
         remote.get("remote_created_at"), row["seq"]),
    )
    if remote.get("remote_session_id"):
        conn.execute("UPDATE lanes SET remote_session_id = ? WHERE key = ? AND remote_session_id IS NULL",
                     (remote["remote_session_id"], row["lane"]))
    state = "synced"
    if changed:
        if row["deleted"]:
            _op(conn, row["lane"], "delete", now, record=row["seq"])
        else:
            _op(conn, row["lane"], "update", now, record=row["seq"], payload=full_patch(row))
        state = "queued"
    conn.execute("UPDATE inference_results SET sync_state = ? WHERE seq = ?", (state, row["seq"]))
    return state


def confirm_session(conn: StoreConnection, row: Any, remote: dict[str, Any], changed: bool,
                    now: float) -> str:
    """Settle an offline session a receipt says is upstream; its lane's turns now carry its remote id."""
    _settle_all(conn, "session_seq", row["seq"], now)
    conn.execute("UPDATE sessions SET remote_id = ?, remote_version_id = ?, create_sent = 1 WHERE seq = ?",
                 (remote["remote_id"], remote.get("remote_version_id"), row["seq"]))
    conn.execute(_REMOTE_LANE, (session_lane(row["seq"]), remote["remote_id"]))
    state = "synced"
    if changed:
        _op(conn, session_lane(row["seq"]), "session_update", now, session=row["seq"], payload=session_patch(row))
        state = "queued"
    conn.execute("UPDATE sessions SET sync_state = ? WHERE seq = ?", (state, row["seq"]))
    return state
