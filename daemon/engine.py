"""The sync engine: one pass pushes what is due, in order per session, exactly once.

:meth:`SyncEngine.run_once` is the whole loop body; the daemon's scheduler and
``galtea-local sync`` only call it. A pass claims lanes (sessions) with a
lease, drains each one in order on a thread pool (different sessions in
parallel, up to ``concurrency``), and settles every outcome as docs/delivery.md
says. Nothing is held open across an HTTP call: each step is its own short
transaction.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from galtea_local.errors import (
    AuthError,
    MaybeSentError,
    RejectedError,
    UpstreamError,
)
from galtea_local.outbox import attempts as ob
from galtea_local.outbox import health
from galtea_local.store import Store
from galtea_local_daemon import poison, reconcile, wire
from galtea_local_daemon.backoff import Backoff, retry_after_of
from galtea_local_daemon.concurrency import AdaptiveLimit, LimitedClient, ThrottleGate
from galtea_local_daemon.ratelimit import RateLimitedLog, error_key
from galtea_local_daemon.upstream import UpstreamClient

log = logging.getLogger("galtea_local.sync")
_limited = RateLimitedLog(log)  # an error that repeats every pass is logged once a minute, with a count
WORKERS_PER_REQUEST_SLOT = 2


@dataclass(frozen=True)
class EngineSettings:
    concurrency: int = 32
    batch_size: int = 10  # operations of one lane per claim, so lanes take turns
    lease_s: float = 60.0
    clock_skew_s: float = 120.0
    pass_budget_s: float = 30.0  # a pass stops claiming after this long; the next pass goes on
    # Attempts at one operation within a pass. Without a bound, a backoff capped below the
    # in-pass wait limit retries an unreachable API forever and `sync` never exits.
    in_pass_tries: int = 5
    max_retry_after_s: float = 300.0  # a longer Retry-After is cut to this (see concurrency.py)


@dataclass
class PassReport:
    """What one pass did. ``more_due`` tells the scheduler to come back at once."""

    pushed: int = 0
    adopted: int = 0
    retried: int = 0
    dead: int = 0
    auth_failing: bool = False
    throttled_until: float | None = None
    more_due: bool = False
    errors: list[str] = field(default_factory=list)

    def merge(self, other: PassReport) -> None:
        self.pushed += other.pushed
        self.adopted += other.adopted
        self.retried += other.retried
        self.dead += other.dead
        self.auth_failing = self.auth_failing or other.auth_failing
        self.errors.extend(other.errors)


def _decoded(record: dict[str, Any], names: Any) -> dict[str, Any]:
    fields = {name: record[name] for name in names if name in record}
    for name in ("input", "actual_output"):
        if fields.get(name) is not None:
            fields[name] = json.loads(fields[name])
    return fields


_SESSION_CREATE_FIELDS = ("custom_id", "version_id", "product_id", "test_case_id", "context")
_SESSION_PATCH_FIELDS = {"status": "status", "context": "context", "stopping_reason": "stoppingReason",
                         "error": "error"}


def _session_create_body(session: dict[str, Any]) -> dict[str, Any]:
    fields = {name: session[name] for name in _SESSION_CREATE_FIELDS}
    fields["metadata"] = json.loads(session["metadata_json"]) if session["metadata_json"] else None
    fields["is_production"] = None if session["is_production"] is None else bool(session["is_production"])
    return wire.session_body(fields)


def _session_patch_body(changes: dict[str, Any]) -> dict[str, Any]:
    body = {_SESSION_PATCH_FIELDS[name]: value for name, value in changes.items() if name in _SESSION_PATCH_FIELDS}
    if "metadata_json" in changes:
        body["metadata"] = json.loads(changes["metadata_json"]) if changes["metadata_json"] else None
    return body


@poison.refuse_unencodable  # a row that cannot be encoded is dead-lettered, not retried forever
def build_body(row: dict[str, Any], attempt: ob.Attempt) -> dict[str, Any]:
    """The request body for an attempt, from the target row as it is at the write-ahead mark."""
    if attempt.kind == "create":
        fields = _decoded(row, wire.CREATE_FIELDS)
        if attempt.lane.startswith("ls:") and fields.get("session_id"):
            fields["session_id"] = attempt.lane_session_id  # a local session id: send its remote id
        return wire.create_body(fields)
    if attempt.kind == "update":
        return wire.update_body(_decoded(attempt.payload or {}, wire.UPDATE_FIELDS))
    if attempt.kind == "session_create":
        return _session_create_body(row)
    if attempt.kind in ("session_update", "session_finish"):
        return _session_patch_body(attempt.payload or {})
    return {}


class SyncEngine:
    """Pushes the outbox upstream. Thread-safe to stop from another thread (:meth:`request_stop`)."""

    def __init__(
        self,
        store: Store,
        client: UpstreamClient,
        settings: EngineSettings | None = None,
        *,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.time,
        owner: str | None = None,
    ) -> None:
        self.store = store
        self.client = client
        self.settings = settings or EngineSettings()
        self.backoff = backoff or Backoff()
        self.clock = clock
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self._halt = threading.Event()  # auth failure or throttle: stop claiming for this pass
        # Requests in flight follow what the API accepts (concurrency.py); a Retry-After pauses
        # everything only when it clearly applies to everything, and never past the cap.
        self.limit = AdaptiveLimit(self.settings.concurrency)
        self.client = LimitedClient(client, self.limit, self.backoff.stop_event, wait_gate=self._wait_for_throttle,
                                    on_throttled=self._on_throttled)
        self.gate = ThrottleGate(self.settings.max_retry_after_s, clock)
        self._pool: ThreadPoolExecutor | None = None

    # -- control -------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        return self.backoff.stop_event.is_set()

    def request_stop(self) -> None:
        """Stop claiming; in-flight pushes finish; any backoff sleep ends now."""
        self.backoff.stop_event.set()

    def release_stale_leases(self) -> int:
        """For a pusher holding the store's exclusive lock: every existing lease is a dead pusher's."""
        return self.store.transaction(ob.release_all_leases)

    # -- one pass ------------------------------------------------------------

    def run_once(self, now: float | None = None) -> PassReport:
        """Push everything due at ``now`` (default: the clock); return what happened."""
        now = self.clock() if now is None else now
        report = PassReport()
        self._halt.clear()
        capped = self.gate.sync_from(self.store.read(_throttle_of))
        if capped is not None:
            self.store.transaction(health.put, health.THROTTLED_UNTIL, capped)
        if self.gate.until > now:
            report.throttled_until = self.gate.until
            return report
        self.store.transaction(ob.deactivate_drained_lanes)
        auth_was_failing = self.store.read(health.get, health.AUTH_FAILING) is not None
        concurrency = 1 if auth_was_failing else self._workers_wanted()  # probe with one lane
        self._drain(now, concurrency, report)
        self._record_health(report, auth_was_failing)
        # A pass that settled nothing (every lane hit an unexpected error) does not ask to run
        # again at once: the scheduler's interval paces it, and `sync` ends.
        progressed = report.pushed or report.adopted or report.dead or report.retried
        report.more_due = not self.stopping and not self._halt.is_set() and bool(progressed) and self._has_due()
        return report

    def _drain(self, now: float, concurrency: int, report: PassReport) -> None:
        deadline = time.monotonic() + self.settings.pass_budget_s
        active: dict[Future[PassReport], str] = {}
        at = now  # the first claim sees the pass's `now`; later claims the clock
        pool = self._workers()
        while True:
            free = concurrency - len(active)
            if free and not self._should_stop_claiming(deadline):
                lanes = self.store.transaction(
                    ob.claim_lanes, self.owner, at, self.settings.lease_s, free, frozenset(active.values())
                )
                at = self.clock()
                for lane in lanes:
                    active[pool.submit(self._drain_lane, lane)] = lane
            if not active:
                return
            done, _ = wait(active, return_when=FIRST_COMPLETED)
            for future in done:
                del active[future]
                report.merge(future.result())

    def _workers_wanted(self) -> int:
        # More lanes in progress than requests in flight: a lane waiting out a retry in place
        # holds its thread, and under a few percent of failures those waits took every thread.
        # The adaptive limit (self.limit) keeps the requests in flight within `concurrency`.
        return self.settings.concurrency * WORKERS_PER_REQUEST_SLOT

    def _workers(self) -> ThreadPoolExecutor:
        # Kept across passes: each push thread keeps its own HTTP connections alive between passes.
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self._workers_wanted(), thread_name_prefix="push")
        return self._pool

    def close(self) -> None:
        """Stop the push threads (after any pass in progress). The engine must not be used afterwards."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def _should_stop_claiming(self, deadline: float) -> bool:
        return self.stopping or self._halt.is_set() or time.monotonic() > deadline

    def _has_due(self) -> bool:
        lanes = self.store.read(lambda conn: ob.due_lanes(conn, self.clock(), 1))
        return bool(lanes)

    # -- one lane ------------------------------------------------------------

    def _drain_lane(self, lane: str) -> PassReport:
        report = PassReport()
        ahead: ob.Attempt | None = None  # the next operation, taken in the same transaction as a settle
        try:
            for left in range(self.settings.batch_size, 0, -1):
                if self.stopping or self._halt.is_set():
                    break
                outcome = self._step_with_retries(lane, report, ahead, take_more=left > 1)
                if outcome is None:
                    break
                ahead = outcome if isinstance(outcome, ob.Attempt) else None
        except UpstreamError as error:
            report.errors.append(str(error))
        except Exception as error:  # a bug must not kill the pass: log it, keep the lane's state durable
            _limited.exception(error_key(error), "unexpected error while pushing lane %s", lane)
            report.errors.append(f"internal error on lane {lane}")
        finally:
            self.store.transaction(ob.release_lane, lane, self.owner, self.clock())
        return report

    def _step_with_retries(self, lane: str, report: PassReport, ahead: ob.Attempt | None,
                           take_more: bool) -> Any:
        """Settle the lane's head operation, retrying in place while waits are short.

        Returns None when the lane has nothing due now (empty, backing off, lease
        lost), else the next operation if it was already taken, or True.
        """
        tries = 0

        def enough() -> bool:
            return self._halt.is_set() or tries >= self.settings.in_pass_tries

        for attempt_manager in self.backoff.retrying(enough):
            tries += 1
            with attempt_manager:
                taken, ahead = ahead, None  # a retry takes the head afresh
                try:
                    return self._step(lane, report, taken, take_more)
                except poison.PoisonRowError as bad:
                    poison.dead_letter(self.store, bad, self.clock())
                    report.dead += 1
                    return True
        return None

    def _step(self, lane: str, report: PassReport, taken: ob.Attempt | None, take_more: bool) -> Any:
        if self.stopping or self._halt.is_set():
            return None
        attempt = taken or self.store.transaction(
            ob.take_next, lane, self.owner, self.clock(), self.settings.lease_s, build_body
        )
        if attempt is None:
            return None
        try:
            return self._settle_success(attempt, report, self._perform(attempt, report), take_more)
        except AuthError as error:
            self._on_auth_failure(attempt, error, report)
            raise
        except RejectedError as error:
            self.store.transaction(ob.settle_dead, attempt, self.clock(), error.message, error.status)
            log.warning("dead-lettered %s of record %s: %s", attempt.kind, attempt.record["seq"], error.message)
            report.dead += 1
            return True
        except UpstreamError as error:
            self._settle_failure(attempt, error, report)
            raise

    def _perform(self, attempt: ob.Attempt, report: PassReport) -> dict[str, Any] | None | bool:
        """Reconcile if needed, mark, send. Returns the server's answer; True when adopted."""
        if attempt.body is not None:  # already marked by take_next
            return self._send(attempt, attempt.body)
        if attempt.kind in ("create", "session_create") and attempt.maybe_sent_since is not None and attempt.sent_body:
            if self._adopt(attempt):
                report.adopted += 1
                return True
        if attempt.kind == "delete" and not attempt.record["remote_id"]:
            # Its create was dead-lettered: nothing upstream to delete, nothing left to hold.
            self.store.transaction(ob.cancel_with_record, attempt, self.clock(), "cancelled: deleted")
            return True
        if attempt.kind == "update" and not attempt.record["remote_id"]:
            raise RejectedError("update of a record whose create is dead-lettered; retry the create first")
        body = self.store.transaction(ob.begin_attempt, attempt, self.owner, self.clock(), self.settings.lease_s,
                                      build_body)
        if body is None:
            return False
        return self._send(attempt, body)

    def _adopt(self, attempt: ob.Attempt) -> bool:
        """Reconcile a maybe-sent create; True when the upstream already had it (now settled)."""
        self._wait_for_throttle()
        try:
            if attempt.kind == "session_create":
                found = reconcile.find_session(self.client, attempt.sent_body or {})
            else:
                found = reconcile.find_adoptable(
                    self.client, attempt.sent_body or {}, attempt.maybe_sent_since or 0.0,
                    self.settings.clock_skew_s, attempt.lane_session_id,
                    lambda ids: self.store.read(ob.owners_of, ids),
                )
        except UpstreamError as error:
            error.before_send = True  # nothing new was sent: the earlier attempt is still "maybe sent"
            raise
        if found is None:
            return False
        self.store.transaction(ob.settle_done, attempt, self.clock(), found)
        return True

    def _send(self, attempt: ob.Attempt, body: dict[str, Any]) -> dict[str, Any] | None:
        self._wait_for_throttle()  # right before the request: a 429 may have come in meanwhile
        remote_id = attempt.record["remote_id"]
        if attempt.kind == "create":
            return self.client.create_inference_result(body)
        if attempt.kind == "update":
            return self.client.update_inference_result(remote_id, body)
        if attempt.kind == "session_create":
            return self.client.create_session(body)
        if attempt.kind == "session_update":
            return self.client.update_session(remote_id, body)
        if attempt.kind == "session_finish":
            return self.client.finish_session(remote_id, body["stoppingReason"])
        self.client.delete_inference_result(remote_id)
        return None

    def _settle_success(self, attempt: ob.Attempt, report: PassReport, answer: Any, take_more: bool) -> Any:
        """Settle a pushed operation and, in the same transaction, take the lane's next one."""
        if answer is True:  # adopted by reconciliation, or settled locally
            return True
        if answer is False:  # the head or the lease changed under us
            return None
        remote = answer if attempt.kind in ("create", "session_create") else None
        now = self.clock()

        def settle_then_take(conn: Any) -> ob.Attempt | None:
            ob.settle_done(conn, attempt, now, remote)
            if not take_more or self.stopping or self._halt.is_set():
                return None
            try:
                return ob.take_next(conn, attempt.lane, self.owner, now, self.settings.lease_s, build_body)
            except poison.PoisonRowError:
                return None  # keep this settle; the lane's next step takes the poison row alone

        ahead = self.store.transaction(ob.lease_protected(settle_then_take))
        report.pushed += 1
        return ahead or True

    def _settle_failure(self, attempt: ob.Attempt, error: UpstreamError, report: PassReport) -> None:
        retry_after = self.gate.capped(retry_after_of(error))
        if retry_after is not None:
            self._throttle(retry_after)
        delay = self.backoff.delay(attempt.attempts + 1, retry_after)
        maybe_sent = isinstance(error, MaybeSentError) or getattr(error, "before_send", False)
        self.store.transaction(
            ob.settle_retry, attempt, self.clock() + delay, error.message, error.status, maybe_sent=maybe_sent
        )
        error.retry_in = delay
        report.retried += 1
        log.info("will retry %s of record %s in %.1fs: %s", attempt.kind, attempt.record["seq"], delay, error.message)

    def _on_auth_failure(self, attempt: ob.Attempt, error: AuthError, report: PassReport) -> None:
        self._halt.set()
        report.auth_failing = True
        self.store.transaction(
            ob.settle_retry, attempt, self.clock(), error.message, error.status,
            maybe_sent=getattr(error, "before_send", False),
        )
        log.error("the Galtea API refused the API key (HTTP %s): pushing paused until it is fixed", error.status)

    # -- throttling ------------------------------------------------------------

    def _on_throttled(self, error: BaseException) -> None:
        retry_after = self.gate.capped(retry_after_of(error))
        if retry_after is not None:
            self._throttle(retry_after)

    def _throttle(self, retry_after: float) -> None:
        """A 429 or 503 with Retry-After: the operation it answered waits for it (its ``not_before``).

        Everything waits only when the refusal clearly applies to everything (see
        :meth:`AdaptiveLimit.refused_by_all`); a sporadic 429 lowers the limit instead.
        """
        if self.limit.refused_by_all():
            self._pause_all(retry_after)

    def _pause_all(self, retry_after: float) -> None:
        until = self.gate.pause(retry_after)
        if until is not None:
            self.store.transaction(health.put, health.THROTTLED_UNTIL, until)
            log.warning("the API refuses every request: pausing all pushing for %.1fs (Retry-After, at most"
                        " sync.max_retry_after_s)", until - self.clock())

    def _wait_for_throttle(self) -> None:
        """No request leaves during a pause of all sending, whichever lane caused it.

        Checked again every second: a request in flight on another lane may bring a
        later pause, and an operator may end it (``galtea-local throttle clear``).
        """
        while not self.stopping:
            remaining = self.gate.remaining()
            if remaining <= 0:
                return
            self.backoff.sleep(min(remaining, 1.0))
            self.gate.sync_from(self.store.read(_throttle_of))

    def _record_health(self, report: PassReport, auth_was_failing: bool) -> None:
        def write(conn: Any) -> None:
            now = self.clock()
            if report.pushed or report.adopted:
                health.put(conn, health.LAST_SUCCESS, now)
            if report.errors:
                health.put(conn, health.LAST_ERROR, report.errors[-1][:500])
                health.put(conn, health.LAST_ERROR_AT, now)
            if report.auth_failing and not auth_was_failing:
                health.put(conn, health.AUTH_FAILING, now)
            elif auth_was_failing and not report.auth_failing and (report.pushed or report.adopted):
                health.put(conn, health.AUTH_FAILING, None)

        self.store.transaction(write)


def _throttle_of(conn: Any) -> float | None:
    return health.get_float(conn, health.THROTTLED_UNTIL)
