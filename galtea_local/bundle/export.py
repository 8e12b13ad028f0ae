"""``galtea-local export``: every record and session not yet confirmed upstream, into one bundle.

What goes in: records whose ``sync_state`` is ``queued`` or ``dead`` (a record
deleted before it ever left is ``cancelled`` and stays out), each with its
current local state (``update()`` calls are already applied to the row, so the
destination's create carries the final state), and every session those
records belong to plus every session not yet confirmed. Exporting marks
nothing: records stay queued until a receipt confirms them, so a lost USB stick
loses nothing.

``since_last`` keeps only rows changed since the previous complete export.
Its watermark is taken a few minutes *before* that export began: a writer
stamps ``updated_at`` before it waits for the write lock, so a row can commit
after an export's snapshot with an older stamp. Rows in the overlap travel
twice, which is harmless: an import adds a row only once per origin row.
"""

from __future__ import annotations

import json
import sqlite3
import time
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Protocol

from galtea_local.bundle import ledger
from galtea_local.bundle import spans as bundle_spans
from galtea_local.bundle.format import BundleWriter
from galtea_local.bundle.signing import Signing
from galtea_local.attachments import has_files
from galtea_local.errors import BundleError
from galtea_local.outbox import custody, health
from galtea_local.outbox.enqueue import format_id
from galtea_local.read_model import iso_utc
from galtea_local.store import Store
from galtea_local.validation import COST_KEYS, USAGE_KEYS

WATERMARK = "bundle_export_watermark"  # meta key: rows changed after this go in the next --since-last
OVERLAP_S = 300.0
RECORD_FIELDS = (
    "session_id", "session_custom_id", "version_id", "product_id", "status", "error", "input", "actual_output",
    "retrieval_context", "latency", *USAGE_KEYS, *COST_KEYS, "conversation_simulator_version", "created_at",
    "updated_at", "deleted", "remote_id", "remote_index", "remote_session_id", "remote_created_at",
)
SESSION_FIELDS = (
    "custom_id", "custom_id_generated", "version_id", "product_id", "test_case_id", "context", "metadata_json",
    "is_production", "status", "stopping_reason", "created_at", "updated_at", "remote_id", "remote_version_id",
)
_FETCH = 500


class Progress(Protocol):
    def update(self, n: int = 1) -> Any: ...
    def close(self) -> Any: ...


@dataclass(frozen=True)
class ExportResult:
    path: Path
    sessions: int
    records: int
    since: float | None  # the watermark used (None: everything not yet confirmed)


@dataclass(frozen=True)
class _Selection:
    since: float | None
    start: float | None
    end: float | None

    def where(self, alias: str) -> tuple[str, dict[str, Any]]:
        """SQL conditions on ``alias`` (records or sessions) for the time filters."""
        parts = []
        if self.since is not None:
            parts.append(f"{alias}.updated_at > :since")
        if self.start is not None:
            parts.append(f"{alias}.created_at >= :start")
        if self.end is not None:
            parts.append(f"{alias}.created_at < :end")
        return "".join(f" AND {part}" for part in parts), {"since": self.since, "start": self.start, "end": self.end}


def _records_sql(selection: _Selection, columns: str) -> tuple[str, dict[str, Any]]:
    """The records to export: one pass over the table, linear in its size (no per-row probe)."""
    extra, params = selection.where("r")
    return (
        f"SELECT {columns} FROM inference_results r"
        " WHERE r.sync_state IN ('queued', 'dead') AND NOT (r.deleted = 1 AND r.remote_id IS NULL)"
        f"{extra}",
        params,
    )


def _sessions_sql(selection: _Selection) -> tuple[str, dict[str, Any]]:
    extra, params = selection.where("s")
    records, _ = _records_sql(selection, "CAST(substr(r.lane, 4) AS INTEGER)")
    return (
        "SELECT s.* FROM sessions s"
        f" WHERE (s.sync_state IN ('queued', 'dead'){extra})"
        f" OR s.seq IN ({records} AND r.lane LIKE 'ls:%') ORDER BY s.seq",
        params,
    )


# Creates whose attempt may have reached the server (at most one per lane: a lane's head).
# Read once rather than probed per exported row: a per-row probe of the open-operations
# index walks the lane's whole backlog, which made an export quadratic in a session's size.
_MAYBE_SENT = (
    "SELECT {column}, sending_since, sent_body FROM outbox"
    " WHERE state IN ('pending', 'sending') AND state = 'sending' AND kind = '{kind}'"
)


def _maybe_sent(conn: sqlite3.Connection, kind: str) -> dict[int, dict[str, Any]]:
    column = "session_seq" if kind == "session_create" else "record_seq"
    rows = conn.execute(_MAYBE_SENT.format(column=column, kind=kind)).fetchall()
    return {row[0]: {"since": row[1], "body": _json(row[2])} for row in rows}


def _entry(kind: str, row: sqlite3.Row, fields: tuple[str, ...], maybe_sent: dict[int, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = {"type": kind, "origin_seq": row["seq"], **{name: row[name] for name in fields}}
    if row["seq"] in maybe_sent:
        # The origin's create may have reached the server: the destination reconciles first.
        entry["maybe_sent"] = maybe_sent[row["seq"]]
    return entry


def _json(text: str | None) -> Any:
    return json.loads(text) if text else {}


def _record_entry(row: sqlite3.Row, maybe_sent: dict[int, Any]) -> dict[str, Any]:
    entry = _entry("record", row, RECORD_FIELDS, maybe_sent)
    # A turn of a session created offline names that session by its origin seq (its lane).
    entry["session_ref"] = int(row["lane"][3:]) if row["lane"].startswith("ls:") else None
    return entry


def iter_rows(conn: sqlite3.Connection, sql: str, params: dict[str, Any]) -> Iterator[sqlite3.Row]:
    cursor = conn.execute(sql, params)
    while batch := cursor.fetchmany(_FETCH):
        yield from batch


def generator_name() -> str:
    try:
        return f"galtea-local {version('galtea-local')}"
    except PackageNotFoundError:
        return "galtea-local"


def _refuse_files(out: Path | str, row: sqlite3.Row, prefix: str) -> None:
    """A bundle does not carry attached files yet: refuse (the partial file is removed, nothing is
    marked) rather than hand over a turn whose files would never reach upstream."""
    if has_files(row["input"]) or has_files(row["actual_output"]):
        raise BundleError(f"{out}: turn {format_id('loc', prefix, row['seq'])} has files that are not uploaded yet, and a bundle"
                          " cannot carry files; sync this store online (the daemon uploads them), or export"
                          " with --from/--to around it")


def export_bundle(store: Store, out: Path | str, *, signing: Signing, since_last: bool = False,
                  start: float | None = None, end: float | None = None,
                  progress: Callable[[int], Progress] | None = None, overlap_s: float = OVERLAP_S) -> ExportResult:
    """Write the bundle to ``out`` (atomically: the file appears complete or not at all), signed
    with ``signing.key`` (an unsigned bundle only when there is no key and ``allow_unsigned``).

    ``start``/``end`` (epoch seconds) select on ``created_at``; an export
    restricted to a time range does not move the ``since_last`` watermark.
    ``progress(total)`` returns a tqdm-like bar (``update``/``close``).
    """
    if signing.key is None and not signing.allow_unsigned:
        raise BundleError(f"{out}: no bundle key to sign it with; make one with `galtea-local keygen` and set "
                          "bundle.key_file, or pass --unsigned")
    began = time.time()
    since = store.read(health.get_float, WATERMARK) if since_last else None
    selection = _Selection(since, start, end)
    export_id = ledger.new_export_id()
    header = {"kind": "records", "origin_store_id": store.store_id, "created_at": iso_utc(began),
              "generator": generator_name(), "since": since, "from": start, "to": end, "export_id": export_id}
    carried = {"session": array("q"), "record": array("q")}  # 8 bytes a row: what the ledger records after
    with store.reading() as conn, BundleWriter(out, header, signing) as writer:
        count_sql, params = _records_sql(selection, "COUNT(*)")
        bar = progress(conn.execute(count_sql, params).fetchone()[0]) if progress else None
        try:
            maybe_sent = _maybe_sent(conn, "session_create")
            for row in iter_rows(conn, *_sessions_sql(selection)):
                writer.write(_entry("session", row, SESSION_FIELDS, maybe_sent))
                carried["session"].append(row["seq"])
            maybe_sent = _maybe_sent(conn, "create")
            sql, params = _records_sql(selection, "r.*")
            for row in iter_rows(conn, sql + " ORDER BY r.seq", params):
                _refuse_files(out, row, store.store_id[:8])
                writer.write(_record_entry(row, maybe_sent))
                carried["record"].append(row["seq"])
                if bar is not None:
                    bar.update(1)
            for entry in bundle_spans.entries(conn, start, end, since):  # after their records
                writer.write(entry)
        finally:
            if bar is not None:
                bar.close()
    for kind, seqs in carried.items():
        ledger.record_exported(store, export_id, kind, seqs)
    custody.hand_over_all(store, carried["record"], carried["session"])  # the bundle's side pushes them now
    if start is None and end is None:
        store.transaction(health.put, WATERMARK, repr(began - overlap_s))
    return ExportResult(writer.path, writer.counts["session"], writer.counts["record"], since)
