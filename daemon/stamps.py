"""The side path that sends ``stamp`` PATCHes (upstream ``createdAt`` = the call time) beside the lanes.

A lane sends its operations one after another, so a stamp sent in line would
halve the drain rate. Instead, the moment a create settles, its stamp goes to
this small pool and is in flight while the lane sends its next create: one
extra request per record, overlapping, not queued behind the others. Answered
stamps are settled in batches, so the store sees one write transaction for
many of them. A stamp that fails for a blink (a 503, a lost answer) is sent again
here once; one that fails again, is told to wait (Retry-After) or never left goes
back to its lane, which the engine claims and sends again (idempotent: the same
``createdAt``). See :mod:`galtea_local.outbox.stamps`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

from galtea_local.errors import MaybeSentError, RejectedError, RetryLaterError, UpstreamError
from galtea_local.outbox import stamps as outbox_stamps
from galtea_local.store import Store
from galtea_local_daemon.upstream import UpstreamClient

log = logging.getLogger("galtea_local.sync")
SETTLE_BATCH = 16  # answered stamps settled per write transaction
# A stamp that failed without a Retry-After (a 503, a lost answer: an idempotent PATCH) is sent
# again here, on the side path, before it goes back to its lane: there it would take a lane's
# request slot, and under the soak's fault mix the lanes' slots bound the drain.
SIDE_TRIES = 2
SIDE_RETRY_S = 0.1


def send_stamp(client: UpstreamClient, remote_id: str, body: dict[str, Any]) -> None:
    """PATCH the record's ``createdAt``. A refusal is logged, never a dead letter: the turn itself is upstream."""
    try:
        client.update_inference_result(remote_id, body)
    except RejectedError as error:
        if error.status != 404:  # 404: deleted upstream meanwhile, nothing left to stamp
            log.warning("the API refused createdAt for record %s: %s", remote_id, error.message)


def send_session_stamp(client: UpstreamClient, remote_id: str, body: dict[str, Any]) -> None:
    """PATCH a session's ``createdAt``; a refusal is logged, never a dead letter (the session is upstream)."""
    try:
        client.update_session(remote_id, body)
    except RejectedError as error:
        if error.status != 404:
            log.warning("the API refused createdAt for session %s: %s", remote_id, error.message)


def _worth_again_here(error: UpstreamError) -> bool:
    """A failure the side path sends again after a blink: not a Retry-After (the lane waits it out
    without a thread), nor a request that never left (a stopping daemon, a refused connection)."""
    if isinstance(error, RetryLaterError):
        return error.retry_after is None
    return isinstance(error, MaybeSentError)


class Stamper:
    """Sends stamps on its own threads; :meth:`wait` returns once every submitted one is settled."""

    def __init__(self, store: Store, client: UpstreamClient, workers: int, clock: Callable[[], float], *,
                 wait_for_throttle: Callable[[], None] = lambda: None,
                 on_error: Callable[[UpstreamError], None] = lambda error: None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._store, self._client, self._workers, self._clock, self._sleep = store, client, workers, clock, sleep
        # The engine's: no stamp leaves inside a Retry-After window, and a 429 to a stamp opens one.
        self._wait_for_throttle, self._on_error = wait_for_throttle, on_error
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._futures: set[Future[None]] = set()
        self._answered: list[tuple[str, int]] = []
        self._settling = threading.Lock()

    def submit(self, lane: str, record_seq: int, remote_id: str, body: dict[str, Any]) -> None:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix="stamp")
            future = self._pool.submit(self._send, lane, record_seq, remote_id, body)
            self._futures.add(future)
        future.add_done_callback(self._forget)

    def _forget(self, future: Future[None]) -> None:
        with self._lock:
            self._futures.discard(future)

    def _send(self, lane: str, record_seq: int, remote_id: str, body: dict[str, Any]) -> None:
        for tries in range(1, SIDE_TRIES + 1):
            try:
                self._wait_for_throttle()
                send_stamp(self._client, remote_id, body)
                break
            except UpstreamError as error:
                self._on_error(error)
                if tries < SIDE_TRIES and _worth_again_here(error):
                    self._sleep(SIDE_RETRY_S)
                    continue
                log.info("stamp of record %s left to its lane: %s", record_seq, error.message)
                # Never left (a stopping daemon, a connect error): pending again, not "maybe sent".
                self._store.transaction(outbox_stamps.hand_to_lane, lane, record_seq, sent=error.maybe_sent)
                return
        with self._lock:
            self._answered.append((lane, record_seq))
        if self._settling.acquire(blocking=False):  # one settler at a time; the others just hand over
            try:
                self._settle()
            finally:
                self._settling.release()

    def _settle(self) -> None:
        while True:
            with self._lock:  # a few at a time: an app waits on each write transaction of ours
                batch, self._answered = self._answered[:SETTLE_BATCH], self._answered[SETTLE_BATCH:]
            if not batch:
                return
            self._store.transaction(outbox_stamps.settle_stamps, batch, self._clock())

    def wait(self) -> None:
        """Block until every submitted stamp is answered (or left to its lane) and settled."""
        while True:
            with self._lock:
                pending = set(self._futures)
            if not pending:
                break
            wait(pending)
        with self._settling:
            self._settle()

    def close(self) -> None:
        self.wait()
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
