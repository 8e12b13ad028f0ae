"""Helpers shared by the store tests: read a store file directly, as another tool would.

These open their own ``sqlite3`` connection so that what they see is what is on
disk (committed), not what the library's connection happens to cache.
"""

from __future__ import annotations

import sqlite3
import textwrap
from contextlib import closing
from pathlib import Path
from typing import Any

HELPERS = Path(__file__).parent
WRITER = HELPERS / "writer.py"

# The head of a probe script run in a fresh interpreter: every way to open a socket raises
# and is recorded in ``calls`` (the probe prints it), before galtea_local is imported.
NETWORK_TRAP = textwrap.dedent(
    """
    import socket, sys

    calls = []

    def trap(name):
        def refuse(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"galtea_local used the network: {name}")
        return refuse

    socket.socket.__init__ = trap("socket.socket")
    socket.socket.connect = trap("socket.connect")
    socket.create_connection = trap("socket.create_connection")
    socket.getaddrinfo = trap("socket.getaddrinfo")
    """
)


def query(path: str | Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` on the store file, as plain tuples."""
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute(sql, params).fetchall()


def execute(path: str | Path, sql: str, params: tuple[Any, ...] = ()) -> None:
    """Run one write on the store file and commit (to simulate what the sync engine would do)."""
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute(sql, params)


def snapshot(path: str | Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, in rowid order: equal snapshots mean nothing was written."""
    with closing(sqlite3.connect(path)) as conn:
        tables = [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {t: conn.execute(f'SELECT * FROM "{t}" ORDER BY rowid').fetchall() for t in sorted(tables)}


def integrity(path: str | Path) -> str:
    return query(path, "PRAGMA integrity_check")[0][0]
