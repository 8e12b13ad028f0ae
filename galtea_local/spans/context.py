"""Which trace the spans of this context belong to: ``set_context`` / ``clear_context``.

Backed by OpenTelemetry's context (a context variable), as in the official SDK:
the value follows asyncio tasks started under it, not new threads. OpenTelemetry
is imported on the first call, not when ``galtea_local`` is imported.
"""

from __future__ import annotations

import warnings
from typing import Any

from galtea_local.errors import InvalidInputError

_key: Any = None


def _context_key() -> Any:
    global _key
    if _key is None:
        from opentelemetry.context import create_key

        _key = create_key("galtea_local_trace_id")
    return _key


def set_context(trace_id: str | None = None, *, inference_result_id: str | None = None) -> object:
    """Make spans started from now on in this context belong to ``trace_id``; return the token
    for :func:`clear_context`. ``trace_id`` may be a local id (``loc_…``) returned by
    ``traces.create()``: the daemon sends the spans once that trace is upstream."""
    if trace_id is not None and inference_result_id is not None and trace_id != inference_result_id:
        raise InvalidInputError("set_context: give trace_id or its old name inference_result_id, not both")
    trace_id = trace_id if trace_id is not None else inference_result_id
    if not trace_id or not isinstance(trace_id, str):
        raise InvalidInputError("trace_id: give the id of a trace (as returned by traces.create())")
    from opentelemetry import context

    from galtea_local.spans import provider

    provider.ensure_installed()
    return context.attach(context.set_value(_context_key(), trace_id))


def clear_context(token: object, flush: bool = True) -> None:
    """Detach a context set by :func:`set_context`. ``flush`` is accepted for the official
    signature and has nothing to do: every ended span is already in the store."""
    from opentelemetry import context

    context.detach(token)  # type: ignore[arg-type]


def get_trace_id() -> str | None:
    """The trace id of the current context, or None."""
    if _key is None:
        return None  # set_context never ran in this process
    from opentelemetry import context

    return context.get_value(_key)  # type: ignore[return-value]


def get_inference_result_id() -> str | None:
    """Deprecated alias of :func:`get_trace_id`, as in the official SDK."""
    warnings.warn("'get_inference_result_id' is deprecated; use 'get_trace_id' instead.", DeprecationWarning,
                  stacklevel=2)
    return get_trace_id()
