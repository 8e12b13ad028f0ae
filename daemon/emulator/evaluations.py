"""The emulator's evaluations: the routes the official SDK 5.12 calls.

- ``POST /evaluations/fromInferenceResult`` ``{inferenceResultId, metrics?, specificationIds?, runId?}``
  and ``POST /evaluations/fromSession`` ``{sessionId, ...}``: one evaluation per metric
  (``{"id"}`` or ``{"name"}``, with an optional self-hosted ``score``), 201 with the list.
  The trace or session must exist (else 404); no metric and no specification is a 400.
- ``POST /evaluations/singleTurn``: a session and a turn, then their evaluations.
- ``GET /evaluations/{id}``, ``GET /evaluations`` (``ids[]`` (a missing id is a 404),
  ``sessionIds[]``, ``metricIds[]``, ``runIds[]``, ``statuses[]``, ``fromCreatedAt``/
  ``toCreatedAt``, paging), ``DELETE /evaluations/{id}``.

Like the API, nothing makes a request idempotent: the same request twice makes two
evaluations. A metric named but not given by id gets a stable id derived from its name.
An evaluation without a self-hosted score is ``PENDING`` (the judge runs later upstream).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from galtea_local_daemon.emulator import rules
from galtea_local_daemon.emulator.rules import ApiError, bad_request, not_found
from galtea_local_daemon.emulator.state import new_id

_FILTERS = {"ids": "id", "sessionIds": "sessionId", "metricIds": "metricId", "runIds": "runId",
            "statuses": "status"}  # fmt: skip


class EvaluationStore:
    def __init__(self, results: Any) -> None:
        self.results = results
        self.reset()

    def reset(self) -> None:
        self.evaluations: dict[str, dict[str, Any]] = {}
        self.deleted: dict[str, dict[str, Any]] = {}

    def _metrics(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        metrics, specifications = body.get("metrics") or [], body.get("specificationIds") or []
        if not isinstance(metrics, list) or not isinstance(specifications, list):
            raise bad_request("metrics and specificationIds must be arrays")
        if not metrics and not specifications:
            raise bad_request("provide metrics or specificationIds")
        for metric in metrics:
            if not isinstance(metric, dict) or not (metric.get("id") or metric.get("name")):
                raise bad_request("each metric needs an id or a name")
            score = metric.get("score")
            if score is not None and (not rules._is_number(score) or not 0 <= score <= 1):
                raise bad_request("a metric score must be a number from 0 to 1")
        # A specification stands for one metric here: enough to see that it was sent.
        return metrics + [{"id": f"spec_{spec}"} for spec in specifications]

    def _make(self, metrics: list[dict[str, Any]], session_id: str, trace_id: str | None,
              run_id: str | None) -> list[dict[str, Any]]:
        made = []
        for metric in metrics:
            score = metric.get("score")
            evaluation = {
                "id": new_id(), "metricId": metric.get("id") or f"met_{metric['name']}", "sessionId": session_id,
                "inferenceResultId": trace_id, "score": score, "reason": None,
                "status": "SUCCESS" if score is not None else "PENDING", "runId": run_id,
                "createdAt": self.results._stamp()[1], "deletedAt": None,
                "evaluatedAt": None, "retriesAttempted": 0, "canRetry": False,
            }  # fmt: skip
            self.evaluations[evaluation["id"]] = evaluation
            made.append(evaluation)
        return made

    def from_trace(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        trace = self.results.get_result(body.get("inferenceResultId") or "")
        return self._make(self._metrics(body), trace["sessionId"], trace["id"], body.get("runId"))

    def from_session(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        session = self.results.get_session(body.get("sessionId") or "")
        return self._make(self._metrics(body), session["id"], None, body.get("runId"))

    def single_turn(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        metrics = self._metrics(body)
        session = self.results.create_session({k: body[k] for k in ("versionId", "productId", "testCaseId",
                                                                     "isProduction") if body.get(k) is not None})
        turn = {k: body[k] for k in ("input", "actualOutput", "retrievalContext", "latency") if k in body}
        trace = self.results.create_result({"sessionId": session["id"], **turn})
        return self._make(metrics, session["id"], trace["id"], body.get("runId"))

    def get(self, evaluation_id: str) -> dict[str, Any]:
        evaluation = self.evaluations.get(evaluation_id)
        if evaluation is None:
            raise not_found("Evaluation", evaluation_id)
        return evaluation

    def delete(self, evaluation_id: str) -> None:
        evaluation = self.get(evaluation_id)
        del self.evaluations[evaluation_id]
        evaluation["deletedAt"] = self.results._stamp()[1]
        self.deleted[evaluation_id] = evaluation

    def list(self, items: Iterable[tuple[str, str]]) -> list[dict[str, Any]]:
        query = rules.parse_list_query(items, _FILTERS)
        missing = sorted(query.filters.get("id", frozenset()) - self.evaluations.keys())
        if missing:
            raise ApiError(404, f"Evaluation with id {', '.join(missing)} not found")
        return self.results._select(self.evaluations.values(), query, lambda e: e["createdAt"])
