"""Spans offline: the official SDK's tracing (``traced``, ``start_span``, ``set_context``) and
``galtea.spans``, recorded into the local store when each span ends.

The names below load their module on first use: ``Galtea()`` imports only
:mod:`.provider`, and OpenTelemetry is imported by the first use of tracing.
"""

from __future__ import annotations

import importlib

_HOMES = {
    "clear_context": "context", "get_trace_id": "context", "set_context": "context",
    "get_inference_result_id": "context", "Span": "record", "SpanService": "service", "GalteaSpan": "tracing",
    "start_span": "tracing", "traced": "tracing", "start_trace": "tracing", "trace": "tracing",
}  # fmt: skip
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> object:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'galtea_local.spans' has no attribute {name!r}")
    return getattr(importlib.import_module(f"galtea_local.spans.{home}"), name)
