"""How long this process held the store's write lock: the longest write transaction.

Every write goes through ``Store.transaction``; it times the span from ``BEGIN
IMMEDIATE`` (the lock taken) to ``COMMIT`` and hands it here. Two clock reads and
a comparison per transaction, so the app's ``create()`` can afford it too. The
daemon publishes its figures in ``status`` and metrics: while any write of the
daemon is short, an app never waits on it for long.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class Longest:
    seconds: float
    name: str  # the transaction function, to know what to make shorter


class WriteStats:
    """The longest write transaction since start, and since the last :meth:`take_window`.

    With ``track_cpu`` (the daemon sets it) it also keeps the most CPU time one
    transaction used: on a starved box the wall time is mostly waiting for a CPU,
    and this tells the two apart. Off by default: the thread clock is a system call.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0
        self.gave_way = 0  # daemon transactions rolled back for an app (Store._run), run again after
        self.longest = Longest(0.0, "")
        self._window = Longest(0.0, "")
        self.track_cpu = False
        self.longest_cpu = Longest(0.0, "")

    def note(self, seconds: float, name: str, cpu_s: float = 0.0, gave_way: bool = False) -> None:
        self.count += 1  # a lost increment under a race is harmless: only the maximum matters
        self.gave_way += gave_way
        if cpu_s > self.longest_cpu.seconds:
            self.longest_cpu = Longest(cpu_s, name)
        if seconds > self._window.seconds:
            with self._lock:
                if seconds > self._window.seconds:
                    self._window = Longest(seconds, name)
                if seconds > self.longest.seconds:
                    self.longest = Longest(seconds, name)

    def take_window(self) -> Longest:
        """The longest since the previous call (a per-interval maximum), and start a new window."""
        with self._lock:
            window, self._window = self._window, Longest(0.0, "")
        return window
