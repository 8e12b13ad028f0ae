"""The OpenTelemetry span processor that makes a span durable when it ends.

``on_start`` stamps the trace id of the current context (``set_context``) on every
span (so spans of other instrumentations started inside it count too), and
``on_end`` writes the span to the store in one short transaction, mapping its
attributes as the official SDK does (Galtea's first, Langfuse's as the fallback).
Parsing JSON and formatting times wait for the daemon: the hot path stores the
attribute text as it is.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.trace import StatusCode

from galtea_local.outbox.enqueue import parse_local_id
from galtea_local.outbox.spans import insert_span
from galtea_local.spans import attributes as attr
from galtea_local.spans import provider
from galtea_local.spans.context import get_trace_id

log = logging.getLogger("galtea_local.spans")


def _text(value: Any) -> str | None:
    """An attribute as stored text: strings as they are (read as JSON later), others as the SDK reads them."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps({"value": str(value)})


def _first(attributes: Any, keys: tuple[str, ...]) -> str | None:
    for key in keys:
        value = attributes.get(key)
        if value is not None:
            return _text(value)
    return None


def _span_type(attributes: Any) -> str | None:
    value = attributes.get(attr.TYPE) or attributes.get(attr.LANGFUSE_TYPE)
    if not value:
        return None
    value = str(value).upper()
    # Collapsed to SPAN like the SDK: an API that predates a type would refuse the whole batch.
    return value if value in attr.SPAN_TYPES else "SPAN"


def _error(span: ReadableSpan, attributes: Any) -> str | None:
    error = attributes.get(attr.ERROR)
    if span.status is not None and span.status.status_code == StatusCode.ERROR:
        error = error or span.status.description or "Unknown error"
    return error


def plain_attributes(span: ReadableSpan) -> dict[str, Any]:
    """The span's attributes as a plain dict.

    ``span.attributes`` is a read-only proxy over OpenTelemetry's BoundedAttributes, whose
    ``get`` raises and catches a KeyError for every absent key (we probe a dozen), and a copy
    costs as much: the hot path reads the SDK's own dict when it is there (measured, see
    benchmarks/bench_spans.py), and copies otherwise.
    """
    found = getattr(getattr(span, "_attributes", None), "_dict", None)
    return found if isinstance(found, dict) else dict(span.attributes or {})


def span_values(span: ReadableSpan, attributes: dict[str, Any], trace_ref: str, prefix: str,
                now: float) -> tuple[Any, ...]:
    """The row for ``outbox.spans.insert_span``: INSERT_COLUMNS then the local record seq."""
    parent = span.parent.span_id if span.parent is not None and span.parent.span_id else None
    start, end = span.start_time, span.end_time
    return (
        f"trace_{span.context.span_id:016x}", trace_ref, span.name, _span_type(attributes),
        attributes.get(attr.DESCRIPTION), _first(attributes, attr.INPUTS), _first(attributes, attr.OUTPUTS),
        _error(span, attributes), _first(attributes, attr.METADATAS),
        f"trace_{parent:016x}" if parent is not None else None, start, end, None, None,
        (end - start) / 1e6 if start and end else None, now, parse_local_id(prefix, trace_ref),
    )  # fmt: skip


class StoreSpanProcessor(SpanProcessor):
    """Writes each ended span that belongs to a Galtea trace to the current store."""

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        if not span.is_recording() or (span.attributes and span.attributes.get(attr.LOCAL_TRACE_ID)):
            return
        trace_id = get_trace_id()
        if trace_id:
            span.set_attribute(attr.LOCAL_TRACE_ID, trace_id)

    def on_end(self, span: ReadableSpan) -> None:
        attributes = plain_attributes(span)
        trace_ref = attributes.get(attr.LOCAL_TRACE_ID) or attributes.get(attr.TRACE_ID)
        sink = provider.current_sink()
        if not trace_ref or sink is None:
            return  # not a Galtea span, or no Galtea() open to keep it
        store, prefix = sink
        try:
            if not store.transaction(insert_span, span_values(span, attributes, str(trace_ref), prefix, time.time())):
                log.warning("span %r not kept: the store is at its size cap", span.name)
        except Exception:  # a processor must not break the app's code; say so loudly instead
            log.exception("span %r could not be written to the store", span.name)

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True  # every ended span is already in the store
