"""``galtea-local import``: add a bundle's records and sessions to this store's queue.

The whole file is verified first (format, version, checksum, manifest), then
applied in one transaction that checks the trailer again after the last line:
a refused or changed file imports nothing.

Each row is keyed by (origin store id, origin seq). A row already imported is
left alone unless the bundle holds a newer version of it (a later
``updated_at`` at the origin): then the difference is applied as ``update()``
would apply it (folded into a create not yet sent, else queued as a PATCH).
So importing a bundle twice, or two overlapping bundles, queues nothing twice.
"""

from __future__ import annotations

import functools
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from galtea_local import outbox, retention
from galtea_local.bundle import checks
from galtea_local.bundle.export import RECORD_FIELDS, SESSION_FIELDS
from galtea_local.bundle.format import BundleReader
from galtea_local.config.schema import BundleSettings, StoreSettings
from galtea_local.errors import BundleError
from galtea_local.outbox import imports
from galtea_local.outbox import sessions as session_queue
from galtea_local.store import Store


DEFAULT_MAX_RECORD_BYTES = StoreSettings().max_record_bytes


@dataclass
class ImportResult:
    origin_store_id: str
    records_added: int = 0
    records_updated: int = 0
    records_unchanged: int = 0
    sessions_added: int = 0
    sessions_updated: int = 0
    sessions_unchanged: int = 0


def _require(path: Path, entry: dict[str, Any], fields: tuple[str, ...]) -> None:
    missing = [name for name in ("origin_seq", *fields) if name not in entry]
    if missing or not isinstance(entry["origin_seq"], int):
        raise BundleError(f"{path}: corrupt ({entry['type']} line lacks {', '.join(missing) or 'origin_seq'}); "
                          "write the bundle again with `galtea-local export`")


def _insert(conn: sqlite3.Connection, table: str, values: dict[str, Any]) -> int:
    columns = ", ".join(values)
    return conn.execute(f"INSERT INTO {table} ({columns}) VALUES ({', '.join('?' * len(values))})",
                        tuple(values.values())).lastrowid


def _session_ops(changes: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """A finished session goes up through the finish call, as ``finish()`` at the origin did;
    any other change is a PATCH (or folds into a create not yet sent)."""
    finish = {k: changes[k] for k in ("status", "stopping_reason") if k in changes}
    if finish.get("status") != "COMPLETED" or not finish.get("stopping_reason"):
        return [("session_update", changes)]
    rest = {k: v for k, v in changes.items() if k not in finish}
    return [*([("session_update", rest)] if rest else []), ("session_finish", finish)]


class _Import:
    """One bundle applied inside one transaction."""

    def __init__(self, conn: sqlite3.Connection, path: Path, origin: str, prefix: str) -> None:
        self.conn, self.path, self.origin, self.prefix = conn, path, origin, prefix
        self.now = time.time()
        self.result = ImportResult(origin)
        self.session_seqs: dict[int, int] = {}  # origin session seq -> this store's seq
        self.session_patches: list[tuple[int, dict[str, Any]]] = []  # queued after the turns, as at the origin

    def _existing(self, table: str, origin_seq: int) -> sqlite3.Row | None:
        return self.conn.execute(f"SELECT * FROM {table} WHERE origin_store_id = ? AND origin_seq = ?",
                                 (self.origin, origin_seq)).fetchone()

    def _origin_columns(self, entry: dict[str, Any]) -> dict[str, Any]:
        return {"origin_store_id": self.origin, "origin_seq": entry["origin_seq"],
                "origin_updated_at": entry["updated_at"], "updated_at": self.now}

    # -- sessions --------------------------------------------------------------

    def session(self, entry: dict[str, Any]) -> None:
        _require(self.path, entry, SESSION_FIELDS)
        existing = self._existing("sessions", entry["origin_seq"])
        if existing is None:
            self.session_seqs[entry["origin_seq"]] = self._add_session(entry)
            self.result.sessions_added += 1
            return
        self.session_seqs[entry["origin_seq"]] = existing["seq"]
        if entry["updated_at"] <= existing["origin_updated_at"]:
            self.result.sessions_unchanged += 1
            return
        changes = {c: entry[c] for c in imports.SESSION_PATCH_COLUMNS if entry[c] != existing[c]}
        assignments = "".join(f"{column} = ?, " for column in changes)
        self.conn.execute(f"UPDATE sessions SET {assignments}origin_updated_at = ?, updated_at = ? WHERE seq = ?",
                          (*changes.values(), entry["updated_at"], self.now, existing["seq"]))
        if changes:
            self.session_patches.append((existing["seq"], changes))
        self.result.sessions_updated += 1

    def _add_session(self, entry: dict[str, Any]) -> int:
        values = {name: entry[name] for name in SESSION_FIELDS}
        remote_id = entry["remote_id"]
        # An upstream session only needs its mutable fields re-applied; a new one carries
        # context and metadata in its create, but status only ever goes up as a PATCH.
        patch = imports.session_patch(entry) if remote_id else \
            {k: v for k, v in imports.session_patch(entry).items() if k in ("status", "stopping_reason")}
        patch = {k: v for k, v in patch.items() if v is not None}
        values.update(self._origin_columns(entry), sync_state="queued" if patch or not remote_id else "synced",
                      create_sent=int(remote_id is not None))
        seq = _insert(self.conn, "sessions", values)
        imports.enqueue_imported_session(self.conn, seq, remote_id, self.now, entry.get("maybe_sent"))
        if patch:
            self.session_patches.append((seq, patch))
        return seq

    def finish_sessions(self) -> None:
        """Session PATCHes go behind the turns imported with them, as they did at the origin."""
        for seq, changes in self.session_patches:
            for kind, part in _session_ops(changes):
                row = self.conn.execute("SELECT * FROM sessions WHERE seq = ?", (seq,)).fetchone()
                folded = session_queue.enqueue_session_change(self.conn, row, kind, part, self.now)
                if not folded and row["sync_state"] != "dead":
                    self.conn.execute("UPDATE sessions SET sync_state = 'queued' WHERE seq = ?", (seq,))

    # -- records ---------------------------------------------------------------

    def _route(self, entry: dict[str, Any], values: dict[str, Any]) -> None:
        """Set the record's lane (and session id) in this store."""
        ref = entry.get("session_ref")
        if ref is not None:
            seq = self.session_seqs.get(ref)
            if seq is None:
                found = self._existing("sessions", ref)
                if found is None:
                    raise BundleError(f"{self.path}: corrupt (record {entry['origin_seq']} belongs to session "
                                      f"{ref}, which the bundle lacks); write it again with `galtea-local export`")
                seq = found["seq"]
            values["lane"] = session_queue.session_lane(seq)
            if values["session_id"] is not None:
                values["session_id"] = session_queue.local_session_id(self.prefix, seq)
            return
        values["lane"] = outbox.lane_for(values["session_id"], values["session_custom_id"], values["version_id"],
                                         values["product_id"])
        if values["session_id"] is None:  # joins a session of this store created offline, as create() would
            local = session_queue.find_by_custom_id(self.conn, values["session_custom_id"], values["version_id"],
                                                    values["product_id"])
            if local is not None:
                values["lane"] = session_queue.session_lane(local["seq"])

    def record(self, entry: dict[str, Any]) -> None:
        _require(self.path, entry, RECORD_FIELDS)
        existing = self._existing("inference_results", entry["origin_seq"])
        if existing is None:
            self._add_record(entry)
        elif entry["updated_at"] > existing["origin_updated_at"]:
            self._update_record(existing, entry)
            self.result.records_updated += 1
        else:
            self.result.records_unchanged += 1

    def _add_record(self, entry: dict[str, Any]) -> None:
        if entry["deleted"] and entry["remote_id"] is None:
            self.result.records_unchanged += 1  # nothing of it is upstream, nothing to send
            return
        values = {name: entry[name] for name in RECORD_FIELDS}
        self._route(entry, values)
        values.update(self._origin_columns(entry), sync_state="queued", create_sent=int(entry["remote_id"] is not None))
        seq = _insert(self.conn, "inference_results", values)
        row = self.conn.execute("SELECT * FROM inference_results WHERE seq = ?", (seq,)).fetchone()
        maybe_sent = entry.get("maybe_sent") if entry["remote_id"] is None else None
        imports.enqueue_imported_record(self.conn, row, self.now, maybe_sent)
        self.result.records_added += 1

    def _update_record(self, existing: sqlite3.Row, entry: dict[str, Any]) -> None:
        if entry["deleted"] and not existing["deleted"]:
            cancelled = outbox.enqueue_delete(self.conn, existing, self.now)
            changes: dict[str, Any] = {"deleted": 1}
            state = "cancelled" if cancelled else "queued"
        else:
            changes = {c: entry[c] for c in imports.PATCH_COLUMNS if entry[c] != existing[c]}
            folded = bool(changes) and outbox.enqueue_update(self.conn, existing, changes, self.now)
            state = existing["sync_state"] if folded or not changes or existing["sync_state"] == "dead" else "queued"
        assignments = "".join(f"{column} = ?, " for column in changes)
        self.conn.execute(
            f"UPDATE inference_results SET {assignments}origin_updated_at = ?, updated_at = ?, sync_state = ?"
            " WHERE seq = ?",
            (*changes.values(), entry["updated_at"], self.now, state, existing["seq"]),
        )


def _apply(conn: sqlite3.Connection, reader: BundleReader, prefix: str, origin: str,
           check: Callable[[dict[str, Any]], None]) -> ImportResult:
    retention.refuse_if_full(conn)
    run = _Import(conn, reader.path, origin, prefix)
    for entry in reader.checked(check):  # checked again: the file may have changed since verify()
        if reader.header.get("origin_store_id") != origin:  # read again with the first line
            raise BundleError(f"{reader.path}: the file changed while it was imported; import it again")
        if entry["type"] == "session":
            run.session(entry)
        elif entry["type"] == "record":
            run.record(entry)
        else:
            raise BundleError(f"{reader.path}: unknown entry type {entry['type']!r} in a version-1 bundle; "
                              "upgrade galtea-local on this machine")
    run.finish_sessions()
    return run.result


def _check_entry(path: Path, max_record_bytes: int, entry: dict[str, Any]) -> None:
    """A line's fields are all there and pass the rules create() applies (see :mod:`.checks`)."""
    if entry["type"] == "record":
        _require(path, entry, RECORD_FIELDS)
        checks.check_record(entry, max_record_bytes)
    elif entry["type"] == "session":
        _require(path, entry, SESSION_FIELDS)
        checks.check_session(entry)


def import_bundle(store: Store, path: Path | str, *, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
                  limits: BundleSettings | None = None) -> ImportResult:
    """Verify the bundle, then add its rows in one transaction; raises :class:`BundleError` if refused.

    Every line must pass the rules ``create()`` applies, ``max_record_bytes``
    included; a file past ``limits`` (size, line length, line count,
    expansion) is refused while it is read, in constant memory. A refused file
    imports nothing, and the message names the line.

    Idempotent: importing the same bundle again, or one that overlaps it, adds
    nothing already here. Imported records are ordinary queued records that
    this store's daemon pushes.
    """
    reader = BundleReader(path, "records", limits)
    check = functools.partial(_check_entry, reader.path, max_record_bytes)
    reader.verify(check)
    origin = reader.header.get("origin_store_id")
    if not isinstance(origin, str) or not origin:
        raise BundleError(f"{reader.path}: corrupt (no origin store id in the header); write it again")
    if origin == store.store_id:
        raise BundleError(f"{reader.path}: exported from this very store ({origin}); import it on the connected "
                          "machine, and bring its receipt back here with `galtea-local import-receipt`")
    return store.transaction(_apply, reader, store.store_id[:8], origin, check)
