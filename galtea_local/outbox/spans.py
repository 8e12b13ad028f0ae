"""Spans in the outbox: every change of a span's ``sync_state`` happens here.

Life cycle (``spans.sync_state``)::

    queued --settle_synced--> synced --queue_delete--> queued (pushed=1, deleted=1) --> synced
       |  \\--settle_dead----> dead --retry_dead--> queued
       +--cancel (deleted before it left)--> cancelled

A span is written by the app when it ends (:func:`insert_span`, one statement).
The daemon claims due spans with a lease (:func:`claim_due`): a span is due when
its trace is upstream, that is when ``record_seq`` is NULL (the app gave a remote
trace id) or the local record has its ``remote_id`` (its create has settled). So a
span of a dead trace waits with it and goes after ``dead retry``. Re-sending a span
is safe: its id is generated here and upstream refuses a second span with that id.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from galtea_local import retention
from galtea_local.outbox import leased

INSERT_COLUMNS = (
    "span_id", "trace_ref", "name", "type", "description", "input_data", "output_data", "error",
    "metadata_json", "parent_span_id", "start_ns", "end_ns", "start_time", "end_time", "latency_ms", "created_at",
)  # fmt: skip
# record_seq is looked up in the same statement: a local id of this store that names no record
# stays NULL and goes up as given, to be refused there (and dead-lettered) rather than wait forever.
# The size cap rides on the insert as for records.
INSERT_SPAN = (
    f"INSERT INTO spans ({', '.join(INSERT_COLUMNS)}, record_seq, sync_state, pushed, deleted, attempts, not_before)"
    f" SELECT {', '.join('?' * len(INSERT_COLUMNS))}, (SELECT seq FROM inference_results WHERE seq = ?),"
    " 'queued', 0, 0, 0, 0"
    f" WHERE NOT EXISTS (SELECT 1 FROM meta WHERE key = '{retention.STORE_FULL}')"
)


def insert_span(conn: sqlite3.Connection, values: Sequence[Any]) -> bool:
    """Queue one span (``values``: :data:`INSERT_COLUMNS` then the local record seq or None).

    Returns False when the store is at its size cap and refuses new rows.
    """
    return conn.execute(INSERT_SPAN, values).rowcount == 1


def insert_spans(conn: sqlite3.Connection, rows: Iterable[Sequence[Any]]) -> None:
    """Queue several spans at once; :class:`StoreFullError` while the store is full."""
    for values in rows:
        if not insert_span(conn, values):
            retention.refuse_if_full(conn)


def delete_span(conn: sqlite3.Connection, seq: int, now: float) -> None:
    """The app deleted a span: one that never left is cancelled, one upstream gets a DELETE queued."""
    conn.execute(
        "UPDATE spans SET deleted = 1, settled_at = CASE WHEN pushed = 1 THEN NULL ELSE ? END,"
        " sync_state = CASE WHEN pushed = 1 THEN 'queued' ELSE 'cancelled' END,"
        " not_before = 0, attempts = 0, lease_until = NULL WHERE seq = ?",
        (now, seq),
    )


_DUE = (
    "SELECT s.*, COALESCE(s.remote_trace_id, r.remote_id, CASE WHEN s.record_seq IS NULL THEN s.trace_ref END) AS upstream_trace"
    " FROM spans s LEFT JOIN inference_results r ON r.seq = s.record_seq"
    f" WHERE {leased.due_where('s')}"
    " AND (s.record_seq IS NULL OR r.remote_id IS NOT NULL OR s.pushed = 1)"
    " ORDER BY s.seq LIMIT ?"
)


def due(conn: sqlite3.Connection, now: float, limit: int) -> list[dict[str, Any]]:
    """Spans that may go now, oldest first (a read: nothing is claimed)."""
    return leased.due_rows(conn, _DUE, now, limit)


def claim_due(conn: sqlite3.Connection, owner: str, now: float, lease_s: float, limit: int) -> list[dict[str, Any]]:
    """Lease up to ``limit`` due spans to ``owner`` and count the attempt; return them."""
    return leased.claim(conn, "spans", _DUE, owner, now, lease_s, limit)


def _in(seqs: Sequence[int]) -> str:
    return ", ".join("?" * len(seqs))


def settle_synced(conn: sqlite3.Connection, traces: Mapping[int, str], now: float) -> None:
    """These spans (seq -> upstream trace id) are upstream, or their upstream delete is done."""
    for seq, trace_id in traces.items():
        conn.execute(
            "UPDATE spans SET sync_state = 'synced', pushed = 1, remote_trace_id = ?, settled_at = ?,"
            " lease_owner = NULL, lease_until = NULL, last_error = NULL WHERE seq = ? AND sync_state = 'queued'",
            (trace_id, now, seq),
        )


def settle_retry(conn: sqlite3.Connection, seqs: Sequence[int], not_before: float, error: str) -> None:
    """Try these spans again after ``not_before`` (every outcome of a span send may be re-sent)."""
    if seqs:
        conn.execute(
            f"UPDATE spans SET not_before = ?, last_error = ?, lease_owner = NULL, lease_until = NULL"
            f" WHERE seq IN ({_in(seqs)}) AND sync_state = 'queued'",
            (not_before, error[:500], *seqs),
        )


def settle_dead(conn: sqlite3.Connection, reasons: Mapping[int, str], now: float) -> None:
    """Upstream refused these spans for good (seq -> its reason): kept for the operator."""
    for seq, reason in reasons.items():
        conn.execute(
            "UPDATE spans SET sync_state = 'dead', last_error = ?, settled_at = ?, lease_owner = NULL,"
            " lease_until = NULL WHERE seq = ? AND sync_state = 'queued'",
            (reason[:500], now, seq),
        )


def retry_dead(conn: sqlite3.Connection) -> int:
    """Queue every dead span again (``galtea-local dead retry --all``)."""
    return conn.execute(
        "UPDATE spans SET sync_state = 'queued', not_before = 0, attempts = 0, settled_at = NULL"
        " WHERE sync_state = 'dead'"
    ).rowcount


def counts(conn: sqlite3.Connection) -> dict[str, int]:
    """Spans by sync state (for ``status`` and metrics)."""
    return leased.count_states(conn, "spans")
