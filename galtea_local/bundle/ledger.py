"""Which export carried which row, and which exports a store imported.

The origin writes each export's id in its header and remembers the rows it
carried; the connected machine remembers the export ids it imported and lists
them in its (signed) receipts. The origin then settles a receipt's line only
for a row that one of those exports carried: a receipt confirms nothing that
was not exported to the store that signed it.
"""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Iterable

from galtea_local.store import Store

_CHUNK = 5000  # rows per write transaction: an app's create() never waits long for the lock


def new_export_id() -> str:
    return secrets.token_hex(8)


def record_exported(store: Store, export_id: str, kind: str, seqs: Iterable[int]) -> None:
    """Remember that ``export_id`` carried these rows; in short transactions."""
    batch: list[tuple[str, int, str]] = []
    for seq in seqs:
        batch.append((kind, seq, export_id))
        if len(batch) == _CHUNK:
            store.transaction(_insert, batch)
            batch = []
    if batch:
        store.transaction(_insert, batch)


def _insert(conn: sqlite3.Connection, batch: list[tuple[str, int, str]]) -> None:
    conn.executemany("INSERT INTO bundle_exported (kind, seq, export_id) VALUES (?, ?, ?)"
                     " ON CONFLICT DO NOTHING", batch)


def record_imported(conn: sqlite3.Connection, origin: str, export_id: str, now: float) -> None:
    conn.execute("INSERT INTO bundle_imports (origin_store_id, export_id, imported_at) VALUES (?, ?, ?)"
                 " ON CONFLICT DO NOTHING", (origin, export_id, now))


def imported_exports(conn: sqlite3.Connection, origin: str) -> list[str]:
    """The export ids of ``origin`` this store imported, oldest first."""
    rows = conn.execute("SELECT export_id FROM bundle_imports WHERE origin_store_id = ? ORDER BY imported_at",
                        (origin,))
    return [row[0] for row in rows]


def exported_in(conn: sqlite3.Connection, kind: str, seq: int) -> set[str]:
    """The exports that carried this row (and are not yet forgotten)."""
    rows = conn.execute("SELECT export_id FROM bundle_exported WHERE kind = ? AND seq = ?", (kind, seq))
    return {row[0] for row in rows}


def forget(conn: sqlite3.Connection, kind: str, seq: int) -> None:
    """A receipt confirmed the row: no later receipt needs to know where it went."""
    conn.execute("DELETE FROM bundle_exported WHERE kind = ? AND seq = ?", (kind, seq))
