"""The server's clock, as seen from here: the offset measured from every answer's ``Date`` header.

Reconciliation asks the API for records ``createdAt`` since an attempt began,
and ``createdAt`` is stamped by the server's clock. A box whose clock runs
minutes away from the server's would look in the wrong window, so windows are
computed in server time: ``local + offset``.

``Date`` has one-second resolution and is truncated, so one sample says the
server's time was in ``[date, date + 1)`` somewhere between sending and
receiving. Each sample is taken at the middle of both ranges; the offset is
the median of the last samples, so one odd answer (a proxy with a bad clock,
a long queue) does not move it.
"""

from __future__ import annotations

import email.utils
import statistics
import threading
from collections import deque

SAMPLES = 15


def parse_http_date(value: str | None) -> float | None:
    """Unix seconds from an HTTP ``Date`` value; None when absent or unreadable."""
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


class ServerClock:
    """Thread-safe estimate of ``server time - local time``, in seconds (None until measured)."""

    def __init__(self) -> None:
        self._samples: deque[float] = deque(maxlen=SAMPLES)
        self._lock = threading.Lock()
        self._offset: float | None = None

    def observe(self, date_header: str | None, sent_at: float, received_at: float) -> None:
        """Take one sample from an answer's ``Date``, sent and received at these local times."""
        server = parse_http_date(date_header)
        if server is None:
            return
        sample = (server + 0.5) - (sent_at + received_at) / 2
        with self._lock:
            self._samples.append(sample)
            self._offset = statistics.median(self._samples)

    @property
    def spread_s(self) -> float:
        """How far apart the samples behind the offset are: 0 when they agree. A clock step
        shows here until the median has moved past it."""
        with self._lock:
            return max(self._samples) - min(self._samples) if self._samples else 0.0

    @property
    def offset_s(self) -> float | None:
        """Seconds to add to a local time to get the server's; None before any answer had a ``Date``."""
        return self._offset

    def to_server(self, local: float) -> float:
        """A local Unix time in server time (unchanged while the offset is unknown)."""
        offset = self._offset
        return local if offset is None else local + offset
