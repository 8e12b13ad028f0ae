"""The storage contract: what the services, the outbox and the daemon may rely on, on either backend.

Declared once as :class:`typing.Protocol` types (huey's ``BaseStorage`` habit),
so :func:`galtea_local.store.open_store` returns one type whichever backend the
location names, and the outbox functions are typed against the connection they
really get: an ``sqlite3.Connection`` or the PostgreSQL adapter
(:class:`galtea_local.store.pgadapter.Connection`). ``tests/test_store_contract.py``
runs one test class against both.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class StoreCursor(Protocol):
    """What ``execute`` returns: rows by position and by column name, ``rowcount``, ``lastrowid``."""

    rowcount: int
    lastrowid: int | None

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class StoreConnection(Protocol):
    """A connection inside one of the store's transactions (the part of ``sqlite3.Connection`` used)."""

    def execute(self, sql: str, parameters: Sequence[Any] | dict[str, Any] = ..., /) -> StoreCursor: ...

    def executemany(self, sql: str, seq_of_parameters: Iterable[Any], /) -> StoreCursor: ...


class StorageBackend(Protocol):
    """An open store.

    - ``transaction(fn, *args, **kwargs)`` runs ``fn(conn, ...)`` in one
      transaction and commits; the whole function is re-run when the backend
      reports a transient conflict (or, on SQLite, when a daemon's transaction
      gives way to an app: ``store/turns.py``), so ``fn`` must have no effect
      outside the connection. Raises only :class:`galtea_local.errors.StoreError` subclasses
      (and whatever ``fn`` raises itself); a write that may or may not have
      committed raises :class:`~galtea_local.errors.OutcomeUnknownError`.
    - ``read(fn, *args)`` / ``reading()``: one consistent snapshot, no writes.
    """

    dialect: str  # "sqlite" | "postgresql"
    location: str
    durability: str
    busy_timeout_s: float
    store_id: str

    @property
    def path(self) -> Any: ...  # a file path (SQLite) or the URL with its password masked

    def transaction(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T: ...

    def read(self, fn: Callable[..., T], *args: Any) -> T: ...

    def reading(self) -> AbstractContextManager[Any]: ...

    def close(self) -> None: ...
