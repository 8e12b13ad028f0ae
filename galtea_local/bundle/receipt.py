"""Receipts: the connected machine tells the origin which of its records are upstream.

``write_receipt`` (connected machine) lists the imported records and sessions
of one origin that are ``synced`` here, each with its remote ids and the
origin ``updated_at`` of the version that went up. ``import_receipt`` (origin)
settles them through :mod:`galtea_local.outbox.imports`: synced with their
remote ids when the origin row is still that version, else left queued with
its remote id and a PATCH, so the next export carries only the change.
Importing a receipt twice changes nothing the second time.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from galtea_local.bundle import checks, ledger
from galtea_local.bundle.export import Progress, generator_name, iter_rows
from galtea_local.bundle.format import BundleReader, BundleWriter
from galtea_local.bundle.signing import Signing
from galtea_local.config.schema import BundleSettings
from galtea_local.errors import BundleError
from galtea_local.outbox import imports
from galtea_local.outbox import custody, ownership
from galtea_local.read_model import iso_utc
from galtea_local.store import Store

_RECORD_REMOTE = ("remote_id", "remote_index", "remote_session_id", "remote_created_at")
_SYNCED = "WHERE origin_store_id = ? AND sync_state = 'synced' AND remote_id IS NOT NULL ORDER BY origin_seq"


@dataclass
class ReceiptResult:
    sessions: int = 0
    records: int = 0
    still_queued: int = 0  # changed at the origin since the confirmed version: a PATCH is queued
    unchanged: int = 0  # already confirmed by an earlier receipt
    missing: int = 0  # no longer in this store (reclaimed by retention)
    conflicts: int = 0  # this store knows the row under another remote id: left alone
    path: Path | None = None  # the receipt written (its name is generated when --out is a folder)


def write_receipt(store: Store, origin_store_id: str, out: Path | str, *, signing: Signing,
                  progress: Callable[[int], Progress] | None = None) -> ReceiptResult:
    """Write the receipt for ``origin_store_id`` to ``out``, signed; an origin never imported gives an empty one.

    The header lists the exports of that origin this store imported: the
    origin settles only rows one of them carried.
    """
    if signing.key is None and not signing.allow_unsigned:
        raise BundleError(f"{out}: no bundle key to sign it with; set bundle.key_file to the key the two sites "
                          "share, or pass --unsigned")
    header = {"kind": "receipt", "origin_store_id": origin_store_id, "from_store_id": store.store_id,
              "created_at": iso_utc(time.time()), "generator": generator_name()}
    result = ReceiptResult()
    with store.reading() as conn:
        header["exports"] = ledger.imported_exports(conn, origin_store_id)
        _write(conn, BundleWriter(out, header, signing), origin_store_id, result, progress)
    return result


def _write(conn: sqlite3.Connection, out: BundleWriter, origin_store_id: str, result: ReceiptResult,
           progress: Callable[[int], Progress] | None) -> None:
    with out as writer:
        total = conn.execute("SELECT COUNT(*) FROM inference_results " + _SYNCED, (origin_store_id,)).fetchone()[0]
        bar = progress(total) if progress else None
        for row in iter_rows(conn, "SELECT * FROM sessions " + _SYNCED, (origin_store_id,)):
            writer.write({"type": "session", "origin_seq": row["origin_seq"], "remote_id": row["remote_id"],
                          "remote_version_id": row["remote_version_id"], "origin_updated_at": row["origin_updated_at"]})
        for row in iter_rows(conn, "SELECT * FROM inference_results " + _SYNCED, (origin_store_id,)):
            writer.write({"type": "record", "origin_seq": row["origin_seq"], "origin_updated_at":
                          row["origin_updated_at"], **{name: row[name] for name in _RECORD_REMOTE}})
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
    result.sessions, result.records = writer.counts["session"], writer.counts["record"]
    result.path = writer.path


def _require_exported(conn: sqlite3.Connection, reader: BundleReader, entry: dict[str, Any], exports: set[str],
                      seq: int) -> None:
    if not ledger.exported_in(conn, entry["type"], seq) & exports:
        raise BundleError(f"{reader.path}: line {reader.line}: {entry['type']} {seq} was not exported in any bundle "
                          f"that store {reader.header.get('from_store_id')} imported, so this receipt cannot confirm "
                          "it; the receipt is refused and nothing changed")


def _confirm(conn: sqlite3.Connection, reader: BundleReader, entry: dict[str, Any], result: ReceiptResult,
             now: float, exports: set[str]) -> None:
    table, confirm = {"record": ("inference_results", imports.confirm_record),
                      "session": ("sessions", imports.confirm_session)}[entry["type"]]
    row = conn.execute(f"SELECT * FROM {table} WHERE seq = ?", (entry["origin_seq"],)).fetchone()
    if row is None:
        result.missing += 1
        return
    changed = row["updated_at"] > entry["origin_updated_at"]
    if row["remote_id"] is not None and row["remote_id"] != entry["remote_id"]:
        result.conflicts += 1
        return
    if row["remote_id"] is None and ownership.owned_elsewhere(conn, table, entry["remote_id"]):
        result.conflicts += 1  # another local row owns (or owned) that upstream record: never two
        return
    if row["remote_id"] == entry["remote_id"] and (row["sync_state"] == "synced" or changed):
        result.unchanged += 1  # confirmed before: nothing new to learn
        return
    _require_exported(conn, reader, entry, exports, row["seq"])
    state = confirm(conn, row, entry, changed, now)
    ledger.forget(conn, entry["type"], row["seq"])
    if state == "queued":
        result.still_queued += 1
    else:
        setattr(result, entry["type"] + "s", getattr(result, entry["type"] + "s") + 1)


def _apply(conn: sqlite3.Connection, reader: BundleReader, store_id: str) -> ReceiptResult:
    result, now = ReceiptResult(), time.time()
    exports = _exports(reader)
    for entry in reader.checked(checks.check_confirmation):  # checked again: the file may have changed
        if reader.header.get("origin_store_id") != store_id:
            raise BundleError(f"{reader.path}: the file changed while it was imported; import it again")
        if entry["type"] not in ("record", "session"):
            raise BundleError(f"{reader.path}: unknown entry type {entry['type']!r} in a version-1 receipt; "
                              "upgrade galtea-local on this machine")
        _confirm(conn, reader, entry, result, now, exports)
    return result


def _exports(reader: BundleReader) -> set[str]:
    exports = reader.header.get("exports", [])
    if not isinstance(exports, list) or not all(isinstance(e, str) and 0 < len(e) <= 64 for e in exports):
        raise BundleError(f"{reader.path}: corrupt (bad exports list in the header); write the receipt again")
    return set(exports)


def import_receipt(store: Store, path: Path | str, *, signing: Signing,
                   limits: BundleSettings | None = None) -> ReceiptResult:
    """Verify the receipt is sound, signed and addressed to this store, then settle what it confirms
    (one transaction). A line for a row no export the receipt's writer imported carried refuses the file."""
    reader = BundleReader(path, "receipt", limits, signing)
    reader.verify(checks.check_confirmation)
    _exports(reader)
    addressed = reader.header.get("origin_store_id")
    if addressed != store.store_id:
        raise BundleError(f"{reader.path}: this receipt is for store {addressed}, but this store is "
                          f"{store.store_id}; import it on the store whose `galtea-local status --json` shows "
                          f"store_id {addressed}")
    result = store.transaction(_apply, reader, store.store_id)
    custody.recount(store)  # what is still handed over, for status
    return result
