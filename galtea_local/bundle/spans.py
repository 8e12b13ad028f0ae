"""Spans across the air gap: exported with their trace, imported once, sent by whoever can.

Export: every queued span, naming its trace by the origin record's seq (a record
exported in this bundle or an earlier one) or, once the origin knows it, by the
trace's remote id. Import: the span joins the imported record (found by origin
store and seq) and is queued here with its own id; importing a bundle twice adds
nothing (the span id is unique). No receipt is needed: the span id is its
idempotency key upstream, so when the origin later learns its trace's remote id
(from the receipt) and sends the same span, the API reports it as already there
and the origin marks it synced.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from galtea_local.errors import BundleError
from galtea_local.outbox import spans as queue
from galtea_local.outbox.enqueue import local_id

FIELDS = ("span_id", "name", "span_type", "description", "input_data", "output_data", "error", "metadata_json",
          "parent_span_id", "start_ns", "end_ns", "start_time", "end_time", "latency_ms", "created_at")

_COLUMN = {"span_type": "type"}


def entries(conn: sqlite3.Connection, start: float | None, end: float | None,
            since: float | None) -> Iterator[dict[str, Any]]:
    """The bundle lines for the queued spans in the export's time selection (by ``created_at``)."""
    conditions = "".join(f" AND s.created_at {op} ?" for op, value in ((">", since), (">=", start), ("<", end))
                         if value is not None)
    params = [value for value in (since, start, end) if value is not None]
    cursor = conn.execute(
        "SELECT s.*, r.remote_id AS upstream_trace FROM spans s LEFT JOIN inference_results r"
        f" ON r.seq = s.record_seq WHERE s.sync_state = 'queued' AND s.deleted = 0{conditions} ORDER BY s.seq",
        params,
    )
    for row in cursor:
        by_origin = row["record_seq"] is not None and row["upstream_trace"] is None
        # The line's "type" says what the line is; the span's own type travels as "span_type".
        yield {"type": "span", **{name: row[_COLUMN.get(name, name)] for name in FIELDS},
               "trace_origin_seq": row["record_seq"] if by_origin else None,
               "trace_ref": None if by_origin else (row["upstream_trace"] or row["trace_ref"])}


_TEXT = ("span_id", "name")
_OPTIONAL_TEXT = ("span_type", "description", "input_data", "output_data", "error", "metadata_json",
                  "parent_span_id", "start_time", "end_time", "trace_ref")
_OPTIONAL_NUMBER = ("start_ns", "end_ns", "latency_ms", "trace_origin_seq")


def check_span(path: Path, entry: dict[str, Any]) -> None:
    """A span line has every field, of the right type, and names its trace; else :class:`BundleError`."""
    missing = [name for name in FIELDS if name not in entry]
    wrong = [name for name in _TEXT if not isinstance(entry.get(name), str) or not entry[name]]
    wrong += [name for name in _OPTIONAL_TEXT if entry.get(name) is not None and not isinstance(entry[name], str)]
    wrong += [name for name in (*_OPTIONAL_NUMBER, "created_at") if entry.get(name) is not None and
              (isinstance(entry[name], bool) or not isinstance(entry[name], (int, float)))]
    if not isinstance(entry.get("created_at"), (int, float)):
        wrong.append("created_at")
    if entry.get("trace_origin_seq") is None and not entry.get("trace_ref"):
        wrong.append("trace_origin_seq/trace_ref")
    if missing or wrong:
        raise BundleError(f"{path}: corrupt span line ({', '.join(missing + wrong)}); write the bundle again")


def import_span(conn: sqlite3.Connection, entry: dict[str, Any], origin: str, prefix: str) -> bool:
    """Queue one exported span (checked by :func:`check_span`) here; False when it is already here,
    or when its record is not (a time-range export can carry a span without its record): then the
    origin sends it itself, once a receipt tells it the trace's remote id."""
    if conn.execute("SELECT 1 FROM spans WHERE span_id = ?", (entry["span_id"],)).fetchone():
        return False
    trace_ref, record_seq = entry.get("trace_ref"), None
    if entry.get("trace_origin_seq") is not None:
        row = conn.execute("SELECT seq FROM inference_results WHERE origin_store_id = ? AND origin_seq = ?",
                           (origin, entry["trace_origin_seq"])).fetchone()
        if row is None:
            return False
        trace_ref, record_seq = local_id(prefix, row[0]), row[0]
    values = (entry["span_id"], trace_ref, *(entry[name] for name in FIELDS[1:]), record_seq)
    return queue.insert_span(conn, values)
