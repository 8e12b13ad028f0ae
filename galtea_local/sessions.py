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
from dataclasses import asdict, dataclass
from typing import Any

from galtea_local.store.dialects import NO_LIMIT
from galtea_local.errors import InvalidInputError
from galtea_local.outbox import sessions as queue
from galtea_local.read_model import iso_utc, stored_json
from galtea_local.store import StorageBackend, named_outcome
from galtea_local.validation import (
    check_count,
    check_encodable,
    check_id,
    check_ids,
    check_order,
    check_text,
    encode_json,
    show,
)

STATUSES = frozenset({"PENDING", "COMPLETED", "FAILED"})
DEFAULT_STOPPING_REASON = "FINISHED"  # the API requires a non-empty reason; the SDK sends this
_UNSET: Any = object()


@dataclass(frozen=True, slots=True)
class Session:
    """A session as the official SDK's read model shows it, plus ``sync_state`` and ``remote_id``."""

    id: str
    custom_id: str
    version_id: str | None
    product_id: str | None
    test_case_id: str | None
    context: str | None
    metadata: dict[str, Any] | None
    is_production: bool | None
    status: str | None
    stopping_reason: str | None
    created_at: str
    sync_state: str
    remote_id: str | None

    def model_dump(self) -> dict[str, Any]:
        return asdict(self)


def _session(row: sqlite3.Row, prefix: str) -> Session:
    return Session(
        id=queue.local_session_id(prefix, row["seq"]),
        custom_id=row["custom_id"],
        version_id=row["version_id"] or row["remote_version_id"],
        product_id=row["product_id"],
        test_case_id=row["test_case_id"],
        context=row["context"],
        metadata=stored_json(row["metadata_json"]) if row["metadata_json"] else None,
        is_production=None if row["is_production"] is None else bool(row["is_production"]),
        status=row["status"],
        stopping_reason=row["stopping_reason"],
        created_at=iso_utc(row["created_at"]),
        sync_state=row["sync_state"],
        remote_id=row["remote_id"],
    )


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
    }
    check_encodable(values)
    return values


def _insert(conn: sqlite3.Connection, values: dict[str, Any], now: float) -> int:
    existing = queue.find_by_custom_id(conn, values["custom_id"], values["version_id"], values["product_id"])
    if existing is not None:
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

        Raises ``InvalidInputError`` when no anchor is given or the custom id is
        already used on this version in this store.
        """
        version_id, product_id = _check_anchor(version_id, product_id)
        values = _row_values(custom_id, version_id, product_id, test_case_id=test_case_id, context=context,
                             is_production=is_production, metadata=metadata)
        with named_outcome(lambda seq: queue.local_session_id(self._prefix, seq)):  # a lost COMMIT answer
            return self._read(self._store.transaction(_insert, values, time.time()))

    def get_or_create(self, custom_id: str, version_id: str | None = None, test_case_id: str | None = None,
                      context: str | None = None, is_production: bool | None = False,
                      metadata: dict[str, Any] | None = None, product_id: str | None = None,
                      run_id: str | None = None) -> Session:
        """The local session with this custom id on this anchor, created if there is none.

        Upstream, the daemon looks the custom id up first and adopts a session
        that already exists there.
        """
        version_id, product_id = _check_anchor(version_id, product_id)
        values = _row_values(custom_id, version_id, product_id, test_case_id=test_case_id, context=context,
                             is_production=is_production, metadata=metadata)

        def get_or_insert(conn: sqlite3.Connection) -> int:
            existing = queue.find_by_custom_id(conn, custom_id, version_id, product_id)
            return existing["seq"] if existing is not None else _insert(conn, values, time.time())

        with named_outcome(lambda seq: queue.local_session_id(self._prefix, seq)):
            return self._read(self._store.transaction(get_or_insert))

    def get(self, session_id: str) -> Session:
        """The session with this local or remote id; ``NotFoundError`` if this store has none."""
        check_id("session_id", session_id)
        return _session(self._store.read(queue.require_session, self._prefix, session_id), self._prefix)

    def list(self, version_id: str | builtins.list[str] | None = None, custom_id: str | builtins.list[str] | None = None,
             id: str | builtins.list[str] | None = None, offset: int | None = None, limit: int | None = None,
             sort_by_created_at: str | None = None) -> builtins.list[Session]:
        """Local sessions matching every filter given (each filter takes one value or a list)."""
        where, params = ["1 = 1"], []
        for column, value in (("version_id", version_id), ("custom_id", custom_id)):
            values = check_ids(column, value)
            if values:
                where.append(f"{column} IN ({', '.join('?' * len(values))})")
                params += values
        offset, limit = check_count("offset", offset), check_count("limit", limit)
        order = check_order(sort_by_created_at).upper()
        if id is not None:
            ids = check_ids("id", id)
            seqs = [queue.parse_session_id(self._prefix, any_id) for any_id in ids]
            marks = ", ".join("?" * len(ids))
            where.append(f"(seq IN ({marks}) OR remote_id IN ({marks}))" if ids else "1 = 0")
            params += seqs + ids
        query = f"SELECT * FROM sessions WHERE {' AND '.join(where)} ORDER BY seq {order} LIMIT ? OFFSET ?"
        rows = self._store.read(lambda conn: conn.execute(query, (*params, NO_LIMIT if limit is None else limit,
                                                                     offset or 0)).fetchall())
        return [_session(row, self._prefix) for row in rows]

    def update(self, session_id: str, custom_id: Any = _UNSET, status: Any = _UNSET, context: Any = _UNSET,
               stopping_reason: Any = _UNSET, metadata: Any = _UNSET, error: Any = _UNSET) -> Session:
        """Change a session locally at once; upstream after its create (folded into it if not sent yet)."""
        changes: dict[str, Any] = {}
        if custom_id is not _UNSET:
            raise InvalidInputError("custom_id: the custom id identifies the session offline; it cannot change")
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

    def _change(self, session_id: str, kind: str, changes: dict[str, Any]) -> Session:
        check_id("session_id", session_id)
        check_encodable(changes)
        def apply(conn: sqlite3.Connection) -> int:
            row = queue.require_session(conn, self._prefix, session_id)
            local = {k: v for k, v in changes.items() if k != "error"}  # error is upstream-only state
            folded = queue.enqueue_session_change(conn, row, kind, changes, time.time())
            state = row["sync_state"] if folded or row["sync_state"] == "dead" else "queued"
            assignments = "".join(f"{column} = ?, " for column in local)
            conn.execute(f"UPDATE sessions SET {assignments}updated_at = ?, sync_state = ? WHERE seq = ?",
                         (*local.values(), time.time(), state, row["seq"]))
            return row["seq"]

        with named_outcome(lambda _: session_id):
            return self._read(self._store.transaction(apply))
