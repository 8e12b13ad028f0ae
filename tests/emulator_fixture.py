"""Pytest fixtures that run the Galtea API emulator as a real HTTP server on loopback.

Load with ``pytest_plugins = ["tests.emulator_fixture"]`` in ``tests/conftest.py``.

- ``emulator``: one emulator on a background thread, key ``EMULATOR_API_KEY``.
- ``emulator_factory(mode="thread"|"process", api_key=..., seed=0, **faults)``:
  start as many as a test needs; every one is stopped at teardown.

Each returns an :class:`EmulatorHandle` with ``url``, ``api_key``,
``set_faults(**settings)``, ``dump()``, ``reset()`` and ``client()``.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from galtea_local_daemon.emulator import EmulatorThread, FaultConfig

EMULATOR_API_KEY = "gsk_emulator_test_key"
START_TIMEOUT_S = 20.0


class EmulatorHandle:
    """A running emulator, driven through its HTTP control endpoints (so both modes behave alike)."""

    def __init__(self, url: str, api_key: str | None, stopper: Callable[[], None]) -> None:
        self.url = url
        self.api_key = api_key
        self._stopper = stopper
        self._control = httpx.Client(base_url=url, timeout=10.0)

    def set_faults(self, **settings: Any) -> dict[str, Any]:
        """Change fault settings live: fail_rate, throttle_rate, ambiguous_rate, latency_ms,
        retry_after_s, retry_after_http_date, api_key, rate_limit_rps, rate_limit_burst, seed.
        Returns the settings now in force."""
        response = self._control.post("/_emulator/faults", json=settings)
        response.raise_for_status()
        return response.json()

    def dump(self, log: bool = True) -> dict[str, Any]:
        """Everything stored (live and deleted) plus fault and request counters."""
        response = self._control.get("/_emulator/dump", params={"log": "1" if log else "0"})
        response.raise_for_status()
        return response.json()

    def set_versions(self, version_ids: list[str] | None) -> None:
        """Only these version ids exist from now on (None: any id is accepted, the default)."""
        self._control.post("/_emulator/versions", json={"versionIds": version_ids}).raise_for_status()

    def reset(self) -> None:
        """Forget everything stored and zero the counters; fault settings stay."""
        self._control.post("/_emulator/reset").raise_for_status()

    def client(self, api_key: str | None = None, **kwargs: Any) -> httpx.Client:
        """An ``httpx.Client`` on the emulator, sending ``api_key`` (default: the accepted one)."""
        key = api_key if api_key is not None else (self.api_key or EMULATOR_API_KEY)
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {key}"}, **kwargs)

    def stop(self) -> None:
        """Stop the server; calling it again does nothing."""
        self._control.close()
        stopper, self._stopper = self._stopper, lambda: None
        stopper()


def start_thread(api_key: str | None, seed: int | None, faults: dict[str, Any]) -> EmulatorHandle:
    server = EmulatorThread(config=FaultConfig(api_key=api_key, **faults), seed=seed).start()
    return EmulatorHandle(server.url, api_key, server.stop)


def read_address(proc: subprocess.Popen[str]) -> str:
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)  # type: ignore[arg-type]
    if not selector.select(START_TIMEOUT_S):
        raise RuntimeError("emulator printed no address in time")
    line = proc.stdout.readline()  # type: ignore[union-attr]
    if not line.startswith("listening on "):
        raise RuntimeError(f"emulator did not start: {line!r}")
    return line.removeprefix("listening on ").strip()


def emulator_command(api_key: str | None, seed: int | None, faults: dict[str, Any]) -> list[str]:
    """The command line for ``python -m galtea_local_daemon.emulator`` with these settings."""
    command = [sys.executable, "-m", "galtea_local_daemon.emulator", "--port", "0"]
    if api_key is not None:
        command += ["--api-key", api_key]
    if seed is not None:
        command += ["--seed", str(seed)]
    for name, value in faults.items():
        flag = {"retry_after_s": "--retry-after", "rate_limit_rps": "--rate-limit",
                "rate_limit_burst": "--rate-burst"}.get(name, "--" + name.replace("_", "-"))
        command += [flag, str(value)]
    return command


def start_process(api_key: str | None, seed: int | None, faults: dict[str, Any]) -> EmulatorHandle:
    proc = subprocess.Popen(
        emulator_command(api_key, seed, faults), stdout=subprocess.PIPE, text=True, env=dict(os.environ)
    )

    def stop() -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]

    try:
        return EmulatorHandle(read_address(proc), api_key, stop)
    except BaseException:
        stop()
        raise


@pytest.fixture
def emulator_factory() -> Iterator[Callable[..., EmulatorHandle]]:
    """Start emulators: ``emulator_factory(mode="thread", api_key=EMULATOR_API_KEY, seed=0, **faults)``.

    ``mode="process"`` runs the real CLI in a subprocess; ``api_key=None`` accepts any key.
    """
    handles: list[EmulatorHandle] = []

    def start(
        mode: str = "thread", api_key: str | None = EMULATOR_API_KEY, seed: int | None = 0, **faults: Any
    ) -> EmulatorHandle:
        starter = {"thread": start_thread, "process": start_process}[mode]
        handle = starter(api_key, seed, faults)
        handles.append(handle)
        return handle

    yield start
    for handle in reversed(handles):
        handle.stop()


@pytest.fixture
def emulator(emulator_factory: Callable[..., EmulatorHandle]) -> EmulatorHandle:
    """One emulator on a background thread, accepting only ``EMULATOR_API_KEY``, no faults."""
    return emulator_factory()
