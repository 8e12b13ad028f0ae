"""When to try an operation again: tenacity's exponential backoff with jitter and a cap.

The attempt count lives on the operation in the store, not in memory, so a
restart continues the sequence instead of resetting it (and a thousand
operations that failed together do not all come back at once: the jitter
spreads them). Within a pass, the engine retries an operation in place while
the wait is short; a longer wait gives the lane back until it is due. A stop request
ends any sleep at once.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import tenacity

from galtea_local.errors import RetryLaterError


@dataclass
class _AttemptNumber:
    """The one field tenacity's wait strategies read from a RetryCallState."""

    attempt_number: int


class Backoff:
    """Delays for failed operations, and an in-pass retry loop built on them."""

    def __init__(
        self,
        *,
        initial_s: float = 0.1,
        max_s: float = 300.0,
        jitter_s: float = 0.1,
        in_pass_max_wait_s: float = 0.5,
        stop_event: threading.Event | None = None,
    ) -> None:
        self._wait = tenacity.wait_exponential_jitter(multiplier=initial_s, max=max_s, jitter=jitter_s)
        # Longer waits give the lane back, and its thread serves another lane meanwhile. At 2 s
        # a sporadic 429's Retry-After (1 s) was slept in place: under the soak's fault mix the
        # sleeping lanes left request slots idle (75% of the fault-free drain, 82% at 0.5 s).
        self.in_pass_max_wait_s = in_pass_max_wait_s
        self.stop_event = stop_event or threading.Event()

    def delay(self, attempts: int, retry_after: float | None = None) -> float:
        """Seconds to wait after the ``attempts``-th failed attempt; never less than ``retry_after``."""
        computed = self._wait(_AttemptNumber(max(1, attempts)))
        return max(computed, retry_after or 0.0)

    def sleep(self, seconds: float) -> None:
        """Sleep, unless a stop is requested first."""
        self.stop_event.wait(max(0.0, seconds))


def retry_after_of(error: Any) -> float | None:
    return error.retry_after if isinstance(error, RetryLaterError) else None
