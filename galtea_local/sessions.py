"""``sessions``: create and find sessions without the network.

A session created here gets a stable local id (``ses_<store>_<n>``) at once;
turns can be logged to it right away (``inference_results.create(session_id=
<local id>)`` or by its custom id). The sync daemon creates it upstream before
any of its turns, always with a custom id (generated when the caller gives
none), so a lost answer is found again by looking the custom id up instead of
creating the session twice.
"""

from __future__ import annotations

import builtins
import secrets
import sqlite3
import time
from typing import Any

from galtea_local.errors import InvalidInputError, NotFoundError
from galtea_local.outbox import sessions as queue
from galtea_local.outbox import versions as versions_queue
from galtea_local.read_model import Session, iso_utc, session_status, stored_json
from galtea_local.session_list import list_query
from galtea_local.store import StorageBackend, named_outcome
from galtea_local.validation import (
    check_count,
    check_encodable,
    check_id,
    check_order,
    check_text,
    encode_json,
    parse_time,
    show,
)

STATUSES = frozenset({"PENDING", "COMPLETED", "FAILED"})
DEFAULT_STOPPING_REASON = "FINISHED"  # the API requires a non-empty reason; the SDK sends this
_UNSET: Any = object()


def _session(row: Any, prefix: str) -> Session:
    test_case_id = row["test_case_id"]
    is_production = row["is_production"]
    metadata = stored_json(row["metadata_json"]) if row["metadata_json"] else None
    return Session._fast({
        "custom_id": row["custom_id"],
        "version_id": row["version_id"] or row["remote_version_id"],
        "product_id": row["product_id"],
        "test_case_id": test_case_id,
        "context": row["context"],
        "metadata": metadata,
        # What the API reports for a session nobody changed yet: PENDING, and production
        # unless said otherwise or tied to a test case.
        "status": session_status(row["status"] or "PENDING"),
        "is_production": (test_case_id is None) if is_production is None else bool(is_production),
        "run_id": row["run_id"],
        "id": queue.local_session_id(prefix, row["seq"]),
        "created_at": iso_utc(row["created_at"]),
        "deleted_at": None,
        "stopping_reason": row["stopping_reason"],
        "error": row["error"],
        "recording_uri": None,
        "user_id": None,
        "is_seed": None,
        "context_data": None if row["context"] is None else {"value": row["context"]},
        "sync_state": row["sync_state"],
        "remote_id": row["remote_id"],
    })  # fmt: skip


def _check_anchor(version_id: Any, product_id: Any) -> tuple[str | None, str | None]:
    for name, value in (("version_id", version_id), ("product_id", product_id)):
        if value is not None:
            check_id(name, value, empty=InvalidInputError)
    if version_id is None and product_id is None:
        raise InvalidInputError("version_id / product_id: pass one of them to anchor the session")
    return version_id, (None if version_id is not None else product_id)


def _check_status(value: Any) -> str | None:
    if value is None:
        return None
    text = getattr(value, "value", value)
    if not isinstance(text, str) or text.upper() not in STATUSES:
        raise InvalidInputError(f"status: {show(value)} is not a session status; use one of {', '.join(sorted(STATUSES))}")
    return text.upper()


def _check_metadata(metadata: Any) -> None:
    # The API refuses any other JSON value (400 "metadata must be an object"): a session created or
    # updated with one would be dead-lettered upstream and hold every turn behind it.
    if metadata is not None and not isinstance(metadata, dict):
        raise InvalidInputError(f"metadata: expected a dict (a JSON object) or None, got {type(metadata).__name__}")


def _row_values(custom_id: str | None, version_id: str | None, product_id: str | None, **fields: Any) -> dict:
    _check_metadata(fields.get("metadata"))
    is_production = fields.get("is_production")
    if is_production is not None and not isinstance(is_production, bool):
        raise InvalidInputError(f"is_production: expected a bool, got {type(is_production).__name__}")
    if custom_id is not None:
        check_id("custom_id", custom_id, empty=InvalidInputError)
    values = {
        "custom_id": custom_id or f"galtea-local-{secrets.token_hex(12)}",
        "custom_id_generated": int(custom_id is None),
        "version_id": version_id,
        "product_id": product_id,
        "test_case_id": check_text("test_case_id", fields.get("test_case_id")),
        "context": check_text("context", fields.get("context")),
        "metadata_json": encode_json("metadata", fields.get("metadata")),
        "is_production": None if is_production is None else int(is_production),
        "run_id": check_text("run_id", fields.get("run_id")),
        "join_existing": int(bool(fields.get("join_existing"))),
    }
    check_encodable(values)
    return values


def _insert(conn: sqlite3.Connection, values: dict[str, Any], now: float) -> int:
    existing = queue.find_by_custom_id(conn, values["custom_id"], values["version_id"], values["product_id"])
    if existing is not None and not existing["deleted"]:
        raise InvalidInputError(
            f"custom_id: {values['custom_id']!r} is already used by a session of this version; "
            "use sessions.get_or_create() to reuse it"
        )
    columns = [*values, "created_at", "updated_at", "sync_state", "create_sent"]
    seq = conn.execute(
        f"INSERT INTO sessions ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
        (*values.values(), now, now, "queued", 0),
    ).lastrowid
    queue.enqueue_session_create(conn, seq, now)
    waits = versions_queue.waiting_for(conn, values["version_id"])
    if waits is not None:  # a version get_or_create made offline: the session goes up after it
        versions_queue.hold(conn, waits, session_seq=seq)
    return seq


class SessionService:
    """The ``sessions`` service of :class:`galtea_local.Galtea`: local at once, upstream later."""

    def __init__(self, store: StorageBackend) -> None:
        self._store = store
        self._prefix = store.store_id[:8]

    def _read(self, seq: int) -> Session:
        row = self._store.read(lambda conn: conn.execute("SELECT * FROM sessions WHERE seq = ?", (seq,)).fetchone())
        return _session(row, self._prefix)

    def create(self, version_id: str | None = None, custom_id: str | None = None, test_case_id: str | None = None,
               context: str | None = None, is_production: bool | None = None,
               metadata: dict[str, Any] | None = None, product_id: str | None = None,
               run_id: str | None = None) -> Session:
        """Create a session locally; the daemon creates it upstream before its turns.

        As with the SDK, a custom id that already exists upstream on that version
        is refused there (400 "already exists"): the session is dead-lettered with
        the API's message. Use :meth:`get_or_create` to join an existing one.
        Raises ``InvalidInputError`` when no anchor is given or the custom id is
        already used on this version in this store.
        """
        version_id, product_id = _check_anchor(version_id, product_id)
        values = _row_values(custom_id, version_id, product_id, test_case_id=test_case_id, context=context,
                             is_production=is_production, metadata=metadata, run_id=run_id)
        with named_outcome(lambda seq: queue.local_session_id(self._prefix, seq)):  # a lost COMMIT answer
            return self._read(self._store.transaction(_insert, values, time.time()))

    def get_or_create(self, custom_id: str, version_id: str | None = None, test_case_id: str | None = None,
                      context: str | None = None, is_production: bool | None = False,
                      metadata: dict[str, Any] | None = None, product_id: str | None = None,
                      run_id: str | None = None) -> Session:
        """The local session with this custom id on this anchor, created if there is none.

        Upstream, the daemon looks the custom id up first (as the SDK does) and
        joins a session that already exists there; only if none does it create one.
        """
        version_id, product_id = _check_anchor(version_id, product_id)
        values = _row_values(custom_id, version_id, product_id, test_case_id=test_case_id, context=context,
                             is_production=is_production, metadata=metadata, run_id=run_id, join_existing=True)

        def get_or_insert(conn: sqlite3.Connection) -> int:
            existing = queue.find_by_custom_id(conn, custom_id, version_id, product_id)
            return existing["seq"] if existing is not None else _insert(conn, values, time.time())

        with named_outcome(lambda seq: queue.local_session_id(self._prefix, seq)):
            return self._read(self._store.transaction(get_or_insert))

    def get(self, session_id: str) -> Session:
        """The session with this local or remote id; ``NotFoundError`` if this store has none."""
        check_id("session_id", session_id)
        return _session(self._store.read(queue.require_session, self._prefix, session_id), self._prefix)

    def get_by_custom_id(self, custom_id: str, version_id: str | None = None,
                         product_id: str | None = None) -> Session:
        """The session with this custom id on this anchor; ``NotFoundError`` if this store has none."""
        check_id("custom_id", custom_id)
        if version_id is None and product_id is None:
            raise InvalidInputError("version_id / product_id: pass one; a custom id is unique only per version")
        row = self._store.read(queue.find_by_custom_id, custom_id, version_id, None if version_id else product_id)
        if row is None:
            raise NotFoundError(f"Session with custom ID {custom_id} does not exist.")
        return _session(row, self._prefix)

    def list(self, version_id: str | builtins.list[str] | None = None,
             test_case_id: str | builtins.list[str] | None = None, custom_id: str | builtins.list[str] | None = None,
             dataset_id: str | builtins.list[str] | None = None, from_created_at: str | int | None = None,
             to_created_at: str | int | None = None, sort_by_created_at: str | None = None,
             offset: int | None = None, limit: int | None = None, id: str | builtins.list[str] | None = None,
             status: Any = None, user_id: str | builtins.list[str] | None = None, *,
             test_id: str | builtins.list[str] | None = None) -> builtins.list[Session]:
        """Local sessions matching every filter given (each filter takes one value or a list).

        The official arguments, in the official order. Unlike the SDK, no filter
        at all lists every local session. ``dataset_id``/``test_id`` and
        ``user_id`` match no session created here (only the API knows them).
        """
        filters = {"version_id": version_id, "custom_id": custom_id, "test_case_id": test_case_id,
                   "dataset_id": dataset_id if dataset_id is not None else test_id, "id": id, "status": status,
                   "user_id": user_id}
        query, params = list_query(self._prefix, filters, parse_time("from_created_at", from_created_at),
                                   parse_time("to_created_at", to_created_at), check_order(sort_by_created_at),
                                   check_count("offset", offset), check_count("limit", limit))
        rows = self._store.read(lambda conn: conn.execute(query, params).fetchall())
        return [_session(row, self._prefix) for row in rows]

    def update(self, session_id: str, custom_id: Any = _UNSET, status: Any = _UNSET, context: Any = _UNSET,
               stopping_reason: Any = _UNSET, metadata: Any = _UNSET, error: Any = _UNSET) -> Session:
        """Change a session locally at once; upstream after its create (folded into it if not sent yet)."""
        changes: dict[str, Any] = {}
        if custom_id is not _UNSET:
            if not isinstance(custom_id, str) or not custom_id:
                raise InvalidInputError(f"custom_id: expected a non-empty str, got {custom_id!r}")
            changes["custom_id"] = custom_id
        if status is not _UNSET:
            changes["status"] = _check_status(status)
        if context is not _UNSET:
            changes["context"] = check_text("context", context)
        if stopping_reason is not _UNSET:
            changes["stopping_reason"] = check_text("stopping_reason", stopping_reason)
        if metadata is not _UNSET:
            _check_metadata(metadata)
            changes["metadata_json"] = encode_json("metadata", metadata)
        if error is not _UNSET:
            changes["error"] = check_text("error", error)
        return self._change(session_id, "session_update", changes)

    def finish(self, session_id: str, stopping_reason: str | None = None) -> Session:
        """Mark the conversation over (status COMPLETED), as the official ``finish()``."""
        reason = check_text("stopping_reason", stopping_reason)
        reason = (reason or "").strip() or DEFAULT_STOPPING_REASON
        return self._change(session_id, "session_finish", {"status": "COMPLETED", "stopping_reason": reason})

    def delete(self, session_id: str) -> None:
        """Delete a session: gone locally at once; upstream after the turns already queued for it."""
        def apply(conn: sqlite3.Connection) -> None:
            row = queue.require_session(conn, self._prefix, session_id)
            queue.enqueue_session_change(conn, row, "session_delete", {}, time.time())
            conn.execute("UPDATE sessions SET deleted = 1, updated_at = ?, sync_state = 'queued' WHERE seq = ?",
                         (time.time(), row["seq"]))

        with named_outcome(lambda _: session_id):
            self._store.transaction(apply)

    def _change(self, session_id: str, kind: str, changes: dict[str, Any]) -> Session:
        check_id("session_id", session_id)
        check_encodable(changes)
        def apply(conn: sqlite3.Connection) -> int:
            row = queue.require_session(conn, self._prefix, session_id)
            if "custom_id" in changes and changes["custom_id"] != row["custom_id"]:
                _refuse_taken(conn, changes["custom_id"], row)
            folded = queue.enqueue_session_change(conn, row, kind, changes, time.time())
            state = row["sync_state"] if folded or row["sync_state"] == "dead" else "queued"
            assignments = "".join(f"{column} = ?, " for column in changes)
            conn.execute(f"UPDATE sessions SET {assignments}updated_at = ?, sync_state = ? WHERE seq = ?",
                         (*changes.values(), time.time(), state, row["seq"]))
            return row["seq"]

        with named_outcome(lambda _: session_id):
            return self._read(self._store.transaction(apply))


def _refuse_taken(conn: sqlite3.Connection, custom_id: str, row: Any) -> None:
    if queue.find_by_custom_id(conn, custom_id, row["version_id"], row["product_id"]) is not None:
        raise InvalidInputError(f"custom_id: {custom_id!r} is already used by a session of this version")
