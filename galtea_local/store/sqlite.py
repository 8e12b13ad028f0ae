"""Opening a store and running transactions on it.

Every connection gets the same SQLite rules: WAL, a busy timeout,
foreign keys on, ``synchronous`` by durability. Every write goes through
:meth:`Store.transaction`, which opens ``BEGIN IMMEDIATE`` (a deferred
transaction that reads then writes fails under contention whatever the busy
timeout) and re-runs the *whole* function if SQLite still reports busy.

Connections are per thread (and per process: a forked child opens its own), so
many threads and processes can write one store at once. SQL is written with
named ``:param`` placeholders.
"""

from __future__ import annotations

import gc
import os
import random
import sqlite3
import stat
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from galtea_local.store import dialects, migrations, turns
from galtea_local.store.turns import WriterRole, WriteTurns
from galtea_local.store.writestats import WriteStats
from galtea_local.errors import NotAStoreError, StoreError, StoreOpenError, StoreTimeoutError

T = TypeVar("T")

DURABILITY_SYNCHRONOUS = {"process": "NORMAL", "power": "FULL"}
JOURNAL_SIZE_LIMIT = 8 * 1024 * 1024
AUTO_CHECKPOINT_PAGES = 4096  # 16 MB of 4 KB pages: twice the daemon's own bound (SQLite's default: 1000)


def sqlite_path_from(location: str) -> str:
    """Return the file path for a plain path or an ``sqlite:///`` URL."""
    if location.startswith("sqlite"):
        from sqlalchemy.engine import make_url

        database = make_url(location).database
        if not database or database == ":memory:":
            raise StoreOpenError(f"store {location!r}: an in-memory store would lose every record; give a file path")
        return database
    if "://" in location:
        raise StoreOpenError(
            f"store {location!r}: unsupported store URL; use a file path, an sqlite:/// or a postgresql:// URL"
        )
    return location


def _create_private(path: Path, file_mode: int, dir_mode: int) -> None:
    """Create the folder and an empty file with the configured modes before SQLite opens it.

    SQLite gives its -wal and -shm files the mode of the database file, so they
    get the same access. A folder shared with a group is made setgid (see
    :func:`_share_with_group`).
    """
    if not path.parent.exists():
        os.makedirs(path.parent, mode=dir_mode, exist_ok=True)
        os.chmod(path.parent, dir_mode)  # the umask may have narrowed it; be exact
    _share_with_group(path.parent, dir_mode)
    if not path.exists():
        fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_EXCL, file_mode)
        os.close(fd)
        os.chmod(path, file_mode)  # the umask may have narrowed it; be exact
    if not os.access(path.parent, os.W_OK | os.X_OK):
        # SQLite creates <store>-wal and <store>-shm beside the store whenever no other process
        # has them open; without write access to the folder every write fails as "readonly".
        raise StoreOpenError(
            f"store {path}: this user cannot create files in {path.parent}, where SQLite keeps the "
            "store's -wal and -shm files; make the folder group-writable (store.dir_mode = \"0770\", "
            "systemd StateDirectoryMode=0770) and add this user to its group (docs/daemon.md)"
        )


def _share_with_group(folder: Path, dir_mode: int) -> None:
    """Make a group-writable folder we own setgid, so that every file created in it (the
    store, and the -wal/-shm files any app of the group creates) keeps the folder's group
    rather than its creator's primary group, and the daemon and the apps can all open them."""
    if not dir_mode & stat.S_IWGRP:
        return
    info = folder.stat()
    if info.st_uid == os.geteuid() and not info.st_mode & stat.S_ISGID:
        os.chmod(folder, stat.S_IMODE(info.st_mode) | stat.S_ISGID)


class Store:
    """An open store: the file, its settings, and a connection per thread.

    ``durability`` is ``"process"`` (WAL + synchronous=NORMAL: a committed write
    survives any crash of the process) or ``"power"`` (synchronous=FULL: it also
    survives power loss).
    """

    dialect = "sqlite"

    def __init__(
        self,
        location: str,
        *,
        durability: str = "process",
        busy_timeout_s: float = 30.0,
        file_mode: int = 0o600,
        dir_mode: int = 0o700,
        role: WriterRole = WriterRole.APP,
    ) -> None:
        if durability not in DURABILITY_SYNCHRONOUS:
            raise StoreOpenError(f"durability {durability!r}: use 'process' or 'power'")
        self.location = location
        self.path = Path(sqlite_path_from(location)).expanduser().absolute()
        self.durability = durability
        self.busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        self._lock = threading.Lock()
        # Writers of this process queue here: a released lock wakes the next one at once, where
        # SQLite's busy handler would have it sleep 1, 2, 5 … 25 ms between tries.
        self._writer = threading.Lock()
        # ... and across processes, an app's write goes before the daemon's next one (turns.py).
        self._turns = WriteTurns(self.path, role, file_mode)
        self.write_stats = WriteStats()  # how long this process held the write lock at most
        # Weak: a thread's connection closes with the thread (an app that churns threads
        # must not pile up open files); close() still reaches every live one.
        self._connections: weakref.WeakSet[sqlite3.Connection] = weakref.WeakSet()
        try:
            _create_private(self.path, file_mode, dir_mode)
        except OSError as exc:
            raise StoreOpenError(f"store {self.path}: cannot create it: {exc.strerror or exc}") from None
        self.transaction(migrations.upgrade, self.path)
        self.store_id: str = self.read(migrations.read_store_id)

    # -- connections -------------------------------------------------------

    def _open(self) -> _Connection:
        try:
            conn = sqlite3.connect(
                self.path, timeout=self.busy_timeout_s, isolation_level=None, check_same_thread=False,
                factory=_Connection,
            )
        except sqlite3.Error as exc:
            raise StoreOpenError(f"store {self.path}: cannot open it ({exc})") from None
        try:
            # Refuse somebody else's database *before* switching it to WAL: the
            # journal mode is persistent, and a refused file must be left as it was.
            migrations.refuse_foreign(conn, self.path)
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        except BaseException as exc:
            conn.close()
            # OperationalError (cannot open, I/O) is a DatabaseError too; only the rest means "not a database".
            if isinstance(exc, sqlite3.OperationalError):
                raise StoreOpenError(f"store {self.path}: cannot open it ({exc})") from None
            if isinstance(exc, sqlite3.DatabaseError):
                raise NotAStoreError(f"store {self.path}: not a galtea-local store ({exc})") from None
            raise
        if mode.lower() != "wal":
            conn.close()
            raise StoreOpenError(f"store {self.path}: WAL mode refused (network file system?); use a local disk")
        conn.execute(f"PRAGMA synchronous={DURABILITY_SYNCHRONOUS[self.durability]}")
        conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_s * 1000)}")
        conn.execute("PRAGMA foreign_keys=ON")
        # When a checkpoint lets the WAL start over, cut the file back to this: passive
        # checkpoints then bound it without the write lock a TRUNCATE takes (housekeeping.py).
        conn.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")
        # SQLite's automatic checkpoint runs inside the COMMIT that passes it: an app's create()
        # copied megabytes and synced the file. The daemon bounds the WAL below this, between
        # transactions (housekeeping.py); this one is for apps running without a daemon.
        conn.execute(f"PRAGMA wal_autocheckpoint={AUTO_CHECKPOINT_PAGES}")
        conn.row_factory = sqlite3.Row
        with self._lock:
            self._connections.add(conn)
        return conn

    def connection(self) -> _Connection:
        """This thread's connection (a forked child never reuses its parent's)."""
        local = self._local
        conn = getattr(local, "conn", None)
        if conn is None or local.pid != os.getpid():
            conn = self._open()
            local.conn, local.pid = conn, os.getpid()
        return conn

    def close(self) -> None:
        with self._lock:
            connections, self._connections = list(self._connections), weakref.WeakSet()
        for conn in connections:
            try:
                conn.close()
            except sqlite3.Error:
                pass
        self._local = threading.local()
        self._turns.close()

    # -- transactions ------------------------------------------------------

    def transaction(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(conn, *args, **kwargs)`` in one ``BEGIN IMMEDIATE`` transaction and commit.

        On SQLITE_BUSY the whole function runs again (never one statement of
        it). Any other error rolls back and propagates: nothing is half-written.
        A daemon's transaction also runs again when it gave way to an app
        (:meth:`_run`), up to ``turns.GIVE_WAY_MAX`` times.
        """
        conn = self.connection()
        deadline = time.monotonic() + self.busy_timeout_s
        gave_way = 0
        while True:
            try:
                with self.write_turn():
                    return self._run(conn, fn, args, kwargs, gives_way=gave_way < turns.GIVE_WAY_MAX)
            except _GaveWay:
                gave_way += 1  # rolled back for an app: the turn lets it write first, then this runs again
                continue
            except sqlite3.Error as exc:
                if not _is_busy(exc) or time.monotonic() > deadline:
                    raise _translate(exc, self.path, self.busy_timeout_s) from exc
                time.sleep(random.uniform(0.001, 0.01))

    @contextmanager
    def write_turn(self) -> Iterator[None]:
        """This process's and this writer's turn for the write lock: held around every write
        transaction, and by the daemon around a checkpoint that takes the write lock."""
        with self._writer, _collection_paused(), self._turns.turn():
            yield

    def _run(self, conn: _Connection, fn: Callable[..., T], args: tuple, kwargs: dict, gives_way: bool) -> T:
        """``fn`` in one transaction. A daemon's (``gives_way``) looks before each statement for an app
        waiting for the lock, and if one is, rolls back (:class:`_GaveWay`): the app then waits for
        one statement of it, not for the rest of the transaction (turns.py says why)."""
        self._begin(conn)
        locked = time.perf_counter()  # the write lock is ours from here to COMMIT
        stats = self.write_stats
        cpu = time.thread_time() if stats.track_cpu else 0.0
        name = getattr(fn, "__name__", "?")
        try:
            if gives_way and self._turns.role is WriterRole.DAEMON:
                conn.give_way = self._turns.app_waiting
            try:
                result = fn(conn, *args, **kwargs)
            finally:
                conn.give_way = None
            conn.execute("COMMIT")
            cpu = time.thread_time() - cpu if stats.track_cpu else 0.0
            stats.note(time.perf_counter() - locked, name, cpu)
            return result
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(exc, _GaveWay):  # the lock was held until this ROLLBACK: it counts
                stats.note(time.perf_counter() - locked, f"{name} (gave way)", gave_way=True)
            raise

    def _begin(self, conn: sqlite3.Connection) -> None:
        """``BEGIN IMMEDIATE``. An app polls SQLite's lock (``turns.poll``: every 0.1 ms at first, then
        up to every 1 ms) for up to ``turns.APP_WAIT_MAX_S``, where the busy handler would sleep 1, 2,
        5 ms between tries, and then waits the rest of the busy timeout there (turns.py says why apps poll the lock)."""
        if self._turns.role is WriterRole.APP:
            _begin_polled(conn, min(turns.APP_WAIT_MAX_S, self.busy_timeout_s), self.busy_timeout_s)
        else:
            conn.execute("BEGIN IMMEDIATE")

    def read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(conn, *args)`` in a read transaction (one consistent snapshot)."""
        with self.reading() as conn:
            return fn(conn, *args)

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: one consistent snapshot, ended as soon as the block is."""
        conn = self.connection()
        try:
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                # Ending the read promptly matters: open readers stop WAL checkpoints.
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise _translate(exc, self.path, self.busy_timeout_s) from exc


@contextmanager
def _collection_paused() -> Iterator[None]:
    """No garbage collection while this thread holds the write lock or the turn: a full collection
    of the daemon's heap took 50-78 ms of CPU, and every app's ``create()`` waited it out. It runs
    at the next allocation after. Safe to toggle: a process's writers take turns under ``_writer``."""
    collecting = gc.isenabled()
    if collecting:
        gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


def _begin_polled(conn: sqlite3.Connection, polled_s: float, busy_timeout_s: float) -> None:
    """``BEGIN IMMEDIATE`` tried with no busy timeout (``turns.poll``) for ``polled_s``, then
    once more with the rest of ``busy_timeout_s`` in SQLite's busy handler (which raises when that
    runs out too). The connection's busy timeout is back to ``busy_timeout_s`` either way."""
    conn.execute("PRAGMA busy_timeout=0")
    try:
        if not turns.poll(lambda: _try_begin(conn), polled_s):
            conn.execute(f"PRAGMA busy_timeout={int((busy_timeout_s - polled_s) * 1000)}")
            conn.execute("BEGIN IMMEDIATE")
    finally:
        conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")


def _try_begin(conn: sqlite3.Connection) -> bool:
    try:
        conn.execute("BEGIN IMMEDIATE")
        return True
    except sqlite3.OperationalError as exc:
        if not _is_busy(exc):
            raise
        return False


def _is_busy(exc: sqlite3.Error) -> bool:
    message = str(exc).lower()
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in message or "busy" in message)


def _translate(exc: sqlite3.Error, path: Path, busy_timeout_s: float) -> StoreError:
    """The project error for an sqlite3 error; nothing was written (the transaction rolled back)."""
    if _is_busy(exc):
        return StoreTimeoutError(f"store {path}: {exc} (still after store.busy_timeout_s = {busy_timeout_s:g}s); "
                                 "nothing was written. Another process holds the write lock: retry")
    return StoreError(f"store {path}: {exc}; nothing was written")


class _Connection(sqlite3.Connection):
    """sqlite3's connection, weakly referenceable (the base class is not).

    While ``give_way`` is set (a daemon's transaction body, :meth:`Store._run`), each statement
    first asks it whether an app waits for the lock, and raises :class:`_GaveWay` if one does.
    """

    give_way: Callable[[], bool] | None = None

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        self._look()
        return super().execute(sql, parameters)

    def executemany(self, sql: str, parameters: Any, /) -> sqlite3.Cursor:
        self._look()
        return super().executemany(sql, parameters)

    def _look(self) -> None:
        if self.give_way is not None and self.in_transaction and self.give_way():
            raise _GaveWay


class _GaveWay(BaseException):
    """A daemon's transaction rolls back because an app waits for the lock; it runs again after.
    A ``BaseException``: a transaction function's own ``except Exception`` must not swallow it and
    commit half of its work."""
