"""`galtea-local sync` killed with SIGKILL while it pushes: after a clean run, each record is upstream once.

A kill between the write-ahead mark and the answer leaves a "maybe sent" create; the next
run must reconcile it against the server's list instead of sending it again.
"""

from __future__ import annotations

import random
from contextlib import closing
from pathlib import Path

from galtea_local import Galtea
from tests.emulator_fixture import EmulatorHandle
from tests.sync_helpers import (
    cli_env,
    galtea_local,
    kill_sync_once_sending,
    new_session,
    open_store,
    queued,
    upstream_by_session,
    write_config,
)

SESSIONS, PER_SESSION, KILLS = 10, 50, 12


def creates_seen(emulator: EmulatorHandle) -> int:
    return emulator.dump(log=False)["requests"].get("POST /inferenceResults", 0)


def kill_while_pushing(emulator: EmulatorHandle, env: dict[str, str], rng: random.Random) -> bool:
    """Start a sync, wait until it has pushed something, SIGKILL it a random moment later.

    Returns False when the run finished on its own before the kill.
    """
    return kill_sync_once_sending(env, lambda: creates_seen(emulator), rng.uniform(0.0, 0.25))


def test_sigkill_while_pushing_loses_and_duplicates_nothing(emulator: EmulatorHandle, tmp_path: Path) -> None:
    sessions = [new_session(emulator) for _ in range(SESSIONS)]
    emulator.set_faults(latency_ms=20)  # keeps requests in flight when the kill lands
    store_path = tmp_path / "store.db"
    with Galtea(store=store_path) as local:
        for turn in range(PER_SESSION):
            for session, session_id in enumerate(sessions):
                local.traces.create(session_id=session_id, input=f"s{session}-t{turn}")
    env = cli_env(store_path, emulator.url, emulator.api_key, write_config(tmp_path, concurrency=2))
    rng = random.Random(7)
    kills = sum(kill_while_pushing(emulator, env, rng) for _ in range(KILLS))
    assert kills >= 10

    emulator.set_faults(latency_ms=0)
    result = galtea_local("sync", env=env)
    assert result.returncode == 0, result.stderr
    records = emulator.dump(log=False)["inferenceResults"]
    markers = [r["input"]["user_message"] for r in records]
    assert len(markers) == SESSIONS * PER_SESSION == len(set(markers))
    grouped = upstream_by_session(emulator)
    for session, session_id in enumerate(sessions):
        expected = [f"s{session}-t{turn}" for turn in range(PER_SESSION)]
        assert [r["input"]["user_message"] for r in grouped[session_id]] == expected
    with closing(open_store(store_path)) as store:
        assert queued(store) == 0
        synced = store.read(lambda c: c.execute(
            "SELECT COUNT(*) FROM inference_results WHERE sync_state = 'synced' AND remote_id IS NOT NULL"
        ).fetchone()[0])
    assert synced == SESSIONS * PER_SESSION
    requests = emulator.dump(log=False)["requests"]
    # Kills landed mid-request: the restarted runs reconciled maybe-sent creates by listing.
    assert requests.get("GET /inferenceResults", 0) >= KILLS // 2
    assert requests["POST /inferenceResults"] >= SESSIONS * PER_SESSION
