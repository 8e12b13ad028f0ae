"""``galtea.evaluations``: evaluations asked for offline, sent after what they evaluate.

``create(trace_id=... | session_id=...)`` queues the request and returns one local
evaluation per metric, reporting ``status="QUEUED"`` / ``sync_state="queued"``. The
daemon sends it (``POST /evaluations/fromInferenceResult`` or ``/fromSession``) once the
trace or session is upstream, and keeps the API's answer: ``get``/``list`` then return
the upstream evaluations as the API created them (their later scoring is read online).
Nothing here opens a network connection.
"""

from __future__ import annotations

import builtins
import json
import time
from dataclasses import dataclass
from typing import Any

from galtea_local.errors import InvalidInputError, InvalidTypeError, NotFoundError
from galtea_local.outbox import evaluations as queue
from galtea_local.outbox.enqueue import format_id, parse_id, parse_local_id, require_record
from galtea_local.outbox.sessions import parse_session_id

_FIELDS = {"id": "id", "metricId": "metric_id", "sessionId": "session_id", "inferenceResultId": "trace_id",
           "score": "score", "reason": "reason", "status": "status", "createdAt": "created_at",
           "evaluatedAt": "evaluated_at", "runId": "run_id"}  # fmt: skip


_SELECT = ("SELECT e.seq FROM evaluations e LEFT JOIN inference_results r ON r.seq = e.record_seq"
           " LEFT JOIN sessions s ON s.seq = e.session_seq WHERE e.sync_state != 'cancelled'")
_BY_TRACE = "(e.trace_ref IN ({0}) OR r.remote_id IN ({0}))"
_BY_SESSION = ("(e.session_ref IN ({0}) OR s.remote_id IN ({0}) OR r.session_id IN ({0})"
               " OR r.remote_session_id IN ({0}))")


@dataclass(slots=True)
class Evaluation:
    """An evaluation as the official read model shows it, plus ``sync_state`` and ``local_id``.

    Before the sync: ``id`` is the local id, ``status`` is ``"QUEUED"`` and ``metric`` says
    which metric was asked for. After it: the upstream evaluation's fields, ``id`` its id.
    """

    id: str
    local_id: str
    metric_id: str | None
    metric: dict[str, Any]
    session_id: str | None
    trace_id: str | None
    score: float | None
    reason: str | None
    status: str
    created_at: str | None
    evaluated_at: str | None
    run_id: str | None
    sync_state: str


def wire_metrics(metrics: Any, trace: dict[str, Any] | None) -> builtins.list[dict[str, Any]]:
    """The official metric forms (a name, ``{"id"|"name", "score"?}``, a custom scoring object)
    as the API's ``[{"id"|"name", "score"?}]``. A custom metric is scored here, on the local
    trace's input and output (no test case is read offline)."""
    found = []
    for position, metric in enumerate(metrics or []):
        where = f"metrics[{position}]"
        if isinstance(metric, str) and metric:
            found.append({"name": metric})
        elif isinstance(metric, dict) and (metric.get("id") or metric.get("name") or callable(metric.get("score"))):
            entry = {key: metric[key] for key in ("id", "name") if metric.get(key)}
            score = metric.get("score")
            if callable(score):
                entry.update(_custom(score, trace, where))
            elif score is not None:
                if isinstance(score, bool) or not isinstance(score, (int, float)) or not 0 <= score <= 1:
                    raise InvalidInputError(f"{where}.score: expected a number from 0 to 1, got {score!r}")
                entry["score"] = score
            found.append(entry)
        elif callable(metric) and (getattr(metric, "name", None) or getattr(metric, "id", None)):
            found.append(_custom(metric, trace, where))
        else:
            raise InvalidInputError(f"{where}: give a metric name, {{'name' or 'id', 'score'?}}, or a custom metric")
    return found


def check_metrics(metrics: Any, specification_ids: Any = None) -> None:
    """Refuse bad or missing metrics before anything is written (custom scoring runs later)."""
    if not metrics and not specification_ids:
        raise InvalidInputError("metrics: give at least one metric (or specification_ids)")
    wire_metrics([m for m in metrics or [] if not callable(m) and not callable(getattr(m, "get", None) and
                                                                                 m.get("score"))], None)


def _custom(metric: Any, trace: dict[str, Any] | None, where: str) -> dict[str, Any]:
    if trace is None:
        raise InvalidInputError(f"{where}: a custom scoring metric needs a trace of this store to score offline")
    score = metric(input=trace.get("input"), actual_output=trace.get("actual_output"), expected_output=None,
                   retrieval_context=trace.get("retrieval_context"), context=None, traces=None)
    key = "name" if getattr(metric, "name", None) else "id"
    return {key: getattr(metric, key), "score": score}


class EvaluationService:
    """Evaluations of traces and sessions, queued in the local store."""

    def __init__(self, store: Any, traces: Any, sessions: Any) -> None:
        self._store = store
        self._prefix = store.store_id[:8]
        self._traces, self._sessions = traces, sessions

    def create(self, session_id: str | None = None, trace_id: str | None = None, metrics: Any = None,
               specification_ids: builtins.list[str] | None = None, run_id: str | None = None, *,
               inference_result_id: str | None = None) -> builtins.list[Evaluation]:
        """Queue evaluations of one trace or one session; durable when this returns."""
        trace_id = trace_id if trace_id is not None else inference_result_id
        if (session_id is None) == (trace_id is None):
            raise InvalidInputError("create(): give either session_id or trace_id, not both or neither")
        if specification_ids is not None and not (isinstance(specification_ids, builtins.list)
                                                  and all(isinstance(s, str) for s in specification_ids)):
            raise InvalidTypeError("specification_ids: expected a list of str")
        trace = self._local_trace(trace_id) if trace_id is not None else None
        wire = wire_metrics(metrics, trace)
        if not wire and not specification_ids:
            raise InvalidInputError("metrics: give at least one metric (or specification_ids)")
        values = (trace_id, session_id, json.dumps(wire), json.dumps(specification_ids) if specification_ids
                  else None, run_id, time.time(),
                  parse_local_id(self._prefix, trace_id) if trace_id else None,
                  parse_session_id(self._prefix, session_id) if session_id else None)  # fmt: skip
        seq = self._store.transaction(queue.insert_evaluation, values)
        return self._read(seq)

    def create_single_turn(self, version_id: str | None = None, actual_output: str | None = None,
                           metrics: Any = None, test_case_id: str | None = None, input: str | None = None,
                           is_production: bool | None = None, retrieval_context: str | None = None,
                           latency: float | None = None, usage_info: dict[str, float] | None = None,
                           cost_info: dict[str, float] | None = None,
                           conversation_simulator_version: str | None = None, product_id: str | None = None,
                           run_id: str | None = None) -> builtins.list[Evaluation]:
        """The deprecated one-call form, offline: a local session and trace, then their evaluation."""
        check_metrics(metrics)
        session = self._sessions.create(version_id=version_id, product_id=product_id,
                                        test_case_id=test_case_id, is_production=is_production)
        trace = self._traces.create(
            session_id=session.id, input=input, output=actual_output, retrieval_context=retrieval_context,
            latency=latency, usage_info=usage_info, cost_info=cost_info,
            conversation_simulator_version=conversation_simulator_version)
        return self.create(trace_id=trace.id, metrics=metrics, run_id=run_id)

    def get(self, evaluation_id: str) -> Evaluation:
        """By local id (``eva_…_<n>``) or upstream id."""
        seq, position = self._locate(evaluation_id)
        for evaluation in self._read(seq):
            if evaluation.id == evaluation_id or evaluation.local_id == evaluation_id:
                return evaluation
        raise NotFoundError(f"evaluation {evaluation_id!r}: no such evaluation in this store")

    def list(self, id: str | builtins.list[str] | None = None, session_id: str | builtins.list[str] | None = None,
             *, trace_id: str | None = None, **filters: Any) -> builtins.list[Evaluation]:
        """Evaluations asked for in this store: with these ids, of these sessions, or of a trace
        (local or remote ids). The official list's other filters need the API: they raise here."""
        unsupported = sorted(name for name, value in filters.items() if value not in (None, False))
        if unsupported:
            raise InvalidInputError(f"list(): {', '.join(unsupported)} cannot be filtered offline; "
                                    "filter by id, session_id or trace_id, or list online with the official SDK")
        if id is not None:
            return [self.get(one) for one in ([id] if isinstance(id, str) else id)]
        sessions = [session_id] if isinstance(session_id, str) else builtins.list(session_id or [])
        if not sessions and trace_id is None:
            raise InvalidInputError("list(): give session_id, trace_id or id")
        traces = [trace_id] if trace_id is not None else []
        conditions, params = [], []
        for clause, values in ((_BY_TRACE, traces), (_BY_SESSION, sessions)):
            if values:
                conditions.append(clause.format(", ".join("?" * len(values))))
                params.extend(values * clause.count("{"))
        query = f"{_SELECT} AND ({' OR '.join(conditions)}) ORDER BY e.seq"
        seqs = self._store.read(lambda conn: [row[0] for row in conn.execute(query, params)])
        return [evaluation for seq in seqs for evaluation in self._read(seq)]

    def delete(self, evaluation_id: str) -> None:
        """Cancel an evaluation request that has not left; one upstream is deleted online."""
        seq, _ = self._locate(evaluation_id)
        if not self._store.transaction(queue.cancel, seq, time.time()):
            raise InvalidInputError(f"evaluation {evaluation_id!r} may be upstream already: delete it online")

    # -- reading ------------------------------------------------------------

    def _local_trace(self, trace_id: str) -> dict[str, Any] | None:
        if parse_local_id(self._prefix, trace_id) is None:
            return None
        row = self._store.read(require_record, self._prefix, trace_id)
        return {"input": _json(row["input"]), "actual_output": _json(row["actual_output"]),
                "retrieval_context": row["retrieval_context"]}

    def _locate(self, evaluation_id: str) -> tuple[int, int | None]:
        head, _, position = evaluation_id.rpartition("_")
        seq = parse_id("eva", self._prefix, head) if position.isdigit() else None
        if seq is not None:
            return seq, int(position)
        row = self._store.read(lambda conn: conn.execute(
            "SELECT evaluation_seq, position FROM evaluation_ids WHERE remote_id = ?", (evaluation_id,)).fetchone())
        if row is None:
            raise NotFoundError(f"evaluation {evaluation_id!r}: no such evaluation in this store")
        return row[0], row[1]

    def _read(self, seq: int) -> builtins.list[Evaluation]:
        row = self._store.read(lambda conn: conn.execute(
            "SELECT * FROM evaluations WHERE seq = ?", (seq,)).fetchone())
        if row is None or row["sync_state"] == "cancelled":
            raise NotFoundError(f"evaluation request {seq}: no such evaluation in this store")
        metrics = json.loads(row["metrics_json"] or "[]") or [{}]
        answer = json.loads(row["remote_json"]) if row["remote_json"] else None
        found = []
        for position, metric in enumerate(answer if answer is not None else metrics):
            local_id = f"{format_id('eva', self._prefix, seq)}_{position}"
            if answer is not None:
                fields = {name: metric.get(key) for key, name in _FIELDS.items()}
                found.append(Evaluation(**fields, local_id=local_id, metric=metrics[min(position, len(metrics) - 1)],
                                        sync_state="synced"))
            else:
                found.append(Evaluation(id=local_id, local_id=local_id, metric_id=metric.get("id"), metric=metric,
                                        session_id=row["session_ref"], trace_id=row["trace_ref"],
                                        score=metric.get("score"), reason=None,
                                        status="QUEUED" if row["sync_state"] == "queued" else "DEAD",
                                        created_at=None, evaluated_at=None, run_id=row["run_id"],
                                        sync_state=row["sync_state"]))
        return found


def _json(text: str | None) -> Any:
    return json.loads(text) if text is not None else None
