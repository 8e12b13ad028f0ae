"""Where ended spans go: the store of the latest ``Galtea()``, through one OpenTelemetry processor.

Nothing here imports OpenTelemetry at module import time (``import galtea_local``
stays fast): :func:`use_store` only remembers the store, and the processor is
installed on the first use of tracing (:func:`ensure_installed`). As in the
official SDK, a tracer provider another library already set (Langfuse, the
official SDK itself) is reused, so their spans land here too, and the most
recently created client receives every span of the process.
"""

from __future__ import annotations

import threading
from typing import Any

_lock = threading.Lock()
_sink: tuple[Any, str] | None = None  # (store, local-id prefix)
_installed = False


def use_store(store: Any) -> None:
    """Send every span that ends from now on to ``store`` (called by ``Galtea()``; no import, no I/O)."""
    global _sink
    _sink = (store, store.store_id[:8])


def forget_store(store: Any) -> None:
    """``store`` is closing: spans that end later have nowhere to go unless another client opens."""
    global _sink
    if _sink is not None and _sink[0] is store:
        _sink = None


def current_sink() -> tuple[Any, str] | None:
    return _sink


def ensure_installed() -> None:
    """Register the store span processor on the global tracer provider, once per process."""
    global _installed
    if _installed:
        return
    with _lock:
        if _installed:
            return
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider

        from galtea_local.spans.processor import StoreSpanProcessor

        provider = trace.get_tracer_provider()
        if not isinstance(provider, TracerProvider):
            # OTel lets a process set its global provider once: take the one another library set.
            provider = TracerProvider(resource=Resource.create({"service.name": "galtea-local"}))
            trace.set_tracer_provider(provider)
            provider = trace.get_tracer_provider()
        provider.add_span_processor(StoreSpanProcessor())  # type: ignore[union-attr]
        _installed = True
