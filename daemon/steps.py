"""What one engine step decided, as a value (instead of ``dict | None | bool`` signals).

A step takes the head operation of a lane and settles it one way or another;
the lane loop reads :class:`StepOutcome` to know whether to go on, retry in
place, or give the lane back.
"""

from __future__ import annotations

from dataclasses import dataclass
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
