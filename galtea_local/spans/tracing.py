"""``@traced`` and ``start_span``: the official SDK's tracing helpers, recording into the store.

They set the same OpenTelemetry attributes as the official SDK 5.12 (names in
:mod:`.attributes`), so the span reaching upstream after a sync is the one the
SDK would have sent online. OpenTelemetry is imported at the first decoration
or ``start_span`` call.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from galtea_local.spans import attributes as attr
from galtea_local.spans.context import get_trace_id

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger("galtea_local.spans")


def _tracer() -> Any:
    from opentelemetry import trace

    from galtea_local.spans import provider

    provider.ensure_installed()
    return trace.get_tracer("galtea")


def _plain(value: Any) -> Any:
    """Pydantic models (v2 and v1) as dicts, recursively through dicts and lists."""
    if hasattr(value, "model_dump"):
        return _plain(value.model_dump())
    if hasattr(value, "__fields__") and hasattr(value, "dict"):
        return _plain(value.dict())
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def to_json(value: Any) -> str:
    """JSON text for an attribute; a value JSON cannot hold is recorded as its ``str``."""
    try:
        return json.dumps(_plain(value))
    except (TypeError, ValueError):
        return json.dumps(str(value))


def _check_type(span_type: str) -> None:
    if span_type.upper() not in attr.SPAN_TYPES:
        warnings.warn(f"Unknown span type '{span_type}'; recorded as SPAN upstream", stacklevel=3)


def span_attributes(type: str | None = None, description: str | None = None, input_data: Any = None,
                    output_data: Any = None, metadata: Any = None) -> dict[str, Any]:
    """The Galtea attributes of a span (the current trace id included); None values left out."""
    found: dict[str, Any] = {}
    trace_id = get_trace_id()
    if trace_id:
        found[attr.LOCAL_TRACE_ID] = trace_id
    if type:
        _check_type(str(type))
        found[attr.TYPE] = str(getattr(type, "value", type))
    if description:
        found[attr.DESCRIPTION] = description
    for key, value in ((attr.INPUT, input_data), (attr.OUTPUT, output_data), (attr.METADATA, metadata)):
        if value is not None:  # 0, "" and {} are values
            found[key] = to_json(value)
    return found


def record_error(span: Any, error: BaseException) -> None:
    from opentelemetry.trace import Status, StatusCode

    span.set_status(Status(StatusCode.ERROR, str(error)))
    span.set_attribute(attr.ERROR, str(error))
    span.record_exception(error)


class GalteaSpan:
    """The official SDK's span handle: ``update()``, ``set_attribute()``, ``record_exception()``."""

    def __init__(self, span: Any) -> None:
        self._span = span

    def update(self, input: Any = None, output: Any = None, metadata: Any = None, type: str | None = None) -> None:
        if not self._span.is_recording():
            log.warning("update called on a span that has ended")
            return
        for key, value in span_attributes(type=type, input_data=input, output_data=output,
                                          metadata=metadata).items():
            self._span.set_attribute(key, value)

    def set_attribute(self, key: str, value: Any) -> None:
        self._span.set_attribute(key, to_json(value))

    def record_exception(self, exception: BaseException) -> None:
        record_error(self._span, exception)

    @property
    def span(self) -> Any:
        return self._span


@contextmanager
def start_span(name: str, type: str | None = None, description: str | None = None, input: Any = None,
               metadata: Any = None, attributes: dict[str, Any] | None = None) -> Iterator[GalteaSpan]:
    """Record one span around a block; the span is in the store when the block ends."""
    tracer = _tracer()
    values = span_attributes(type=type, description=description, input_data=input, metadata=metadata)
    values.update(attributes or {})  # raw OpenTelemetry attributes, as given
    from opentelemetry.trace import SpanKind

    with tracer.start_as_current_span(name=name, kind=SpanKind.INTERNAL, attributes=values) as span:
        try:
            yield GalteaSpan(span)
        except Exception as error:
            record_error(span, error)
            raise


def _arguments(signature: inspect.Signature, args: tuple, kwargs: dict) -> dict[str, Any] | None:
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError:  # the call itself is wrong: record what was passed, as text
        return {"args": [str(a) for a in args], "kwargs": {k: str(v) for k, v in kwargs.items()}} \
            if args or kwargs else None
    bound.apply_defaults()
    found = {key: _plain(value) for key, value in bound.arguments.items() if key not in ("self", "cls")}
    return found or None


def traced(name: Any = None, type: str | None = "SPAN", log_args: bool = True, log_results: bool = True,
           include_docstring: bool = False, attributes: dict[str, Any] | None = None,
           node_type: str | None = None) -> Any:
    """Record one span per call of the decorated function (sync or async); usable bare (``@traced``)."""
    if node_type is not None and type == "SPAN":  # the deprecated parameter's old names
        type = {"LLM": "GENERATION", "CUSTOM": "SPAN"}.get(node_type, node_type)
    if callable(name):
        return traced(None, type, log_args, log_results, include_docstring, attributes)(name)
    if type:
        _check_type(str(type))

    def decorate(func: F) -> F:
        description = inspect.getdoc(func) if include_docstring else None
        return _wrap(func, name or func.__name__, type, log_args, log_results, description, attributes)

    return decorate


def _wrap(func: F, span_name: str, type: str | None, log_args: bool, log_results: bool, description: str | None,
          attributes: dict[str, Any] | None) -> F:
    signature, tracer = inspect.signature(func), _tracer()

    def begin(args: tuple, kwargs: dict) -> Any:
        inputs = _arguments(signature, args, kwargs) if log_args else None
        values = span_attributes(type=type, description=description, input_data=inputs, metadata=attributes)
        return tracer.start_as_current_span(name=span_name, attributes=values)

    def finish(span: Any, result: Any) -> Any:
        if log_results and result is not None:
            span.set_attribute(attr.OUTPUT, to_json(result))
        return result

    if inspect.iscoroutinefunction(func):
        @functools.wraps(func)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            with begin(args, kwargs) as span:
                try:
                    return finish(span, await func(*args, **kwargs))
                except Exception as error:
                    record_error(span, error)
                    raise
        return async_wrapper  # type: ignore[return-value]

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with begin(args, kwargs) as span:
            try:
                return finish(span, func(*args, **kwargs))
            except Exception as error:
                record_error(span, error)
                raise
    return wrapper  # type: ignore[return-value]


def start_trace(*args: Any, **kwargs: Any) -> Any:
    """Deprecated alias of :func:`start_span`, as in the official SDK."""
    warnings.warn("'start_trace' is deprecated; use 'start_span' instead.", DeprecationWarning, stacklevel=2)
    return start_span(*args, **kwargs)


def trace(*args: Any, **kwargs: Any) -> Any:
    """Deprecated alias of :func:`traced` (bare ``@trace`` too), as in the official SDK."""
    warnings.warn("'trace' is deprecated; use 'traced' instead.", DeprecationWarning, stacklevel=2)
    return traced(*args, **kwargs)
