"""The API's request rules, as the emulator enforces them.

Written from the official SDK's wire format (docs/emulator.md), not from our own client's
validation: the emulator exists to catch a client that sends something the API
would refuse, so sharing code with that client would hide exactly those bugs.
Every failure raises :class:`ApiError`, which the app turns into the API's
status code and a JSON ``{"message": ...}`` body.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

RESULT_STATUSES = frozenset({"PENDING", "GENERATED", "FAILED", "SKIPPED"})
SESSION_STATUSES = frozenset({"PENDING", "COMPLETED", "FAILED"})


class ApiError(Exception):
    """An error answer: HTTP ``status`` with a JSON ``{"message": ...}`` body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def bad_request(message: str) -> ApiError:
    return ApiError(400, message)


def not_found(entity: str, entity_id: str) -> ApiError:
    return ApiError(404, f"{entity} with id {entity_id} not found")


def _is_text(value: Any) -> bool:
    return isinstance(value, str)


def _is_text_or_object(value: Any) -> bool:
    return isinstance(value, (str, dict))


def _is_number(value: Any) -> bool:
    # bool is an int subclass, and a JSON `true` is never a valid latency or cost.
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_object(value: Any) -> bool:
    return isinstance(value, dict)


def _is_boolean(value: Any) -> bool:
    return isinstance(value, bool)


Check = tuple[Callable[[Any], bool], str]
TEXT: Check = (_is_text, "a string")
TEXT_OR_OBJECT: Check = (_is_text_or_object, "a string or an object")
NUMBER: Check = (_is_number, "a number")
INTEGER: Check = (_is_integer, "an integer")
OBJECT: Check = (_is_object, "an object")
BOOLEAN: Check = (_is_boolean, "a boolean")

# The nullable content fields of an inference result, shared by create and PATCH.
RESULT_CONTENT: dict[str, Check] = {
    "input": TEXT_OR_OBJECT,
    "actualOutput": TEXT_OR_OBJECT,
    "retrievalContext": TEXT,
    "latency": NUMBER,
    "inputTokens": INTEGER,
    "outputTokens": INTEGER,
    "cacheReadInputTokens": INTEGER,
    "tokens": INTEGER,
    "costPerInputToken": NUMBER,
    "costPerOutputToken": NUMBER,
    "costPerCacheReadInputToken": NUMBER,
    "cost": NUMBER,
    "conversationSimulatorVersion": TEXT,
    "error": TEXT,
}
RESULT_IDENTITY: dict[str, Check] = {
    "sessionId": TEXT,
    "sessionCustomId": TEXT,
    "versionId": TEXT,
    "productId": TEXT,
}
# The SDK's update() may send these server-owned fields; the API lets a PATCH set them.
RESULT_PATCH_EXTRA: dict[str, Check] = {"sessionId": TEXT, "index": INTEGER, "createdAt": TEXT}

SESSION_CREATE: dict[str, Check] = {
    "versionId": TEXT,
    "productId": TEXT,
    "customId": TEXT,
    "testCaseId": TEXT,
    "context": TEXT_OR_OBJECT,
    "metadata": OBJECT,
    "isProduction": BOOLEAN,
    "runId": TEXT,
    "status": TEXT,
}
# createdAt: the SDK's SessionUpdate carries it, as TraceUpdate does for a trace.
SESSION_PATCH: dict[str, Check] = {
    "createdAt": TEXT,
    "customId": TEXT,
    "status": TEXT,
    "context": TEXT_OR_OBJECT,
    "stoppingReason": TEXT,
    "metadata": OBJECT,
    "error": TEXT,
}


def check_fields(body: Mapping[str, Any], allowed: Mapping[str, Check]) -> None:
    """Refuse unknown fields and wrongly typed values; ``null`` passes every check."""
    for name, value in body.items():
        check = allowed.get(name)
        if check is None:
            raise bad_request(f"property {name} should not exist")
        is_valid, expected = check
        if value is not None and not is_valid(value):
            raise bad_request(f"{name} must be {expected}")


def check_status(value: Any, allowed: frozenset[str]) -> str:
    """The status exactly as the API spells it (upper case); anything else is a 400."""
    if value not in allowed:
        raise bad_request(f"status must be one of {', '.join(sorted(allowed))}")
    return value


def require_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise bad_request("request body must be a JSON object")
    return body


def parse_timestamp(name: str, text: str) -> float:
    """ISO 8601 (``Z`` or an offset; naive means UTC) to POSIX seconds."""
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace(" ", "+"))
    except ValueError:
        raise bad_request(f"{name} must be an ISO 8601 date") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


def format_timestamp(seconds: float) -> str:
    """POSIX seconds to the API's ``2026-11-26T06:40:00.123Z`` form."""
    moment = datetime.fromtimestamp(seconds, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@dataclass(frozen=True)
class ListQuery:
    """The filters and paging every list endpoint shares.

    ``filters`` maps a record field to the values it may take (from the
    ``xxxIds[]=`` parameters); ``descending`` comes from ``sort[]=createdAt&sort[]=desc``.
    """

    filters: dict[str, frozenset[str]]
    from_ts: float | None = None
    to_ts: float | None = None
    offset: int = 0
    limit: int | None = None
    descending: bool = False


def _non_negative_int(name: str, text: str | None) -> int | None:
    if text is None:
        return None
    if not text.isdigit():
        raise bad_request(f"{name} must be a non-negative integer")
    return int(text)


def _sort_descending(values: list[str]) -> bool:
    if not values:
        return False
    if len(values) != 2 or values[0] != "createdAt" or values[1].lower() not in ("asc", "desc"):
        raise bad_request("sort must be sort[]=createdAt&sort[]=asc|desc")
    return values[1].lower() == "desc"


def split_query(items: Iterable[tuple[str, str]]) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Query parameters: ``key[]=value`` ones as lists (by key without the brackets), the rest single."""
    lists: dict[str, list[str]] = {}
    single: dict[str, str] = {}
    for key, value in items:
        if key.endswith("[]"):
            lists.setdefault(key[:-2], []).append(value)
        else:
            single[key] = value
    return lists, single


def parse_list_query(items: Iterable[tuple[str, str]], filter_fields: Mapping[str, str]) -> ListQuery:
    """Read ``key[]=value`` filters (named in ``filter_fields``: parameter -> field) and paging."""
    lists, single = split_query(items)
    filters = {field: frozenset(lists[param]) for param, field in filter_fields.items() if param in lists}
    from_text, to_text = single.get("fromCreatedAt"), single.get("toCreatedAt")
    return ListQuery(
        filters=filters,
        from_ts=parse_timestamp("fromCreatedAt", from_text) if from_text else None,
        to_ts=parse_timestamp("toCreatedAt", to_text) if to_text else None,
        offset=_non_negative_int("offset", single.get("offset")) or 0,
        limit=_non_negative_int("limit", single.get("limit")),
        descending=_sort_descending(lists.get("sort", [])),
    )
