"""SyncEngine.run_once against the emulator: what the app sees after a push, lost answers adopted
(never re-sent), a write-ahead mark without a send, and the unit decisions it rests on."""

from __future__ import annotations

from contextlib import closing
from pathlib import Path

import pytest

from galtea_local import Galtea
from galtea_local.outbox import attempts as ob
from galtea_local.outbox import dead
from galtea_local_daemon.backoff import Backoff
from galtea_local_daemon.engine import SyncEngine, build_body
from galtea_local_daemon.reconcile import matches
from galtea_local_daemon.upstream import UpstreamClient
from tests.emulator_fixture import EmulatorHandle
from tests.sync_helpers import drain, make_engine, new_session, open_store, upstream_by_session


def test_get_after_push_shows_synced_remote_id_and_index(emulator: EmulatorHandle, tmp_path: Path) -> None:
    session_id = new_session(emulator)
    store_path = tmp_path / "store.db"
    with Galtea(store=store_path) as local, closing(open_store(store_path)) as store:
        ids = [local.traces.create(session_id=session_id, input=f"turn {n}").id for n in range(3)]
        before = local.traces.get(ids[2])
        assert (before.sync_state, before.remote_id, before.index) == ("queued", None, None)
        report = make_engine(store, emulator).run_once()
        assert (report.pushed, report.retried, report.dead, report.more_due) == (3, 0, 0, False)
        after = [local.traces.get(record_id) for record_id in ids]
        upstream = upstream_by_session(emulator)[session_id]
        assert [(r.sync_state, r.remote_id, r.index) for r in after] == [
            ("synced", record["id"], record["index"]) for record in upstream
        ]
        assert local.traces.get(after[1].remote_id).id == ids[1]


def test_lost_answers_are_adopted_not_resent(emulator: EmulatorHandle, tmp_path: Path) -> None:
    """Every create is applied and its answer cut off; identical twins each adopt their own record."""
    session_id = new_session(emulator)
    store_path = tmp_path / "store.db"
    with Galtea(store=store_path) as local, closing(open_store(store_path)) as store:
        twins = [local.traces.create(session_id=session_id, input="same", output="same").id for _ in range(3)]
        other = local.traces.create(session_id=session_id, input="different").id
        emulator.set_faults(ambiguous_rate=1.0)
        report = make_engine(store, emulator).run_once()
        assert (report.adopted, report.pushed) == (4, 0)
        remote_ids = [local.traces.get(record_id).remote_id for record_id in [*twins, other]]
    upstream = upstream_by_session(emulator)[session_id]
    assert [record["id"] for record in upstream] == remote_ids
    assert emulator.dump(log=False)["requests"]["POST /inferenceResults"] == 4


def test_a_mark_without_a_send_is_sent_once_after_the_lease_expires(emulator: EmulatorHandle, tmp_path: Path) -> None:
    """A pusher died between the write-ahead mark and the request: reconcile finds nothing, so send."""
    session_id = new_session(emulator)
    store_path = tmp_path / "store.db"
    with Galtea(store=store_path) as local, closing(open_store(store_path)) as store:
        record_id = local.traces.create(session_id=session_id, input="marked, never sent").id
        engine = make_engine(store, emulator, lease_s=0.01)
        (lane,) = store.transaction(ob.claim_lanes, "dead-pusher", 0.0, 0.01, 1)
        attempt = store.transaction(ob.next_attempt, lane, "dead-pusher", 0.0, 0.01)
        assert store.transaction(ob.begin_attempt, attempt, "dead-pusher", 0.0, 0.01, build_body) is not None
        # An update now cannot fold into a create that may be on its way: it queues as a PATCH.
        local.traces.update(record_id, status="FAILED", error="boom")
        drain(engine)
        assert local.traces.get(record_id).sync_state == "synced"
    (record,) = upstream_by_session(emulator)[session_id]
    assert (record["status"], record["error"]) == ("FAILED", "boom")
    requests = emulator.dump(log=False)["requests"]
    assert (requests["GET /inferenceResults"], requests["POST /inferenceResults"]) == (1, 1)


@pytest.mark.parametrize(
    ("sent", "candidate", "expected"),
    [
        ({"sessionId": "a", "input": "hi", "status": "GENERATED"},
         {"sessionId": "b", "input": {"user_message": "hi"}, "status": "GENERATED", "latency": None}, True),
        ({"sessionCustomId": "c", "versionId": "v", "input": {"user_message": "hi", "x": 1}},
         {"input": {"user_message": "hi", "x": 1}}, True),
        ({"input": "hi", "status": "PENDING"}, {"input": {"user_message": "hi"}, "status": "GENERATED"}, False),
        ({"input": "hi", "latency": 1.5}, {"input": {"user_message": "hi"}}, False),
        ({"input": "hi"}, {"input": {"user_message": "hi", "extra": True}}, False),
    ],
    ids=["string-input-stored-as-user-message", "anchors-ignored", "status-differs", "field-missing", "extra-key"],
)
def test_reconcile_matches(sent: dict, candidate: dict, expected: bool) -> None:
    assert matches(sent, candidate) is expected


def test_backoff_grows_is_capped_and_honours_retry_after() -> None:
    backoff = Backoff(initial_s=1.0, max_s=10.0, jitter_s=0.0)
    assert [backoff.delay(n) for n in (1, 2, 3, 4, 5, 50)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert backoff.delay(1, retry_after=7.0) == 7.0  # never sooner than the server asked
    assert backoff.delay(4, retry_after=2.0) == 8.0  # and never sooner than the backoff
    jittered = Backoff(initial_s=1.0, max_s=10.0, jitter_s=0.5)
    assert all(1.0 <= jittered.delay(1) <= 1.5 for _ in range(50))
    assert all(jittered.delay(60) <= 10.0 for _ in range(50))


class SteppedClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_throttle_extended_during_the_wait_is_waited_out(tmp_path: Path, emulator: EmulatorHandle) -> None:
    """Another lane's 429 lands while this lane waits out an earlier one: no request before the later end."""
    clock = SteppedClock()
    engine: list[SyncEngine] = []

    class HalfwayRetryAfter(Backoff):
        def sleep(self, seconds: float) -> None:  # time passes; halfway, another lane is told "wait 2 s"
            clock.now += seconds / 2
            if clock.now < 1002.0:
                engine[0]._pause_all(2.0)
            clock.now += seconds / 2

    with closing(open_store(tmp_path / "store.db")) as store:
        client = UpstreamClient(emulator.url, emulator.api_key)
        engine.append(SyncEngine(store, client, backoff=HalfwayRetryAfter(), clock=clock))
        engine[0]._pause_all(2.0)  # until 1002; the other lane's pushes it to 1003
        engine[0]._wait_for_throttle()
        client.close()
    assert clock.now >= 1003.0


def test_deletes_go_upstream_once_pushed_and_cancel_before(emulator: EmulatorHandle, tmp_path: Path) -> None:
    session_id = new_session(emulator)
    store_path = tmp_path / "store.db"
    with Galtea(store=store_path) as local, closing(open_store(store_path)) as store:
        kept, pushed_then_deleted, never_sent = (local.traces.create(session_id=session_id, input=text).id
                                                 for text in ("kept", "pushed then deleted", "never sent"))
        local.traces.delete(never_sent)  # its create never left: nothing to send at all
        engine = make_engine(store, emulator)
        drain(engine)
        local.traces.delete(pushed_then_deleted)
        drain(engine)
    dump = emulator.dump(log=False)
    assert [r["input"]["user_message"] for r in dump["inferenceResults"]] == ["kept"]
    assert [r["input"]["user_message"] for r in dump["deletedInferenceResults"]] == ["pushed then deleted"]
    assert dump["requests"]["POST /inferenceResults"] == 2
    assert dump["requests"]["DELETE /inferenceResults/{id}"] == 1


def test_an_update_behind_a_dead_create_is_replayed_with_it(emulator: EmulatorHandle, tmp_path: Path) -> None:
    """A create dead for want of its session; a later update waits dead too; retry replays both, in order."""
    store_path = tmp_path / "store.db"
    with Galtea(store=store_path) as local, closing(open_store(store_path)) as store:
        record_id = local.traces.create(session_custom_id="later", version_id="v1", input="q", status="PENDING").id
        engine = make_engine(store, emulator)
        assert engine.run_once().dead == 1
        local.traces.update(record_id, status="GENERATED", output="a")
        drain(engine)
        assert local.traces.get(record_id).sync_state == "dead"
        session_id = new_session(emulator, custom_id="later")
        assert store.transaction(dead.retry_dead) >= 1
        drain(engine)
        assert local.traces.get(record_id).sync_state == "synced"
    (record,) = upstream_by_session(emulator)[session_id]
    assert (record["status"], record["actualOutput"]) == ("GENERATED", "a")
