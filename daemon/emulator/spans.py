"""The emulator's spans: ``/traces`` (the API kept the spans' old route name).

What the real API does, as the official SDK 5.12 reads it:

- ``POST /traces/batch`` creates every valid span of ``{"traces": [...]}`` and refuses
  only the ones with a data problem. With ``?includeRejected=true`` the answer is
  ``{"spans": [created...], "partialSuccess": {"rejectedSpans": n, "errors":
  [{"index", "name", "reason"}]}}`` (``partialSuccess`` only when something was
  refused); without it, the bare list of created spans. When every span is refused
  the whole call is a 400.
- A span id is chosen by the client (``trace_<16 hex>``) or generated; a second span
  with an id already stored (live or deleted) is refused with "already exists", so a
  re-sent batch stores nothing twice.
- ``inferenceResultId`` must name a live trace; an unknown span type is kept as SPAN
  with the original label in ``metadata["galtea.span.original_type"]``.
- ``GET /traces`` filters by ``ids[]`` (a missing id is a 404), ``inferenceResultIds[]``,
  ``sessionIds[]``, ``types[]``, ``names[]``, ``fromStartTime``/``toStartTime``, sorted by
  ``sort[]=startTime&sort[]=asc|desc``, paged by ``offset``/``limit``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from galtea_local_daemon.emulator import rules
from galtea_local_daemon.emulator.rules import ApiError, bad_request, not_found

SPAN_TYPES = frozenset(
    ("SPAN", "GENERATION", "EVENT", "AGENT", "TOOL", "CHAIN", "RETRIEVER", "EVALUATOR", "EMBEDDING", "GUARDRAIL")
)
SPAN_FIELDS: dict[str, rules.Check] = {
    "id": rules.TEXT, "inferenceResultId": rules.TEXT, "name": rules.TEXT, "description": rules.TEXT,
    "type": rules.TEXT, "inputData": (lambda v: True, "any"), "outputData": (lambda v: True, "any"),
    "error": rules.TEXT, "latencyMs": rules.NUMBER, "metadata": (lambda v: True, "any"),
    "parentTraceId": rules.TEXT, "startTime": rules.TEXT, "endTime": rules.TEXT,
}  # fmt: skip
_STORED = tuple(SPAN_FIELDS) + ("createdAt", "deletedAt")


class SpanStore:
    """Spans, checked against the inference results of ``results`` (the emulator's main store)."""

    def __init__(self, results: Any) -> None:
        self.results = results
        self.reset()

    def reset(self) -> None:
        self.spans: dict[str, dict[str, Any]] = {}
        self.deleted: dict[str, dict[str, Any]] = {}
        self.refused_duplicates = 0

    def _problem(self, body: Any, taken: set[str]) -> str | None:
        """Why this span is refused, or None."""
        if not isinstance(body, dict):
            return "a span must be an object"
        try:
            rules.check_fields(body, SPAN_FIELDS)
        except ApiError as error:
            return error.message
        if not isinstance(body.get("name"), str) or not body["name"].strip():
            return "name must be a non-empty string"
        if body.get("latencyMs") is not None and body["latencyMs"] < 0:
            return "latencyMs must not be negative"
        trace_id = body.get("inferenceResultId")
        if not isinstance(trace_id, str) or trace_id not in self.results.results:
            return f"inference result {trace_id} not found"
        if body.get("id") is not None and (body["id"] in self.spans or body["id"] in self.deleted
                                           or body["id"] in taken):
            self.refused_duplicates += 1
            return f"a span with id {body['id']} already exists"
        return None

    def _store(self, body: dict[str, Any]) -> dict[str, Any]:
        span = dict.fromkeys(_STORED)
        span.update(body)
        span["id"] = body.get("id") or "trace_" + os.urandom(8).hex()
        if span.get("type") is not None and str(span["type"]).upper() not in SPAN_TYPES:
            metadata = span["metadata"] if isinstance(span.get("metadata"), dict) else {}
            span["metadata"] = {**metadata, "galtea.span.original_type": span["type"]}
            span["type"] = "SPAN"
        elif span.get("type") is not None:
            span["type"] = str(span["type"]).upper()
        span["createdAt"] = self.results._stamp()[1]
        self.spans[span["id"]] = span
        return span

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /traces``: one span, or a 400 naming its problem."""
        problem = self._problem(body, set())
        if problem is not None:
            raise bad_request(problem)
        return self._store(body)

    def create_batch(self, body: dict[str, Any], include_rejected: bool) -> Any:
        """``POST /traces/batch``: the created spans, and (when asked) what was refused and why."""
        spans = body.get("traces")
        if not isinstance(spans, list) or not spans:
            raise bad_request("traces must be a non-empty array")
        created, errors, taken = [], [], set()
        for index, span in enumerate(spans):
            problem = self._problem(span, taken)
            if problem is not None:
                name = span.get("name") if isinstance(span, dict) else None
                errors.append({"index": index, "name": name, "reason": problem})
                continue
            created.append(self._store(span))
            taken.add(created[-1]["id"])
        if not created:
            raise bad_request("every span was refused: " + "; ".join(f"span {e['index']}: {e['reason']}"
                                                                     for e in errors))
        if not include_rejected:
            return created
        answer: dict[str, Any] = {"spans": created}
        if errors:
            answer["partialSuccess"] = {"rejectedSpans": len(errors), "errors": errors}
        return answer

    def get(self, span_id: str) -> dict[str, Any]:
        span = self.spans.get(span_id)
        if span is None:
            raise not_found("Span", span_id)
        return span

    def delete(self, span_id: str) -> None:
        span = self.spans.pop(span_id, None)
        if span is None:
            raise not_found("Span", span_id)
        span["deletedAt"] = self.results._stamp()[1]
        self.deleted[span_id] = span

    def list(self, items: Iterable[tuple[str, str]]) -> list[dict[str, Any]]:
        lists, single = rules.split_query(items)
        missing = sorted(set(lists.get("ids", ())) - self.spans.keys())
        if missing:
            raise ApiError(404, f"Span with id {', '.join(missing)} not found")
        sessions = set(lists.get("sessionIds", ()))
        chosen = [s for s in self.spans.values() if _matches(s, lists)
                  and (not sessions or self._session_of(s) in sessions)]
        low = _time(single.get("fromStartTime"), float("-inf"))
        high = _time(single.get("toStartTime"), float("inf"))
        chosen = [s for s in chosen if low <= _time(s.get("startTime"), 0.0) <= high]
        sort = lists.get("sort", [])
        chosen.sort(key=lambda s: _time(s.get("startTime"), 0.0), reverse=len(sort) == 2 and sort[1] == "desc")
        offset = int(single.get("offset") or 0)
        limit = single.get("limit")
        return chosen[offset: None if limit is None else offset + int(limit)]

    def _session_of(self, span: dict[str, Any]) -> str | None:
        result = self.results.results.get(span["inferenceResultId"])
        return result["sessionId"] if result else None


def _matches(span: dict[str, Any], lists: dict[str, list[str]]) -> bool:
    for param, field in (("ids", "id"), ("inferenceResultIds", "inferenceResultId"), ("types", "type"),
                         ("names", "name")):
        if param in lists and span.get(field) not in lists[param]:
            return False
    return True


def _time(text: str | None, default: float) -> float:
    return rules.parse_timestamp("startTime", text) if text else default
