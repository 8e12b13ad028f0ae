"""SDK 5.12 behaviours beyond the parity script: lost answers, refusals, errors, shutdown."""

from __future__ import annotations

import sqlite3
import time
from contextlib import closing
from pathlib import Path

import pytest

import galtea_local
from galtea_local import EntityNotFoundException, EntityNotFoundHTTPError, Galtea, NotFoundError, Session, Trace
from tests.emulator_fixture import EmulatorHandle, emulator, emulator_factory  # noqa: F401  (fixtures)
from tests.sync_helpers import drain, make_engine, new_session, open_store

V = "v1"


def _sync(store_path: Path, handle: EmulatorHandle) -> None:
    with closing(open_store(store_path)) as store:
        engine = make_engine(store, handle)
        try:
            drain(engine)
        finally:
            engine.close()


def test_a_lost_batch_answer_is_reconciled_not_resent(store_path: Path, emulator: EmulatorHandle) -> None:  # noqa: F811
    session_id = new_session(emulator)
    with Galtea(store=store_path) as local:
        made = local.traces.create_batch(session_id=session_id, conversation_turns=[
            {"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
            {"role": "user", "content": "q2"}])
    emulator.set_faults(ambiguous_rate=1.0)  # the batch is applied, its answer lost
    with closing(open_store(store_path)) as store:
        engine = make_engine(store, emulator)
        engine.run_once()
        emulator.set_faults(ambiguous_rate=0.0)
        drain(engine)
        engine.close()
    dump = emulator.dump(log=False)
    assert [r["input"]["user_message"] for r in dump["inferenceResults"]] == ["q1", "q2"]
    assert dump["requests"]["POST /inferenceResults/batch"] == 1
    with Galtea(store=store_path) as local:
        remote = {r["id"] for r in dump["inferenceResults"]}
        assert {local.traces.get(t.id).remote_id for t in made} == remote
        assert [local.traces.get(t.id).index for t in made] == [0, 1]


def test_an_update_of_a_batch_record_follows_the_batch(store_path: Path, emulator: EmulatorHandle) -> None:  # noqa: F811
    session_id = new_session(emulator)
    with Galtea(store=store_path) as local:
        first, = local.traces.create_batch(session_id=session_id, conversation_turns=[
            {"role": "user", "content": "q1"}])
        local.traces.update(first.id, output="later", latency=3.0)
    _sync(store_path, emulator)
    (record,) = emulator.dump(log=False)["inferenceResults"]
    assert (record["actualOutput"], record["latency"]) == ("later", 3.0)


def test_create_with_a_taken_custom_id_is_dead_lettered_with_the_api_message(
    store_path: Path, emulator: EmulatorHandle  # noqa: F811
) -> None:
    new_session(emulator, custom_id="taken")
    with Galtea(store=store_path) as local:
        session = local.sessions.create(version_id=V, custom_id="taken")
        joined = local.sessions.get_or_create(custom_id="taken", version_id="v2")  # other version: a new one
    _sync_until_dead(store_path, emulator)
    with Galtea(store=store_path) as local:
        assert local.sessions.get(session.id).sync_state == "dead"
        assert local.sessions.get(joined.id).sync_state == "synced"
    with closing(sqlite3.connect(store_path)) as conn:
        (error,) = conn.execute("SELECT last_error FROM outbox WHERE state = 'dead'").fetchone()
    assert "already exists" in error


def _sync_until_dead(store_path: Path, handle: EmulatorHandle) -> None:
    with closing(open_store(store_path)) as store:
        engine = make_engine(store, handle)
        for _ in range(5):
            engine.run_once()
        engine.close()


def test_get_or_create_joins_the_upstream_session_and_its_turns_go_there(
    store_path: Path, emulator: EmulatorHandle  # noqa: F811
) -> None:
    upstream_id = new_session(emulator, custom_id="ticket-1")
    with Galtea(store=store_path) as local:
        session = local.sessions.get_or_create(custom_id="ticket-1", version_id=V)
        local.traces.create(session_id=session.id, input="hello")
    _sync(store_path, emulator)
    dump = emulator.dump(log=False)
    assert len(dump["sessions"]) == 1 and dump["requests"]["POST /sessions"] == 1  # only the one above
    assert [r["sessionId"] for r in dump["inferenceResults"]] == [upstream_id]
    with Galtea(store=store_path) as local:
        assert local.sessions.get(session.id).remote_id == upstream_id


def test_session_delete_and_custom_id_change_reach_upstream(store_path: Path, emulator: EmulatorHandle) -> None:  # noqa: F811
    with Galtea(store=store_path) as local:
        kept = local.sessions.create(version_id=V, custom_id="a", run_id="run-7")
        gone = local.sessions.create(version_id=V, custom_id="b")
    _sync(store_path, emulator)
    with Galtea(store=store_path) as local:
        local.sessions.update(kept.id, custom_id="a2")
        local.sessions.delete(gone.id)
        with pytest.raises(NotFoundError):
            local.sessions.get(gone.id)
        assert [s.custom_id for s in local.sessions.list(version_id=V)] == ["a2"]
    _sync(store_path, emulator)
    dump = emulator.dump(log=False)
    assert [(s["customId"], s["runId"]) for s in dump["sessions"]] == [("a2", "run-7")]
    assert [s["customId"] for s in dump["deletedSessions"]] == ["b"]


def test_session_list_filters_and_defaults(galtea: Galtea) -> None:
    plain = galtea.sessions.create(version_id=V, custom_id="p")
    tested = galtea.sessions.create(version_id=V, custom_id="t", test_case_id="tc-1")
    galtea.sessions.finish(tested.id)
    assert (plain.status, plain.is_production, tested.is_production) == ("PENDING", True, False)
    assert isinstance(plain, Session)
    assert [s.id for s in galtea.sessions.list(test_case_id="tc-1")] == [tested.id]
    assert [s.id for s in galtea.sessions.list(version_id=V, status="COMPLETED")] == [tested.id]
    assert [s.id for s in galtea.sessions.list(version_id=V, status=["pending", "completed"])] == [plain.id, tested.id]
    assert galtea.sessions.list(dataset_id="ds-1") == galtea.sessions.list(test_id="ds-1") == []
    assert galtea.sessions.list(version_id=V, user_id="u-1") == []
    assert galtea.sessions.list(version_id=V, to_created_at=0) == []
    assert len(galtea.sessions.list(version_id=V, from_created_at="2000-01-01T00:00:00Z")) == 2
    assert galtea.sessions.get_by_custom_id("t", version_id=V).id == tested.id
    with pytest.raises(EntityNotFoundException):
        galtea.sessions.get_by_custom_id("nope", version_id=V)
    with pytest.raises(ValueError):
        galtea.sessions.get_by_custom_id("t")


def test_errors_are_catchable_as_the_sdk_names_them(galtea: Galtea) -> None:
    for call in (lambda: galtea.traces.get("missing"), lambda: galtea.traces.list(session_id="unknown"),
                 lambda: galtea.traces.update("missing", status="FAILED"), lambda: galtea.traces.delete("missing")):
        with pytest.raises(EntityNotFoundHTTPError) as caught:
            call()
        assert isinstance(caught.value, (EntityNotFoundException, KeyError))
        assert caught.value.status_code == 404
    with pytest.raises(ValueError):
        galtea.traces.get()
    record = galtea.traces.create(session_id="remote-s", input="x")
    assert galtea.traces.list(session_id="remote-s")[0].id == record.id  # a session the store has seen


def test_read_model_serialises_like_the_sdk(galtea: Galtea) -> None:
    record = galtea.traces.create(session_id="s", input={"user_message": "hi", "content": [
        {"type": "file", "uri": "gs://b/k", "filename": "a.pdf", "mimeType": "application/pdf"}]}, latency=1.5)
    assert isinstance(record, Trace)
    dumped = record.model_dump(by_alias=True, exclude_none=True, mode="json")
    assert dumped["status"] == "GENERATED" and dumped["latency"] == 1.5 and "sessionId" in dumped
    assert dumped["inputFiles"] == [{"uri": "gs://b/k", "filename": "a.pdf", "mimeType": "application/pdf",
                                     "type": "file"}]
    assert Trace.model_validate_json(record.model_dump_json()).input == "hi"
    assert record.model_copy(update={"latency": 2.0}).latency == 2.0
    with pytest.warns(DeprecationWarning):
        assert record.actual_input == "hi"
    assert record.created_at is not None and record.retrieval_context is None


def test_shutdown_closes_and_flush_waits_for_nothing(store_path: Path) -> None:
    local = Galtea(store=store_path)
    record = local.traces.create(session_id="s", input="kept")
    local.flush()
    local.shutdown()
    local.shutdown()  # twice is harmless, as closing twice
    with Galtea(store=store_path) as again:
        assert again.traces.get(record.id).input == "kept"


def test_a_refused_batch_takes_all_its_records_with_it(store_path: Path, emulator: EmulatorHandle) -> None:  # noqa: F811
    from galtea_local.outbox import dead
    from galtea_local.status import store_status

    with Galtea(store=store_path) as local:
        local.traces.create_batch(session_id="no-such-session", conversation_turns=[
            {"role": "user", "content": "q1"}, {"role": "user", "content": "q2"}])
    _sync_until_dead(store_path, emulator)
    with closing(open_store(store_path)) as store:
        assert (store_status(store)["dead"], store_status(store)["queued"]) == (2, 0)
        assert store.transaction(dead.retry_dead) == 1  # one operation, both records
        assert (store_status(store)["dead"], store_status(store)["queued"]) == (0, 2)
    _sync_until_dead(store_path, emulator)
    with closing(open_store(store_path)) as store:
        assert store.transaction(dead.drop_dead, 0.0) == 1
        assert (store_status(store)["dead"], store_status(store)["dropped"]) == (0, 2)


def test_every_turn_carries_its_call_time_upstream_despite_faults(
    store_path: Path, emulator: EmulatorHandle, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    from galtea_local.outbox import stamps

    monkeypatch.setattr(stamps, "TOLERANCE_S", 0.0)  # every create needs its stamp, however quick the sync
    sessions = [new_session(emulator) for _ in range(3)]
    with Galtea(store=store_path) as local:
        made = [local.traces.create(session_id=sessions[i % 3], input=f"q{i}") for i in range(30)]
    emulator.set_faults(fail_rate=0.2, ambiguous_rate=0.2, seed=3)  # stamps fail on the side path too
    _sync(store_path, emulator)
    dump = emulator.dump(log=False)
    upstream = {r["input"]["user_message"]: r["createdAt"] for r in dump["inferenceResults"]}
    assert upstream == {f"q{i}": record.created_at for i, record in enumerate(made)}
    assert dump["requests"]["PATCH /inferenceResults/{id}"] >= 30
    with Galtea(store=store_path) as local:
        assert {local.traces.get(record.id).sync_state for record in made} == {"synced"}


def test_trace_reads_the_api_json_as_the_sdk_model_does() -> None:
    import galtea

    body = {"id": "c1", "sessionId": "s1", "index": 0, "status": "generated", "createdAt": "2026-01-01T00:00:00.000Z",
            "input": {"user_message": "hi", "content": [{"type": "file", "uri": "gs://b/k", "mimeType": "a/b"}]},
            "actualOutput": {"assistant_message": "yo"}, "latency": 3.5}
    ours, theirs = Trace(**body), galtea.Trace(**body)
    assert ours.model_dump(mode="json") == {**theirs.model_dump(mode="json"), "sync_state": "queued", "remote_id": None}
    assert ours.status is galtea_local.TraceStatus.GENERATED
    session = {"id": "c2", "createdAt": "2026-01-01T00:00:00.000Z", "status": "pending", "customId": "x"}
    assert Session(**session).model_dump(mode="json") == {
        **galtea.Session(**session).model_dump(mode="json"), "sync_state": "queued", "remote_id": None}


def test_file_arguments_are_accepted_and_files_refused_until_attachments_exist(galtea: Galtea, tmp_path: Path) -> None:
    attached = tmp_path / "deed.pdf"
    attached.write_bytes(b"%PDF-1.4")
    # No files, as the SDK reads it: None or an empty list.
    record = galtea.traces.create(session_id="s", input="q", input_file_paths=[], output_file_paths=None)
    assert galtea.traces.update(record.id, output="a", output_file_paths=[]).actual_output == "a"
    for field in ("input_file_paths", "output_file_paths"):
        with pytest.raises(galtea_local.InvalidInputError, match=field):
            galtea.traces.create(session_id="s", input="with a file", **{field: [str(attached)]})
        with pytest.raises(galtea_local.InvalidInputError, match=field):
            galtea.traces.update(record.id, status="FAILED", **{field: [str(attached)]})
        with pytest.raises(galtea_local.InvalidInputError, match=field):
            galtea.traces.create_and_evaluate(session_id="s", output="o", metrics=["m"], **{field: [str(attached)]})
    with pytest.raises(galtea_local.InvalidTypeError, match="input_file_paths"):
        galtea.traces.create(session_id="s", input="q", input_file_paths=str(attached))
    # A refused call wrote nothing: one record, with the update that carried no file.
    assert [(r.input, r.actual_output, r.status) for r in galtea.traces.list(session_id="s")] == [
        ("q", "a", "GENERATED")]


def test_createdat_is_the_call_time_in_the_servers_clock(store_path: Path, emulator: EmulatorHandle) -> None:  # noqa: F811
    """A server clock 5 minutes off ours: upstream createdAt is the call in the server's time (within 1 s),
    as the official SDK, online at the call, would have got."""
    from galtea_local_daemon.emulator.rules import parse_timestamp

    emulator.set_faults(clock_offset_s=300.0)
    session_id = new_session(emulator)
    with Galtea(store=store_path) as local:
        made = [local.traces.create(session_id=session_id, input=f"q{i}") for i in range(5)]
    calls = {f"q{i}": parse_timestamp("createdAt", record.created_at) + 300.0 for i, record in enumerate(made)}
    time.sleep(1.5)  # synced well after the calls: every turn needs its stamp
    _sync(store_path, emulator)
    upstream = {r["input"]["user_message"]: parse_timestamp("createdAt", r["createdAt"])
                for r in emulator.dump(log=False)["inferenceResults"]}
    assert set(upstream) == set(calls)
    assert all(abs(upstream[text] - at) < 1.0 for text, at in calls.items()), (upstream, calls)
