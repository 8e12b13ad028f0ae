"""A thin adapter that lets the store's SQL code run on a psycopg 3 connection.

The outbox, the services and the bundle code are written against the part of
the ``sqlite3`` API they use: ``conn.execute(sql, params)`` and
``conn.executemany``, returning a cursor with ``fetchone``/``fetchall``,
iteration, ``rowcount`` and ``lastrowid``; rows indexable by position and by
column name, and ``dict(row)``. This module gives them exactly that on
PostgreSQL, so the SQL is written once:

- placeholders: ``?`` and ``:name`` become ``%s`` and ``%(name)s`` (and a
  literal ``%`` becomes ``%%``), skipping string literals and ``::`` casts. The
  translation is done once per distinct statement text (:func:`translate`,
  cached): the hot path pays a dict lookup.
- ``lastrowid``: PostgreSQL has none; an ``INSERT`` into a table keyed by an
  identity ``seq`` gets ``RETURNING seq`` appended, and the cursor reports it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from functools import lru_cache
from typing import Any

from galtea_local.store.dialects import POSTGRESQL

# String literals and quoted names keep their ``?`` and ``:`` (only ``%`` is doubled); of the
# rest, ``?``, ``:name`` (not the second colon of a ``::`` cast) and ``%`` are rewritten.
_TOKEN = re.compile(r"'(?:[^']|'')*'|\"[^\"]*\"|\?|(?<!:):([A-Za-z_]\w*)|%")
# Tables whose primary key is an identity ``seq``: their INSERTs report it as lastrowid.
_INSERT_WITH_SEQ = re.compile(r"^\s*INSERT\s+INTO\s+(inference_results|sessions|outbox)\b(?!.*\bRETURNING\b)",
                              re.IGNORECASE | re.DOTALL)


@lru_cache(maxsize=2048)
def translate(sql: str) -> tuple[str, bool]:
    """``(psycopg SQL, whether it reports a lastrowid)`` for an ``sqlite3``-style statement."""

    def rewrite(match: re.Match[str]) -> str:
        token = match.group(0)
        if token == "?":
            return "%s"
        if token == "%":
            return "%%"
        if match.group(1):
            return f"%({match.group(1)})s"
        return token.replace("%", "%%")  # a literal or a quoted name: psycopg reads its % signs too

    returning = bool(_INSERT_WITH_SEQ.match(sql))
    translated = _TOKEN.sub(rewrite, sql)
    return (translated + " RETURNING seq" if returning else translated), returning


class _RowBase(tuple):
    """A result row, like ``sqlite3.Row``: ``row[0]``, ``row["name"]``, ``dict(row)``, ``row.keys()``."""

    __slots__ = ()
    _index: dict[str, int] = {}
    _names: tuple[str, ...] = ()

    def __getitem__(self, key: Any) -> Any:  # type: ignore[override]
        if isinstance(key, str):
            return tuple.__getitem__(self, self._index[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._names)


@lru_cache(maxsize=1024)
def _row_class(names: tuple[str, ...]) -> type[_RowBase]:
    # One class per distinct column list, so a row is a plain tuple plus a shared name map.
    return type("Row", (_RowBase,), {"__slots__": (), "_index": {n: i for i, n in enumerate(names)},
                                     "_names": names})


def row_factory(cursor: Any) -> Any:
    """psycopg row factory producing :class:`_RowBase` rows."""
    description = cursor.description
    if description is None:
        return tuple
    return _row_class(tuple(column.name for column in description))


class Cursor:
    """What ``conn.execute`` returns: the ``sqlite3.Cursor`` surface the store code uses."""

    __slots__ = ("_cursor", "_rows", "lastrowid", "rowcount")

    def __init__(self, cursor: Any, lastrowid: int | None = None, rows: bool = True) -> None:
        self._cursor = cursor
        # sqlite3 answers None/[] for a statement without rows (or whose RETURNING we added); psycopg would raise.
        self._rows = rows and cursor.description is not None
        self.lastrowid = lastrowid
        self.rowcount = cursor.rowcount

    def fetchone(self) -> Any:
        return self._cursor.fetchone() if self._rows else None

    def fetchall(self) -> list[Any]:
        return self._cursor.fetchall() if self._rows else []

    def __iter__(self) -> Iterator[Any]:
        return iter(self.fetchall())


class Connection:
    """An open psycopg connection inside one transaction, seen through the ``sqlite3`` API."""

    dialect = POSTGRESQL

    __slots__ = ("raw",)

    def __init__(self, raw: Any) -> None:
        self.raw = raw

    def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> Cursor:
        query, returning = translate(sql)
        cursor = self.raw.cursor()
        # Always pass parameters (maybe none), so psycopg always reads ``%%`` as a literal ``%``.
        cursor.execute(query, params if params is not None else ())
        if returning:
            return Cursor(cursor, cursor.fetchone()[0], rows=False)
        return Cursor(cursor)

    def executemany(self, sql: str, seq_of_params: Any) -> Cursor:
        query, _ = translate(sql)
        cursor = self.raw.cursor()
        cursor.executemany(query, list(seq_of_params))
        return Cursor(cursor, rows=False)
