"""What ``create()``/``get()``/``list()`` return: the official read model plus sync facts."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any


class InferenceResultStatus(str, Enum):
    """The status of a turn. Lookup is case-insensitive: ``InferenceResultStatus("pending")``."""

    PENDING = "PENDING"
    GENERATED = "GENERATED"
    FAILED = "FAILED"
    SKIPPED = "SKIPPED"

    @classmethod
    def _missing_(cls, value: object) -> InferenceResultStatus | None:
        if isinstance(value, str):
            return cls.__members__.get(value.upper())
        return None


class SyncState(str, Enum):
    """Where a record stands with the upstream API."""

    QUEUED = "queued"  # some local change is not yet confirmed upstream
    SYNCED = "synced"  # upstream has exactly the local view
    DEAD = "dead"  # the upstream refused an operation; see `galtea-local dead list`


# Not frozen: a frozen dataclass's __init__ costs a setattr call per field, on the hot path.
@dataclass(slots=True)
class InferenceResult:
    """A turn as the official SDK's read model shows it, plus ``sync_state`` and ``remote_id``.

    ``id`` is the local id, valid forever; ``remote_id`` and ``index`` are None
    until the record is confirmed upstream. ``input`` is the user message as a
    string and ``input_data`` the whole input object, as in the official SDK
    (``actual_output``/``actual_output_data`` likewise). ``input_files`` and
    ``actual_output_files`` list the ``{"uri", "filename", "mime_type"}`` of the
    file parts in the object's ``content``, as the official read model does.
    """

    id: str
    session_id: str | None
    index: int | None
    status: str
    error: str | None
    input: str | None
    input_data: dict[str, Any] | None
    actual_output: str | None
    actual_output_data: dict[str, Any] | None
    input_files: list[dict[str, str | None]]
    actual_output_files: list[dict[str, str | None]]
    retrieval_context: str | None
    latency: float | None
    input_tokens: int | None
    output_tokens: int | None
    cache_read_input_tokens: int | None
    tokens: int | None
    cost_per_input_token: float | None
    cost_per_output_token: float | None
    cost_per_cache_read_input_token: float | None
    cost: float | None
    conversation_simulator_version: str | None
    created_at: str
    session_custom_id: str | None
    sync_state: str
    remote_id: str | None

    def model_dump(self) -> dict[str, Any]:
        """The fields as a dict, like the official pydantic model's ``model_dump()``."""
        return asdict(self)


_last_second: tuple[int, str] = (-1, "")


def iso_utc(epoch: float) -> str:
    """ISO 8601 in UTC with milliseconds, the API's ``createdAt`` format."""
    global _last_second
    # Formatting the seconds is most of create()'s read-model cost, and nearly every
    # call falls in the same second as the last one: reuse it. One tuple swap, thread-safe.
    second, text = _last_second
    if second != int(epoch):
        second = int(epoch)
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _last_second = (second, text)
    return text + ".%03dZ" % (epoch % 1 * 1000)


def _split(value: str | dict[str, Any] | None, key: str) -> tuple[str | None, dict[str, Any] | None]:
    """Return the (primary text, whole object) pair the official read model exposes."""
    if isinstance(value, dict):
        text = value.get(key)
        return (text if isinstance(text, str) else None), value
    return value, None


def _files(data: dict[str, Any] | None) -> list[dict[str, str | None]]:
    """The file parts of an input/output object's ``content`` list; never raises on odd shapes."""
    parts = data.get("content") if data else None
    if not isinstance(parts, list):
        return []
    return [
        {"uri": part["uri"], "filename": part.get("filename"), "mime_type": part.get("mimeType")}
        for part in parts
        if isinstance(part, dict) and str(part.get("type")).lower() == "file" and isinstance(part.get("uri"), str)
    ]


def stored_json(raw: str | None) -> Any:
    """Stored JSON text decoded; text that does not decode comes back as it is."""
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError:  # a poison row (not written by create()): show what is stored rather than fail
        return raw


def from_row(row: Any, local_id: str) -> InferenceResult:
    """Build the read model from an ``inference_results`` row (a mapping by column name)."""
    return build(row, local_id, stored_json(row["input"]), stored_json(row["actual_output"]))


def build(row: Any, local_id: str, input_value: Any, output_value: Any) -> InferenceResult:
    """Build the read model from a row whose ``input``/``actual_output`` are already decoded."""
    text_in, data_in = _split(input_value, "user_message")
    if data_in is None and text_in is not None:
        data_in = {"user_message": text_in}  # the API stores a string input this way
    text_out, data_out = _split(output_value, "assistant_message")
    return InferenceResult(
        id=local_id,
        session_id=row["session_id"] or row["remote_session_id"],
        index=row["remote_index"],
        status=row["status"],
        error=row["error"],
        input=text_in,
        input_data=data_in,
        actual_output=text_out,
        actual_output_data=data_out,
        input_files=_files(data_in),
        actual_output_files=_files(data_out),
        retrieval_context=row["retrieval_context"],
        latency=row["latency"],
        input_tokens=row["input_tokens"],
        output_tokens=row["output_tokens"],
        cache_read_input_tokens=row["cache_read_input_tokens"],
        tokens=row["tokens"],
        cost_per_input_token=row["cost_per_input_token"],
        cost_per_output_token=row["cost_per_output_token"],
        cost_per_cache_read_input_token=row["cost_per_cache_read_input_token"],
        cost=row["cost"],
        conversation_simulator_version=row["conversation_simulator_version"],
        created_at=iso_utc(row["created_at"]),
        session_custom_id=row["session_custom_id"],
        sync_state=row["sync_state"],
        remote_id=row["remote_id"],
    )
