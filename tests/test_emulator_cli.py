"""``python -m galtea_local_daemon.emulator``: announces its address, serves, stops cleanly on signals."""

from __future__ import annotations

import signal
import subprocess

import httpx
import pytest

from tests.emulator_fixture import EMULATOR_API_KEY, read_address, emulator_command, emulator_factory  # noqa: F401


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_serves_until_signal_then_exits_zero(stop_signal: signal.Signals) -> None:
    proc = subprocess.Popen(
        emulator_command(EMULATOR_API_KEY, seed=1, faults={"latency_ms": 1}),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = read_address(proc)
        assert url.startswith("http://127.0.0.1:")
        headers = {"Authorization": f"Bearer {EMULATOR_API_KEY}"}
        response = httpx.post(f"{url}/sessions", json={"versionId": "v1"}, headers=headers)
        assert response.status_code == 201
        proc.send_signal(stop_signal)
        assert proc.wait(timeout=15) == 0
        assert "Traceback" not in proc.stderr.read()  # type: ignore[union-attr]
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_rejects_inconsistent_rates() -> None:
    command = emulator_command(None, None, {"fail_rate": 0.7, "throttle_rate": 0.7})
    finished = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert finished.returncode == 2
    assert "must not exceed 1" in finished.stderr


def test_process_mode_fixture(emulator_factory) -> None:  # noqa: F811
    handle = emulator_factory(mode="process", fail_rate=1.0)
    with handle.client() as client:
        assert client.get("/sessions/x").status_code == 503
    handle.set_faults(fail_rate=0.0)
    with handle.client() as client:
        assert client.get("/sessions/x").status_code == 404
    assert handle.dump()["faults"]["fail"] == 1
