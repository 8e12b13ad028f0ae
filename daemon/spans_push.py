"""Sending spans upstream: its own step of a pass, after the records' lanes have drained.

A span goes once its trace is upstream (``outbox.spans.claim_due`` decides), with the
trace's remote id, in ``POST /traces/batch?includeRejected=true`` requests of up to
:data:`BATCH` spans (the official SDK's batch bound), several requests in parallel on
the engine's push threads. Every span carries the id generated when it was recorded,
and the API refuses a second span with an id it has, so any failure may simply be
re-sent: a lost answer or a crash between send and settle never stores a span twice.

Reading the answer: created spans are synced. A span the API refused (in
``partialSuccess``, or the whole call refused with a 4xx) is looked for upstream by
listing its trace's spans: found means an earlier attempt landed ("already there":
synced), absent means a data problem (dead, with the API's reason). Everything else
(offline, 5xx, 429, a lost answer) retries the batch later, as records do.
"""

from __future__ import annotations

import logging
from typing import Any

from galtea_local.errors import AuthError, RejectedError, UpstreamError
from galtea_local.outbox import spans as queue
from galtea_local.spans.record import wire_body
from galtea_local_daemon.backoff import retry_after_of
from galtea_local_daemon.side_queues import PassHost, push_rounds
from galtea_local_daemon.steps import PassReport

log = logging.getLogger("galtea_local.sync")

BATCH = 100  # spans per request, as the SDK's processor batches them
_PAGE = 1000


class SpanPusher:
    """Pushes due spans for one pass of the engine (its :class:`PassHost` surface only)."""

    def __init__(self, host: PassHost) -> None:
        self.host = host
        self.store = host.store
        self.client = host.client

    def push_due(self, report: PassReport, deadline: float) -> None:
        """Send due spans in batches until none is due or the pass should stop (:func:`push_rounds`)."""

        def tally(outcomes: list[tuple[int, int, float | None]]) -> list[float]:
            report.spans_pushed += sum(pushed for pushed, _, _ in outcomes)
            report.spans_dead += sum(dead for _, dead, _ in outcomes)
            return [delay for _, _, delay in outcomes if delay is not None]

        push_rounds(self.host, report, deadline, due=queue.due, claim_due=queue.claim_due,
                    limit=BATCH * self.host.settings.concurrency, units=_batches, send=self._send, tally=tally)

    def _send(self, rows: list[dict[str, Any]]) -> tuple[int, int, float | None]:
        """Send one batch and settle it: (synced, dead, seconds until a retry or None)."""
        try:
            self.host.wait_for_throttle()
            if rows[0]["deleted"]:
                return self._delete(rows)
            answer = self.client.create_spans([wire_body(row, row["upstream_trace"]) for row in rows])
            created, reasons = _read_answer(answer, rows)
        except AuthError as error:
            self.host.halt()
            return 0, 0, self._retry(rows, error, 0.0)
        except RejectedError as error:  # the whole call refused: every span has a problem, or is there
            created, reasons = set(), {row["span_id"]: error.message for row in rows}
        except UpstreamError as error:
            retry_after = retry_after_of(error)
            if retry_after is not None:
                self.host.throttle(retry_after)
            return 0, 0, self._retry(rows, error, self.host.backoff.delay(rows[0]["attempts"] + 1, retry_after))
        return self._settle(rows, created, reasons)

    def _settle(self, rows: list[dict[str, Any]], created: set[str],
                reasons: dict[str, str]) -> tuple[int, int, float | None]:
        refused = [row for row in rows if row["span_id"] not in created]
        present, unknown, error = self._present_upstream(refused)
        retry_in = None
        if error is not None:  # their trace could not be listed: they go again, and a re-send is harmless
            retry_in = self._retry(unknown, error, self.host.backoff.delay(rows[0]["attempts"] + 1))
        checked = [row for row in refused if row not in unknown]
        synced = {row["seq"]: row["upstream_trace"] for row in rows
                  if row["span_id"] in created or row["span_id"] in present}
        dead = {row["seq"]: reasons.get(row["span_id"], "refused by the API (no reason given)")
                for row in checked if row["span_id"] not in present}
        now = self.host.clock()

        def settle(conn: Any) -> None:
            queue.settle_synced(conn, synced, now)
            queue.settle_dead(conn, dead, now)

        self.store.transaction(settle)
        for seq, reason in dead.items():
            log.warning("dead-lettered span %s: %s", seq, reason)
        return len(synced), len(dead), retry_in

    def _present_upstream(self, rows: list[dict[str, Any]]) -> tuple[set[str], list[dict[str, Any]], Any]:
        """The ids of these spans the API already holds (listing each trace's spans, every page),
        the rows whose trace could not be listed now, and the last listing error."""
        found: set[str] = set()
        unknown: list[dict[str, Any]] = []
        last_error: UpstreamError | None = None
        for trace_id in sorted({row["upstream_trace"] for row in rows}):
            try:
                found.update(self._listed_ids(trace_id))
            except UpstreamError as error:
                last_error = error
                unknown.extend(row for row in rows if row["upstream_trace"] == trace_id)
        return found, unknown, last_error

    def _listed_ids(self, trace_id: str) -> set[str]:
        found: set[str] = set()
        offset = 0
        while True:
            page = self.client.list_spans(trace_ids=[trace_id], offset=offset, limit=_PAGE)
            found.update(span.get("id") for span in page if isinstance(span, dict))
            if len(page) < _PAGE:
                return found
            offset += len(page)

    def _delete(self, rows: list[dict[str, Any]]) -> tuple[int, int, bool]:
        for row in rows:
            self.client.delete_span(row["span_id"])  # a span already gone counts as deleted
        now = self.host.clock()
        self.store.transaction(queue.settle_synced, {row["seq"]: row["upstream_trace"] for row in rows}, now)
        return len(rows), 0, None

    def _retry(self, rows: list[dict[str, Any]], error: UpstreamError, delay: float) -> float:
        seqs = [row["seq"] for row in rows]
        self.store.transaction(queue.settle_retry, seqs, self.host.clock() + delay, error.message)
        log.info("will retry %d spans in %.1fs: %s", len(seqs), delay, error.message)
        return delay


def _read_answer(answer: Any, rows: list[dict[str, Any]]) -> tuple[set[str], dict[str, str]]:
    """The ids created, and the API's reason for each refused span (by its position in the batch)."""
    if isinstance(answer, list):  # an API that predates includeRejected: no reasons
        return {span.get("id") for span in answer if isinstance(span, dict)}, {}
    created = {span.get("id") for span in answer.get("spans") or [] if isinstance(span, dict)}
    partial = answer.get("partialSuccess")
    reasons: dict[str, str] = {}
    for error in (partial.get("errors") or []) if isinstance(partial, dict) else []:
        index = error.get("index") if isinstance(error, dict) else None
        if isinstance(index, int) and 0 <= index < len(rows):
            reasons[rows[index]["span_id"]] = str(error.get("reason") or "refused")
    return created, reasons


def _batches(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Up to BATCH spans a request, a trace's spans together in recorded order; deletes apart."""
    rows = sorted(rows, key=lambda row: (row["deleted"], row["upstream_trace"] or "", row["seq"]))
    batches: list[list[dict[str, Any]]] = []
    for row in rows:
        if not batches or len(batches[-1]) >= BATCH or batches[-1][0]["deleted"] != row["deleted"]:
            batches.append([])
        batches[-1].append(row)
    return batches


def spans_due(store: Any, now: float) -> bool:
    return bool(store.read(queue.due, now, 1))
