"""Offline sessions: the local API, and their trip upstream through the emulator."""

from __future__ import annotations

import sqlite3
from collections import Counter
from pathlib import Path

import pytest

from galtea_local import Galtea, InvalidInputError, NotFoundError
from galtea_local.store.migrations import MIGRATIONS
from tests.emulator_fixture import EmulatorHandle
from tests.sync_helpers import drain, make_engine, open_store

# -- the local API -----------------------------------------------------------------------------


def test_create_returns_a_local_session_at_once(galtea: Galtea) -> None:
    session = galtea.sessions.create(version_id="v1", custom_id="conv-1", context="ctx", metadata={"k": 1})
    assert session.id.startswith("ses_") and session.remote_id is None and session.sync_state == "queued"
    assert (session.custom_id, session.version_id, session.context, session.metadata) == ("conv-1", "v1", "ctx",
                                                                                          {"k": 1})
    assert galtea.sessions.get(session.id) == session


def test_a_session_without_custom_id_gets_one_generated(galtea: Galtea) -> None:
    first, second = galtea.sessions.create(version_id="v1"), galtea.sessions.create(version_id="v1")
    assert first.custom_id.startswith("galtea-local-") and first.custom_id != second.custom_id


def test_get_or_create_twice_returns_the_same_local_session(galtea: Galtea) -> None:
    first = galtea.sessions.get_or_create("conv-7", version_id="v1")
    again = galtea.sessions.get_or_create("conv-7", version_id="v1")
    other_version = galtea.sessions.get_or_create("conv-7", version_id="v2")
    assert first.id == again.id != other_version.id
    assert len(galtea.sessions.list(custom_id="conv-7")) == 2


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({}, "version_id"), ({"version_id": ""}, "version_id"), ({"version_id": "v1", "metadata": "x"}, "metadata"),
     ({"version_id": "v1", "is_production": "yes"}, "is_production")],
)
def test_bad_session_input_names_the_field(galtea: Galtea, kwargs: dict, field: str) -> None:
    with pytest.raises(InvalidInputError, match=field):
        galtea.sessions.create(**kwargs)
    assert galtea.sessions.list() == []


@pytest.mark.parametrize("metadata", [[1, 2], "text", 3, True])
def test_an_update_refuses_metadata_that_is_not_an_object(galtea: Galtea, metadata: object) -> None:
    """The API answers 400 to a session whose metadata is not an object: refused at the call, nothing
    written (found by the fuzz test: folded into an unsent create, it dead-lettered the session)."""
    session = galtea.sessions.create(version_id="v1", metadata={"k": 1})
    with pytest.raises(InvalidInputError, match="metadata"):
        galtea.sessions.update(session.id, metadata=metadata)
    assert galtea.sessions.get(session.id).metadata == {"k": 1}


def test_a_custom_id_is_unique_per_version(galtea: Galtea) -> None:
    galtea.sessions.create(version_id="v1", custom_id="dup")
    with pytest.raises(InvalidInputError, match="custom_id"):
        galtea.sessions.create(version_id="v1", custom_id="dup")


def test_turns_join_the_local_session_by_id_or_custom_id(galtea: Galtea) -> None:
    session = galtea.sessions.create(version_id="v1", custom_id="conv-2")
    by_id = galtea.inference_results.create(session_id=session.id, input="a")
    by_custom = galtea.inference_results.create(session_custom_id="conv-2", version_id="v1", input="b")
    lanes = {row[0] for row in sqlite3.connect(galtea.store_path).execute("SELECT lane FROM outbox")}
    assert lanes == {"ls:1"}
    assert [r.id for r in galtea.inference_results.list(session_id=session.id)] == [by_id.id]
    assert by_custom.session_custom_id == "conv-2"


def test_an_unknown_local_session_id_is_refused(galtea: Galtea) -> None:
    prefix = galtea.store_id[:8]
    with pytest.raises(NotFoundError, match="session_id"):
        galtea.inference_results.create(session_id=f"ses_{prefix}_99", input="x")


def test_finish_is_queued_after_the_turns(galtea: Galtea) -> None:
    session = galtea.sessions.create(version_id="v1", custom_id="conv-3")
    galtea.inference_results.create(session_id=session.id, input="a")
    finished = galtea.sessions.finish(session.id, stopping_reason="GOAL_ACHIEVED")
    assert (finished.status, finished.stopping_reason) == ("COMPLETED", "GOAL_ACHIEVED")
    kinds = [row[0] for row in sqlite3.connect(galtea.store_path).execute("SELECT kind FROM outbox ORDER BY seq")]
    assert kinds == ["session_create", "create", "session_finish"]


def test_an_older_store_upgrades_and_keeps_its_queue(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    original = MIGRATIONS[:]
    try:
        MIGRATIONS[:] = MIGRATIONS[:1]  # the release before offline sessions writes the store
        with Galtea(store=path) as old:
            record = old.inference_results.create(session_id="remote-session", input="kept")
            old.inference_results.update(record.id, status="FAILED")  # folds into the queued create
    finally:
        MIGRATIONS[:] = original
    with Galtea(store=path) as new:  # this release: 0002 rebuilds the outbox
        assert (new.inference_results.get(record.id).input, new.inference_results.get(record.id).status) == (
            "kept", "FAILED")
        assert new.sessions.list() == []
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT record_seq, kind, state FROM outbox").fetchall() == [(1, "create", "pending")]
        assert [r[0] for r in conn.execute("SELECT name FROM schema_migrations ORDER BY name")] == [
            name for name, _ in MIGRATIONS]
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []


# -- upstream ----------------------------------------------------------------------------------


def _log_offline(galtea: Galtea, sessions: int, turns: int) -> list[str]:
    ids = []
    for s in range(sessions):
        session = galtea.sessions.create(version_id="v1", custom_id=f"conv-{s}")
        for t in range(turns):
            pending = galtea.inference_results.create(session_id=session.id, input=f"conv-{s} turn {t}",
                                                      status="PENDING" if t % 2 else None)
            if t % 2:
                galtea.inference_results.update(pending.id, status="GENERATED", output=f"answer {t}")
            ids.append(pending.id)
    return ids


def test_a_conversation_logged_offline_arrives_in_order(store_path: Path, emulator_factory) -> None:
    with Galtea(store=store_path) as galtea:  # no emulator runs yet: the network is absent
        _log_offline(galtea, sessions=3, turns=10)
    emulator: EmulatorHandle = emulator_factory()
    drain(make_engine(open_store(store_path), emulator))
    dump = emulator.dump(log=False)
    assert sorted(s["customId"] for s in dump["sessions"]) == ["conv-0", "conv-1", "conv-2"]
    by_session = {s["id"]: s["customId"] for s in dump["sessions"]}
    turns = sorted(dump["inferenceResults"], key=lambda r: (by_session[r["sessionId"]], r["index"]))
    assert len(turns) == 30
    for record in turns:
        custom_id, turn = record["input"]["user_message"].split(" turn ")
        assert by_session[record["sessionId"]] == custom_id and record["index"] == int(turn)
        assert record["status"] == "GENERATED"


def test_lost_session_answers_never_create_two_sessions(store_path: Path, emulator_factory) -> None:
    with Galtea(store=store_path) as galtea:
        _log_offline(galtea, sessions=8, turns=3)
        anonymous = galtea.sessions.create(version_id="v1")
        galtea.inference_results.create(session_id=anonymous.id, input="no custom id")
    emulator: EmulatorHandle = emulator_factory(seed=5, ambiguous_rate=0.3)
    drain(make_engine(open_store(store_path), emulator))
    dump = emulator.dump(log=False)
    assert dump["faults"]["ambiguous"] > 0
    assert Counter(s["customId"] for s in dump["sessions"]) == Counter(
        [f"conv-{s}" for s in range(8)] + [anonymous.custom_id])
    assert len(dump["inferenceResults"]) == 8 * 3 + 1
    with Galtea(store=store_path) as galtea:
        assert {s.sync_state for s in galtea.sessions.list()} == {"synced"}
        assert all(s.remote_id for s in galtea.sessions.list())


def test_an_unknown_version_holds_the_turns_until_retried(store_path: Path, emulator_factory) -> None:
    with Galtea(store=store_path) as galtea:
        good = galtea.sessions.create(version_id="v1", custom_id="good")
        bad = galtea.sessions.create(version_id="v-typo", custom_id="bad")
        for session in (good, bad):
            for t in range(4):
                galtea.inference_results.create(session_id=session.id, input=f"{session.custom_id} {t}")
    emulator: EmulatorHandle = emulator_factory()
    emulator.set_versions(["v1"])
    store = open_store(store_path)
    engine = make_engine(store, emulator)
    for _ in range(5):
        engine.run_once()
    with Galtea(store=store_path) as galtea:
        assert galtea.sessions.get(bad.id).sync_state == "dead"
        held = galtea.inference_results.list(session_id=bad.id)
        assert [r.sync_state for r in held] == ["queued"] * 4  # held, not dropped
    assert len(emulator.dump(log=False)["inferenceResults"]) == 4
    emulator.set_versions(["v1", "v-typo"])  # the operator fixes the cause upstream
    from galtea_local.outbox import dead

    assert store.transaction(dead.retry_dead) == 1
    drain(engine)
    dump = emulator.dump(log=False)
    assert sorted(s["customId"] for s in dump["sessions"]) == ["bad", "good"]
    assert len(dump["inferenceResults"]) == 8


def test_session_update_and_finish_reach_upstream(store_path: Path, emulator_factory) -> None:
    with Galtea(store=store_path) as galtea:
        session = galtea.sessions.create(version_id="v1", custom_id="conv-u", context="before")
        galtea.sessions.update(session.id, context="folded")  # before the create left: folds into it
        galtea.inference_results.create(session_id=session.id, input="hello")
    emulator: EmulatorHandle = emulator_factory()
    engine = make_engine(open_store(store_path), emulator)
    drain(engine)
    with Galtea(store=store_path) as galtea:
        galtea.sessions.update(session.id, metadata={"after": True})  # now a PATCH
        galtea.sessions.finish(session.id)
    drain(engine)
    (upstream,) = emulator.dump(log=False)["sessions"]
    assert (upstream["context"], upstream["metadata"], upstream["status"]) == ({"value": "folded"}, {"after": True},
                                                                               "COMPLETED")
    assert emulator.dump(log=False)["requests"]["POST /sessions"] == 1
