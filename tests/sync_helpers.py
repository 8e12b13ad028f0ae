"""Shared pieces of the sync-engine tests: an engine on a real store and a real emulator,
a bounded drain loop, upstream views for field-by-field comparison, and the CLI as a subprocess."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from galtea_local.status import store_status
from galtea_local.store import Store
from galtea_local_daemon.backoff import Backoff
from galtea_local_daemon.engine import EngineSettings, SyncEngine
from galtea_local_daemon.steps import PassReport
from galtea_local_daemon.upstream import UpstreamClient
from tests.emulator_fixture import EmulatorHandle

VERSION_ID = "v1"
# Server-assigned or session-bound: they differ between two runs of the same calls.
VOLATILE = frozenset({"id", "createdAt", "sessionId"})
# A backoff that keeps a faulty run short; waits stay under the in-pass limit.
FAST_BACKOFF = dict(initial_s=0.05, max_s=0.5, jitter_s=0.05)
# The emulator commits in-process at once unless told to commit late: a short grace keeps tests short.
COMMIT_GRACE_S = 0.3
FAST_CONFIG = """
[sync]
backoff_initial_s = 0.05
backoff_max_s = 0.5
backoff_jitter_s = 0.05
concurrency = {concurrency}
commit_grace_s = 0.3
"""


def make_engine(store: Store, handle: EmulatorHandle, *, concurrency: int = 8, api_key: str | None = None,
                lease_s: float = 60.0, commit_grace_s: float = COMMIT_GRACE_S, answered_grace_s: float = 1.0,
                **options: Any) -> SyncEngine:
    client = UpstreamClient(handle.url, api_key or handle.api_key, max_connections=max(8, concurrency),
                            **options)
    settings = EngineSettings(concurrency=concurrency, lease_s=lease_s, commit_grace_s=commit_grace_s,
                              answered_grace_s=answered_grace_s)
    return SyncEngine(store, client, settings, backoff=Backoff(**FAST_BACKOFF))


def open_store(path: Path) -> Store:
    return Store(str(path))


def queued(store: Store) -> int:
    return store_status(store)["queued"]


def idle_pause(report: PassReport, pause_s: float) -> float:
    """How long to wait after a pass that left nothing due: until its first waiting lane is due
    (a Retry-After, a backoff: the daemon wakes then too), within [pause_s, 1 s]."""
    if report.next_due_at is None:
        return pause_s
    return min(1.0, max(pause_s, report.next_due_at - time.time()))


def drain(engine: SyncEngine, *, max_passes: int = 500, pause_s: float = 0.02) -> int:
    """Run passes until no record waits; return how many passes it took (fails past ``max_passes``).

    Between passes that leave work behind (backoff, throttle), pause briefly: the
    bound is on passes, so the test asserts counts, not wall-clock time.
    """
    for passes in range(1, max_passes + 1):
        report = engine.run_once()
        if queued(engine.store) == 0:
            return passes
        if not report.more_due:
            time.sleep(idle_pause(report, pause_s))
    raise AssertionError(f"still {queued(engine.store)} record(s) queued after {max_passes} passes")


def new_session(handle: EmulatorHandle, custom_id: str | None = None, version_id: str = VERSION_ID) -> str:
    body = {"versionId": version_id, **({"customId": custom_id} if custom_id else {})}
    with handle.client() as http:
        response = http.post("/sessions", json=body)
        response.raise_for_status()
        return response.json()["id"]


def upstream_by_session(handle: EmulatorHandle) -> dict[str, list[dict[str, Any]]]:
    """Live records upstream, grouped by session, each list in server ``index`` order."""
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in handle.dump(log=False)["inferenceResults"]:
        grouped[record["sessionId"]].append(record)
    return {sid: sorted(records, key=lambda r: r["index"]) for sid, records in grouped.items()}


def comparable(record: dict[str, Any]) -> dict[str, Any]:
    """A record without the fields that differ between two runs of the same calls."""
    return {key: value for key, value in record.items() if key not in VOLATILE}


def closed_port_url() -> str:
    """A loopback URL on which nothing listens: every request is 'not sent'."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def write_config(tmp_path: Path, concurrency: int = 8) -> Path:
    path = tmp_path / "galtea-local.toml"
    path.write_text(FAST_CONFIG.format(concurrency=concurrency))
    return path


def cli_env(store_path: Path, url: str, api_key: str, config: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GALTEA_")}
    env.update(GALTEA_API_KEY=api_key, GALTEA_API_URL=url, GALTEA_LOCAL_STORE=str(store_path))
    if config is not None:
        env["GALTEA_LOCAL_CONFIG"] = str(config)
    return env


def galtea_local(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the real ``galtea-local`` command line (the module, so the venv's python runs it)."""
    return subprocess.run(
        [sys.executable, "-m", "galtea_local_daemon.cli", *args],
        env=env, capture_output=True, text=True, timeout=timeout,
    )


def galtea_local_popen(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "galtea_local_daemon.cli", *args],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )


def kill_sync_once_sending(env: dict[str, str], sent: Callable[[], int], delay_s: float) -> bool:
    """Start ``galtea-local sync``, wait until ``sent()`` grows (it has sent something), SIGKILL it
    ``delay_s`` later. Returns False when the run finished on its own before the kill."""
    before = sent()
    proc = galtea_local_popen("sync", env=env)
    try:
        while sent() == before and proc.poll() is None:
            time.sleep(0.005)
        time.sleep(delay_s)
        if proc.poll() is not None:
            return False
        proc.send_signal(signal.SIGKILL)
        return proc.wait(10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()  # type: ignore[union-attr]
