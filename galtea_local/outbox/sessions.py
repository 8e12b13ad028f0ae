"""What the library appends for sessions created offline.

A local session has its own lane, ``ls:<seq>``; its create is the lane's first
operation and every turn logged to it joins the same lane, so the session is
created upstream before any of its turns. Changes made before the create left
fold into it; later ones are queued as PATCHes after it.
"""

from __future__ import annotations

import json
from typing import Any

from galtea_local.errors import NotFoundError
from galtea_local.outbox.enqueue import ACTIVATE_LANE, format_id, parse_id
from galtea_local.store.contract import StoreConnection

_INSERT_OP = (
    "INSERT INTO outbox (session_seq, lane, kind, payload, state, attempts, not_before, created_at)"
    " VALUES (?, ?, ?, ?, 'pending', 0, 0, ?)"
)
SESSION_KINDS = frozenset({"session_create", "session_update", "session_finish", "session_delete"})
_CREATE_CARRIES = frozenset({"context", "metadata_json", "custom_id"})


def session_lane(seq: int) -> str:
    return f"ls:{seq}"


def local_session_id(prefix: str, seq: int) -> str:
    return format_id("ses", prefix, seq)


def parse_session_id(prefix: str, any_id: str) -> int | None:
    """The ``seq`` of a local session id of this store, or None (a remote id)."""
    return parse_id("ses", prefix, any_id)


def enqueue_session_create(conn: StoreConnection, seq: int, now: float) -> None:
    lane = session_lane(seq)
    conn.execute(_INSERT_OP, (seq, lane, "session_create", None, now))
    conn.execute(ACTIVATE_LANE, (lane,))


def enqueue_session_change(
    conn: StoreConnection, session: Any, kind: str, changes: dict[str, Any], now: float
) -> bool:
    """Queue a session PATCH (``session_update``/``session_finish``) unless it folds; True if folded.

    Only what a session create carries (context, metadata) can fold into it;
    status, stopping reason and error exist upstream only through a PATCH.
    """
    if not session["create_sent"] and kind == "session_update" and set(changes) <= _CREATE_CARRIES:
        return True
    lane = session_lane(session["seq"])
    conn.execute(_INSERT_OP, (session["seq"], lane, kind, json.dumps(changes), now))
    conn.execute(ACTIVATE_LANE, (lane,))
    return False


def require_session(conn: StoreConnection, prefix: str, any_id: str) -> Any:
    """The local session with this local or remote id, else :class:`NotFoundError`."""
    seq = parse_session_id(prefix, any_id)
    if seq is not None:
        row = conn.execute("SELECT * FROM sessions WHERE seq = ?", (seq,)).fetchone()
    else:
        row = conn.execute("SELECT * FROM sessions WHERE remote_id = ?", (any_id,)).fetchone()
    if row is None or row["deleted"]:
        raise NotFoundError(f"session {any_id!r}: no such session in this store (local or remote id)")
    return row


def find_by_custom_id(
    conn: StoreConnection, custom_id: str, version_id: str | None, product_id: str | None
) -> Any | None:
    """The local session with this custom id on this anchor (custom ids are unique per version)."""
    if version_id is not None:
        return conn.execute(
            "SELECT * FROM sessions WHERE custom_id = ? AND version_id = ? AND deleted = 0", (custom_id, version_id)
        ).fetchone()
    return conn.execute(
        "SELECT * FROM sessions WHERE custom_id = ? AND version_id IS NULL AND product_id = ? AND deleted = 0",
        (custom_id, product_id),
    ).fetchone()
