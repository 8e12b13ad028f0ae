"""Sending queued evaluations: a step of each pass, after the records' lanes and the spans.

A row goes once its trace (or session) is upstream, as ``POST /evaluations/
fromInferenceResult`` (or ``/fromSession``) with the remote id. The API has no
idempotency key here, so the claim marks the attempt durably first
(``outbox.evaluations.claim_due``). An attempt that may have reached the server
(lost answer, 5xx, crash) is reconciled before anything is sent again: the
session's evaluations created since the attempt began (less the allowed clock
skew) for this trace and owned by no other local row, as many as the metrics
asked for, are adopted as the answer. Only when there is none does it send again.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from galtea_local.errors import AuthError, RejectedError, UpstreamError
from galtea_local.outbox import evaluations as queue
from galtea_local.read_model import iso_utc
from galtea_local_daemon.backoff import retry_after_of
from galtea_local_daemon.side_queues import PassHost, push_rounds
from galtea_local_daemon.steps import PassReport

log = logging.getLogger("galtea_local.sync")
PUSHED, DEAD = "pushed", "dead"


class EvaluationPusher:
    """Pushes due evaluation requests for one pass of the engine, one request per row, in parallel."""

    def __init__(self, host: PassHost) -> None:
        self.host = host
        self.store = host.store
        self.client = host.client

    def push_due(self, report: PassReport, deadline: float) -> None:
        """Send due requests until none is due or the pass should stop (:func:`push_rounds`)."""

        def tally(outcomes: list[str | float]) -> list[float]:
            report.evaluations_pushed += outcomes.count(PUSHED)
            report.dead += outcomes.count(DEAD)
            return [outcome for outcome in outcomes if isinstance(outcome, float)]

        push_rounds(self.host, report, deadline, due=queue.due, claim_due=queue.claim_due,
                    limit=self.host.settings.concurrency * 4, units=list, send=self._push, tally=tally)

    def _push(self, row: dict[str, Any]) -> str | float:
        """Send one request and settle it: PUSHED, DEAD, or the seconds until its retry."""
        try:
            self.host.wait_for_throttle()
            answer = self._adopted(row) if row["sending_since"] is not None else None
            if answer is None:
                answer = self._send(row)
        except AuthError as error:
            self.host.halt()
            return self._retry(row, error, 0.0, maybe_sent=_maybe_sent(row, error))
        except RejectedError as error:
            self.store.transaction(queue.settle_dead, row["seq"], error.message, self.host.clock())
            log.warning("dead-lettered evaluation request %s: %s", row["seq"], error.message)
            return DEAD
        except UpstreamError as error:
            retry_after = retry_after_of(error)
            if retry_after is not None:
                self.host.throttle(retry_after)
            return self._retry(row, error, self.host.backoff.delay(row["attempts"] + 1, retry_after),
                               maybe_sent=_maybe_sent(row, error))
        self.store.transaction(queue.settle_synced, row["seq"], answer, self.host.clock())
        return PUSHED

    def _send(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        body = request_body(row)
        if row["trace_ref"] is not None:
            return self.client.evaluate_trace(body)
        return self.client.evaluate_session(body)

    def _adopted(self, row: dict[str, Any]) -> list[dict[str, Any]] | None:
        """What an earlier attempt of this row created upstream, or None (then it is sent again)."""
        session_id = row["upstream_session"] or self.client.get_inference_result(row["upstream_trace"])["sessionId"]
        since = iso_utc(row["sending_since"] - self.host.settings.clock_skew_s)
        listed = self.client.list_evaluations(session_ids=[session_id], from_created_at=since)
        owned = self.store.read(queue.owned, [e.get("id") for e in listed])
        return match(row, [e for e in listed if e.get("id") not in owned])

    def _retry(self, row: dict[str, Any], error: UpstreamError, delay: float, *, maybe_sent: bool) -> float:
        self.store.transaction(queue.settle_retry, row["seq"], self.host.clock() + delay, error.message,
                               maybe_sent=maybe_sent)
        return float(delay)


def request_body(row: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = ({"inferenceResultId": row["upstream_trace"]} if row["trace_ref"] is not None
                            else {"sessionId": row["upstream_session"]})
    metrics = json.loads(row["metrics_json"] or "[]")
    if metrics:
        body["metrics"] = metrics
    if row["specification_ids_json"]:
        body["specificationIds"] = json.loads(row["specification_ids_json"])
    if row["run_id"] is not None:
        body["runId"] = row["run_id"]
    return body


def match(row: dict[str, Any], candidates: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """The evaluations one earlier attempt of ``row`` made: for its trace (or none, for a session
    request), one per metric asked for by id; None unless every metric is accounted for."""
    trace = row["upstream_trace"] if row["trace_ref"] is not None else None
    mine = [e for e in candidates if e.get("inferenceResultId") == trace]
    wanted = len(json.loads(row["metrics_json"] or "[]")) + len(json.loads(row["specification_ids_json"] or "[]"))
    if not wanted or len(mine) < wanted:
        return None
    return sorted(mine, key=lambda e: e.get("createdAt") or "")[:wanted]


def _maybe_sent(row: dict[str, Any], error: UpstreamError) -> bool:
    """Whether the row stays "maybe sent": this attempt may have landed, or an earlier one may have
    (then a failure of this one, even of its reconciliation, changes nothing about that)."""
    return error.maybe_sent or row["sending_since"] is not None


def evaluations_due(store: Any, now: float) -> bool:
    return bool(store.read(queue.due, now, 1))
