"""Store backends: where records and outbox operations live.

- :mod:`.sqlite`: the embedded default, one file per box (:class:`Store`).
- :mod:`.postgres` with :mod:`.pgadapter`: a PostgreSQL store shared by many
  app hosts and several daemons (needs the ``[postgres]`` extra).
- :mod:`.migrations` and :mod:`.pg_migrations`: named, frozen schema changes.
- :mod:`.dialects`: the few SQL differences between the two.

:func:`open_store` picks the backend from the location.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from galtea_local.config.schema import StoreSettings
from galtea_local.errors import MissingExtraError, StoreOpenError
from galtea_local.store import dialects
from galtea_local.store.sqlite import Store, sqlite_path_from

__all__ = ["Store", "open_configured", "open_store", "sqlite_path_from"]


def open_configured(settings: StoreSettings, *, must_exist: bool = False) -> Store:
    """The store ``settings`` point at, created (0600 in a 0700 folder) when missing.

    ``must_exist`` is for commands that only read (``status``, ``dead list``,
    ``export``): a missing SQLite file is then a :class:`StoreOpenError` naming the
    path and the setting it came from, and nothing is created.
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
    )


def open_store(location: str, **settings: Any) -> Store:
    """The store at ``location``: a :class:`Store` for a path or ``sqlite:///`` URL, a
    :class:`~galtea_local.store.postgres.PostgresStore` for a ``postgresql://`` URL.

    psycopg is imported only here, and only for a PostgreSQL URL.
    """
    if dialects.is_postgres_url(location):
        try:
            import psycopg  # noqa: F401  (only to name the extra when it is missing)
        except ImportError:
            raise MissingExtraError("postgres", "psycopg", "a postgresql:// store") from None
        from galtea_local.store.postgres import PostgresStore

        return PostgresStore(location, **settings)  # type: ignore[return-value]  # the same interface
    return Store(location, **settings)
