"""What a bundle or receipt line must hold before it touches the store.

A record line passes exactly the rules ``create()`` applies (the same
functions of :mod:`galtea_local.validation`, ``store.max_record_bytes``
included), plus the types of the columns only a bundle carries (origin seq,
times, remote ids). Each check raises the library's own
``InvalidInputError``/``InvalidTypeError`` naming the field; the importer adds
the file and the line. A record's ``input``/``output`` come back normalized
(decoded, checked, encoded again as ``create()`` would store them).
"""

from __future__ import annotations

import json
from typing import Any

from galtea_local.errors import InvalidInputError, InvalidTypeError, RecordTooLargeError
from galtea_local.sessions import STATUSES as SESSION_STATUSES
from galtea_local.validation import (
    COST_KEYS,
    STATUSES,
    USAGE_KEYS,
    check_id,
    check_number,
    check_text,
    create_fields,
    encode_json,
    show,
    utf8_size,
)

_NO_LIMIT = 2**62  # sizes are checked per value below


def _int(name: str, value: Any, *, optional: bool = False, low: int = 0) -> None:
    if value is None and optional:
        return
    if value is None:
        raise InvalidTypeError(f"{name}: missing; expected an int")
    check_number(name, value, integer=True)
    if value < low:
        raise InvalidInputError(f"{name}: {show(value)} is not allowed; expected an int >= {low}")


def _time(name: str, value: Any, *, optional: bool = False) -> None:
    """Epoch seconds, as the origin stored them."""
    if value is None and not optional:
        raise InvalidTypeError(f"{name}: missing; expected epoch seconds (a number)")
    check_number(name, value)


def _flag(name: str, value: Any) -> None:
    if not (isinstance(value, int) and value in (0, 1)):
        raise InvalidInputError(f"{name}: {show(value)}; expected 0 or 1")


def _optional_id(name: str, value: Any) -> None:
    if value is not None:
        check_id(name, value)


def _text(name: str, value: Any) -> None:
    if check_text(name, value) is not None:
        utf8_size(name, value)


def _decode(name: str, text: Any) -> Any:
    """A stored JSON column: text that decodes (bounded depth is enforced when it is encoded again)."""
    if text is None:
        return None
    if not isinstance(text, str):
        raise InvalidTypeError(f"{name}: expected JSON text (a str), got {type(text).__name__}")
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise InvalidInputError(f"{name}: not valid JSON text: {show(text)}") from None


def _maybe_sent(entry: dict[str, Any]) -> None:
    maybe = entry.get("maybe_sent")
    if maybe is None:
        return
    if not isinstance(maybe, dict) or not isinstance(maybe.get("body"), dict):
        raise InvalidTypeError("maybe_sent: expected {'since': epoch seconds, 'body': an object}")
    _time("maybe_sent.since", maybe.get("since"))
    encode_json("maybe_sent.body", maybe["body"])


def _common(entry: dict[str, Any]) -> None:
    _int("origin_seq", entry.get("origin_seq"), low=1)
    _time("created_at", entry["created_at"])
    _time("updated_at", entry["updated_at"])
    _optional_id("remote_id", entry["remote_id"])
    _maybe_sent(entry)


def check_record(entry: dict[str, Any], max_record_bytes: int) -> None:
    """Refuse a record line create() would refuse; normalize its input/actual_output in place."""
    _common(entry)
    _int("session_ref", entry.get("session_ref"), optional=True, low=1)
    _flag("deleted", entry["deleted"])
    if entry["status"] not in STATUSES:
        raise InvalidInputError(f"status: {show(entry['status'])} is not a status; use one of {', '.join(sorted(STATUSES))}")
    _optional_id("remote_session_id", entry["remote_session_id"])
    _int("remote_index", entry["remote_index"], optional=True)
    _text("remote_created_at", entry["remote_created_at"])
    _text("error", entry["error"])
    for name in (*USAGE_KEYS, *COST_KEYS):  # named as the columns; create() nests them in usage/cost_info
        check_number(name, entry[name], integer=name in USAGE_KEYS)
    args = {name: entry[name] for name in ("session_id", "session_custom_id", "version_id", "product_id", "status",
                                           "retrieval_context", "latency", "conversation_simulator_version")}
    args["input"] = _decode("input", entry["input"])
    args["output"] = _decode("output", entry["actual_output"])
    fields = create_fields(args, _NO_LIMIT)
    fields["error"] = entry["error"]
    _check_sizes(fields, max_record_bytes)
    entry["input"], entry["actual_output"] = fields["input"], fields["actual_output"]


def _check_sizes(fields: dict[str, Any], limit: int) -> None:
    """Each text no larger than one create()/update() call may write.

    A row's final state may hold several values each set by its own update()
    call, so the bound is per value, not the row's sum: a genuine record always
    passes, and a hostile one is still bounded.
    """
    for name, value in fields.items():
        if isinstance(value, str) and utf8_size(name, value) > limit:
            raise RecordTooLargeError(f"{name}: {utf8_size(name, value)} bytes is over store.max_record_bytes "
                                      f"({limit}) of this store; raise it here to import this record")


def check_session(entry: dict[str, Any]) -> None:
    """Refuse a session line ``sessions.create()`` would refuse."""
    _common(entry)
    check_id("custom_id", entry["custom_id"])
    _flag("custom_id_generated", entry["custom_id_generated"])
    for name in ("version_id", "product_id", "remote_version_id"):
        _optional_id(name, entry[name])
    if entry["version_id"] is None and entry["product_id"] is None:
        raise InvalidInputError("version_id / product_id: a session needs one of them")
    for name in ("test_case_id", "context", "stopping_reason"):
        _text(name, entry[name])
    metadata = _decode("metadata_json", entry["metadata_json"])
    if metadata is not None and not isinstance(metadata, dict):
        raise InvalidTypeError(f"metadata_json: expected a JSON object, got {type(metadata).__name__}")
    encode_json("metadata_json", metadata)
    if entry["is_production"] is not None:
        _flag("is_production", entry["is_production"])
    if entry["status"] is not None and entry["status"] not in SESSION_STATUSES:
        raise InvalidInputError(f"status: {show(entry['status'])} is not a session status")


def check_confirmation(entry: dict[str, Any]) -> None:
    """A receipt line: which origin row, under which remote ids, at which origin version."""
    _int("origin_seq", entry.get("origin_seq"), low=1)
    check_id("remote_id", entry.get("remote_id"))
    _time("origin_updated_at", entry.get("origin_updated_at"))
    if entry["type"] == "record":
        _optional_id("remote_session_id", entry.get("remote_session_id"))
        _int("remote_index", entry.get("remote_index"), optional=True)
        _text("remote_created_at", entry.get("remote_created_at"))
    else:
        _optional_id("remote_version_id", entry.get("remote_version_id"))
