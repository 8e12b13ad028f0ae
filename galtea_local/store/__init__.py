"""Store backends: where records and outbox operations live.

- :mod:`.sqlite`: the embedded default, one file per box (:class:`Store`).
- :mod:`.postgres` with :mod:`.pgadapter`: a PostgreSQL store shared by many
  app hosts and several daemons (needs the ``[postgres]`` extra).
- :mod:`.migrations` and :mod:`.pg_migrations`: named, frozen schema changes.
- :mod:`.dialects`: the few SQL differences between the two.
- :mod:`.contract`: the storage contract both honour, as ``Protocol`` types.

:func:`open_store` picks the backend from the location.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from galtea_local.config.schema import StoreSettings
from galtea_local.errors import MissingExtraError, OutcomeUnknownError, StoreOpenError
from galtea_local.store import dialects
from galtea_local.store.contract import StorageBackend, StoreConnection
from galtea_local.store.sqlite import Store, sqlite_path_from
from galtea_local.store.turns import WriterRole

__all__ = ["StorageBackend", "Store", "StoreConnection", "WriterRole", "named_outcome", "open_configured",
           "open_store", "sqlite_path_from"]


def open_configured(settings: StoreSettings, *, must_exist: bool = False,
                    role: WriterRole = WriterRole.APP) -> StorageBackend:
    """The store ``settings`` point at, created (0600 in a 0700 folder) when missing.

    ``must_exist`` is for commands that only read (``status``, ``dead list``,
    ``export``): a missing SQLite file is then a :class:`StoreOpenError` naming the
    path and the setting it came from, and nothing is created. ``role`` says whose
    writes these are: the daemon's give way to the apps' (:mod:`.turns`).
    """
    location = settings.location()
    if must_exist and not dialects.is_postgres_url(location):
        path = Path(sqlite_path_from(location)).expanduser()
        if not path.is_file():
            raise StoreOpenError(
                f"store {path} does not exist (from {settings.location_source()}); check the path, "
                "or let an app's create() or `galtea-local daemon` create it first"
            )
    return open_store(
        location,
        durability=settings.durability,
        busy_timeout_s=settings.busy_timeout_s,
        file_mode=settings.file_mode,
        dir_mode=settings.dir_mode,
        pool_size=settings.pool_size,
        pool_idle_s=settings.pool_idle_s,
        role=role,
    )


def open_store(location: str, **settings: Any) -> StorageBackend:
    """The store at ``location``: a :class:`Store` for a path or ``sqlite:///`` URL, a
    :class:`~galtea_local.store.postgres.PostgresStore` for a ``postgresql://`` URL.

    psycopg is imported only here, and only for a PostgreSQL URL.
    """
    pool = {name: settings.pop(name) for name in ("pool_size", "pool_idle_s") if name in settings}
    if dialects.is_postgres_url(location):
        settings.pop("role", None)  # row locks, not one write lock: nobody waits on the daemon's turn
        try:
            import psycopg  # noqa: F401  (only to name the extra when it is missing)
        except ImportError:
            raise MissingExtraError("postgres", "psycopg", "a postgresql:// store") from None
        from galtea_local.store.postgres import PostgresStore

        return PostgresStore(location, **settings, **pool)
    return Store(location, **settings)  # one connection per thread: no pool to size


@contextmanager
def named_outcome(name: Callable[[Any], str]) -> Iterator[None]:
    """An :class:`OutcomeUnknownError` raised inside names the record: ``name(result)`` turns what
    the transaction function returned (a seq, a row) into the id the caller knows it by."""
    try:
        yield
    except OutcomeUnknownError as exc:
        if exc.record_id is not None:
            raise
        raise exc.naming(name(exc.result)) from exc
