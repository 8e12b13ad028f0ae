"""The sync engine: one pass pushes what is due, in order per session, exactly once.

:meth:`SyncEngine.run_once` is the whole loop body; the daemon's scheduler and
``galtea-local sync`` only call it. A pass claims lanes (sessions) with a
lease, drains each one in order on a thread pool (different sessions in
parallel, up to ``concurrency``), and settles every outcome as docs/delivery.md
says. Nothing is held open across an HTTP call: each step is its own short
transaction.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from galtea_local.batching import batched
from galtea_local.errors import AuthError, RejectedError, StoreError, UpstreamError
from galtea_local.outbox import attempts as ob
from galtea_local.outbox import drift, health, leased
from galtea_local.outbox import lanes as outbox_lanes
from galtea_local.outbox import stamps as outbox_stamps
from galtea_local.outbox import versions as versions_queue
from galtea_local.outbox.kinds import OpKind
from galtea_local.store import Store
from galtea_local_daemon import evaluations_push, poison, reconcile, spans_push, uploads, versions_push, wire
from galtea_local_daemon.backoff import Backoff, retry_after_of
from galtea_local_daemon.bodies import build_body, decoded_fields
from galtea_local_daemon.concurrency import AdaptiveLimit, LimitedClient, ThrottleGate
from galtea_local_daemon.maybe_sent import MaybeSent, done_answering
from galtea_local_daemon.ratelimit import RateLimitedLog, error_key
from galtea_local_daemon.stamps import Stamper, send_session_stamp, send_stamp
from galtea_local_daemon.steps import IDLE, EngineSettings, PassReport, Step, StepOutcome
from galtea_local_daemon.upstream import UpstreamClient

__all__ = ["EngineSettings", "PassReport", "SyncEngine", "build_body"]

log = logging.getLogger("galtea_local.sync")
_limited = RateLimitedLog(log)  # an error that repeats every pass is logged once a minute, with a count
WORKERS_PER_REQUEST_SLOT = 2
RELEASE_BATCH = 200  # stamps made due per write transaction at start


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
        # As many side slots as lanes: each lane's createdAt stamp flies beside its next create.
        self.limit = AdaptiveLimit(self.settings.concurrency, side_slots=self.settings.concurrency)
        self._sending = threading.local()  # the attempt whose request is queued for a slot, if any
        self.client = LimitedClient(client, self.limit, self.backoff.stop_event, wait_gate=self._fresh_or_drop,
                                    on_throttled=self._on_throttled)
        self.gate = ThrottleGate(self.settings.max_retry_after_s, clock)
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()  # guards _stranded and _released
        self._stranded: set[str] = set()  # lanes whose release failed (a store fault): released at the next claim
        self._released: dict[str, float] = {}  # lane -> when this pusher last gave it back (see _released_since)
        # Stamps (createdAt PATCHes) are paced by the same adaptive limit, in its side slots.
        side_client = LimitedClient(client, self.limit, self.backoff.stop_event, wait_gate=self._wait_for_throttle,
                                    on_throttled=self._on_throttled, side=True)
        # The version cache's refresh (versions_push.py): a few sequential reads every few minutes,
        # outside the pacing law so they never hold a lane's create back; they wait out a throttle.
        self.unpaced_client = client
        self.stamper = Stamper(store, side_client, self.settings.concurrency, clock,
                               wait_for_throttle=self._wait_for_throttle, on_error=self._stamp_failed,
                               sleep=self.backoff.sleep)
        self.uploader = uploads.Uploader(store, self.client, client, clock)
        self.maybe_sent = MaybeSent(store, self.client, self.clock, clock_skew_s=self.settings.clock_skew_s,
                                    commit_grace_s=self.settings.commit_grace_s,
                                    answered_grace_s=self.settings.answered_grace_s)

    # -- control -------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        return self.backoff.stop_event.is_set()

    def request_stop(self) -> None:
        """Stop claiming; in-flight pushes finish; any backoff sleep ends now."""
        self.backoff.stop_event.set()

    def release_stale_leases(self) -> int:
        """For a pusher holding the store's exclusive lock: every existing lease is a dead pusher's."""
        stale = self.store.read(outbox_stamps.stale_stamps)  # and so is every side path's
        for batch in batched(stale, RELEASE_BATCH):  # short writes: apps never wait on a long one
            self.store.transaction(outbox_stamps.release_stamps, batch)
        return self.store.transaction(ob.release_all_leases) + self.store.transaction(leased.release_all)

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
        # Versions made offline first: the sessions and turns that name them are claimable once answered.
        versions_push.VersionPusher(self).push_due(report, time.monotonic() + self.settings.pass_budget_s)
        self._drain(now, concurrency, report)
        # Spans and evaluations go after the lanes, so a trace created in this pass takes them along.
        spans_push.SpanPusher(self).push_due(report, time.monotonic() + self.settings.pass_budget_s)
        evaluations_push.EvaluationPusher(self).push_due(report, time.monotonic() + self.settings.pass_budget_s)
        self._record_health(report, auth_was_failing)
        # A pass that settled nothing (every lane hit an unexpected error) does not ask to run
        # again at once: the scheduler's interval paces it, and `sync` ends.
        progressed = report.settled_any() or report.retried
        report.more_due = not self.stopping and not self._halt.is_set() and bool(progressed) and self._has_due()
        if not report.more_due and not self._halted():
            # A lane gives its thread back during a wait longer than a blink (Backoff.in_pass_max_wait_s):
            # the daemon comes back when it ends, not at its interval.
            report.next_due_at = self.store.read(outbox_lanes.next_due_at, self.clock())
        return report

    def _drain(self, now: float, concurrency: int, report: PassReport) -> None:
        deadline = time.monotonic() + self.settings.pass_budget_s
        active: dict[Future[PassReport], str] = {}
        at = now  # the first claim sees the pass's `now`; later claims the clock
        pool = self._workers()
        while True:
            free = concurrency - len(active)
            if self._stranded:
                self._release(*sorted(self._stranded))
            if free and not self._should_stop_claiming(deadline):
                try:
                    lanes = self.store.transaction(
                        ob.claim_lanes, self.owner, at, self.settings.lease_s, free,
                        frozenset(active.values()) | self._released_since(at),
                    )
                except StoreError as error:  # a store fault: finish the lanes in flight, claim next pass
                    _limited.warning("claim", "claiming lanes failed: %s", error)
                    report.errors.append(str(error))
                    lanes, deadline = [], float("-inf")
                at = self.clock()
                for lane in lanes:
                    active[pool.submit(self._drain_lane, lane)] = lane
            if not active:
                self.stamper.wait()  # a pass ends with its stamps answered and settled
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
        self.stamper.close()

    def _should_stop_claiming(self, deadline: float) -> bool:
        return self.stopping or self._halt.is_set() or time.monotonic() > deadline

    def _has_due(self) -> bool:
        lanes = self.store.read(lambda conn: ob.due_lanes(conn, self.clock(), 1))
        now = self.clock()
        return (bool(lanes) or spans_push.spans_due(self.store, now) or evaluations_push.evaluations_due(self.store, now)
                or bool(self.store.read(versions_queue.due, now, 1)))

    # -- one lane ------------------------------------------------------------

    def _drain_lane(self, lane: str) -> PassReport:
        report = PassReport()
        ahead: _Taken | None = None  # the next operation, taken in the same transaction as a settle
        try:
            for left in range(self.settings.batch_size, 0, -1):
                if self._halted():
                    break
                outcome = self._step_with_retries(lane, report, ahead, take_more=left > 1)
                if not outcome.goes_on:
                    break
                ahead = _Taken(outcome.ahead, time.monotonic()) if outcome.ahead else None
        except StoreError as error:  # a store fault: the lane's state is durable; the next pass goes on
            _limited.warning(type(error).__name__, "lane %s: %s", lane, error)
            report.errors.append(str(error))
        except Exception as error:  # a bug must not kill the pass: log it, keep the lane's state durable
            _limited.exception(error_key(error), "unexpected error while pushing lane %s", lane)
            report.errors.append(f"internal error on lane {lane}")
        finally:
            self._release(lane)
        return report

    def _release(self, lane: str, *more: str) -> None:
        """Give lanes back; a store fault keeps them for the next claim to release, not for ``lease_s``."""
        lanes = [lane, *more]
        try:
            self.store.transaction(ob.release_lanes, lanes, self.owner)
        except StoreError as error:
            _limited.warning("release", "could not release lane(s) %s (%s); retried at the next claim",
                             ", ".join(lanes), error)
            with self._lock:
                self._stranded.update(lanes)
            return
        released = self.clock()
        with self._lock:
            self._stranded.difference_update(lanes)
            self._released.update(dict.fromkeys(lanes, released))

    def _released_since(self, at: float) -> frozenset[str]:
        """Lanes this pusher gave back after ``at``. A released lane is claimable at once by any
        pusher, but this one takes it again only at a later claim: one lane whose every attempt
        fails at once must not spin a pass (the round robin's order, as before releases freed
        lanes at once)."""
        with self._lock:
            self._released = {lane: when for lane, when in self._released.items() if when > at}
            return frozenset(self._released)

    def _step_with_retries(self, lane: str, report: PassReport, ahead: _Taken | None,
                           take_more: bool) -> StepOutcome:
        """Settle the lane's head operation, retrying in place while waits are short."""
        taken = ahead
        for tries in range(1, self.settings.in_pass_tries + 1):
            try:
                outcome = self._step(lane, report, taken, take_more)
            except poison.PoisonRowError as bad:
                poison.dead_letter(self.store, bad, self.clock())
                report.dead += 1
                return StepOutcome(Step.DEAD)
            taken = None  # a retry takes the head afresh
            if outcome.step is not Step.RETRY or self._halted() or tries == self.settings.in_pass_tries \
                    or outcome.retry_in > self.backoff.in_pass_max_wait_s:
                break
            self.backoff.sleep(outcome.retry_in)
        if outcome.error is not None:
            report.errors.append(str(outcome.error))
        return outcome

    def _step(self, lane: str, report: PassReport, taken: _Taken | None, take_more: bool) -> StepOutcome:
        if self._halted():
            return IDLE
        if taken is None:
            self._wait_for_throttle()  # before the write-ahead mark, so the mark is not older than the wait
            attempt = self.store.transaction(ob.take_next, lane, self.owner, self.clock(), self.settings.lease_s,
                                             build_body, self._offset())
            taken = _Taken(attempt, time.monotonic()) if attempt is not None else None
        if taken is None:
            return IDLE
        attempt = taken.attempt
        try:
            return self._push(taken, report, take_more)
        except AuthError as error:  # the request was refused: not applied
            return self._on_auth_failure(attempt, error, report, maybe_sent=False)
        except RejectedError as error:
            return self._reject(attempt, error, report)
        except UpstreamError as error:  # the send's own answer (or none): how long it may still commit
            return self._retry(attempt, error, report, maybe_sent=error.maybe_sent, sent_status=error.status)

    def _push(self, taken: _Taken, report: PassReport, take_more: bool) -> StepOutcome:
        """Reconcile or settle locally if needed, mark, re-check the lease, send, settle."""
        attempt, body = taken.attempt, taken.attempt.body
        if body is None:  # take_next left it unmarked: it needs care first
            prepared = self._prepare(attempt, report)
            if isinstance(prepared, StepOutcome):
                return prepared
            body, taken = prepared, _Taken(attempt, time.monotonic())
        if not self._lease_fresh(taken):
            return IDLE  # another pusher may hold the lane: it reconciles what we marked
        self._sending.taken = taken  # the adaptive limit may hold the request: re-checked after (_fresh_or_drop)
        try:
            answer = self._send(attempt, body)
        except LeaseLost:
            return IDLE
        finally:
            self._sending.taken = None
        return self._settle_success(attempt, report, answer, take_more)

    def _prepare(self, attempt: ob.Attempt, report: PassReport) -> StepOutcome | dict[str, Any]:
        """What to do before marking a head that needs care; the body to send when it is marked."""
        if attempt.kind.creates and attempt.maybe_sent_since is not None and attempt.sent_body:
            outcome = self._reconcile(attempt, report)
            if outcome is not None:
                return outcome
        elif attempt.kind == OpKind.SESSION_CREATE and attempt.record.get("join_existing"):
            # sessions.get_or_create(): look the custom id up first, as the SDK does, and join it.
            outcome = self._reconcile(attempt, report, lookup=build_body(attempt.record, attempt))
            if outcome is not None:
                return outcome
        if attempt.kind == OpKind.DELETE and not attempt.record["remote_id"]:
            # Its create was dead-lettered: nothing upstream to delete, nothing left to hold.
            self.store.transaction(ob.cancel_with_record, attempt, self.clock(), "cancelled: deleted")
            return StepOutcome(Step.SETTLED_LOCALLY)
        if attempt.kind == OpKind.UPDATE and not attempt.record["remote_id"]:
            raise RejectedError("update of a record whose create is dead-lettered; retry the create first")
        build = uploads.build_for(self.uploader, attempt, build_body)  # a turn's files go up before it
        self._wait_for_throttle()
        body = self.store.transaction(ob.begin_attempt, attempt, self.owner, self.clock(), self.settings.lease_s,
                                      build, self._offset())
        return IDLE if body is None else body

    def _reconcile(self, attempt: ob.Attempt, report: PassReport,
                   lookup: dict[str, Any] | None = None) -> StepOutcome | None:
        """A maybe-sent create: adopt what the server has, or wait out the grace; None: send it again.

        With ``lookup`` (a session to join, never sent): join it if upstream has it, else None."""
        self._wait_for_throttle()
        try:
            found = self.maybe_sent.find_upstream(attempt, lookup)
        except reconcile.ForeignSessionError:
            raise  # a decision, not a failed read: dead-lettered
        except AuthError as error:
            return self._on_auth_failure(attempt, error, report, maybe_sent=True)
        except UpstreamError as error:
            # A failed *read* (even a 404 or another 4xx) is not a refusal of the create: it may
            # exist upstream. Nothing new was sent; the earlier attempt stays "maybe sent".
            return self._retry(attempt, error, report, maybe_sent=True, sent_status=attempt.sent_status)
        if found is not None:
            self._settle_adopted(attempt, found, joined=lookup is not None)
            report.adopted += 1
            return StepOutcome(Step.ADOPTED)
        if lookup is not None:
            return None  # nothing to join: create it
        remaining = self.maybe_sent.grace_left(attempt)
        if remaining > 0:
            self.store.transaction(ob.settle_retry, attempt, self.clock() + remaining,
                                   "maybe sent, not found upstream yet: waiting out the commit grace", None,
                                   maybe_sent=True, sent_status=attempt.sent_status)
            report.waiting += 1
            return StepOutcome(Step.WAITING, retry_in=remaining)
        if self.maybe_sent.answered(attempt):  # the server was done with it: it did not apply it
            log.info("%s of record %s was answered %s and is not upstream: sending it again", attempt.kind,
                     attempt.record["seq"], attempt.sent_status)
            return None
        report.resent += 1
        log.warning("%s of record %s may have been sent but is not upstream after the commit grace: sending it"
                    " again (a duplicate if the first attempt still commits)", attempt.kind, attempt.record["seq"])
        return None

    def _settle_adopted(self, attempt: ob.Attempt, found: Any, *, joined: bool) -> None:
        drifted = attempt.kind == OpKind.CREATE and bool(
            reconcile.differing_fields(wire.create_body(decoded_fields(attempt.record)), found))
        now, offset = self.clock(), self._offset()

        def settle(conn: Any) -> None:
            drift.settle_adopted(conn, attempt, now, found, drifted, offset)
            if attempt.kind == OpKind.SESSION_CREATE and not joined:  # our own lost create, not a join
                outbox_stamps.enqueue_session_stamp(conn, attempt.record, attempt.lane, found, now, offset)

        self.store.transaction(settle)
        self._send_stamp(attempt, found, offset)

    def _offset(self) -> float | None:
        return self.maybe_sent.offset()

    def _lease_fresh(self, taken: _Taken) -> bool:
        """Right before the request leaves: is the lane still ours?

        A lease runs ``lease_s`` from the mark, and only an expired one can be
        claimed, so while little time has passed since the mark no check is
        needed (and the hot path pays no extra transaction). After a stall the
        lease is checked, and renewed, in the store.
        """
        if time.monotonic() - taken.marked_at < self.settings.lease_s * _LEASE_TRUSTED:
            return True
        held = self.store.transaction(ob.still_holds, taken.attempt.lane, self.owner, self.clock(),
                                      self.settings.lease_s)
        if not held:
            log.warning("lease on lane %s lost before sending %s: not sent", taken.attempt.lane, taken.attempt.kind)
        return held

    def _stamp_failed(self, error: UpstreamError) -> None:
        retry_after = self.gate.capped(retry_after_of(error))
        if retry_after is not None:
            self._throttle(retry_after)

    def _send_stamp(self, attempt: ob.Attempt, remote: dict[str, Any] | None, offset: float | None) -> None:
        """A settled create's stamp (enqueued by settle_done) goes now, beside the lane's next operation."""
        if attempt.kind == OpKind.CREATE and remote:
            stamp = outbox_stamps.stamp_body(attempt.record, remote, offset)
            if stamp is None:
                return
            if self.gate.until > self.clock():  # the API asked us to slow down: the lane waits, in line
                self.store.transaction(outbox_stamps.hand_to_lane, attempt.lane, attempt.record["seq"])
                return
            self.stamper.submit(attempt.lane, attempt.record["seq"], remote["id"], stamp)

    def _send(self, attempt: ob.Attempt, body: dict[str, Any]) -> dict[str, Any] | None:
        remote_id = attempt.record["remote_id"]
        if attempt.kind == OpKind.CREATE:
            return self.client.create_inference_result(body)
        if attempt.kind == OpKind.UPDATE:
            return self.client.update_inference_result(remote_id, body)
        if attempt.kind == OpKind.SESSION_CREATE:
            return self.client.create_session(body)
        if attempt.kind == OpKind.SESSION_UPDATE:
            return self.client.update_session(remote_id, body)
        if attempt.kind == OpKind.SESSION_FINISH:
            return self.client.finish_session(remote_id, body["stoppingReason"])
        if attempt.kind == OpKind.STAMP:
            send_stamp(self.client, remote_id, body)
            return None
        if attempt.kind == OpKind.SESSION_STAMP:
            send_session_stamp(self.client, remote_id, body)
            return None
        if attempt.kind == OpKind.CREATE_BATCH:
            return self.client.create_inference_results_batch(body)
        if attempt.kind == OpKind.SESSION_DELETE:
            self.client.delete_session(remote_id)
            return None
        self.client.delete_inference_result(remote_id)
        return None

    def _settle_success(self, attempt: ob.Attempt, report: PassReport, answer: dict[str, Any] | None,
                        take_more: bool) -> StepOutcome:
        """Settle a pushed operation and, in the same transaction, take the lane's next one.

        Only while the lease is ours: if another pusher took the lane meanwhile, it
        holds the operation as "maybe sent" and reconciles it (finding what we created).
        """
        remote = answer if attempt.kind.creates else None
        now, offset = self.clock(), self._offset()  # the same offset for the stamp queued and the one sent
        held = True

        def settle_then_take(conn: Any) -> ob.Attempt | None:
            nonlocal held
            lane_row = ob.renew_lease(conn, attempt.lane, self.owner, now, self.settings.lease_s)
            held = lane_row is not None
            if not held:
                return None
            ob.settle_done(conn, attempt, now, remote, offset)
            if attempt.kind == OpKind.SESSION_CREATE and remote is not None:  # created by us, not joined
                outbox_stamps.enqueue_session_stamp(conn, attempt.record, attempt.lane, remote, now, offset)
            if not take_more or self._halted() or self.gate.until > now:
                return None  # throttled: the next mark waits for the throttle first
            try:
                # The lease was just renewed: no second renewal, unless this settle may have told the
                # lane its remote session (a session's create, or a lane's first create).
                known = lane_row if lane_row["remote_session_id"] and attempt.kind != OpKind.SESSION_CREATE else None
                return ob.take_next(conn, attempt.lane, self.owner, now, self.settings.lease_s, build_body,
                                    offset, known)
            except poison.PoisonRowError:
                return None  # keep this settle; the lane's next step takes the poison row alone

        ahead = self.store.transaction(ob.lease_protected(settle_then_take))
        if not held:
            log.warning("lease on lane %s lost before settling %s: left to its new holder", attempt.lane, attempt.kind)
            return IDLE
        self._send_stamp(attempt, remote, offset)
        report.pushed += 1
        return StepOutcome(Step.PUSHED, ahead=ahead)

    def _reject(self, attempt: ob.Attempt, error: RejectedError, report: PassReport) -> StepOutcome:
        if self._adopt_existing_session(attempt, error, report):
            return StepOutcome(Step.ADOPTED)
        self.store.transaction(ob.settle_dead, attempt, self.clock(), error.message, error.status)
        log.warning("dead-lettered %s of record %s: %s", attempt.kind, attempt.record["seq"], error.message)
        report.dead += 1
        return StepOutcome(Step.DEAD)

    def _adopt_existing_session(self, attempt: ob.Attempt, error: RejectedError, report: PassReport) -> bool:
        found = self.maybe_sent.existing_session(attempt, error)
        if found is None:
            return False
        self.store.transaction(ob.settle_done, attempt, self.clock(), found)
        report.adopted += 1
        return True

    def _retry(self, attempt: ob.Attempt, error: UpstreamError, report: PassReport, *,
               maybe_sent: bool, sent_status: int | None = None) -> StepOutcome:
        retry_after = self.gate.capped(retry_after_of(error))
        if retry_after is not None:
            self._throttle(retry_after)
        delay = self.backoff.delay(attempt.attempts + 1, retry_after)
        if maybe_sent and done_answering(sent_status):
            # Reconcile once the short grace is over: one list then decides (adopt or send again).
            delay = max(delay, self.maybe_sent.answered_grace_s)
        self.store.transaction(
            ob.settle_retry, attempt, self.clock() + delay, error.message, error.status, maybe_sent=maybe_sent,
            sent_status=sent_status,
        )
        report.retried += 1
        log.info("will retry %s of record %s in %.1fs: %s", attempt.kind, attempt.record["seq"], delay, error.message)
        return StepOutcome(Step.RETRY, retry_in=delay, error=error)

    def _on_auth_failure(self, attempt: ob.Attempt, error: AuthError, report: PassReport, *,
                         maybe_sent: bool) -> StepOutcome:
        self._halt.set()
        report.auth_failing = True
        self.store.transaction(ob.settle_retry, attempt, self.clock(), error.message, error.status,
                               maybe_sent=maybe_sent, sent_status=attempt.sent_status)
        log.error("the Galtea API refused the API key (HTTP %s): pushing paused until it is fixed", error.status)
        return StepOutcome(Step.AUTH, error=error)

    def _halted(self) -> bool:
        return self.stopping or self._halt.is_set()

    # -- what the span and evaluation pushers use (side_queues.PassHost) ------

    def halted(self) -> bool:
        return self._halted()

    def halt(self) -> None:
        self._halt.set()

    def wait_for_throttle(self) -> None:
        self._wait_for_throttle()

    def throttle(self, retry_after: float) -> None:
        self._throttle(retry_after)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        return self._workers().submit(fn, *args)

    # -- throttling ------------------------------------------------------------

    def _fresh_or_drop(self) -> None:
        """Once a request has its slot: wait out a pause, then, after a wait, make sure the lane is
        still ours and move the mark to now (the commit grace runs from when the request leaves).
        A wait for the slot can outlast the lease; the marked operation is then left "maybe sent"
        for the pusher that holds the lane (it reconciles), and this request never leaves."""
        self._wait_for_throttle()
        taken = getattr(self._sending, "taken", None)
        if taken is None or time.monotonic() - taken.marked_at < min(
                self.settings.lease_s * _LEASE_TRUSTED, self.settings.commit_grace_s * _GRACE_SLACK):
            return  # not a marked request, or the hot path: no transaction
        if not self.store.transaction(ob.leaves_now, taken.attempt, self.owner, self.clock(), self.settings.lease_s,
                                      self._offset()):
            log.warning("lease on lane %s lost before sending %s: not sent", taken.attempt.lane, taken.attempt.kind)
            raise LeaseLost()

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
            if report.pushed or report.adopted or report.spans_pushed:
                health.put(conn, health.LAST_SUCCESS, now)
            if report.errors:
                health.put(conn, health.LAST_ERROR, report.errors[-1][:500])
                health.put(conn, health.LAST_ERROR_AT, now)
            if report.auth_failing and not auth_was_failing:
                health.put(conn, health.AUTH_FAILING, now)
            elif auth_was_failing and not report.auth_failing and (report.pushed or report.adopted):
                health.put(conn, health.AUTH_FAILING, None)
            if report.resent:
                health.add(conn, health.RESENT_UNCONFIRMED, report.resent)
            offset = self._offset()
            if offset is not None:
                health.put(conn, health.SERVER_CLOCK_OFFSET, round(offset, 3))

        self.store.transaction(write)


class LeaseLost(Exception):
    """The lane passed to another pusher while a marked request waited for a slot: not sent."""


# While less than this share of the lease has passed since the mark, the lease is surely ours.
_LEASE_TRUSTED = 0.5
# A request that waited for its slot longer than this share of the commit grace moves its mark to
# when it leaves: the grace is the time a sent request may take to commit (docs/delivery.md).
_GRACE_SLACK = 0.05


@dataclass(frozen=True)
class _Taken:
    """An attempt taken from the lane, and when (monotonic) its lease was last renewed."""

    attempt: ob.Attempt
    marked_at: float


def _throttle_of(conn: Any) -> float | None:
    return health.get_float(conn, health.THROTTLED_UNTIL)
