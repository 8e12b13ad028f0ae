"""Build the daemon's parts from settings: the store, the upstream client, the engine.

The one place that turns a :class:`Settings` value into live objects, so the
CLI commands and the daemon wire them the same way.
"""

from __future__ import annotations

import threading
from contextlib import AbstractContextManager, nullcontext

from galtea_local.config import Settings
from galtea_local.store import Store, WriterRole, open_configured
from galtea_local_daemon.backoff import Backoff
from galtea_local_daemon.engine import EngineSettings, SyncEngine
from galtea_local_daemon.lock import PusherLock
from galtea_local_daemon.upstream import UpstreamClient


def open_store(settings: Settings) -> Store:
    """The store, with the daemon's writes giving way to the apps' (galtea_local/store/turns.py)."""
    return open_configured(settings.store, role=WriterRole.DAEMON)


def make_client(settings: Settings) -> UpstreamClient:
    """The upstream client; raises ConfigError when there is no usable API key."""
    upstream = settings.upstream
    upstream.require_api_key()
    return UpstreamClient(
        upstream.base_url,
        upstream.api_key,  # a Secret: revealed only inside the client, for the auth header
        timeouts=(upstream.connect_timeout_s, upstream.read_timeout_s, upstream.write_timeout_s,
                  upstream.pool_timeout_s),
        ca_bundle=upstream.ca_bundle,
        extra_headers=dict(upstream.extra_headers),
        allow_insecure_http=upstream.allow_insecure_http,
        max_connections=2,  # per pushing thread, which sends one request at a time
    )


def make_engine(settings: Settings, store: Store, client: UpstreamClient,
                stop_event: threading.Event | None = None) -> SyncEngine:
    sync = settings.sync
    backoff = Backoff(
        initial_s=sync.backoff_initial_s,
        max_s=sync.backoff_max_s,
        jitter_s=sync.backoff_jitter_s,
        stop_event=stop_event,
    )
    engine_settings = EngineSettings(
        concurrency=sync.concurrency,
        batch_size=sync.batch_size,
        lease_s=sync.lease_s,
        clock_skew_s=sync.clock_skew_s,
        max_retry_after_s=sync.max_retry_after_s,
        commit_grace_s=sync.commit_grace_s,
        answered_grace_s=sync.answered_grace_s,
    )
    return SyncEngine(store, client, engine_settings, backoff=backoff)


def pusher_guard(store: Store) -> AbstractContextManager[object]:
    """SQLite: one pusher per store, an OS lock beside the file (raises PusherLockedError).

    PostgreSQL: several daemons share the store, on one host or many; the lane lease
    is the per-session claim, so there is nothing to hold for the whole store.
    """
    if store.dialect == "sqlite":
        return PusherLock(store.path)
    return nullcontext()


def release_stale_leases(store: Store, engine: SyncEngine) -> int:
    """Forget leases a dead pusher left, where that is sound: only a sole pusher (SQLite,
    holding the lock) knows every lease is stale. On PostgreSQL the other daemons are
    alive; a dead one's leases simply expire and its lanes are taken over as "maybe sent"."""
    return engine.release_stale_leases() if store.dialect == "sqlite" else 0
