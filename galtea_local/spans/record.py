"""A stored span as the app reads it (:class:`Span`) and as the API receives it (:func:`wire_body`).

Both read the row the same way the official SDK reads an OpenTelemetry span:
JSON attribute text is parsed, text that is not JSON becomes ``{"value": text}``,
times are ISO 8601 in UTC from the span's nanoseconds. Pure functions: no I/O.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

WIRE_NAMES = {
    "name": "name", "description": "description", "type": "type", "input_data": "inputData",
    "output_data": "outputData", "error": "error", "latency_ms": "latencyMs", "metadata": "metadata",
    "parent_span_id": "parentTraceId", "start_time": "startTime", "end_time": "endTime",
}  # fmt: skip


def parse_attribute(text: str | None) -> Any:
    """Stored attribute text as the API gets it: JSON if it parses, else ``{"value": text}``."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return {"value": text}


def iso_from_ns(ns: int | None) -> str | None:
    if ns is None:
        return None
    return datetime.fromtimestamp(ns / 1e9, tz=timezone.utc).isoformat()


def _iso_from_epoch(seconds: float) -> str:
    moment = datetime.fromtimestamp(seconds, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def fields_of(row: Any) -> dict[str, Any]:
    """The span's SpanBase fields (snake_case) from its row, None where absent."""
    return {
        "id": row["span_id"],
        "name": row["name"],
        "description": row["description"],
        "type": row["type"],
        "input_data": parse_attribute(row["input_data"]),
        "output_data": parse_attribute(row["output_data"]),
        "error": row["error"],
        "latency_ms": row["latency_ms"],
        "metadata": parse_attribute(row["metadata_json"]),
        "parent_span_id": row["parent_span_id"],
        "start_time": row["start_time"] or iso_from_ns(row["start_ns"]),
        "end_time": row["end_time"] or iso_from_ns(row["end_ns"]),
    }


def wire_body(row: Any, remote_trace_id: str) -> dict[str, Any]:
    """One element of ``POST /traces/batch``'s ``traces`` list: camelCase, None fields dropped."""
    body: dict[str, Any] = {"inferenceResultId": remote_trace_id}
    for name, value in fields_of(row).items():
        if value is not None:
            body[WIRE_NAMES.get(name, name)] = value
    return body


@dataclass(slots=True)
class Span:
    """A span as the official read model shows it, plus ``sync_state``.

    ``trace_id`` is the id the span was recorded under (a local ``loc_…`` id stays
    so; ``remote_trace_id`` is the upstream one once known). ``id`` is the span's
    upstream id, generated here, so it is the same before and after the sync.
    """

    id: str
    trace_id: str
    name: str
    description: str | None
    type: str | None
    input_data: Any
    output_data: Any
    error: str | None
    latency_ms: float | None
    metadata: Any
    parent_span_id: str | None
    start_time: str | None
    end_time: str | None
    created_at: str
    deleted_at: str | None
    sync_state: str
    remote_trace_id: str | None

    @property
    def inference_result_id(self) -> str:  # the official model's deprecated alias
        return self.trace_id

    @property
    def parent_trace_id(self) -> str | None:
        return self.parent_span_id


def span_from_row(row: Any, remote_trace_id: str | None = None) -> Span:
    return Span(
        **fields_of(row),
        trace_id=row["trace_ref"],
        created_at=_iso_from_epoch(row["created_at"]),
        deleted_at=None,
        sync_state=row["sync_state"],
        remote_trace_id=row["remote_trace_id"] or remote_trace_id,
    )
