"""What goes on the wire to the Galtea API, shaped as the official SDK 5.12 shapes it.

Pure functions, no I/O: JSON bodies (snake_case record fields in, camelCase
out), query strings, paths, the base URL and the headers we send. Bodies are checked for names, not
values: validating a record is the library's job, done before it was queued
(docs/emulator.md lists the routes; the official SDK's models give the fields).
"""

from __future__ import annotations

import enum
import json
import platform
from collections.abc import Iterable, Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any
from urllib.parse import quote_plus

import httpx

from galtea_local.config import http
from galtea_local.config.http import DEFAULT_BASE_URL, RESERVED_HEADERS
from galtea_local.errors import ConfigError, InvalidInputError

__all__ = [
    "CREATE_FIELDS",
    "DEFAULT_BASE_URL",
    "DEFAULT_STATUS",
    "EXTRA_HEADERS_ENV",
    "RESERVED_HEADERS",
    "as_list",
    "checked_base_url",
    "UPDATE_FIELDS",
    "checked_headers",
    "create_body",
    "extra_headers_from_env",
    "path_segment",
    "query_string",
    "session_body",
    "update_body",
    "user_agent",
]

DEFAULT_STATUS = "GENERATED"

# Fields a PATCH /inferenceResults/{id} accepts (the SDK's TraceUpdate, minus the
# server-owned index and timestamps).
UPDATE_FIELDS: Mapping[str, str] = {
    "session_id": "sessionId",
    "input": "input",
    "actual_output": "actualOutput",
    "retrieval_context": "retrievalContext",
    "latency": "latency",
    "input_tokens": "inputTokens",
    "output_tokens": "outputTokens",
    "cache_read_input_tokens": "cacheReadInputTokens",
    "tokens": "tokens",
    "cost_per_input_token": "costPerInputToken",
    "cost_per_output_token": "costPerOutputToken",
    "cost_per_cache_read_input_token": "costPerCacheReadInputToken",
    "cost": "cost",
    "conversation_simulator_version": "conversationSimulatorVersion",
    "status": "status",
    "error": "error",
}

# A create may also name the session by the caller's own id plus an anchor.
CREATE_FIELDS: Mapping[str, str] = {
    **UPDATE_FIELDS,
    "session_custom_id": "sessionCustomId",
    "version_id": "versionId",
    "product_id": "productId",
}

_SESSION_FIELDS: Mapping[str, str] = {
    "custom_id": "customId",
    "version_id": "versionId",
    "product_id": "productId",
    "test_case_id": "testCaseId",
    "context": "context",
    "metadata": "metadata",
    "is_production": "isProduction",
    "run_id": "runId",
}


def create_body(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The POST /inferenceResults body for a record's fields.

    ``None`` values are dropped. ``status`` is always present, upper case, and
    ``GENERATED`` when absent or None. When ``version_id`` is given,
    ``product_id`` is dropped (the API ignores it then; the SDK never sends both).
    Raises InvalidInputError for a field name the API does not know.
    """
    present = {name: value for name, value in fields.items() if value is not None}
    if "version_id" in present:
        present.pop("product_id", None)
    present["status"] = _status_text(present.get("status", DEFAULT_STATUS))
    return _rename(present, CREATE_FIELDS, "create")


def update_body(changes: Mapping[str, Any]) -> dict[str, Any]:
    """The PATCH /inferenceResults/{id} body: exactly the keys given, renamed.

    An explicit ``None`` is kept and sent as JSON null, which clears the field.
    A non-None ``status`` is sent upper case. Raises InvalidInputError for a
    field name a PATCH does not accept (the session anchors are create-only).
    """
    body = dict(changes)
    if body.get("status") is not None:
        body["status"] = _status_text(body["status"])
    return _rename(body, UPDATE_FIELDS, "update")


def session_body(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The POST /sessions body: ``None`` dropped except ``isProduction``.

    The SDK always sends ``isProduction`` (null when unset: the API then derives
    it), so we do too. ``version_id`` wins over ``product_id`` as on a create.
    """
    present = {name: value for name, value in fields.items() if value is not None}
    if "version_id" in present:
        present.pop("product_id", None)
    body = _rename(present, _SESSION_FIELDS, "session")
    body.setdefault("isProduction", None)
    return body


def _status_text(status: Any) -> str:
    # The library may hand us its own str-Enum; the wire wants the bare value.
    value = status.value if isinstance(status, enum.Enum) else status
    return str(value).upper()


def _rename(fields: Mapping[str, Any], names: Mapping[str, str], kind: str) -> dict[str, Any]:
    unknown = sorted(set(fields) - set(names))
    if unknown:
        raise InvalidInputError(f"unknown {kind} field(s) for the Galtea API: {', '.join(unknown)}")
    return {names[name]: value for name, value in fields.items()}


EXTRA_HEADERS_ENV = "GALTEA_EXTRA_HEADERS"
# Headers and the base URL are checked by galtea_local.config.http, the settings' own
# rules, so a value `config check` accepts the client never refuses (and the other way).


def user_agent() -> str:
    """``galtea-local/<version> python/<x.y.z> httpx/<version>``."""
    try:
        ours = version("galtea-local")
    except PackageNotFoundError:
        ours = "unknown"
    return f"galtea-local/{ours} python/{platform.python_version()} httpx/{httpx.__version__}"


def extra_headers_from_env(env: Mapping[str, str]) -> dict[str, str]:
    """Headers from ``GALTEA_EXTRA_HEADERS``: a JSON object of name -> string.

    Unset or blank: ``{}``. Reserved names (Authorization, User-Agent,
    Content-Type, Content-Length, Host) raise ConfigError, as in
    ``galtea_local.config`` (the official SDK drops them with a warning
    instead). Anything malformed raises ConfigError naming the variable; the
    message never quotes a value (it may hold credentials).
    """
    raw = (env.get(EXTRA_HEADERS_ENV) or "").strip()
    if not raw:
        return {}
    try:
        parsed = json.loads(raw)
    except ValueError:
        parsed = None  # the decode error carries the whole value: never chain it
    if not isinstance(parsed, dict):
        raise ConfigError(
            f"{EXTRA_HEADERS_ENV} must be a JSON object of header names to string values, "
            'such as {"X-Gateway-Key": "<key>"}'
        )
    return checked_headers(parsed, EXTRA_HEADERS_ENV)


def checked_headers(headers: Mapping[Any, Any], source: str) -> dict[str, str]:
    """The headers as a plain dict, or ConfigError naming ``source`` (never a value)."""
    try:
        return http.checked_headers(headers)
    except http.HttpSettingError as exc:
        problem = str(exc)
    raise ConfigError(f"{source}: {problem}")  # outside the handler: no chained context to log




def query_string(pairs: Iterable[tuple[str, Any]]) -> str:
    # Built by hand, like the SDK: list keys keep literal brackets (ids[]=a&ids[]=b).
    parts = []
    for key, value in pairs:
        if value is None:
            continue
        items = [(f"{key}[]", item) for item in value] if isinstance(value, (list, tuple)) else [(key, value)]
        parts.extend(f"{name}={quote_plus(str(item))}" for name, item in items)
    return "&".join(parts)


def as_list(values: Sequence[str] | str | None) -> list[str] | None:
    """A list of query values; a bare string is one value, not its characters."""
    return [values] if isinstance(values, str) else (list(values) if values is not None else None)


def path_segment(remote_id: str) -> str:
    """An id checked to be safe as one URL path segment, or InvalidInputError."""
    if not isinstance(remote_id, str) or not remote_id or "/" in remote_id or remote_id in (".", ".."):
        raise InvalidInputError("a remote id must be a non-empty string without '/'")
    return remote_id


def checked_base_url(base_url: str | None, *, allow_insecure_http: bool = False) -> str:
    """The base URL with its trailing slash stripped, or ConfigError (the settings' own rule).

    ``http://`` is refused unless the host is loopback (127.0.0.0/8, ::1,
    localhost) or ``allow_insecure_http`` is set: the key would cross the
    network in clear.
    """
    problem = None
    try:
        text = http.checked_base_url(base_url or DEFAULT_BASE_URL)
    except http.HttpSettingError as exc:
        problem = str(exc)
    if problem:
        raise ConfigError(f"the Galtea API URL {problem}")
    insecure = http.insecure_problem(text, allow_insecure_http)
    if insecure:
        raise ConfigError(f"refusing the Galtea API URL: {insecure}")
    return text
