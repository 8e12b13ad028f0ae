"""Poison rows: a queued row that cannot be encoded is dead-lettered once, logged once, and the
rest of its session goes on; it can be dropped or fixed; a repeated error is rate limited.

The poison is made as an old or hostile writer would leave it: the row's ``input`` overwritten
with text that is not JSON, through a separate SQLite connection. ``sync`` runs as the real CLI
against the emulator on loopback.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest

from galtea_local import Galtea
from galtea_local_daemon.ratelimit import RateLimitedLog
from tests.sync_helpers import cli_env, galtea_local, make_engine, new_session, open_store, write_config

MAX_LOG_BYTES = 4000  # a handful of lines; the reported failure wrote 393 MB in 120 s


def _poison(store_path: Path, record_id: str, column: str = "input", text: str = "{not json") -> None:
    seq = int(record_id.rsplit("_", 1)[1])
    with sqlite3.connect(store_path) as conn:
        conn.execute(f"UPDATE inference_results SET {column} = ? WHERE seq = ?", (text, seq))


@pytest.fixture
def poisoned(tmp_path: Path, emulator):
    """Four turns of one session, the second one poisoned; returns (store path, ids, session, env)."""
    store_path = tmp_path / "store.db"
    session = new_session(emulator)
    with Galtea(store=store_path) as galtea:
        ids = [galtea.inference_results.create(session_id=session, input=f"q{i}", output=f"a{i}").id
               for i in range(4)]
    _poison(store_path, ids[1])
    env = cli_env(store_path, emulator.url, emulator.api_key, write_config(tmp_path))
    return store_path, ids, session, env


def _upstream_inputs(emulator, session: str) -> list[str]:
    records = sorted((r for r in emulator.dump(log=False)["inferenceResults"] if r["sessionId"] == session),
                     key=lambda r: r["index"])
    return [r["input"]["user_message"] for r in records]


def test_poison_row_is_dead_lettered_once_and_the_session_goes_on(poisoned, emulator):
    store_path, ids, session, env = poisoned
    first = galtea_local("sync", env=env, timeout=60)
    assert first.returncode == 0, first.stderr  # nothing left waiting: the poison is a dead letter
    assert len(first.stderr) < MAX_LOG_BYTES and "Traceback" not in first.stderr, first.stderr
    assert first.stderr.count("dead-lettered") == 1 and "input is not valid JSON" in first.stderr
    assert _upstream_inputs(emulator, session) == ["q0", "q2", "q3"]  # order kept around the hole

    with Galtea(store=store_path) as galtea:
        assert galtea.inference_results.get(ids[1]).sync_state == "dead"
    listed = galtea_local("dead", "list", "--json", env=env)
    assert ids[1] in listed.stdout and "input is not valid JSON" in listed.stdout

    again = galtea_local("sync", env=env, timeout=60)
    assert again.returncode == 0 and "dead-lettered" not in again.stderr  # settled once, not once per pass


def test_poison_row_can_be_fixed_and_retried(poisoned, emulator):
    store_path, ids, session, env = poisoned
    galtea_local("sync", env=env, timeout=60)
    with Galtea(store=store_path) as galtea:
        galtea.inference_results.update(ids[1], input="q1 fixed")  # folds into the create that never left
    assert galtea_local("dead", "retry", ids[1], env=env).returncode == 0
    assert galtea_local("sync", env=env, timeout=60).returncode == 0
    assert _upstream_inputs(emulator, session) == ["q0", "q2", "q3", "q1 fixed"]
    with Galtea(store=store_path) as galtea:
        assert galtea.inference_results.get(ids[1]).sync_state == "synced"


def test_poison_row_can_be_dropped(poisoned, emulator):
    store_path, ids, session, env = poisoned
    galtea_local("sync", env=env, timeout=60)
    dropped = galtea_local("dead", "drop", ids[1], env=env)
    assert dropped.returncode == 0 and "1 operation(s) dropped" in dropped.stdout + dropped.stderr
    with Galtea(store=store_path) as galtea:
        assert galtea.inference_results.get(ids[1]).sync_state == "dropped"
    assert len(_upstream_inputs(emulator, session)) == 3


def test_poisoned_session_create_holds_its_turns_visibly(tmp_path: Path, emulator):
    store_path = tmp_path / "store.db"
    with Galtea(store=store_path) as galtea:
        session = galtea.sessions.create(version_id="v1", metadata={"k": 1})
        turn = galtea.inference_results.create(session_id=session.id, input="q")
    seq = int(session.id.rsplit("_", 1)[1])
    with sqlite3.connect(store_path) as conn:
        conn.execute("UPDATE sessions SET metadata_json = '{' WHERE seq = ?", (seq,))
    env = cli_env(store_path, emulator.url, emulator.api_key, write_config(tmp_path))
    result = galtea_local("sync", env=env, timeout=60)
    assert result.returncode == 2 and result.stderr.count("dead-lettered") == 1  # the turn still waits
    assert "metadata_json is not valid JSON" in result.stderr
    with Galtea(store=store_path) as galtea:
        assert galtea.sessions.get(session.id).sync_state == "dead"
        assert galtea.inference_results.get(turn.id).sync_state == "queued"


def test_a_repeated_unexpected_error_is_logged_once_and_the_pass_ends(tmp_path: Path, emulator, caplog):
    with Galtea(store=tmp_path / "s.db") as galtea:
        session = new_session(emulator)
        for i in range(3):
            galtea.inference_results.create(session_id=session, input=f"q{i}")
    store = open_store(tmp_path / "s.db")
    engine = make_engine(store, emulator, concurrency=1)

    def broken(body):  # a bug in the push path, the same on every pass
        raise RuntimeError("boom")

    engine.client.create_inference_result = broken
    try:
        with caplog.at_level(logging.ERROR, logger="galtea_local.sync"):
            reports = [engine.run_once() for _ in range(20)]
    finally:
        engine.close()
        store.close()
    assert not any(report.more_due for report in reports)  # `sync` stops instead of spinning
    assert len([r for r in caplog.records if "unexpected error" in r.getMessage()]) == 1


def test_rate_limited_log_counts_what_it_held_back(caplog):
    now = [0.0]
    limited = RateLimitedLog(logging.getLogger("test.ratelimit"), interval_s=60, clock=lambda: now[0])
    with caplog.at_level(logging.ERROR, logger="test.ratelimit"):
        for _ in range(1000):
            try:
                raise ValueError("same")
            except ValueError:
                limited.exception("k", "failed")
        now[0] = 61.0
        try:
            raise ValueError("same")
        except ValueError:
            limited.exception("k", "failed")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["failed", "failed (999 more like it in the last 60 s were not logged)"]
