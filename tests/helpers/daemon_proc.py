"""Run ``galtea-local daemon`` as a real subprocess against an emulator, for the daemon tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from galtea_local.status import store_status
from galtea_local.store import Store

# Short waits so faults cost the tests fractions of a second, not production minutes.
FAST_SYNC: dict[str, float] = {
    "interval_s": 0.3,
    "backoff_initial_s": 0.05,
    "backoff_max_s": 0.5,
    "backoff_jitter_s": 0.05,
    "lease_s": 5.0,
    "shutdown_timeout_s": 5.0,
    "commit_grace_s": 1.0,
}


def fast_config(read_timeout_s: float = 3.0, **sync: float) -> str:
    """The daemon's config for tests: :data:`FAST_SYNC`, with ``sync`` keys changed or added."""
    lines = [f"{key} = {value!r}" for key, value in {**FAST_SYNC, **sync}.items()]
    return "\n".join(["[upstream]", f"read_timeout_s = {read_timeout_s!r}", "[sync]", *lines, ""])


FAST_CONFIG = fast_config()

# A writer in another process: ``python -c WRITER STORE N SESSION...`` creates N records
# round-robin over the sessions, then prints how many it created.
WRITER = """
import sys
from galtea_local import Galtea
store, count, sessions = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
with Galtea(store=store) as g:
    for n in range(count):
        g.inference_results.create(session_id=sessions[n % len(sessions)], input=f"writer {n}", output="ok")
print(count, flush=True)
"""


def write_config(folder: Path, text: str = FAST_CONFIG) -> Path:
    path = folder / "config.toml"
    path.write_text(text)
    return path


def clean_env() -> dict[str, str]:
    """This environment without any setting the daemon reads (so a developer's own never leaks in)."""
    skip = ("GALTEA_", "NOTIFY_SOCKET", "WATCHDOG_", "CREDENTIALS_DIRECTORY")
    return {k: v for k, v in os.environ.items() if not k.startswith(skip)}


def daemon_env(emulator: Any, store_path: Path, config: Path | None, api_key: str | None = None,
               **extra: str) -> dict[str, str]:
    env = clean_env()
    env.update(GALTEA_API_URL=emulator.url, GALTEA_LOCAL_STORE=str(store_path),
               GALTEA_API_KEY=api_key or emulator.api_key)
    if config is not None:
        env["GALTEA_LOCAL_CONFIG"] = str(config)
    env.update(extra)
    return env


def start_daemon(env: dict[str, str], *args: str, stderr: Path | None = None) -> subprocess.Popen[bytes]:
    """Start the daemon; its stderr goes to ``stderr`` (a file, so a long run never blocks on a pipe)."""
    sink = open(stderr, "ab") if stderr else subprocess.DEVNULL  # noqa: SIM115 - the child owns it
    return subprocess.Popen([sys.executable, "-m", "galtea_local_daemon.cli", "daemon", *args],
                            env=env, stdout=subprocess.DEVNULL, stderr=sink)


def stop(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> tuple[int, float]:
    """SIGTERM; return (exit code, seconds it took). Kills and fails the test if it hangs."""
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"the daemon did not stop within {timeout}s of SIGTERM") from None
    return code, time.monotonic() - started


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, proc: Any = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the daemon exited ({proc.returncode}) while waiting for {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def wait_started(proc: subprocess.Popen[bytes], log: Path, timeout: float = 60.0) -> None:
    """Wait until the daemon logged that it runs (its scheduler and signal handlers are in place)."""
    wait_for(lambda: log.exists() and "daemon started" in log.read_text(), timeout, "the daemon to start", proc)


def status(store: Store) -> dict[str, Any]:
    return store_status(store)


def create_sessions(emulator: Any, count: int) -> list[str]:
    with emulator.client(timeout=10) as http:
        return [http.post("/sessions", json={"productId": "p-test"}).raise_for_status().json()["id"]
                for _ in range(count)]


def upstream_check(emulator: Any, store: Store) -> dict[str, int]:
    """Local records against what the emulator holds: counts, duplicates (same session and input), missing."""
    upstream = httpx.get(f"{emulator.url}/_emulator/dump", params={"log": "0"}).json()["inferenceResults"]
    copies = Counter((r["sessionId"], str(r["input"])) for r in upstream)
    ids = {r["id"] for r in upstream}
    local = store.read(lambda conn: conn.execute("SELECT remote_id FROM inference_results").fetchall())
    return {
        "local": len(local),
        "upstream": len(upstream),
        "duplicates": sum(c - 1 for c in copies.values()),
        "missing": sum(1 for row in local if row[0] not in ids),
    }
