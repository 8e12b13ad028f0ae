"""The daemon as a real process: exactly once under faults, warm stop and restart, one pusher, sd_notify."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from galtea_local import Galtea
from galtea_local.store import Store
from tests.helpers import daemon_proc as dp

FAULTS = {"fail_rate": 0.05, "throttle_rate": 0.02, "ambiguous_rate": 0.05, "latency_ms": 5, "retry_after_s": 1}


def _prewrite(store_path: Path, sessions: list[str], count: int) -> None:
    with Galtea(store=store_path) as galtea:
        for n in range(count):
            galtea.inference_results.create(session_id=sessions[n % len(sessions)], input=f"pre {n}", output="ok")


@pytest.mark.slow
def test_exactly_once_with_writer_process_sigterm_mid_drain_and_restart(emulator_factory, tmp_path):
    emulator = emulator_factory()
    sessions = dp.create_sessions(emulator, 8)
    emulator.set_faults(**FAULTS)
    store_path = tmp_path / "store.db"
    _prewrite(store_path, sessions, 400)
    env = dp.daemon_env(emulator, store_path, dp.write_config(tmp_path))
    daemon = dp.start_daemon(env, stderr=tmp_path / "daemon.log")
    writer = subprocess.Popen([sys.executable, "-c", dp.WRITER, str(store_path), "400", *sessions],
                              stdout=subprocess.PIPE, text=True)
    store = Store(str(store_path))

    # SIGTERM while records are still queued: the warm stop must exit 0 within the shutdown timeout.
    dp.wait_for(lambda: dp.status(store)["synced"] >= 100, 60, "the drain to start", daemon)
    assert dp.status(store)["queued"] > 0, "the drain finished before the stop; nothing was tested"
    code, took = dp.stop(daemon)
    assert code == 0
    assert took < 5.0 + 3.0  # shutdown_timeout_s plus process start-up slack
    assert writer.communicate(timeout=60)[0].strip() == "400"

    # The restart finishes the drain; nothing is lost or duplicated.
    daemon = dp.start_daemon(env, stderr=tmp_path / "daemon.log")
    dp.wait_for(lambda: dp.status(store)["queued"] == 0, 90, "the drain to finish", daemon)
    assert dp.stop(daemon)[0] == 0
    final = dp.status(store)
    assert (final["synced"], final["dead"]) == (800, 0)
    check = dp.upstream_check(emulator, store)
    assert check == {"local": 800, "upstream": 800, "duplicates": 0, "missing": 0}
    assert "Traceback" not in (tmp_path / "daemon.log").read_text()


def test_a_fresh_record_goes_up_without_waiting_for_the_interval(emulator, tmp_path):
    sessions = dp.create_sessions(emulator, 1)
    store_path = tmp_path / "store.db"
    env = dp.daemon_env(emulator, store_path, dp.write_config(tmp_path, dp.fast_config(interval_s=60.0)))
    _prewrite(store_path, sessions, 1)
    daemon = dp.start_daemon(env, stderr=tmp_path / "daemon.log")
    store = Store(str(store_path))
    try:
        # The first pass (at start) pushed the first record; the next scheduled one is a minute away.
        dp.wait_for(lambda: dp.status(store)["synced"] == 1, 30, "the first pass", daemon)
        _prewrite(store_path, sessions, 1)
        dp.wait_for(lambda: dp.status(store)["synced"] == 2, 30, "the data_version wake-up", daemon)
    finally:
        assert dp.stop(daemon)[0] == 0


def test_a_lane_waiting_out_a_retry_after_is_pushed_when_it_ends_not_at_the_interval(emulator, tmp_path):
    # The lane gives its thread back for the Retry-After (Backoff.in_pass_max_wait_s); the pass
    # reports when the lane is due, and the daemon comes back then, not a minute later.
    sessions = dp.create_sessions(emulator, 1)
    store_path = tmp_path / "store.db"
    env = dp.daemon_env(emulator, store_path, dp.write_config(tmp_path, dp.fast_config(interval_s=60.0)))
    daemon = dp.start_daemon(env, stderr=tmp_path / "daemon.log")
    store = Store(str(store_path))
    try:
        # After the start-up cache refresh (its one request): the next request is the create.
        dp.wait_for(lambda: "GET /products" in emulator.dump(log=False)["requests"], 30, "the refresh", daemon)
        emulator.set_faults(retry_after_s=2, throttle_next=1)
        _prewrite(store_path, sessions, 1)
        dp.wait_for(lambda: dp.status(store)["synced"] == 1, 30, "the create after its Retry-After", daemon)
    finally:
        assert dp.stop(daemon)[0] == 0
    creates = [(entry["t"], entry["status"]) for entry in emulator.dump()["log"] if entry["route"] == "/inferenceResults"]
    assert [status for _, status in creates] == [429, 201]
    # Its Retry-After honoured, and no more: without the wake-up, the next pass came with the daemon's
    # next write of its own (the load publisher's, every 5 s: 4.8 s here) or at the interval.
    assert creates[0][0] + 2.0 - 0.05 <= creates[1][0] < creates[0][0] + 3.5


def test_second_daemon_on_the_same_store_is_refused(emulator, tmp_path):
    store_path = tmp_path / "store.db"
    env = dp.daemon_env(emulator, store_path, dp.write_config(tmp_path))
    first = dp.start_daemon(env)
    try:
        dp.wait_for(lambda: Path(f"{store_path}.lock").exists(), 20, "the first daemon's lock", first)
        time.sleep(0.5)
        second = subprocess.run([sys.executable, "-m", "galtea_local_daemon.cli", "daemon"], env=env,
                                capture_output=True, text=True, timeout=30)
        assert second.returncode != 0
        assert f"{store_path}.lock" in second.stderr
        assert "one pusher per store" in second.stderr
        assert first.poll() is None
    finally:
        assert dp.stop(first)[0] == 0


def _receive_until(sock: socket.socket, wanted: str, timeout: float, seen: list[str]) -> None:
    deadline = time.monotonic() + timeout
    while not any(wanted in message.split("\n") for message in seen):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no {wanted} on NOTIFY_SOCKET; got {seen}")
        sock.settimeout(remaining)
        try:
            seen.append(sock.recv(4096).decode())
        except TimeoutError:
            continue


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_ready_watchdog_and_stopping_arrive_on_notify_socket(emulator, tmp_path, abstract):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"@galtea-test-{uuid.uuid4().hex}" if abstract else str(tmp_path / "notify.sock")
    sock.bind("\0" + name[1:] if abstract else name)
    env = dp.daemon_env(emulator, tmp_path / "store.db", dp.write_config(tmp_path),
                        NOTIFY_SOCKET=name, WATCHDOG_USEC="400000")
    daemon = dp.start_daemon(env)
    seen: list[str] = []
    try:
        _receive_until(sock, "READY=1", 20, seen)
        _receive_until(sock, "WATCHDOG=1", 5, seen)
    finally:
        code, _ = dp.stop(daemon)
    _receive_until(sock, "STOPPING=1", 5, seen)
    sock.close()
    assert code == 0
    lines = [line for message in seen for line in message.split("\n")]
    assert seen[0].startswith("READY=1"), "READY=1 comes before any STATUS= line of a pass"
    assert lines.index("READY=1") < lines.index("WATCHDOG=1") < lines.index("STOPPING=1")
    assert any(line.startswith("STATUS=") for line in lines)


def test_watchdog_is_off_when_meant_for_another_pid(emulator, tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    env = dp.daemon_env(emulator, tmp_path / "store.db", dp.write_config(tmp_path),
                        NOTIFY_SOCKET=str(tmp_path / "notify.sock"), WATCHDOG_USEC="200000",
                        WATCHDOG_PID=str(os.getpid()))
    daemon = dp.start_daemon(env)
    seen: list[str] = []
    try:
        _receive_until(sock, "READY=1", 20, seen)
        time.sleep(0.6)
    finally:
        dp.stop(daemon)
    sock.settimeout(0.5)
    try:
        while True:
            seen.append(sock.recv(4096).decode())
    except TimeoutError:
        pass
    assert not any("WATCHDOG=1" in message for message in seen)


def test_metrics_on_loopback_port_and_textfile(emulator, tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    prom = tmp_path / "galtea_local.prom"
    config = dp.write_config(tmp_path, dp.FAST_CONFIG + f'[metrics]\nlisten = "127.0.0.1:{port}"\ntextfile = "{prom}"\n')
    sessions = dp.create_sessions(emulator, 2)
    store_path = tmp_path / "store.db"
    _prewrite(store_path, sessions, 20)
    daemon = dp.start_daemon(dp.daemon_env(emulator, store_path, config))
    store = Store(str(store_path))
    try:
        dp.wait_for(lambda: dp.status(store)["queued"] == 0, 30, "the drain", daemon)
        dp.wait_for(lambda: prom.exists() and 'galtea_local_records{state="synced"} 20.0' in prom.read_text(),
                    10, "the textfile", daemon)
        body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    finally:
        assert dp.stop(daemon)[0] == 0
    assert "galtea_local_pushes_total 20.0" in body
    for name in ("galtea_local_oldest_queued_age_seconds", "galtea_local_last_success_timestamp_seconds",
                 "galtea_local_retries_total", "galtea_local_dead_letters_total", "galtea_local_in_flight_records"):
        assert name in body
