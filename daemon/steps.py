"""The engine's settings and what its steps and passes decide, as values.

A step takes the head operation of a lane and settles it one way or another;
the lane loop reads :class:`StepOutcome` (instead of ``dict | None | bool``
signals) to know whether to go on, retry in place, or give the lane back. A
pass adds its steps up in a :class:`PassReport`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from galtea_local.errors import UpstreamError
from galtea_local.outbox.attempts import Attempt


class Step(Enum):
    PUSHED = "pushed"  # the server applied it; settled done
    ADOPTED = "adopted"  # a maybe-sent create was found upstream; settled done
    SETTLED_LOCALLY = "settled_locally"  # nothing to send (a delete of a never-sent record)
    DEAD = "dead"  # refused for good; dead-lettered
    RETRY = "retry"  # failed; due again in ``retry_in`` seconds
    WAITING = "waiting"  # a maybe-sent create that may still land: not re-sent before the grace ends
    IDLE = "idle"  # nothing due, the head changed, the lease is gone, or the pass is stopping
    AUTH = "auth"  # the key was refused: every lane stops


# Outcomes after which the lane's next operation may go at once.
_GO_ON = frozenset({Step.PUSHED, Step.ADOPTED, Step.SETTLED_LOCALLY, Step.DEAD})


@dataclass(frozen=True)
class StepOutcome:
    step: Step
    ahead: Attempt | None = None  # the lane's next operation, already taken in the settling transaction
    retry_in: float = 0.0  # RETRY / WAITING: seconds until the operation is due again
    error: UpstreamError | None = None  # RETRY / AUTH: what went wrong

    @property
    def goes_on(self) -> bool:
        return self.step in _GO_ON


IDLE = StepOutcome(Step.IDLE)


@dataclass(frozen=True)
class EngineSettings:
    concurrency: int = 16  # sync.concurrency's default (config/schema.py says why 16)
    batch_size: int = 10  # operations of one lane per claim, so lanes take turns
    lease_s: float = 60.0
    clock_skew_s: float = 10.0
    # A maybe-sent create that reconciliation did not find is not sent again until this many
    # seconds (server time) after its attempt began: a request held in the server or a proxy
    # may still commit until then (docs/delivery.md gives the reasoning for the default).
    commit_grace_s: float = 120.0
    # The same for a create the server *answered* (500, 502, 503, a 2xx we could not read): it
    # was done with the request when it answered, so only read-after-write lag is left to wait.
    answered_grace_s: float = 0.2
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
    waiting: int = 0  # maybe-sent creates held back until their commit grace ends
    resent: int = 0  # maybe-sent creates not found upstream after the grace, sent again
    dead: int = 0
    auth_failing: bool = False
    spans_pushed: int = 0  # the spans and evaluations steps (spans_push.py, evaluations_push.py)
    spans_dead: int = 0
    evaluations_pushed: int = 0
    versions_pushed: int = 0  # versions made offline (versions_push.py)
    throttled_until: float | None = None
    more_due: bool = False
    next_due_at: float | None = None  # without more_due: when a waiting lane's head is due (clock time)
    errors: list[str] = field(default_factory=list)

    def settled_any(self) -> bool:
        """Something left the queue for good: pushed, adopted, dead-lettered (retries do not count)."""
        return bool(self.pushed or self.adopted or self.dead or self.spans_pushed or self.spans_dead
                    or self.evaluations_pushed or self.versions_pushed)

    def merge(self, other: PassReport) -> None:
        self.pushed += other.pushed
        self.adopted += other.adopted
        self.retried += other.retried
        self.waiting += other.waiting
        self.resent += other.resent
        self.dead += other.dead
        self.spans_pushed += other.spans_pushed
        self.spans_dead += other.spans_dead
        self.evaluations_pushed += other.evaluations_pushed
        self.versions_pushed += other.versions_pushed
        self.auth_failing = self.auth_failing or other.auth_failing
        self.errors.extend(other.errors)
