"""Apps write first: the daemon's write transactions give way to an app's ``create()``.

SQLite has one write lock and no queue. A process that finds the lock taken sleeps
in SQLite's busy handler (1, 2, 5, 10 … 100 ms between tries), while the daemon's
threads hand the lock to one another within microseconds. Under a drain, an app's
``create()`` waited for whole runs of daemon transactions: the soak measured its
lock wait as the whole of its tail (p99.9 130 ms, max 831 ms, docs/benchmarks-soak.md §6).

Two lock files beside the store turn that into "one daemon transaction at most".
They use ``flock(2)``: the locks belong to an open file description, so the
threads of a process share one (``Store`` serialises them already) and a forked
child opens its own.

- ``<store>-apps``: an app holds it *shared* from when it wants the write lock
  until its ``COMMIT``.
- ``<store>-writer``: the daemon's side (the daemon, ``sync``, import and export)
  holds it *exclusive* for each transaction, and for each checkpoint that takes the
  write lock.

A daemon write takes ``-writer``, then tries ``-apps`` exclusive without
blocking: if that works, no app waits, and it writes. If it fails, an app is
waiting or writing: the daemon lets go of ``-writer``, waits until ``-apps`` is
free, and tries again. An app takes ``-apps`` and then waits for SQLite's lock
itself, polling ``BEGIN IMMEDIATE`` with no busy timeout (``Store._begin``), every
:data:`POLL_S` at first and then less often, up to every :data:`POLL_MAX_S`, where
SQLite's busy handler sleeps 1, 2, 5 … 100 ms between tries. It
waits for at most the rest of one daemon transaction (the daemon starts none while
``-apps`` is held) and the other apps' short writes. It does not wait for the
daemon's turn around that transaction: that turn also holds the GIL hand-backs
around ``BEGIN`` and ``COMMIT``. Waiting on ``-writer`` gave app writes a p99.9 of
21 ms against 12 ms with the lock polled, switched every 7 s in one soak
(docs/benchmarks-soak.md §7). (An app takes ``-apps`` before it asks for the lock,
and the daemon looks at ``-apps`` after it took ``-writer`` and before it asks:
whichever order they come in, one of them sees the other.)

An app that arrives while a daemon transaction runs does not wait for all of it. Before
each statement, the daemon's transaction looks at ``-apps`` (:meth:`WriteTurns.app_waiting`,
two ``flock`` calls), and if an app holds it, rolls back and runs again after the app's
write (``Store._run``; every transaction function already runs again on SQLITE_BUSY).
The app then waits for one statement of the daemon's, not for the rest of its
transaction: on a busy box, each statement can wait milliseconds for a CPU and the GIL.
A transaction gives way at most :data:`GIVE_WAY_MAX` times, then runs through (apps
writing flat out cannot starve the daemon). Switched on and off every 7 s in one
soak, it cut the apps' ``create()`` calls over 10 ms from 155 to 30, and their p99.9
from 16.9 to 11.1 ms (docs/benchmarks-soak.md §9).

The turns are advisory. SQLite's lock still decides, so correctness never depends
on them, and every wait has a bound: an app stopped while holding ``-apps`` holds
the daemon back at most :data:`DAEMON_YIELD_MAX_S` (and after that, the daemon
stops yielding for :data:`DAEMON_IGNORE_S`), and an app polls SQLite's lock for at
most :data:`APP_WAIT_MAX_S` before it waits in SQLite's busy handler (up to the
store's busy timeout). Where the files cannot be opened (a read-only folder),
writers go straight to SQLite's lock, as before.
"""

from __future__ import annotations

import enum
import fcntl
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger("galtea_local.store")

POLL_S = 0.0001  # the first wait between tries (~0.2 ms in practice): most waits are one short transaction
POLL_MAX_S = 0.001  # ... doubling up to this: a waiter that tries every 0.1 ms takes CPU from the lock's holder
APP_WAIT_MAX_S = 1.0  # a writer frozen mid-write: go to SQLite's busy handler (and its busy timeout)
DAEMON_YIELD_MAX_S = 0.05  # apps writing flat out still leave the daemon a write every 50 ms
DAEMON_IGNORE_S = 1.0  # after a yield ran out: an app is stopped mid-write, do not pay 50 ms per write
GIVE_WAY_MAX = 2  # a daemon transaction rolled back this often for apps runs through on the next try


class WriterRole(enum.Enum):
    """Who a store's writes belong to: an app goes first, the daemon gives way."""

    APP = "app"
    DAEMON = "daemon"


class WriteTurns:
    """The two lock files of one store, opened on the first write of each process."""

    def __init__(self, store_path: Path, role: WriterRole, file_mode: int) -> None:
        self.role = role
        self._paths = (Path(f"{store_path}-apps"), Path(f"{store_path}-writer"))
        self._file_mode = file_mode
        self._fds: tuple[int, int] | None = None
        self._pid = 0
        self._open_lock = threading.Lock()
        self._ignore_until = 0.0
        self._finalizer: weakref.finalize | None = None

    @contextmanager
    def turn(self) -> Iterator[None]:
        """Hold this writer's turn around one write transaction (the caller holds the process's writer lock)."""
        fds = self._files()
        if fds is None:
            yield
            return
        apps, writer = fds
        if self.role is WriterRole.APP:
            _poll(apps, fcntl.LOCK_SH, APP_WAIT_MAX_S)  # refused only for the instant of a daemon's look
            try:
                yield  # the caller polls SQLite's lock: the daemon's write in progress, other apps'
            finally:
                fcntl.flock(apps, fcntl.LOCK_UN)
        else:
            self._daemon_turn(apps, writer)
            try:
                yield
            finally:
                fcntl.flock(writer, fcntl.LOCK_UN)

    def app_waiting(self) -> bool:
        """The daemon's look, between two statements of its transaction: does an app wait for the
        lock (hold ``-apps``)? Not while the daemon ignores the apps' turns (one is stopped in it)."""
        fds = self._fds if self._pid == os.getpid() else None
        if fds is None or time.monotonic() < self._ignore_until:
            return False
        return not _free(fds[0])

    def _daemon_turn(self, apps: int, writer: int) -> None:
        if time.monotonic() < self._ignore_until:  # an app stopped in its turn: SQLite's lock alone, a while
            _try(writer, fcntl.LOCK_EX)
            return
        deadline = time.monotonic() + DAEMON_YIELD_MAX_S
        while _poll(writer, fcntl.LOCK_EX, max(0.0, deadline - time.monotonic())):  # an app's write
            if _free(apps):  # no app waits
                return
            fcntl.flock(writer, fcntl.LOCK_UN)  # an app waits: it goes first
            if not _poll(apps, fcntl.LOCK_EX, max(0.0, deadline - time.monotonic())):
                break
            fcntl.flock(apps, fcntl.LOCK_UN)
        # Apps held their turns for 50 ms: one is stopped in it, or they write flat out. Write anyway
        # (SQLite's lock decides), and stop yielding for a while rather than pay 50 ms per write.
        self._ignore_until = time.monotonic() + DAEMON_IGNORE_S

    def _files(self) -> tuple[int, int] | None:
        if self._pid == os.getpid():
            return self._fds
        with self._open_lock:
            if self._pid != os.getpid():  # first write here, or a forked child: its own descriptions
                self._fds, self._pid = self._open(), os.getpid()
        return self._fds

    def _open(self) -> tuple[int, int] | None:
        fds: list[int] = []
        try:
            for path in self._paths:
                fds.append(_open_lock_file(path, self._file_mode))
        except OSError as exc:
            for fd in fds:
                os.close(fd)
            log.warning("store: cannot open %s (%s); writes go straight to SQLite's lock, and an app's "
                        "create() may wait on several daemon transactions", path, exc.strerror or exc)
            return None
        # A store dropped without close() keeps no files open; close() runs it once, and only once.
        self._finalizer = weakref.finalize(self, _close_all, tuple(fds))
        return fds[0], fds[1]

    def close(self) -> None:
        with self._open_lock:
            finalizer, self._finalizer = (self._finalizer if self._pid == os.getpid() else None), None
            self._fds, self._pid = None, 0
        if finalizer is not None:
            finalizer()


def _close_all(fds: tuple[int, ...]) -> None:
    for fd in fds:
        os.close(fd)


def _open_lock_file(path: Path, mode: int) -> int:
    """Open (creating with the store's mode) a lock file; read-only is enough for flock."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        os.fchmod(fd, mode)  # the umask may have narrowed it; be exact, as for the store
        return fd
    except FileExistsError:
        pass
    try:
        return os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except PermissionError:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)


def _try(fd: int, kind: int) -> bool:
    try:
        fcntl.flock(fd, kind | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _free(fd: int) -> bool:
    """Nobody holds ``fd``'s lock now: it could be taken exclusive (and is let go at once)."""
    if not _try(fd, fcntl.LOCK_EX):
        return False
    fcntl.flock(fd, fcntl.LOCK_UN)
    return True


def _poll(fd: int, kind: int, max_s: float) -> bool:
    """Take ``kind`` on ``fd``, polling (a blocking flock has no timeout); False when ``max_s`` ran out."""
    return poll(lambda: _try(fd, kind), max_s)


def poll(attempt: Callable[[], bool], max_s: float) -> bool:
    """Call ``attempt`` until it returns True (True) or ``max_s`` ran out (False): the turns' wait,
    and an app's wait for SQLite's lock (``Store._begin``).

    The waits between tries start at :data:`POLL_S` and double up to :data:`POLL_MAX_S`. A short
    wait is seen at once. A long one is a daemon transaction that lost its CPU on a busy box, and
    three apps retrying every 0.1 ms took CPU from it: switched every 7 s in one soak, the apps'
    ``create()`` p99.9 was 21 ms at a fixed 0.1 ms against 15 ms at 1 ms (docs/benchmarks-soak.md §8).
    """
    if attempt():
        return True
    deadline = time.monotonic() + max_s
    every = POLL_S
    while time.monotonic() < deadline:
        time.sleep(every)
        if attempt():
            return True
        every = min(2 * every, POLL_MAX_S)
    return False
