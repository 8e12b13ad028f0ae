"""``galtea.spans``: the official SDK's span calls, answered from the local store.

``create``/``create_batch`` queue spans written by hand; ``traced``/``start_span``
record them from running code (see :mod:`.tracing`); ``get``/``list``/``delete``
read and change the local view. Nothing here opens a network connection.
"""

from __future__ import annotations

import builtins
import json
import secrets
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from galtea_local.errors import InvalidInputError, InvalidTypeError, NotFoundError
from galtea_local.outbox import spans as queue
from galtea_local.outbox.enqueue import parse_local_id
from galtea_local.spans import context, tracing
from galtea_local.spans.attributes import SPAN_TYPES
from galtea_local.spans.record import Span, span_from_row

_SPAN_FIELDS = ("trace_id", "name", "type", "description", "input_data", "output_data", "error", "latency_ms",
                "metadata", "start_time", "end_time", "parent_span_id", "id")
_SELECT = ("SELECT s.*, r.remote_id AS upstream_trace FROM spans s"
           " LEFT JOIN inference_results r ON r.seq = s.record_seq")


def _json_text(name: str, value: Any) -> str | None:
    if value is None:
        return None
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        raise InvalidTypeError(f"{name}: expected a JSON-serialisable value, got {type(value).__name__}") from None


def _check(fields: dict[str, Any]) -> None:
    if not fields.get("trace_id") or not isinstance(fields["trace_id"], str):
        raise InvalidInputError('"trace_id" is required: the id of the trace (turn) this span belongs to')
    if not isinstance(fields.get("name"), str) or not fields["name"].strip():
        raise InvalidInputError("name: a valid, non-empty name must be provided")
    latency = fields.get("latency_ms")
    if latency is not None and (isinstance(latency, bool) or not isinstance(latency, (int, float)) or latency < 0):
        raise InvalidInputError(f"latency_ms: expected a number >= 0, got {latency!r}")
    for name in ("start_time", "end_time"):
        if fields.get(name) is not None:
            _start_epoch(name, fields[name])


def _start_epoch(name: str, value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise InvalidInputError(f"{name}: expected an ISO 8601 time or UNIX seconds, got {value!r}") from None


def _values(fields: dict[str, Any], prefix: str, now: float) -> tuple[Any, ...]:
    _check(fields)
    span_type = fields.get("type")
    span_type = str(getattr(span_type, "value", span_type)).upper() if span_type else None
    return (
        fields.get("id") or f"trace_{secrets.token_hex(8)}", fields["trace_id"], fields["name"],
        span_type if span_type is None or span_type in SPAN_TYPES else "SPAN", fields.get("description"),
        _json_text("input_data", fields.get("input_data")), _json_text("output_data", fields.get("output_data")),
        fields.get("error"), _json_text("metadata", fields.get("metadata")), fields.get("parent_span_id"),
        None, None, fields.get("start_time"), fields.get("end_time"), fields.get("latency_ms"), now,
        parse_local_id(prefix, fields["trace_id"]),
    )  # fmt: skip


def _fields_of(span: Any) -> dict[str, Any]:
    """A SpanBase (the official pydantic model, ours, any object) or a dict, as create() keywords."""
    if isinstance(span, dict):
        fields = dict(span)
        fields.setdefault("trace_id", fields.pop("inference_result_id", None))
        return fields
    return {name: getattr(span, name, None) for name in _SPAN_FIELDS}


class SpanService:
    """Spans of traces, kept in the local store until the daemon sends them."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self._prefix = store.store_id[:8]

    def create(self, trace_id: str | None = None, name: str | None = None, type: str | None = None,
               description: str | None = None, input_data: Any = None, output_data: Any = None,
               error: str | None = None, latency_ms: float | None = None, metadata: Any = None,
               start_time: str | None = None, end_time: str | None = None, *,
               inference_result_id: str | None = None) -> Span:
        """Queue one span; it is durable when this returns. Bad input raises and writes nothing."""
        fields = {
            "trace_id": trace_id if trace_id is not None else inference_result_id, "name": name, "type": type,
            "description": description, "input_data": input_data, "output_data": output_data, "error": error,
            "latency_ms": latency_ms, "metadata": metadata, "start_time": start_time, "end_time": end_time,
        }  # fmt: skip
        return self.create_batch([fields])[0]

    def create_batch(self, spans: builtins.list[Any]) -> builtins.list[Span]:
        """Queue several spans in one transaction (all or none)."""
        if not spans or not isinstance(spans, builtins.list):
            raise InvalidInputError("spans: a non-empty list of spans must be provided")
        now = time.time()
        rows = [_values(_fields_of(span), self._prefix, now) for span in spans]
        self._store.transaction(queue.insert_spans, rows)
        return self._by_ids([row[0] for row in rows])

    def get(self, span_id: str) -> Span:
        found = self._by_ids([span_id])
        if not found:
            raise NotFoundError(f"span {span_id!r}: no such span in this store")
        return found[0]

    def delete(self, span_id: str) -> None:
        """Delete a span: one not yet sent never leaves; one upstream is deleted there by the daemon."""
        row = self._store.read(lambda conn: conn.execute(
            "SELECT seq FROM spans WHERE span_id = ? AND deleted = 0", (span_id,)).fetchone())
        if row is None:
            raise NotFoundError(f"span {span_id!r}: no such span in this store")
        self._store.transaction(queue.delete_span, row[0], time.time())

    def list(self, trace_id: str | Sequence[str] | None = None, session_id: str | Sequence[str] | None = None,
             types: Sequence[str] | None = None, names: Sequence[str] | None = None,
             from_start_time: str | int | None = None, to_start_time: str | int | None = None,
             sort_by_start_time: str | None = None, offset: int | None = None, limit: int | None = None,
             id: str | Sequence[str] | None = None, *,
             inference_result_id: str | Sequence[str] | None = None) -> builtins.list[Span]:
        """Spans of these traces, sessions or ids (local or remote), by start time."""
        ids, traces, sessions = (_listed(v) for v in (id, trace_id or inference_result_id, session_id))
        if not (ids or traces or sessions):
            raise InvalidInputError("list(): at least one of id, session_id or trace_id must be provided")
        found = self._select(ids, traces, sessions)
        wanted_types = {str(getattr(t, "value", t)).upper() for t in types} if types else None
        low = _start_epoch("from_start_time", from_start_time) if from_start_time is not None else float("-inf")
        high = _start_epoch("to_start_time", to_start_time) if to_start_time is not None else float("inf")
        found = [s for s in found if (wanted_types is None or (s.type or "") in wanted_types)
                 and (not names or s.name in names)
                 and low <= (_start_epoch("start_time", s.start_time) if s.start_time else 0.0) <= high]
        found.sort(key=lambda s: s.start_time or "", reverse=(sort_by_start_time or "asc").lower() == "desc")
        start = offset or 0
        return found[start: None if limit is None else start + limit]

    def _by_ids(self, span_ids: builtins.list[str]) -> builtins.list[Span]:
        return self._select(span_ids, [], [])

    def _select(self, ids: builtins.list[str], traces: builtins.list[str],
                sessions: builtins.list[str]) -> builtins.list[Span]:
        local = [seq for seq in (parse_local_id(self._prefix, t) for t in traces) if seq is not None]
        conditions, params = [], []
        for clause, values in (
            ("s.span_id IN ({})", ids), ("(s.record_seq IS NULL AND s.trace_ref IN ({}))", traces),
            ("s.record_seq IN ({})", local),
            ("s.record_seq IN (SELECT seq FROM inference_results WHERE remote_id IN ({}))", traces),
            ("s.record_seq IN (SELECT seq FROM inference_results WHERE session_id IN ({0})"
             " OR remote_session_id IN ({0}))", sessions),
        ):
            if values:
                conditions.append(clause.format(", ".join("?" * len(values))))
                params.extend(values * clause.count("{"))
        query = f"{_SELECT} WHERE s.deleted = 0 AND ({' OR '.join(conditions)}) ORDER BY s.seq"
        rows = self._store.read(lambda conn: conn.execute(query, params).fetchall())
        return [span_from_row(row, row["upstream_trace"]) for row in rows]

    # The tracing helpers, as methods too (the official ``galtea.spans.traced(...)`` etc.).
    def traced(self, name: str | None = None, type: str | None = None, log_args: bool = True,
               log_results: bool = True, attributes: dict[str, Any] | None = None) -> Any:
        return tracing.traced(name=name, type=type, log_args=log_args, log_results=log_results,
                              attributes=attributes)

    def start_span(self, name: str, type: str = "SPAN", input: Any = None, metadata: Any = None,
                   attributes: dict[str, Any] | None = None) -> Any:
        return tracing.start_span(name=name, type=type, input=input, metadata=metadata, attributes=attributes)

    def set_context(self, trace_id: str | None = None, session_id: str | None = None, *,
                    inference_result_id: str | None = None) -> object:
        return context.set_context(trace_id, inference_result_id=inference_result_id)

    def clear_context(self, token: object, flush: bool = True) -> None:
        context.clear_context(token, flush)


def _listed(value: str | Sequence[str] | None) -> builtins.list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else builtins.list(value)
