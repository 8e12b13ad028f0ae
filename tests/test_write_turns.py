"""Apps write first (galtea_local/store/turns.py): the daemon's writes give way to an app's.

Two ``WriteTurns`` on one store in one process open separate file descriptions, so their
``flock`` locks conflict exactly as two processes' do. Order is asserted with events, not
timings; the bounds that exist so that nothing waits for ever are widened where a test
must not reach them, and narrowed where it must.
"""

from __future__ import annotations

import gc
import os
import stat
import threading
import time

import pytest

from galtea_local.store import Store, WriterRole, turns
from galtea_local.store.turns import WriteTurns

WAIT_S = 5.0


@pytest.fixture
def store_path(tmp_path):
    return tmp_path / "store.db"


def _enter_in_thread(writer: WriteTurns) -> tuple[threading.Event, threading.Event, threading.Thread]:
    """Take ``writer``'s turn in a thread; set ``entered`` once it has it, leave when ``leave`` is set."""
    entered, leave = threading.Event(), threading.Event()

    def run() -> None:
        with writer.turn():
            entered.set()
            leave.wait(WAIT_S)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return entered, leave, thread


def test_the_daemon_starts_no_write_while_an_app_holds_its_turn(store_path, monkeypatch):
    monkeypatch.setattr(turns, "DAEMON_YIELD_MAX_S", WAIT_S)  # the cap must not be what lets it in
    app, daemon = WriteTurns(store_path, WriterRole.APP, 0o600), WriteTurns(store_path, WriterRole.DAEMON, 0o600)
    with app.turn():
        entered, leave, thread = _enter_in_thread(daemon)
        assert not entered.wait(0.3)  # the daemon waits for the app
    assert entered.wait(WAIT_S)  # and goes once the app is done
    leave.set()
    thread.join(WAIT_S)


def _write_in_thread(store: Store) -> tuple[threading.Event, threading.Event, threading.Thread]:
    """One write transaction of ``store`` in a thread: ``entered`` once it holds SQLite's lock,
    committed when ``leave`` is set."""
    entered, leave = threading.Event(), threading.Event()

    def hold(conn) -> None:
        conn.execute("INSERT INTO t VALUES (1)")
        entered.set()
        leave.wait(WAIT_S)

    thread = threading.Thread(target=store.transaction, args=(hold,), daemon=True)
    thread.start()
    return entered, leave, thread


def _waits_then_goes(waiter_in: threading.Event, release: threading.Event) -> None:
    """The waiter is not in while the holder holds on; it is once ``release`` lets the holder commit."""
    assert not waiter_in.wait(0.3)
    release.set()
    assert waiter_in.wait(WAIT_S)


@pytest.fixture
def both_roles(store_path):
    app, daemon = Store(str(store_path)), Store(str(store_path), role=WriterRole.DAEMON)
    app.transaction(lambda conn: conn.execute("CREATE TABLE t (n INTEGER)"))
    yield app, daemon
    app.close()
    daemon.close()


def test_an_app_waits_for_the_daemon_write_in_progress_and_no_more(both_roles, monkeypatch):
    monkeypatch.setattr(turns, "APP_WAIT_MAX_S", WAIT_S)
    monkeypatch.setattr(turns, "DAEMON_YIELD_MAX_S", WAIT_S)
    app, daemon = both_roles
    daemon_in, daemon_leave, daemon_thread = _write_in_thread(daemon)
    assert daemon_in.wait(WAIT_S)
    app_in, app_leave, app_thread = _write_in_thread(app)
    assert not app_in.wait(0.3)  # the daemon's transaction is in progress: the app waits for its end
    # The daemon's next write, asked for while the app waits, comes after the app's.
    daemon_leave.set()
    daemon_thread.join(WAIT_S)
    next_in, next_leave, next_thread = _write_in_thread(daemon)
    assert app_in.wait(WAIT_S)
    _waits_then_goes(next_in, app_leave)
    next_leave.set()
    for thread in (app_thread, next_thread):
        thread.join(WAIT_S)
    assert app.read(lambda conn: conn.execute("SELECT COUNT(*) FROM t").fetchone()[0]) == 3


def test_an_app_polls_sqlites_lock_then_waits_in_the_busy_handler(both_roles, monkeypatch):
    """``BEGIN IMMEDIATE`` with no busy timeout, tried again and again (SQLite's handler would sleep
    1, 2, 5 ms between tries) for ``APP_WAIT_MAX_S``; then the busy handler, with the store's
    timeout back."""
    monkeypatch.setattr(turns, "APP_WAIT_MAX_S", 0.2)
    app, daemon = both_roles
    daemon_in, daemon_leave, daemon_thread = _write_in_thread(daemon)
    assert daemon_in.wait(WAIT_S)
    ran: list[str] = []
    conn = app.connection()  # this thread's: the one the transaction below runs on
    conn.set_trace_callback(ran.append)
    threading.Timer(0.5, daemon_leave.set).start()  # the daemon commits after the polling ran out
    try:
        timeout = app.transaction(lambda c: c.execute("PRAGMA busy_timeout").fetchone()[0])
    finally:
        conn.set_trace_callback(None)
    daemon_thread.join(WAIT_S)
    assert timeout == 30_000
    assert ran[0] == "PRAGMA busy_timeout=0"
    rest = ran.index("PRAGMA busy_timeout=29800")  # the rest of the store's 30 s
    assert ran[1:rest].count("BEGIN IMMEDIATE") == rest - 1 > 10  # polled, nothing else ran
    assert ran[rest + 1:rest + 3] == ["BEGIN IMMEDIATE", "PRAGMA busy_timeout=30000"]  # the busy handler's wait


class _Clock:
    """``turns``' view of time, for a test of the polling's schedule alone: sleeping moves it on."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_polling_starts_every_tenth_of_a_millisecond_and_backs_off_to_one(monkeypatch):
    """A short wait is seen at once; a long one costs the lock's holder no CPU for retries every 0.1 ms."""
    clock = _Clock()
    monkeypatch.setattr(turns, "time", clock)
    assert turns.poll(lambda: False, 0.02) is False
    assert clock.slept[:4] == pytest.approx([0.0001, 0.0002, 0.0004, 0.0008])
    assert set(clock.slept[4:]) == {turns.POLL_MAX_S} and 15 < len(clock.slept) < 25
    answers = iter([False, False, True])
    assert turns.poll(lambda: next(answers), 1.0) is True
    assert clock.slept[-2:] == pytest.approx([0.0001, 0.0002])  # each wait starts again at 0.1 ms


def test_an_apps_short_busy_timeout_stays_short(both_roles, store_path):
    """Polling counts against ``busy_timeout_s``: a store opened with 0.3 s gives up after about
    that, not after the polling's own second on top of it."""
    from galtea_local.errors import StoreTimeoutError

    _, daemon = both_roles
    hasty = Store(str(store_path), busy_timeout_s=0.3)
    daemon_in, daemon_leave, daemon_thread = _write_in_thread(daemon)
    try:
        assert daemon_in.wait(WAIT_S)
        started = time.monotonic()
        with pytest.raises(StoreTimeoutError):
            hasty.transaction(lambda conn: conn.execute("INSERT INTO t VALUES (2)"))
        assert time.monotonic() - started < 0.9  # 0.3 s and the retry loop's last sleep, with a margin
    finally:
        daemon_leave.set()
        daemon_thread.join(WAIT_S)
        hasty.close()


def test_an_app_stopped_mid_write_holds_the_daemon_back_only_briefly(store_path, monkeypatch):
    monkeypatch.setattr(turns, "DAEMON_YIELD_MAX_S", 0.05)
    app, daemon = WriteTurns(store_path, WriterRole.APP, 0o600), WriteTurns(store_path, WriterRole.DAEMON, 0o600)
    with app.turn():  # held for the whole test: a stopped app
        for _ in range(3):  # the first waits out the cap; then the daemon stops yielding for a while
            entered, leave, thread = _enter_in_thread(daemon)
            assert entered.wait(WAIT_S)
            leave.set()
            thread.join(WAIT_S)
    assert time.monotonic() < daemon._ignore_until


def test_a_daemon_write_gives_way_to_an_app_between_two_statements(both_roles, monkeypatch):
    """An app that arrives mid-way waits for one statement of the daemon's transaction, not the
    rest of it: the daemon rolls back, the app writes, then the daemon's transaction runs again."""
    monkeypatch.setattr(turns, "APP_WAIT_MAX_S", WAIT_S)
    monkeypatch.setattr(turns, "DAEMON_YIELD_MAX_S", WAIT_S)
    app, daemon = both_roles
    daemon_in, go, runs = threading.Event(), threading.Event(), []

    def many_statements(conn) -> None:
        runs.append(len(runs))
        conn.execute("INSERT INTO t VALUES (2)")
        daemon_in.set()
        go.wait(WAIT_S)  # the app arrives here, in the middle
        for _ in range(99):
            conn.execute("INSERT INTO t VALUES (2)")

    daemon_thread = threading.Thread(target=daemon.transaction, args=(many_statements,), daemon=True)
    daemon_thread.start()
    assert daemon_in.wait(WAIT_S)
    app_in, app_leave, app_thread = _write_in_thread(app)
    assert turns.poll(daemon._turns.app_waiting, WAIT_S)  # the app holds its turn, waiting for the lock
    go.set()  # the daemon's next statement sees it
    assert app_in.wait(WAIT_S)  # the app writes before the daemon's transaction ends
    app_leave.set()
    app_thread.join(WAIT_S)
    daemon_thread.join(WAIT_S)
    assert not daemon_thread.is_alive() and runs == [0, 1]  # rolled back once, then ran through
    rows = app.read(lambda conn: conn.execute("SELECT n FROM t ORDER BY rowid").fetchall())
    assert [n for (n,) in rows] == [1] + [2] * 100  # the app's row first; the daemon's 100 once, not twice
    assert daemon.write_stats.gave_way == 1 and app.write_stats.gave_way == 0


def test_a_daemon_write_gives_way_at_most_twice_then_runs_through(both_roles, monkeypatch):
    """Apps writing flat out cannot starve the daemon: after ``GIVE_WAY_MAX`` roll-backs its
    transaction runs to the end. (An app always waiting is faked: this tests the bound alone.)"""
    app, daemon = both_roles
    monkeypatch.setattr(daemon._turns, "app_waiting", lambda: True)
    runs: list[int] = []

    def two_statements(conn) -> int:
        runs.append(len(runs))
        conn.execute("INSERT INTO t VALUES (2)")
        conn.execute("INSERT INTO t VALUES (2)")
        return len(runs)

    assert daemon.transaction(two_statements) == turns.GIVE_WAY_MAX + 1
    assert app.read(lambda conn: conn.execute("SELECT COUNT(*) FROM t").fetchone()[0]) == 2
    assert daemon.write_stats.gave_way == turns.GIVE_WAY_MAX
    assert app.transaction(two_statements) == turns.GIVE_WAY_MAX + 2  # an app's write never gives way


def test_apps_take_turns_with_each_other_too(both_roles, store_path, monkeypatch):
    """Through SQLite's lock, polled: the second app writes once the first commits."""
    monkeypatch.setattr(turns, "APP_WAIT_MAX_S", WAIT_S)
    first, _ = both_roles
    second = Store(str(store_path))
    try:
        first_in, first_leave, first_thread = _write_in_thread(first)
        assert first_in.wait(WAIT_S)
        second_in, second_leave, second_thread = _write_in_thread(second)
        _waits_then_goes(second_in, first_leave)
        second_leave.set()
        for thread in (first_thread, second_thread):
            thread.join(WAIT_S)
    finally:
        second.close()


def test_turn_files_are_private_like_the_store(store_path):
    store = Store(str(store_path))  # opening migrates: a write, so the files exist
    try:
        for suffix in ("-apps", "-writer"):
            mode = stat.S_IMODE(os.stat(f"{store_path}{suffix}").st_mode)
            assert mode == 0o600, (suffix, oct(mode))
    finally:
        store.close()


def test_stores_of_both_roles_write_one_file(store_path):
    """The roles change who goes first, never what is written."""
    app, daemon = Store(str(store_path)), Store(str(store_path), role=WriterRole.DAEMON)
    try:
        app.transaction(lambda conn: conn.execute("CREATE TABLE t (n INTEGER)"))
        threads = [threading.Thread(target=lambda s=s: [s.transaction(lambda c: c.execute("INSERT INTO t VALUES (1)"))
                                                        for _ in range(200)]) for s in (app, daemon, app)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert app.read(lambda conn: conn.execute("SELECT COUNT(*) FROM t").fetchone()[0]) == 600
    finally:
        app.close()
        daemon.close()


def test_no_garbage_collection_while_a_write_transaction_holds_the_lock(store_path):
    store = Store(str(store_path))
    try:
        assert gc.isenabled()
        assert store.transaction(lambda conn: gc.isenabled()) is False
        assert gc.isenabled()
        with pytest.raises(ZeroDivisionError):
            store.transaction(lambda conn: 1 / 0)
        assert gc.isenabled()  # and back on after a failed one
    finally:
        store.close()


def test_a_forked_child_takes_turns_with_its_own_file_descriptions(store_path, monkeypatch):
    """A child inherits the parent's descriptors: were they shared, the child's unlock would
    drop the parent's lock too (flock locks belong to the description)."""
    monkeypatch.setattr(turns, "DAEMON_YIELD_MAX_S", WAIT_S)
    monkeypatch.setattr(turns, "APP_WAIT_MAX_S", 0.05)  # the child's wait for the parent's write runs out
    app = WriteTurns(store_path, WriterRole.APP, 0o600)
    daemon = WriteTurns(store_path, WriterRole.DAEMON, 0o600)
    with app.turn():  # the parent holds an app's turn throughout
        pid = os.fork()
        if pid == 0:
            try:
                with app.turn():  # the child takes and leaves one (its wait for the parent's runs out)
                    pass
            finally:
                os._exit(0)
        assert os.waitpid(pid, 0)[1] == 0
        entered, leave, thread = _enter_in_thread(daemon)
        assert not entered.wait(0.3)  # the parent's turn still holds the daemon back
    assert entered.wait(WAIT_S)
    leave.set()
    thread.join(WAIT_S)
