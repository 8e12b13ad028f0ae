"""Publishes the daemon's longest write transaction where ``status`` and metrics read it.

The store times every write transaction of this process
(:class:`galtea_local.store.writestats.WriteStats`). Every :data:`PUBLISH_EVERY_S`
this writes two figures to the store's ``meta``, for any process to read:

- ``longest_write_s``/``longest_write_name``: the longest since the daemon started;
- ``longest_write_recent_s``: the longest over about the last minute;
- ``longest_write_cpu_s``: the most CPU time one of them used (the rest of the
  wall time was spent waiting for a CPU or the GIL);
- ``writes_given_way``: how many rolled back for an app waiting for the lock, and ran again;
- ``send_rate``/``send_limit``: the request rate and in-flight cap the adaptive
  concurrency holds now (:mod:`galtea_local_daemon.concurrency`).

While these stay at milliseconds, an app's ``create()`` never waits long on the daemon.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from galtea_local.outbox import health
from galtea_local.store import Store

PUBLISH_EVERY_S = 5.0
RECENT_WINDOWS = 12  # x PUBLISH_EVERY_S: "recent" is the last minute


class WriteWatch:
    def __init__(self, store: Store, limit: Any = None) -> None:
        self.store = store
        self.limit = limit  # an AdaptiveLimit, or None
        if self.stats is not None:
            self.stats.track_cpu = True
        self._recent: deque[float] = deque(maxlen=RECENT_WINDOWS)

    @property
    def stats(self) -> Any:
        return getattr(self.store, "write_stats", None)  # a backend without the timer publishes nothing

    def publish(self) -> None:
        stats = self.stats
        if stats is None:
            return
        self._recent.append(stats.take_window().seconds)
        longest, recent = stats.longest, max(self._recent)

        def write(conn: Any) -> None:
            health.put(conn, health.LONGEST_WRITE, round(longest.seconds, 6))
            health.put(conn, health.LONGEST_WRITE_NAME, longest.name or None)
            health.put(conn, health.LONGEST_WRITE_RECENT, round(recent, 6))
            health.put(conn, health.LONGEST_WRITE_CPU, round(stats.longest_cpu.seconds, 6))
            health.put(conn, health.WRITES_GIVEN_WAY, stats.gave_way)
            if self.limit is not None:
                health.put(conn, health.SEND_RATE, round(self.limit.rate, 2))
                health.put(conn, health.SEND_LIMIT, self.limit.limit)

        self.store.transaction(write)
