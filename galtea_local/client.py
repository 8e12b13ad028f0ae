"""``Galtea``: the entry point, shaped like the official SDK's client."""

from __future__ import annotations

import os
from typing import Any

from galtea_local.config import load_settings
from galtea_local.service import InferenceResultService
from galtea_local.sessions import SessionService
from galtea_local.store import open_configured


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

    @property
    def store_path(self) -> str:
        return str(self._store.path)

    @property
    def store_id(self) -> str:
        return self._store.store_id

    def close(self) -> None:
        """Close this object's connections. Every returned record is already durable."""
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
