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
import itertools
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from galtea_local import outbox, retention
from galtea_local.bundle import checks, ledger
from galtea_local.bundle import spans as bundle_spans
from galtea_local.bundle.export import RECORD_FIELDS, SESSION_FIELDS, Progress
from galtea_local.bundle.format import BundleReader
from galtea_local.bundle.signing import Signing
from galtea_local.config.schema import BundleSettings, StoreSettings
from galtea_local.errors import BundleError
from galtea_local.validation import show
from galtea_local.outbox import imports
from galtea_local.outbox import sessions as session_queue
from galtea_local.store import Store


DEFAULT_MAX_RECORD_BYTES = StoreSettings().max_record_bytes
CHUNK = 500  # lines verified against the first pass at once (applied in transactions of HOLD_S)
HOLD_S = 0.010  # about the longest one transaction of an import holds the write lock
PAUSE = 1.0  # the pause after a transaction, as a share of how long it held the lock


@dataclass
class ImportResult:
    origin_store_id: str
    records_added: int = 0
    records_updated: int = 0
    records_unchanged: int = 0
    sessions_added: int = 0
    sessions_updated: int = 0
    sessions_unchanged: int = 0
    spans_added: int = 0


def _require(path: Path, entry: dict[str, Any], fields: tuple[str, ...]) -> None:
    missing = [name for name in ("origin_seq", *fields) if name not in entry]
    if missing or not isinstance(entry["origin_seq"], int):
        raise BundleError(f"{path}: corrupt ({entry['type']} line lacks {', '.join(missing) or 'origin_seq'}); "
                          "write the bundle again with `galtea-local export`")


def _insert(conn: sqlite3.Connection, table: str, values: dict[str, Any], returning: bool = False) -> Any:
    """The new row's seq, or with ``returning`` the whole row (one statement rather than two)."""
    columns = ", ".join(values)
    sql = f"INSERT INTO {table} ({columns}) VALUES ({', '.join('?' * len(values))})"
    if returning:
        return conn.execute(sql + " RETURNING *", tuple(values.values())).fetchone()
    return conn.execute(sql, tuple(values.values())).lastrowid


def _session_ops(changes: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """A finished session goes up through the finish call, as ``finish()`` at the origin did;
    any other change is a PATCH (or folds into a create not yet sent)."""
    finish = {k: changes[k] for k in ("status", "stopping_reason") if k in changes}
    if finish.get("status") != "COMPLETED" or not finish.get("stopping_reason"):
        return [("session_update", changes)]
    rest = {k: v for k, v in changes.items() if k not in finish}
    return [*([("session_update", rest)] if rest else []), ("session_finish", finish)]


class _Import:
    """One bundle applied, chunk by chunk; what it learns (session seqs) carries across chunks."""

    def __init__(self, path: Path, origin: str, prefix: str) -> None:
        self.conn: sqlite3.Connection = None  # type: ignore[assignment]  # set for each chunk's transaction
        self.path, self.origin, self.prefix = path, origin, prefix
        self.now = time.time()
        self.result = ImportResult(origin)
        self.session_seqs: dict[int, int] = {}  # origin session seq -> this store's seq
        self.session_patches: list[tuple[int, dict[str, Any]]] = []  # queued after the turns, as at the origin
        self._known: dict[str, dict[int, Any]] = {}  # this chunk's rows already here, by table and origin seq
        self._active: set[str] = set()  # lanes activated in the current transaction
        self._asked: dict[str, set[int]] = {}  # the origin seqs prefetch() looked up, by table

    def prefetch(self, chunk: list[dict[str, Any]]) -> None:
        """The rows of this chunk already here, in one query per table instead of one per line."""
        self._known, self._asked, self._active = {}, {}, set()
        for table, kind in (("sessions", "session"), ("inference_results", "record")):
            seqs = [entry["origin_seq"] for entry in chunk if entry["type"] == kind]
            found = self.conn.execute(
                f"SELECT * FROM {table} WHERE origin_store_id = ? AND origin_seq IN ({', '.join('?' * len(seqs))})",
                (self.origin, *seqs)).fetchall() if seqs else []
            self._known[table] = {row["origin_seq"]: row for row in found}
            self._asked[table] = set(seqs)

    def _existing(self, table: str, origin_seq: int) -> sqlite3.Row | None:
        if origin_seq in self._asked.get(table, ()):  # prefetched: absent from _known means not here
            return self._known[table].get(origin_seq)
        return self.conn.execute(f"SELECT * FROM {table} WHERE origin_store_id = ? AND origin_seq = ?",
                                 (self.origin, origin_seq)).fetchone()

    def _origin_columns(self, entry: dict[str, Any]) -> dict[str, Any]:
        return {"origin_store_id": self.origin, "origin_seq": entry["origin_seq"],
                "origin_updated_at": entry["updated_at"], "updated_at": self.now}

    # -- sessions --------------------------------------------------------------

    def session(self, entry: dict[str, Any]) -> None:
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
        row = _insert(self.conn, "sessions", values, returning=True)
        self._known.setdefault("sessions", {})[entry["origin_seq"]] = row  # a repeated line finds it
        seq = row["seq"]
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

    def record(self, entry: dict[str, Any]) -> None:  # entries were checked by _check_entry() when verified
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
        row = _insert(self.conn, "inference_results", values, returning=True)
        self._known.setdefault("inference_results", {})[entry["origin_seq"]] = row  # a repeated line finds it
        maybe_sent = entry.get("maybe_sent") if entry["remote_id"] is None else None
        imports.enqueue_imported_record(self.conn, row, self.now, maybe_sent,
                                        activate=row["lane"] not in self._active)
        self._active.add(row["lane"])  # one activation per lane and transaction is enough
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


def _apply_chunk(conn: sqlite3.Connection, run: _Import, reader: BundleReader, chunk: list[dict[str, Any]],
                 start: int, last: bool) -> int:
    """Apply ``chunk[start:]`` for at most :data:`HOLD_S` in one transaction; return where it stopped.

    An app's create() on this store then waits for one such transaction at most.
    """
    run.conn = conn
    run.prefetch(chunk[start:])
    if run.result.records_added + run.result.sessions_added == 0:
        retention.refuse_if_full(conn)
    deadline = time.monotonic() + HOLD_S
    at = start
    while at < len(chunk) and (at == start or time.monotonic() < deadline):
        entry = chunk[at]
        if entry["type"] == "session":
            run.session(entry)
        elif entry["type"] == "span":
            run.result.spans_added += bundle_spans.import_span(conn, entry, run.origin, run.prefix)
        else:
            run.record(entry)
        at += 1
    if last and at == len(chunk):
        run.finish_sessions()
        export_id = reader.header.get("export_id")
        if isinstance(export_id, str):  # listed in this store's receipts for the origin
            ledger.record_imported(conn, run.origin, export_id, run.now)
    return at


def _apply_verified(store: Store, run: _Import, reader: BundleReader, chunk: list[dict[str, Any]],
                    last: bool) -> None:
    """A verified chunk, in transactions of about HOLD_S each, with a pause as long between them.

    SQLite has no queue for its write lock: a waiting writer polls, at growing
    intervals. An importer that takes the lock back at once would win nearly every
    time; pausing as long as it held the lock gives a waiting create() its turn.
    """
    at = 0
    while at < len(chunk) or (last and at == 0):
        began = time.monotonic()
        try:
            at = store.transaction(_apply_chunk, run, reader, chunk, at, last)
        except sqlite3.IntegrityError as error:  # verified lines the store still refuses (a hostile repeat)
            raise BundleError(f"{reader.path}: the store refused a line ({error}); this chunk was not imported, "
                              "earlier ones were (importing again adds nothing twice)") from None
        time.sleep(min(time.monotonic() - began, HOLD_S) * PAUSE)
        if at == len(chunk):
            return


def _verify(reader: BundleReader, check: Callable[[dict[str, Any]], None]) -> tuple[list[str], int]:
    """The whole file checked (content, checksum, signature); the digest at each chunk's end, and the
    number of records. The apply pass commits a chunk only once its lines hash to the same digest."""
    marks, records = [], 0
    for count, entry in enumerate(reader.checked(check), start=1):
        records += entry["type"] == "record"
        if count % CHUNK == 0:
            marks.append(reader.digest_so_far())
    return marks, records


def _apply(store: Store, reader: BundleReader, run: _Import, marks: list[str], bar: Progress | None) -> None:
    # Not checked again: each chunk is committed only if it hashes as the lines verified in
    # _verify() did, and the last one only after the trailer's checksum and signature pass.
    entries = reader.entries()  # read between transactions, never inside one
    for index in itertools.count():
        chunk = list(itertools.islice(entries, CHUNK))
        last = len(chunk) < CHUNK  # the reader then checked the trailer and the signature again
        if not last and (index >= len(marks) or reader.digest_so_far() != marks[index]):
            raise BundleError(f"{reader.path}: the file changed while it was imported; import it again (what was "
                              "imported before the change was verified, and is not imported twice)")
        _apply_verified(store, run, reader, chunk, last)
        if bar is not None:
            bar.update(sum(entry["type"] == "record" for entry in chunk))
        if last:
            return


def _check_entry(path: Path, max_record_bytes: int, entry: dict[str, Any]) -> None:
    """A line's fields are all there and pass the rules create() applies (see :mod:`.checks`)."""
    if entry["type"] == "record":
        _require(path, entry, RECORD_FIELDS)
        checks.check_record(entry, max_record_bytes)
    elif entry["type"] == "session":
        _require(path, entry, SESSION_FIELDS)
        checks.check_session(entry)
    elif entry["type"] == "span":
        bundle_spans.check_span(path, entry)
    else:
        raise BundleError(f"{path}: unknown entry type {show(entry['type'])} in a version-1 bundle; "
                          "upgrade galtea-local on this machine")


def import_bundle(store: Store, path: Path | str, *, signing: Signing,
                  max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES, limits: BundleSettings | None = None,
                  progress: Callable[[int], Progress] | None = None) -> ImportResult:
    """Verify the whole bundle, then add its rows in short transactions; :class:`BundleError` if refused.

    Nothing is written before the whole file is verified. The rows then go in
    chunks of :data:`CHUNK` lines, each in its own transaction, so writers on
    this store wait for one chunk at most; a chunk commits only if its lines
    hash as they did when verified (a file changed meanwhile stops the import;
    what went in before was verified, and importing again adds nothing twice).

    The file must be signed with ``signing.key`` (an unsigned one passes only
    with ``signing.allow_unsigned``): a forged bundle imports nothing.

    Every line must pass the rules ``create()`` applies, ``max_record_bytes``
    included; a file past ``limits`` (size, line length, line count,
    expansion) is refused while it is read, in constant memory. A refused file
    imports nothing, and the message names the line.

    Idempotent: importing the same bundle again, or one that overlaps it, adds
    nothing already here. Imported records are ordinary queued records that
    this store's daemon pushes.
    """
    reader = BundleReader(path, "records", limits, signing)
    check = functools.partial(_check_entry, reader.path, max_record_bytes)
    marks, records = _verify(reader, check)
    origin = reader.header.get("origin_store_id")
    if not isinstance(origin, str) or not origin:
        raise BundleError(f"{reader.path}: corrupt (no origin store id in the header); write it again")
    export_id = reader.header.get("export_id")
    if export_id is not None and not (isinstance(export_id, str) and 0 < len(export_id) <= 64):
        raise BundleError(f"{reader.path}: corrupt (bad export_id in the header); write it again")
    if origin == store.store_id:
        raise BundleError(f"{reader.path}: exported from this very store ({origin}); import it on the connected "
                          "machine, and bring its receipt back here with `galtea-local import-receipt`")
    run = _Import(reader.path, origin, store.store_id[:8])
    bar = progress(records) if progress else None
    try:
        _apply(store, reader, run, marks, bar)
    finally:
        if bar is not None:
            bar.close()
    return run.result
