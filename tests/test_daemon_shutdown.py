"""SIGTERM on an SQLite daemon: the warm stop waits for the pass in flight, and holds its deadline
even when the store is locked. Real daemon processes, real signals, a watchdog on every wait."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from galtea_local import Galtea
from tests.emulator_fixture import EmulatorHandle
from tests.helpers.daemon_proc import create_sessions, daemon_env, start_daemon, stop, wait_for, write_config

CONFIG = """\
[store]
busy_timeout_s = {busy}
[upstream]
read_timeout_s = 5.0
[sync]
interval_s = 0.2
backoff_initial_s = 0.05
backoff_max_s = 0.3
lease_s = 10.0
shutdown_timeout_s = {shutdown}
"""


def in_state(store_path: Path, state: str) -> set[int]:
    conn = sqlite3.connect(store_path)
    try:
        return {row[0] for row in conn.execute("SELECT seq FROM outbox WHERE state = ?", (state,))}
    finally:
        conn.close()


def started(log: Path) -> Callable[[], bool]:
    return lambda: log.exists() and "daemon started" in log.read_text()


def test_the_warm_stop_lets_the_request_in_flight_finish(
    emulator_factory: Callable[..., EmulatorHandle], store_path: Path, tmp_path: Path
) -> None:
    emulator = emulator_factory()
    sessions = create_sessions(emulator, 3)
    emulator.set_faults(latency_ms=800)  # every request takes 0.8 s from now on
    with Galtea(store=store_path) as local:
        for n, session in enumerate(sessions):
            local.traces.create(session_id=session, input=f"q{n}")
    config = write_config(tmp_path, CONFIG.format(busy=5.0, shutdown=5.0))
    log = tmp_path / "daemon.log"
    daemon = start_daemon(daemon_env(emulator, store_path, config), stderr=log)
    wait_for(lambda: bool(in_state(store_path, "sending")), 30, "a request in flight", daemon)
    in_flight = in_state(store_path, "sending")
    code, _ = stop(daemon)
    assert code == 0, log.read_text()[-2000:]
    assert "stopped cleanly" in log.read_text()
    assert in_state(store_path, "sending") == set()  # nothing abandoned as "maybe sent"
    assert in_flight <= in_state(store_path, "done")  # the requests in flight were settled


def test_sigterm_is_honoured_while_the_store_is_locked(
    emulator_factory: Callable[..., EmulatorHandle], store_path: Path, tmp_path: Path
) -> None:
    emulator = emulator_factory()
    Galtea(store=store_path).close()
    config = write_config(tmp_path, CONFIG.format(busy=30.0, shutdown=1.0))
    log = tmp_path / "daemon.log"
    daemon = start_daemon(daemon_env(emulator, store_path, config), stderr=log)
    wait_for(started(log), 30, "the daemon to start", daemon)
    holder = sqlite3.connect(store_path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # the next pass's first write waits up to busy_timeout_s (30 s)
    try:
        time.sleep(0.5)  # a pass (every 0.2 s) is now blocked in the store
        code, took = stop(daemon, timeout=15.0)  # the watchdog: far below the 30 s a blocked read would take
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert code == 0, log.read_text()[-2000:]
    print(f"\nSIGTERM with the SQLite store locked: exit in {took:.2f}s (shutdown_timeout_s 1 s)")
