"""The queues a pass pushes after the records' lanes (spans, evaluations): what their pushers may
use of the engine, and the claim-send-wait rounds they share.

:class:`PassHost` is the whole of :class:`~galtea_local_daemon.engine.SyncEngine` a side-queue
pusher sees: the engine's private state stays private, and a test can host a pusher on
anything that has these members.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, Protocol, TypeVar, runtime_checkable

from galtea_local.store import Store
from galtea_local_daemon.backoff import Backoff
from galtea_local_daemon.steps import EngineSettings, PassReport

__all__ = ["PassHost", "push_rounds", "wait_in_pass"]

Unit = TypeVar("Unit")
Outcome = TypeVar("Outcome")


@runtime_checkable
class PassHost(Protocol):
    """The engine as a side-queue pusher uses it, during one pass."""

    store: Store
    client: Any  # the upstream client, its requests paced by the engine's adaptive limit
    owner: str  # the lease owner this pusher claims rows as
    settings: EngineSettings
    backoff: Backoff
    clock: Callable[[], float]

    def halted(self) -> bool:
        """Stop claiming: the daemon is stopping, or the API refused the key in this pass."""

    def halt(self) -> None:
        """The API refused the key: no more claims in this pass (the engine records it)."""

    def wait_for_throttle(self) -> None:
        """Return once no pause of all sending is in force (a Retry-After that applies to all)."""

    def throttle(self, retry_after: float) -> None:
        """A 429 or 503 with this Retry-After answered one of our requests."""

    def submit(self, fn: Callable[..., Outcome], *args: Any) -> Future[Outcome]:
        """Run ``fn(*args)`` on the engine's push threads."""


def push_rounds(host: PassHost, report: PassReport, deadline: float, *,
                due: Callable[..., Sequence[dict[str, Any]]], claim_due: Callable[..., list[dict[str, Any]]],
                limit: int, units: Callable[[list[dict[str, Any]]], Sequence[Unit]],
                send: Callable[[Unit], Outcome], tally: Callable[[list[Outcome]], list[float]]) -> None:
    """Claim up to ``limit`` due rows, ``send`` each of their ``units`` in parallel, ``tally`` the
    outcomes into the report (returning the retry waits of the failures); again until none is
    due, the pass budget (``deadline``, monotonic) is spent, or a failure calls for a wait
    longer than a pass takes (as for records: short waits happen in the pass)."""
    tries = 0
    while not host.halted() and time.monotonic() < deadline:
        if not host.store.read(due, host.clock(), 1):
            return  # a read first: a pass with nothing of ours to send takes no write lock
        rows = host.store.transaction(claim_due, host.owner, host.clock(), host.settings.lease_s, limit)
        if not rows:
            return
        outcomes = [future.result() for future in [host.submit(send, unit) for unit in units(rows)]]
        delays = tally(outcomes)
        tries += bool(delays)  # rounds with a failure
        if not wait_in_pass(host, delays, tries, report):
            return


# Spans and evaluations go in batches on the pass's own thread, after the lanes: a short wait
# here holds no lane's thread (the lanes give theirs back past Backoff.in_pass_max_wait_s).
SIDE_WAIT_MAX_S = 2.0


def wait_in_pass(host: PassHost, delays: list[float], tries: int, report: PassReport) -> bool:
    """After failures (``delays``: their retry waits), sleep until the soonest retry when it is short
    and tries remain, and say whether to go on claiming in this pass."""
    if not delays:
        return True
    report.retried += len(delays)
    wait = min(delays)
    if tries >= host.settings.in_pass_tries or wait > SIDE_WAIT_MAX_S or host.halted():
        return False
    host.backoff.sleep(wait)
    return True
