"""``inference_results`` / ``traces``: the official SDK's calls, answered from the local store.

Every call is local: it validates, writes the record and its outbox operation
in one transaction, and returns. Nothing here opens a network connection.
"""

from __future__ import annotations

import builtins
import functools
import sqlite3
import time
from pathlib import Path
from collections.abc import Sequence
from typing import Any

from galtea_local import attachments, batch_api, blobs, outbox
from galtea_local.store.dialects import NO_LIMIT
from galtea_local.errors import InvalidInputError, NotFoundError, OutcomeUnknownError
from galtea_local.outbox import batch as batch_queue
from galtea_local.outbox import sessions as sessions_queue
from galtea_local.outbox import versions as versions_queue
from galtea_local.read_model import Trace, build, from_row
from galtea_local.store import StorageBackend, named_outcome
from galtea_local.validation import (
    COST_KEYS,
    USAGE_KEYS,
    check_count,
    check_id,
    check_ids,
    check_order,
    create_fields,
    parse_time,
    update_fields,
)

_UNSET: Any = object()  # "not passed": distinct from None, which clears a field

_CREATE_COLUMNS = (
    "lane", "session_id", "session_custom_id", "version_id", "product_id", "status", "error",
    "input", "actual_output", "retrieval_context", "latency", *USAGE_KEYS, *COST_KEYS,
    "conversation_simulator_version", "created_at", "updated_at", "sync_state", "create_sent", "deleted",
)
_INSERT_RECORD = (
    f"INSERT INTO inference_results ({', '.join(_CREATE_COLUMNS)})"
    f" VALUES ({', '.join('?' * len(_CREATE_COLUMNS))})"
)
# Columns a new row does not set yet, for building its read model without a re-read.
_READ_DEFAULTS = {**dict.fromkeys(_CREATE_COLUMNS), "remote_id": None, "remote_index": None, "remote_session_id": None}


def _route_to_local_session(conn: sqlite3.Connection, row: dict[str, Any], prefix: str) -> None:
    """A turn of a session created offline joins that session's lane, behind its create."""
    if row["session_id"] is not None:
        seq = sessions_queue.parse_session_id(prefix, row["session_id"])
        if seq is None:
            return  # a remote session id
        if conn.execute("SELECT 1 FROM sessions WHERE seq = ?", (seq,)).fetchone() is None:
            raise NotFoundError(f"session_id: {row['session_id']!r} is not a session of this store")
        row["lane"] = sessions_queue.session_lane(seq)
        return
    found = sessions_queue.find_by_custom_id(conn, row["session_custom_id"], row["version_id"], row["product_id"])
    if found is not None:
        row["lane"] = sessions_queue.session_lane(found["seq"])


def _insert(conn: sqlite3.Connection, row: dict[str, Any], prefix: str | None = None) -> int:
    if prefix is not None:
        _route_to_local_session(conn, row, prefix)
    outbox.open_lane(conn, row["lane"])
    seq = conn.execute(_INSERT_RECORD, tuple(map(row.get, _CREATE_COLUMNS))).lastrowid
    outbox.enqueue_create(conn, seq, row["lane"], row["created_at"])
    if row["lane"].startswith("c:v:"):  # by custom id on a version: maybe one made offline
        waits = versions_queue.waiting_for(conn, row["version_id"])
        if waits is not None:
            versions_queue.hold(conn, waits, record_seq=seq)
    return seq


def _insert_with_files(conn: sqlite3.Connection, row: dict[str, Any], prefix: str | None, staged: Any) -> int:
    seq = _insert(conn, row, prefix)
    staged.insert(conn, seq)
    return seq


def _insert_batch(conn: sqlite3.Connection, rows: builtins.list[dict[str, Any]], body: dict[str, Any],
                  prefix: str, now: float) -> builtins.list[int]:
    first = rows[0]
    if first["session_custom_id"] is not None or first["session_id"].startswith("ses_"):
        _route_to_local_session(conn, first, prefix)
    outbox.open_lane(conn, first["lane"])
    seqs = []
    for row in rows:
        row["lane"] = first["lane"]
        seqs.append(conn.execute(_INSERT_RECORD, tuple(map(row.get, _CREATE_COLUMNS))).lastrowid)
    batch_queue.enqueue_batch(conn, seqs, first["lane"], body, now)
    return seqs


def _new_row(fields: dict[str, Any], now: float) -> dict[str, Any]:
    fields["lane"] = outbox.lane_for(
        fields["session_id"], fields["session_custom_id"], fields["version_id"], fields["product_id"]
    )
    fields["created_at"] = fields["updated_at"] = now
    fields["sync_state"], fields["create_sent"], fields["deleted"] = "queued", 0, 0
    return fields


class InferenceResultService:
    """The ``inference_results`` (alias ``traces``) service of :class:`galtea_local.Galtea`."""

    def __init__(self, store: StorageBackend, max_record_bytes: int) -> None:
        self._store = store
        self._max_record_bytes = max_record_bytes
        self._prefix = store.store_id[:8]

    def _result(self, row: Any) -> Trace:
        return from_row(row, outbox.local_id(self._prefix, row["seq"]))

    def create(
        self,
        session_id: str | None = None,
        input: str | dict[str, Any] | None = None,
        output: str | dict[str, Any] | None = None,
        retrieval_context: str | None = None,
        latency: float | None = None,
        usage_info: dict[str, int] | None = None,
        cost_info: dict[str, float] | None = None,
        conversation_simulator_version: str | None = None,
        status: str | None = None,
        session_custom_id: str | None = None,
        version_id: str | None = None,
        product_id: str | None = None,
        output_file_paths: builtins.list[str] | None = None,
        input_file_paths: builtins.list[str] | None = None,
    ) -> Trace:
        """Queue a new turn and return it at once.

        Durable when it returns: the record survives a crash of this process
        (``durability="process"``) or a power loss (``"power"``). Raises
        ``ValueError``/``TypeError`` subclasses naming the field for bad input,
        and ``StoreFullError`` when the store is at its size cap under
        ``when_full = "refuse"``; in either case nothing is written. Files
        (``input_file_paths``/``output_file_paths``) are checked as the SDK checks
        them and copied into the blob folder before this returns (see
        :mod:`galtea_local.attachments`); the daemon uploads them before the create.
        """
        if input_file_paths is not None or output_file_paths is not None:
            return self._create_with_files(locals())
        row = _new_row(create_fields(locals(), self._max_record_bytes), time.time())
        # Only a local session id or a custom id can name a session created offline.
        local = session_custom_id is not None or session_id.startswith("ses_")
        with named_outcome(lambda seq: outbox.local_id(self._prefix, seq)):  # a lost COMMIT answer
            seq = self._store.transaction(_insert, row, self._prefix if local else None)
        return build({**_READ_DEFAULTS, **row}, outbox.local_id(self._prefix, seq), input, output)

    @functools.cached_property
    def _blob_dir(self) -> Path:
        return blobs.blob_dir(self._store)

    def _create_with_files(self, args: dict[str, Any]) -> Trace:
        """``create()`` with files: checked, copied, then written with their rows in one transaction."""
        input, output, staged = attachments.stage(
            self._blob_dir, self._store.durability == "power", args["input"], args["output"],
            args["input_file_paths"], args["output_file_paths"])
        try:
            row = _new_row(create_fields({**args, "input": input, "output": output}, self._max_record_bytes),
                           time.time())
            local = args["session_custom_id"] is not None or row["session_id"].startswith("ses_")
            with named_outcome(lambda seq: outbox.local_id(self._prefix, seq)):
                seq = self._store.transaction(_insert_with_files, row, self._prefix if local else None, staged)
        except OutcomeUnknownError:
            raise  # it may have committed: its copies stay (a sweep removes them if it did not)
        except BaseException:
            staged.discard()
            raise
        return build({**_READ_DEFAULTS, **row}, outbox.local_id(self._prefix, seq), input, output)

    def create_and_evaluate(
        self, session_id: str | None = None, output: str | dict[str, Any] | None = None, metrics: Any = None,
        specification_ids: builtins.list[str] | None = None, input: str | dict[str, Any] | None = None,
        retrieval_context: str | None = None, latency: float | None = None, usage_info: dict[str, int] | None = None,
        cost_info: dict[str, float] | None = None, conversation_simulator_version: str | None = None,
        session_custom_id: str | None = None, version_id: str | None = None, product_id: str | None = None,
        run_id: str | None = None, output_file_paths: builtins.list[str] | None = None,
        input_file_paths: builtins.list[str] | None = None,
    ) -> tuple[Trace, builtins.list[Any]]:
        """Queue a turn and its evaluation: ``(trace, evaluations reporting "queued")``. The
        evaluation goes upstream after the trace (see :mod:`galtea_local.evaluations`)."""
        from galtea_local.evaluations import EvaluationService, check_metrics

        check_metrics(metrics, specification_ids)  # bad metrics write nothing, not even the trace
        trace = self.create(session_id=session_id, input=input, output=output, retrieval_context=retrieval_context,
                            latency=latency, usage_info=usage_info, cost_info=cost_info,
                            conversation_simulator_version=conversation_simulator_version,
                            session_custom_id=session_custom_id, version_id=version_id, product_id=product_id,
                            input_file_paths=input_file_paths, output_file_paths=output_file_paths)
        evaluations = EvaluationService(self._store, self, None).create(
            trace_id=trace.id, metrics=metrics, specification_ids=specification_ids, run_id=run_id)
        return trace, evaluations

    def create_batch(
        self,
        session_id: str | None = None,
        conversation_turns: builtins.list[dict[str, str]] | None = None,
        conversation_simulator_version: str | None = None,
        session_custom_id: str | None = None,
        version_id: str | None = None,
        product_id: str | None = None,
    ) -> builtins.list[Trace]:
        """Queue a conversation as the records the API makes from it, and return them at once.

        All commit in one transaction and go upstream as one ``POST
        /inferenceResults/batch``, exactly once. Turns are paired as the API
        pairs them (an assistant-first list is accepted). An ``update()`` of one
        of these records goes up as a PATCH after the batch.
        """
        now = time.time()
        rows = []
        for turn in batch_api.pair_turns(conversation_turns):
            fields = create_fields(
                dict(session_id=session_id, session_custom_id=session_custom_id, version_id=version_id,
                     product_id=product_id, conversation_simulator_version=conversation_simulator_version, **turn),
                self._max_record_bytes,
            )
            rows.append({**_new_row(fields, now), "create_sent": 1})  # nothing folds into a batch body
        body = batch_api.wire_body(conversation_turns, *(rows[0][k] for k in (
            "session_id", "session_custom_id", "version_id", "product_id", "conversation_simulator_version")))
        with named_outcome(lambda seqs: ", ".join(outbox.local_id(self._prefix, seq) for seq in seqs)):
            seqs = self._store.transaction(_insert_batch, rows, body, self._prefix, now)
        return [self._result({**_READ_DEFAULTS, **row, "seq": seq}) for row, seq in zip(rows, seqs)]

    def update(
        self,
        trace_id: str | None = None,
        input: Any = _UNSET,
        output: Any = _UNSET,
        retrieval_context: Any = _UNSET,
        latency: Any = _UNSET,
        input_tokens: Any = _UNSET,
        output_tokens: Any = _UNSET,
        cache_read_input_tokens: Any = _UNSET,
        tokens: Any = _UNSET,
        cost: Any = _UNSET,
        cost_per_input_token: Any = _UNSET,
        cost_per_output_token: Any = _UNSET,
        cost_per_cache_read_input_token: Any = _UNSET,
        conversation_simulator_version: Any = _UNSET,
        created_at: Any = _UNSET,
        deleted_at: Any = _UNSET,
        index: Any = _UNSET,
        session_id: Any = _UNSET,
        status: Any = _UNSET,
        error: Any = _UNSET,
        output_file_paths: builtins.list[str] | None = None,
        input_file_paths: builtins.list[str] | None = None,
        *,
        inference_result_id: str | None = None,
    ) -> Trace:
        """Change a turn (typically PENDING → GENERATED/FAILED). Not passed: left alone; ``None``: cleared.

        Applied locally at once. Upstream, it folds into the create when the
        create has not been sent yet, else it is queued as a PATCH that goes
        after the create, in order.
        """
        record_id = _one_id(inference_result_id, trace_id)
        attachments.check_no_files(input_file_paths, output_file_paths)
        passed = {k: v for k, v in locals().items() if v is not _UNSET and k not in _NOT_FIELDS}
        if not passed:
            return self.get(record_id)
        changes = update_fields(passed, self._max_record_bytes)
        with named_outcome(lambda _: record_id):
            row = self._store.transaction(_apply_update, self._prefix, record_id, changes, time.time())
        return self._result(row)

    def get(self, trace_id: str | None = None, *, inference_result_id: str | None = None) -> Trace:
        """The turn with this local or remote id; ``NotFoundError`` (a ``KeyError``) if none."""
        record_id = _one_id(inference_result_id, trace_id)
        return self._result(self._store.read(outbox.require_record, self._prefix, record_id))

    def delete(self, trace_id: str | None = None, *, inference_result_id: str | None = None) -> None:
        """Delete a turn locally at once, and upstream once it is there."""
        record_id = _one_id(inference_result_id, trace_id)
        with named_outcome(lambda _: record_id):
            self._store.transaction(_apply_delete, self._prefix, record_id, time.time())

    def list(
        self,
        session_id: str | Sequence[str] | None = None,
        from_created_at: str | int | None = None,
        to_created_at: str | int | None = None,
        sort_by_created_at: str | None = None,
        offset: int | None = None,
        limit: int | None = None,
        id: str | Sequence[str] | None = None,
    ) -> builtins.list[Trace]:
        """Turns of the given sessions and/or ids (local or remote), oldest first by default."""
        ids, sessions = check_ids("id", id), check_ids("session_id", session_id)
        if not ids and not sessions:
            raise InvalidInputError("list(): pass session_id or id (or both)")
        order = check_order(sort_by_created_at)
        offset, limit = check_count("offset", offset), check_count("limit", limit)
        query, params = _list_query(self._prefix, ids, sessions, parse_time("from_created_at", from_created_at),
                                    parse_time("to_created_at", to_created_at), order, offset, limit)
        rows = self._store.read(lambda conn: conn.execute(query, params).fetchall())
        if not rows and sessions:
            # As the SDK: an empty answer for a session nobody knows is the session's not-found.
            self._store.read(_require_sessions_known, self._prefix, sessions)
        return [self._result(row) for row in rows]


_NOT_FIELDS = frozenset({"self", "inference_result_id", "trace_id", "record_id", *attachments.FIELDS})


def _one_id(inference_result_id: str | None, trace_id: str | None) -> str:
    record_id = trace_id if inference_result_id is None else inference_result_id
    if trace_id is not None and inference_result_id is not None and trace_id != inference_result_id:
        raise InvalidInputError("trace_id / inference_result_id: pass one id, not two different ones")
    if record_id is None:
        raise InvalidInputError('"trace_id" is required')  # a ValueError, as the SDK raises
    return check_id("trace_id" if inference_result_id is None else "inference_result_id", record_id)


def _require_sessions_known(conn: sqlite3.Connection, prefix: str, session_ids: builtins.list[str]) -> None:
    """Raise NotFoundError for a session id this store has never seen (local, remote, or on a record)."""
    for any_id in session_ids:
        seq = sessions_queue.parse_session_id(prefix, any_id)
        known = conn.execute(
            "SELECT 1 FROM sessions WHERE (seq = ? OR remote_id = ?) AND deleted = 0"
            " UNION ALL SELECT 1 FROM inference_results WHERE session_id = ? OR remote_session_id = ?"
            " LIMIT 1", (seq, any_id, any_id, any_id)).fetchone()
        if known is None:
            raise NotFoundError(f"Session with id {any_id} not found")


def _apply_update(conn: sqlite3.Connection, prefix: str, record_id: str, changes: dict[str, Any], now: float) -> dict:
    row = outbox.require_record(conn, prefix, record_id)
    assignments = ", ".join(f"{column} = ?" for column in changes)
    folded = outbox.enqueue_update(conn, row, changes, now)
    state = row["sync_state"] if folded or row["sync_state"] == "dead" else "queued"
    conn.execute(
        f"UPDATE inference_results SET {assignments}, updated_at = ?, sync_state = ? WHERE seq = ?",
        (*changes.values(), now, state, row["seq"]),
    )
    return dict(conn.execute("SELECT * FROM inference_results WHERE seq = ?", (row["seq"],)).fetchone())


def _apply_delete(conn: sqlite3.Connection, prefix: str, record_id: str, now: float) -> None:
    row = outbox.require_record(conn, prefix, record_id)
    cancelled = outbox.enqueue_delete(conn, row, now)
    conn.execute(
        "UPDATE inference_results SET deleted = 1, updated_at = ?, sync_state = ? WHERE seq = ?",
        (now, "cancelled" if cancelled else "queued", row["seq"]),
    )


def _list_query(prefix, ids, sessions, since, until, order, offset, limit) -> tuple[str, builtins.list[Any]]:
    where, params = ["deleted = 0"], []
    matches = []
    if ids:
        seqs = [outbox.parse_local_id(prefix, any_id) for any_id in ids]
        marks = ", ".join("?" * len(ids))
        matches.append(f"(seq IN ({marks}) OR remote_id IN ({marks}))")
        params += seqs + ids
    if sessions:
        marks = ", ".join("?" * len(sessions))
        matches.append(f"(session_id IN ({marks}) OR remote_session_id IN ({marks}))")
        params += sessions * 2
    where.append(" AND ".join(matches))
    if since is not None:
        where.append("created_at >= ?")
        params.append(since)
    if until is not None:
        where.append("created_at <= ?")
        params.append(until)
    query = f"SELECT * FROM inference_results WHERE {' AND '.join(where)} ORDER BY seq {order.upper()}"
    query += " LIMIT ? OFFSET ?"
    params += [NO_LIMIT if limit is None else limit, offset or 0]
    return query, params
