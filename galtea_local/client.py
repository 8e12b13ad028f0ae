"""``Galtea``: the entry point, shaped like the official SDK's client."""

from __future__ import annotations

import functools
import os
import sys
from typing import TYPE_CHECKING, Any

from galtea_local.config import load_settings
from galtea_local.service import InferenceResultService
from galtea_local.sessions import SessionService
from galtea_local.spans import provider
from galtea_local.store import open_configured

if TYPE_CHECKING:
    from galtea_local.evaluations import EvaluationService
    from galtea_local.spans.service import SpanService
    from galtea_local.versions import ProductService, VersionService


class Galtea:
    """A drop-in for ``galtea.Galtea`` whose inference-result calls write to a local store.

    ``api_key`` is accepted so that existing code keeps working, and ignored:
    the key belongs to the sync daemon, never to the app or the queue file.
    ``store`` is a file path or an ``sqlite:///`` URL; when omitted, the
    environment variable ``GALTEA_LOCAL_STORE``, then the config file
    (``config`` or ``GALTEA_LOCAL_CONFIG``), then the per-user data folder.
    Constructing it and calling it never opens a network connection.
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        store: str | os.PathLike[str] | None = None,
        durability: str | None = None,
        config: str | os.PathLike[str] | None = None,
        **_ignored: Any,
    ) -> None:
        overrides = {"store.path": os.fspath(store) if store is not None else None, "store.durability": durability}
        settings = load_settings(config, overrides=overrides).store
        self._store = open_configured(settings)
        self.inference_results = InferenceResultService(self._store, settings.max_record_bytes)
        self.traces = self.inference_results  # the official SDK's new name for the same service
        self.sessions = SessionService(self._store)
        provider.use_store(self._store)  # spans that end from now on land in this store (no OTel import)
        if "opentelemetry.sdk.trace" in sys.modules:
            # Loaded already (by the official SDK, Langfuse...): spans of their helpers land here too.
            provider.ensure_installed()

    @functools.cached_property
    def spans(self) -> SpanService:
        """The official ``galtea.spans`` calls, on this store (loaded on first use)."""
        from galtea_local.spans.service import SpanService

        return SpanService(self._store)

    @functools.cached_property
    def versions(self) -> VersionService:
        """Versions from the cache the daemon refreshes; ``get_or_create`` queues a new one offline."""
        from galtea_local.versions import VersionService

        return VersionService(self._store)

    @functools.cached_property
    def products(self) -> ProductService:
        """Products from the cache the daemon refreshes."""
        from galtea_local.versions import ProductService

        return ProductService(self._store)

    @functools.cached_property
    def evaluations(self) -> EvaluationService:
        """Evaluations queued offline, sent after their trace or session (loaded on first use)."""
        from galtea_local.evaluations import EvaluationService

        return EvaluationService(self._store, self.inference_results, self.sessions)

    @property
    def store_path(self) -> str:
        return str(self._store.path)

    @property
    def store_id(self) -> str:
        return self._store.store_id

    def close(self) -> None:
        """Close this object's connections. Every returned record and ended span is already durable."""
        provider.forget_store(self._store)
        self._store.close()

    def flush(self) -> None:
        """Return at once: there is nothing to flush in this process.

        Every call committed its record to the store before it returned, and
        sending upstream is the daemon's job, so nothing here waits on the network.
        """

    def shutdown(self) -> None:
        """The official SDK's ``shutdown()``: close the store. Waits for nothing on the network.

        Records queued so far stay in the store; the daemon pushes them. Safe to call twice.
        """
        self.close()

    def __enter__(self) -> Galtea:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
