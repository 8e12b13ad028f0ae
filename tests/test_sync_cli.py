"""`galtea-local sync | status | dead` as real subprocesses against the emulator."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from galtea_local import Galtea
from tests.emulator_fixture import EmulatorHandle
from tests.sync_helpers import cli_env, closed_port_url, galtea_local, new_session, write_config

WRONG_KEY = "gsk_wrong_key"


def status_of(env: dict[str, str]) -> dict[str, Any]:
    result = galtea_local("status", "--json", env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def queue(store_path: Path, session_id: str, count: int, **extra: Any) -> list[str]:
    with Galtea(store=store_path) as local:
        return [local.traces.create(session_id=session_id, input=f"turn {n}", **extra).id for n in range(count)]


def test_wrong_key_dead_letters_nothing_and_the_right_key_drains(emulator: EmulatorHandle, tmp_path: Path) -> None:
    store_path, config = tmp_path / "store.db", write_config(tmp_path)
    queue(store_path, new_session(emulator), 5)
    wrong = cli_env(store_path, emulator.url, WRONG_KEY, config)
    assert galtea_local("sync", env=wrong).returncode == 2
    status = status_of(wrong)
    assert (status["auth_failing"], status["dead"], status["queued"], status["synced"]) == (True, 0, 5, 0)
    assert emulator.dump(log=False)["inferenceResults"] == []

    right = cli_env(store_path, emulator.url, emulator.api_key, config)
    result = galtea_local("sync", env=right)
    assert result.returncode == 0, result.stderr
    status = status_of(right)
    assert (status["auth_failing"], status["dead"], status["queued"], status["synced"]) == (False, 0, 0, 5)
    assert len(emulator.dump(log=False)["inferenceResults"]) == 5


def test_a_rejected_record_is_dead_alone_then_retried(emulator: EmulatorHandle, tmp_path: Path) -> None:
    store_path, config = tmp_path / "store.db", write_config(tmp_path)
    env = cli_env(store_path, emulator.url, emulator.api_key, config)
    session_id = new_session(emulator)
    queue(store_path, session_id, 3)
    with Galtea(store=store_path) as local:  # no session has this custom id yet: the API answers 400
        orphan = local.traces.create(session_custom_id="late-conv", version_id="v1", input="early bird").id
    queue(store_path, session_id, 2)

    assert galtea_local("sync", env=env).returncode == 0  # dead letters do not count as waiting
    dead = json.loads(galtea_local("dead", "list", "--json", env=env).stdout)
    assert [(row["id"], row["kind"], row["last_status"]) for row in dead] == [(orphan, "create", 400)]
    assert "late-conv" in dead[0]["last_error"]
    assert len(emulator.dump(log=False)["inferenceResults"]) == 5

    late_session = new_session(emulator, custom_id="late-conv")
    assert galtea_local("dead", "retry", "--all", env=env).stdout.startswith("1 operation")
    assert galtea_local("sync", env=env).returncode == 0
    arrived = [r for r in emulator.dump(log=False)["inferenceResults"] if r["sessionId"] == late_session]
    assert [r["input"] for r in arrived] == [{"user_message": "early bird"}]
    assert (status_of(env)["dead"], status_of(env)["synced"]) == (0, 6)
    with Galtea(store=store_path) as local:
        assert local.traces.get(orphan).sync_state == "synced"


def test_dead_drop_gives_up_on_the_record(emulator: EmulatorHandle, tmp_path: Path) -> None:
    store_path, config = tmp_path / "store.db", write_config(tmp_path)
    env = cli_env(store_path, emulator.url, emulator.api_key, config)
    with Galtea(store=store_path) as local:
        orphan = local.traces.create(session_custom_id="nobody", version_id="v1", input="lost").id
    assert galtea_local("sync", env=env).returncode == 0
    result = galtea_local("dead", "drop", orphan, env=env)
    assert result.stdout.startswith("1 operation"), result.stderr
    status = status_of(env)
    assert (status["dead"], status["dropped"], status["queued"]) == (0, 1, 0)
    assert galtea_local("dead", "list", env=env).stdout.strip() == "no dead letters"
    assert galtea_local("sync", env=env).returncode == 0
    assert emulator.dump(log=False)["inferenceResults"] == []


def test_sync_exits_2_while_the_api_is_unreachable(emulator: EmulatorHandle, tmp_path: Path) -> None:
    store_path, config = tmp_path / "store.db", write_config(tmp_path)
    queue(store_path, new_session(emulator), 3)
    down = cli_env(store_path, closed_port_url(), emulator.api_key, config)
    result = galtea_local("sync", env=down, timeout=30)
    assert result.returncode == 2, result.stderr
    status = status_of(down)
    assert (status["queued"], status["dead"], status["auth_failing"]) == (3, 0, False)
    assert "not sent" in (status["last_error"] or "")
    up = cli_env(store_path, emulator.url, emulator.api_key, config)
    result = galtea_local("sync", env=up)
    assert result.returncode == 0, (result.stderr, status_of(up))  # seen once in CI-like runs: say why


def test_sync_exits_0_with_nothing_queued(emulator: EmulatorHandle, tmp_path: Path) -> None:
    store_path = tmp_path / "store.db"
    Galtea(store=store_path).close()
    assert galtea_local("sync", env=cli_env(store_path, emulator.url, emulator.api_key)).returncode == 0
