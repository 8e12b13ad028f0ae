"""What the engine asks about a create that may have been sent: is it upstream, and may it still land?

Pure questions to the API and the clock; the engine decides and settles. All
times that are compared with the server's (``createdAt`` windows, the commit
grace) are in server time: local time plus the offset measured from the API's
``Date`` headers, the one stored with the attempt when there is one.

How long a create may still commit depends on how its attempt ended. With no
answer (a timeout, a dropped connection) or an answer that says the request may
still be running (408, 504, a CDN's 524), it may sit in a proxy queue or a slow
database for minutes: ``commit_grace_s``. A server that *answered* (500, 502,
503, a 2xx we could not read) was done with the request: whatever it wrote was
committed before the answer left, and only read-after-write lag (a replica)
can hide it: ``answered_grace_s``. Without that split, every sporadic 503 held
its session back for the full grace and the drain collapsed (issue 17).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from galtea_local.errors import RejectedError, UpstreamError
from galtea_local.outbox import attempts as ob
from galtea_local.outbox.kinds import OpKind
from galtea_local.store import Store
from galtea_local_daemon import reconcile
from galtea_local_daemon.upstream import UpstreamClient


# Answers after which the request may still be running upstream: a gateway or the server gave up
# waiting, not the work itself (408 Request Timeout, 504 Gateway Timeout, Cloudflare's 524, 598/599).
STILL_RUNNING = frozenset({408, 504, 524, 598, 599})


def done_answering(status: int | None) -> bool:
    """True for an answer after which the request can no longer be running upstream."""
    return status is not None and status not in STILL_RUNNING


class MaybeSent:
    """Reconciliation questions for one engine's store, client and settings."""

    def __init__(self, store: Store, client: UpstreamClient, clock: Callable[[], float], *,
                 clock_skew_s: float, commit_grace_s: float, answered_grace_s: float) -> None:
        self.store = store
        self.client = client
        self.clock = clock
        self.clock_skew_s = clock_skew_s
        self.commit_grace_s = commit_grace_s
        self.answered_grace_s = answered_grace_s

    def offset(self) -> float | None:
        """Server time minus ours, as last measured (None before any answer carried a ``Date``)."""
        return self.client.server_clock.offset_s

    def find_upstream(self, attempt: ob.Attempt, lookup: dict[str, Any] | None = None) -> Any:
        """The record, session or batch of records the earlier attempt made, or None. Raises the
        client's errors, and :class:`reconcile.ForeignSessionError` for a custom id someone else's
        session holds. With ``lookup`` (sessions.get_or_create): the session to join, whatever it holds."""
        if lookup is not None:
            return reconcile.find_session(self.client, lookup, joining=True)
        sent = attempt.sent_body or {}
        if attempt.kind == OpKind.SESSION_CREATE:
            return reconcile.find_session(self.client, sent)
        # The margin covers the Date header's resolution and a clock step the median has not caught up with.
        window_from = self.attempt_start_server(attempt) - self.clock_skew_s - self.client.server_clock.spread_s
        if attempt.kind == OpKind.CREATE_BATCH:
            return reconcile.find_batch(self.client, sent, window_from, attempt.lane_session_id,
                                        lambda ids: self.store.read(ob.owners_of, ids))
        return reconcile.find_adoptable(self.client, sent, window_from, attempt.lane_session_id,
                                        lambda ids: self.store.read(ob.owners_of, ids))

    def attempt_start_server(self, attempt: ob.Attempt) -> float:
        """When the earlier attempt began, in server time (the offset measured then, else now's)."""
        offset = attempt.sent_offset_s if attempt.sent_offset_s is not None else (self.offset() or 0.0)
        return (attempt.maybe_sent_since or 0.0) + offset

    @staticmethod
    def answered(attempt: ob.Attempt) -> bool:
        """True when the server answered the earlier attempt and was done with it (see the module docstring)."""
        return done_answering(attempt.sent_status)

    def grace(self, attempt: ob.Attempt) -> float:
        """How long after its start the earlier attempt may still commit."""
        return min(self.answered_grace_s, self.commit_grace_s) if self.answered(attempt) else self.commit_grace_s

    def grace_left(self, attempt: ob.Attempt) -> float:
        """Seconds until the earlier attempt can no longer commit (<= 0: it cannot now).

        Elapsed time is taken on one offset, the attempt's: the offset is re-estimated on every
        answer with the ``Date`` header's one-second resolution, and mixing two estimates would
        add up to a second of noise to a grace of a fraction of one."""
        offset = attempt.sent_offset_s if attempt.sent_offset_s is not None else (self.offset() or 0.0)
        server_now = self.clock() + offset
        return self.grace(attempt) - (server_now - self.attempt_start_server(attempt))

    def existing_session(self, attempt: ob.Attempt, error: RejectedError) -> dict[str, Any] | None:
        """A re-sent session create answered "already exists": our first attempt committed late.

        Only for a create that may have been sent before, and only a session that
        holds what we sent (else it is someone else's: dead-lettered, not merged into).
        """
        if attempt.kind != OpKind.SESSION_CREATE or attempt.maybe_sent_since is None or error.status != 400 \
                or "already exists" not in error.message or isinstance(error, reconcile.ForeignSessionError):
            return None
        try:
            return reconcile.find_session(self.client, attempt.sent_body or {})
        except UpstreamError:
            return None
