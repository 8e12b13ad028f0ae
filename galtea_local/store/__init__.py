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
from typing import Any

from galtea_local.errors import OutcomeUnknownError
from galtea_local.store import dialects
from galtea_local.store.contract import StorageBackend, StoreConnection
from galtea_local.store.sqlite import Store, sqlite_path_from

__all__ = ["StorageBackend", "Store", "StoreConnection", "named_outcome", "open_store", "sqlite_path_from"]


def open_store(location: str, **settings: Any) -> StorageBackend:
    """The store at ``location``: a :class:`Store` for a path or ``sqlite:///`` URL, a
    :class:`~galtea_local.store.postgres.PostgresStore` for a ``postgresql://`` URL.

    psycopg is imported only here, and only for a PostgreSQL URL.
    """
    pool = {name: settings.pop(name) for name in ("pool_size", "pool_idle_s") if name in settings}
    if dialects.is_postgres_url(location):
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
