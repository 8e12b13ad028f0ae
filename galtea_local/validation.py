"""Check and normalize what ``create()``/``update()`` receive, before anything is written.

The rules are the official SDK's and the API's, applied locally so that a bad
record fails in the caller's hands rather than days later in the daemon. Every
error names the field and the fix. The result maps store column names to
storable values (``input``/``actual_output`` as JSON text).
"""

from __future__ import annotations

import json
import math
import reprlib
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from galtea_local.errors import InvalidInputError, InvalidTypeError, RecordTooLargeError

STATUSES = frozenset({"PENDING", "GENERATED", "FAILED", "SKIPPED"})
USAGE_KEYS = ("input_tokens", "output_tokens", "cache_read_input_tokens", "tokens")
COST_KEYS = ("cost_per_input_token", "cost_per_output_token", "cost_per_cache_read_input_token", "cost")
TEXT_FIELDS = ("retrieval_context", "conversation_simulator_version", "error")
# update() takes these beyond create()'s; they are server-owned and never sent from here.
SERVER_OWNED = frozenset({"created_at", "deleted_at", "index"})

# SQLite stores integers in 64 bits; a larger int would fail inside the store, after validation.
MAX_INT = 2**63 - 1
# Nesting of input/output/metadata: deep enough for any real payload, shallow enough that
# encoding and decoding (here and in the daemon) never reach Python's recursion limit.
MAX_DEPTH = 64

_dumps = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode
_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = 60


def show(value: Any) -> str:
    """A short repr for an error message: bounded in length and depth, whatever the value."""
    return _repr.repr(value)


def _type_error(field: str, value: Any, expected: str) -> InvalidTypeError:
    return InvalidTypeError(f"{field}: expected {expected}, got {type(value).__name__}; pass {expected} or None")


def utf8_size(field: str, text: str) -> int:
    """The UTF-8 length of ``text``; a lone surrogate (which no store nor the API can hold) is refused."""
    if text.isascii():  # O(1) in CPython: ASCII text skips the encode
        return len(text)
    try:
        return len(text.encode())
    except UnicodeEncodeError as exc:
        raise InvalidInputError(
            f"{field}: contains a lone surrogate ({text[exc.start]!r} at position {exc.start}), which is not "
            "valid Unicode; pass valid text (decode bytes with errors='replace')"
        ) from None


def check_id(field: str, value: Any, empty: type[Exception] = InvalidTypeError) -> str:
    """An id argument (local or remote): a non-empty str of valid Unicode; ``empty`` is raised for ''."""
    if not isinstance(value, str):
        raise InvalidTypeError(f"{field}: expected a non-empty str, got {show(value)}")
    if not value:
        raise empty(f"{field}: expected a non-empty str, got ''")
    utf8_size(field, value)
    return value


def check_ids(field: str, value: Any) -> list[str]:
    """One id or a list of ids, as the official ``list()`` filters take them."""
    if value is None:
        return []
    if isinstance(value, str):
        return [check_id(field, value)]
    if not isinstance(value, (list, tuple)):
        raise InvalidTypeError(f"{field}: expected a str or a list of str, got {type(value).__name__}")
    return [check_id(f"{field}[{i}]", item) for i, item in enumerate(value)]


def check_count(field: str, value: Any) -> int | None:
    """``offset``/``limit``: None or an int from 0 to 2**63-1."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_INT):
        raise InvalidTypeError(f"{field}: expected an int >= 0, got {show(value)}")
    return value


def check_order(value: Any) -> str:
    if value is None:
        return "asc"
    if not isinstance(value, str) or value.lower() not in ("asc", "desc"):
        raise InvalidInputError(f"sort_by_created_at: {show(value)}; use 'asc' or 'desc'")
    return value.lower()


def check_encodable(fields: Mapping[str, Any]) -> None:
    """Every text value is valid Unicode (see :func:`utf8_size`)."""
    for name, value in fields.items():
        if isinstance(value, str):
            utf8_size(name, value)


def _depth_over(value: Any, limit: int) -> bool:
    """True when lists/dicts nest deeper than ``limit`` (iterative: no recursion to exhaust)."""
    stack: list[tuple[Iterable[Any], int]] = [((value,), 0)]
    while stack:
        items, depth = stack.pop()
        for item in items:
            if isinstance(item, (dict, list, tuple)):
                if depth + 1 > limit:
                    return True
                stack.append((item.values() if isinstance(item, dict) else item, depth + 1))
    return False


def encode_json(field: str, value: Any) -> str | None:
    """``input``/``output``: a str or a dict of JSON values, stored as JSON text."""
    if value is None:
        return None
    if not isinstance(value, (str, dict)):
        raise _type_error(field, value, "a str or a dict")
    try:
        text = _dumps(value)
    except (TypeError, ValueError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:200]
        raise InvalidInputError(
            f"{field}: cannot be stored as JSON ({reason}); use only str, int, float, bool, None, list and dict values"
        ) from None
    # Counting brackets is cheap; only text that could nest that deep is walked.
    if text.count("{") + text.count("[") > MAX_DEPTH and _depth_over(value, MAX_DEPTH):
        raise InvalidInputError(f"{field}: nested more than {MAX_DEPTH} levels deep; flatten the structure")
    return text


def check_text(field: str, value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise _type_error(field, value, "a str")


def check_number(field: str, value: Any, *, integer: bool = False) -> int | float | None:
    if value is None:
        return None
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise _type_error(field, value, "an int" if integer else "a number")
    if isinstance(value, int) and value > MAX_INT:
        raise InvalidInputError(f"{field}: {show(value)} is too large; pass a number up to 2**63-1")
    if not math.isfinite(value) or value < 0:
        raise InvalidInputError(f"{field}: {show(value)} is not allowed; pass a finite number >= 0")
    return value


def check_status(value: Any, *, default: str | None = "GENERATED") -> str | None:
    """Case-insensitive PENDING/GENERATED/FAILED/SKIPPED (an enum member works too)."""
    if value is None:
        return default
    text = getattr(value, "value", value)
    if not isinstance(text, str):
        raise _type_error("status", value, "a str or InferenceResultStatus")
    upper = text.upper()
    if upper not in STATUSES:
        raise InvalidInputError(f"status: {show(text)} is not a status; use one of {', '.join(sorted(STATUSES))}")
    return upper


def _info_dict(field: str, value: Any, keys: tuple[str, ...]) -> dict[str, Any]:
    if value is None:
        return {}
    if hasattr(value, "model_dump"):  # the official SDK's UsageInfoProperties / CostInfoProperties
        value = value.model_dump(exclude_none=True)
    if not isinstance(value, Mapping):
        raise _type_error(field, value, "a dict")
    unknown = sorted(show(k) for k in value if k not in keys)
    if unknown:
        raise InvalidInputError(f"{field}: unknown key(s) {', '.join(unknown)}; allowed keys are {', '.join(keys)}")
    integer = field == "usage_info"
    return {key: check_number(f"{field}[{key!r}]", value[key], integer=integer) for key in value}


def check_session(
    session_id: Any, session_custom_id: Any, version_id: Any, product_id: Any
) -> tuple[str | None, str | None, str | None, str | None]:
    """Exactly one of session_id/session_custom_id; a custom id needs an anchor; version_id wins."""
    for name, value in (("session_id", session_id), ("session_custom_id", session_custom_id),
                        ("version_id", version_id), ("product_id", product_id)):
        if value is not None:
            check_id(name, value)
    if (session_id is None) == (session_custom_id is None):
        raise InvalidInputError("session_id / session_custom_id: provide exactly one of them")
    if session_custom_id is not None and version_id is None and product_id is None:
        raise InvalidInputError("session_custom_id: also pass version_id or product_id to anchor the session")
    if version_id is not None:
        product_id = None  # the API ignores productId when versionId is present
    return session_id, session_custom_id, version_id, product_id


def check_size(fields: Mapping[str, Any], limit: int) -> None:
    """The record's text is valid Unicode and, in UTF-8, within ``limit`` bytes."""
    size = sum(utf8_size(_ARGUMENT.get(k, k), v) for k, v in fields.items() if isinstance(v, str))
    if size > limit:
        raise RecordTooLargeError(
            f"record: {size} bytes of text is over the store's limit of {limit}; "
            "shorten input/output/retrieval_context or raise store.max_record_bytes"
        )


_ARGUMENT = {"actual_output": "output"}  # column -> the argument a caller passed


def create_fields(args: Mapping[str, Any], max_record_bytes: int) -> dict[str, Any]:
    """Validate ``create()`` arguments; return the record's column values."""
    session_id, custom_id, version_id, product_id = check_session(
        args.get("session_id"), args.get("session_custom_id"), args.get("version_id"), args.get("product_id")
    )
    fields: dict[str, Any] = {
        "session_id": session_id,
        "session_custom_id": custom_id,
        "version_id": version_id,
        "product_id": product_id,
        "status": check_status(args.get("status")),
        "input": encode_json("input", args.get("input")),
        "actual_output": encode_json("output", args.get("output")),
        "retrieval_context": check_text("retrieval_context", args.get("retrieval_context")),
        "latency": check_number("latency", args.get("latency")),
        "conversation_simulator_version": check_text(
            "conversation_simulator_version", args.get("conversation_simulator_version")
        ),
        "error": check_text("error", args.get("error")),
    }
    fields.update(_info_dict("usage_info", args.get("usage_info"), USAGE_KEYS))
    fields.update(_info_dict("cost_info", args.get("cost_info"), COST_KEYS))
    check_size(fields, max_record_bytes)
    return fields


def _check_update_value(name: str, value: Any) -> Any:
    if name in ("input", "output"):
        return encode_json(name, value)
    if name == "status":
        if value is None:  # every turn has a status upstream: there is nothing to clear it to
            raise InvalidInputError(f"status: cannot be cleared; pass one of {', '.join(sorted(STATUSES))}")
        return check_status(value, default=None)
    if name in USAGE_KEYS:
        return check_number(name, value, integer=True)
    if name in COST_KEYS or name == "latency":
        return check_number(name, value)
    if name in TEXT_FIELDS or name == "session_id":
        return check_text(name, value)
    raise InvalidTypeError(f"update(): unexpected argument {name!r}")


def update_fields(changes: Mapping[str, Any], max_record_bytes: int) -> dict[str, Any]:
    """Validate ``update()`` arguments that were passed; return column → value.

    ``None`` clears a field. Server-owned fields (``created_at``, ``deleted_at``,
    ``index``) are refused: the server assigns them.
    """
    owned = sorted(SERVER_OWNED.intersection(changes))
    if owned:
        raise InvalidInputError(f"{', '.join(owned)}: assigned by the server; drop the argument")
    if "session_id" in changes:
        raise InvalidInputError("session_id: a turn cannot move to another session; create a new turn instead")
    fields = {("actual_output" if k == "output" else k): _check_update_value(k, v) for k, v in changes.items()}
    check_size(fields, max_record_bytes)
    return fields


def parse_time(name: str, value: str | int | float | None) -> float | None:
    """ISO 8601 or UNIX seconds, as the official list() calls accept; None passes through."""
    if value is None:
        return None
    try:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        if isinstance(value, str):
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except (ValueError, OverflowError):  # not a date, or out of datetime's / float's range
        pass
    raise InvalidInputError(f"{name}: {show(value)} is not a time; pass ISO 8601 text or UNIX seconds")
