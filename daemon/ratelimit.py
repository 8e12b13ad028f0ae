"""Rate-limited logging for errors that repeat: the first one in full, then a count.

An error that happens on every pass (a bug, a store that cannot be written)
must not write a traceback per loop: one line per distinct error per
interval, and the next line says how many were held back meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable


class RateLimitedLog:
    """``limited.exception(key, msg, *args)``: at most one record per ``key`` per ``interval_s``."""

    def __init__(self, logger: logging.Logger, interval_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._log = logger
        self._interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def _admit(self, key: str) -> int | None:
        """How many were held back since the last record of ``key``, or None to hold this one too."""
        now = self._clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self._interval_s:
                self._held[key] = self._held.get(key, 0) + 1
                return None
            self._last[key] = now
            return self._held.pop(key, 0)

    def exception(self, key: str, msg: str, *args: object) -> None:
        """Log with the traceback of the exception being handled (the first time in the interval)."""
        held = self._admit(key)
        if held is None:
            return
        suffix = f" ({held} more like it in the last {self._interval_s:.0f} s were not logged)" if held else ""
        self._log.error(msg + suffix, *args, exc_info=True)


    def warning(self, key: str, msg: str, *args: object) -> None:
        """A warning without traceback (an expected fault, such as the store being unreachable)."""
        held = self._admit(key)
        if held is not None:
            suffix = f" ({held} more like it in the last {self._interval_s:.0f} s were not logged)" if held else ""
            self._log.warning(msg + suffix, *args)


def error_key(error: BaseException) -> str:
    """Errors of one type with one message are 'the same' error."""
    return f"{type(error).__name__}: {str(error)[:200]}"
