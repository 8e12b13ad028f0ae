"""Request bodies for an attempt, built from the target row as it is at the write-ahead mark."""

from __future__ import annotations

import json
from typing import Any

from galtea_local.outbox import attempts as ob
from galtea_local.outbox import batch
from galtea_local.outbox.kinds import OpKind
from galtea_local_daemon import poison, wire


def _decoded(record: dict[str, Any], names: Any) -> dict[str, Any]:
    fields = {name: record[name] for name in names if name in record}
    for name in ("input", "actual_output"):
        if fields.get(name) is not None:
            fields[name] = json.loads(fields[name])
    return fields


def decoded_fields(record: dict[str, Any]) -> dict[str, Any]:
    """A record row's create fields, JSON columns decoded (snake_case, as ``wire.create_body`` takes them)."""
    return _decoded(record, wire.CREATE_FIELDS)


_SESSION_CREATE_FIELDS = ("custom_id", "version_id", "product_id", "test_case_id", "context", "run_id")
_SESSION_PATCH_FIELDS = {"status": "status", "context": "context", "stopping_reason": "stoppingReason",
                         "error": "error", "custom_id": "customId"}


def _session_create_body(session: dict[str, Any]) -> dict[str, Any]:
    fields = {name: session[name] for name in _SESSION_CREATE_FIELDS}
    fields["metadata"] = json.loads(session["metadata_json"]) if session["metadata_json"] else None
    fields["is_production"] = None if session["is_production"] is None else bool(session["is_production"])
    return wire.session_body(fields)


def _session_patch_body(changes: dict[str, Any]) -> dict[str, Any]:
    body = {_SESSION_PATCH_FIELDS[name]: value for name, value in changes.items() if name in _SESSION_PATCH_FIELDS}
    if "metadata_json" in changes:
        body["metadata"] = json.loads(changes["metadata_json"]) if changes["metadata_json"] else None
    return body


@poison.refuse_unencodable  # a row that cannot be encoded is dead-lettered, not retried forever
def build_body(row: dict[str, Any], attempt: ob.Attempt) -> dict[str, Any]:
    """The request body for an attempt, from the target row as it is at the write-ahead mark."""
    if attempt.kind == OpKind.CREATE:
        fields = _decoded(row, wire.CREATE_FIELDS)
        if attempt.lane.startswith("ls:") and attempt.lane_session_id:
            # A turn of a session created offline goes to that session's remote id, even when the
            # app named it by a custom id that a later sessions.update(custom_id=) has changed.
            fields["session_id"] = attempt.lane_session_id
            for name in ("session_custom_id", "version_id", "product_id"):
                fields.pop(name, None)
        return wire.create_body(fields)
    if attempt.kind == OpKind.UPDATE:
        return wire.update_body(_decoded(attempt.payload or {}, wire.UPDATE_FIELDS))
    if attempt.kind == OpKind.SESSION_CREATE:
        return _session_create_body(row)
    if attempt.kind in (OpKind.SESSION_UPDATE, OpKind.SESSION_FINISH):
        return _session_patch_body(attempt.payload or {})
    if attempt.kind in (OpKind.STAMP, OpKind.SESSION_STAMP):
        return attempt.payload or {}
    if attempt.kind == OpKind.CREATE_BATCH:
        return batch.wire_body(attempt.payload or {}, attempt.lane_session_id)
    return {}
