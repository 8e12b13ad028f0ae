"""When to try an operation again: tenacity's exponential backoff with jitter and a cap.

The attempt count lives on the operation in the store, not in memory, so a
restart continues the sequence instead of resetting it (and a thousand
operations that failed together do not all come back at once: the jitter
spreads them). Within a pass, :meth:`Backoff.retrying` retries an operation
in place while the wait is short; a longer wait ends the loop and the
operation waits for a later pass. A stop request ends any sleep at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import tenacity

from galtea_local.errors import MaybeSentError, NotSentError, RetryLaterError

RETRYABLE = (NotSentError, MaybeSentError, RetryLaterError)


@dataclass
class _AttemptNumber:
    """The one field tenacity's wait strategies read from a RetryCallState."""

    attempt_number: int


class Backoff:
    """Delays for failed operations, and an in-pass retry loop built on them."""

    def __init__(
        self,
        *,
        initial_s: float = 1.0,
        max_s: float = 300.0,
        jitter_s: float = 1.0,
        in_pass_max_wait_s: float = 2.0,
        stop_event: threading.Event | None = None,
    ) -> None:
        self._wait = tenacity.wait_exponential_jitter(multiplier=initial_s, max=max_s, jitter=jitter_s)
        self._in_pass_max_wait_s = in_pass_max_wait_s
        self.stop_event = stop_event or threading.Event()

    @property
    def in_pass_max_wait_s(self) -> float:
        """The longest wait a pass sits out before retrying in place (longer: the next pass)."""
        return self._in_pass_max_wait_s

    def delay(self, attempts: int, retry_after: float | None = None) -> float:
        """Seconds to wait after the ``attempts``-th failed attempt; never less than ``retry_after``."""
        computed = self._wait(_AttemptNumber(max(1, attempts)))
        return max(computed, retry_after or 0.0)

    def sleep(self, seconds: float) -> None:
        """Sleep, unless a stop is requested first."""
        self.stop_event.wait(max(0.0, seconds))

    def retrying(self, should_stop: Callable[[], bool]) -> tenacity.Retrying:
        """Retry a step that raises a retryable error carrying ``retry_in`` (the delay it stored).

        Stops (re-raising the last error) when the next wait is longer than the
        in-pass limit, when ``should_stop()`` says so, or on a stop request.
        """

        def wait(state: tenacity.RetryCallState) -> float:
            error = state.outcome.exception() if state.outcome else None
            return float(getattr(error, "retry_in", None) or 0.0)

        def stop(state: tenacity.RetryCallState) -> bool:
            return (
                self.stop_event.is_set()
                or should_stop()
                or state.upcoming_sleep > self._in_pass_max_wait_s
            )

        return tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(RETRYABLE),
            wait=wait,
            stop=stop,
            sleep=self.sleep,
            reraise=True,
        )


def retry_after_of(error: Any) -> float | None:
    return error.retry_after if isinstance(error, RetryLaterError) else None
