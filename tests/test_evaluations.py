"""Evaluations offline: queued with their trace or session, sent after it, exactly once."""

from __future__ import annotations

from pathlib import Path

import pytest
from galtea import CustomScoreEvaluationMetric

from galtea_local import Galtea, InvalidInputError
from galtea_local.outbox import dead
from galtea_local.status import store_status
from tests.emulator_fixture import EmulatorHandle
from tests.helpers import query
from tests.sync_helpers import make_engine, new_session, open_store
from tests.test_spans_sync import drain_all


class Length(CustomScoreEvaluationMetric):
    def measure(self, input=None, actual_output=None, **_: object) -> float:
        return min(1.0, len(actual_output or "") / 10)


def test_a_queued_evaluation_goes_after_its_trace_and_is_found_after_sync(store_path: Path,
                                                                          emulator: EmulatorHandle) -> None:
    session_id = new_session(emulator)
    with Galtea(store=store_path) as galtea:
        trace, queued = galtea.traces.create_and_evaluate(session_id=session_id, input="q", output="Paris",
                                                          metrics=["factual", {"name": "tone", "score": 0.9}])
        more = galtea.evaluations.create(trace_id=trace.id, metrics=[Length(name="length")])
        assert [e.status for e in queued + more] == ["QUEUED"] * 3
        assert {e.sync_state for e in queued} == {"queued"} and more[0].metric == {"name": "length", "score": 0.5}
    drain_all(make_engine(open_store(store_path), emulator))
    dump = emulator.dump()
    routes = [entry["route"] for entry in dump["log"]]
    assert routes.index("/inferenceResults") < routes.index("/evaluations/fromInferenceResult")
    upstream = dump["evaluations"]
    assert len(upstream) == 3 and {e["inferenceResultId"] for e in upstream} == {dump["inferenceResults"][0]["id"]}
    with Galtea(store=store_path) as galtea:
        synced = galtea.evaluations.get(queued[1].id)  # the local id still answers
        assert (synced.sync_state, synced.metric_id, synced.score, synced.status) == ("synced", "met_tone", 0.9,
                                                                                       "SUCCESS")
        assert galtea.evaluations.get(synced.id) == synced  # and so does the upstream id
        assert sorted(e.id for e in galtea.evaluations.list(trace_id=trace.id)) == sorted(e["id"] for e in upstream)


def test_lost_answers_make_no_second_evaluation(store_path: Path, emulator_factory) -> None:
    emulator: EmulatorHandle = emulator_factory(seed=3)
    session_id = new_session(emulator)
    with Galtea(store=store_path) as galtea:
        for turn in range(12):
            galtea.traces.create_and_evaluate(session_id=session_id, input=f"q{turn}", output="a",
                                              metrics=["m1", "m2"])
    emulator.set_faults(ambiguous_rate=0.4, fail_rate=0.1)
    drain_all(make_engine(open_store(store_path), emulator))
    dump = emulator.dump(log=False)
    per_trace = {}
    for evaluation in dump["evaluations"]:
        per_trace.setdefault(evaluation["inferenceResultId"], []).append(evaluation["metricId"])
    assert len(per_trace) == 12 and all(sorted(m) == ["met_m1", "met_m2"] for m in per_trace.values())
    assert dump["faults"]["ambiguous"] > 0


def test_a_session_evaluation_waits_for_its_dead_session(store_path: Path, emulator: EmulatorHandle) -> None:
    with Galtea(store=store_path) as galtea:
        session = galtea.sessions.create(version_id="v-typo", custom_id="conv")
        galtea.traces.create(session_id=session.id, input="hi", output="hello")
        galtea.evaluations.create(session_id=session.id, metrics=["resolution"])
    emulator.set_versions(["v1"])
    store = open_store(store_path)
    engine = make_engine(store, emulator)
    for _ in range(4):
        engine.run_once()
    assert store_status(store)["evaluations_queued"] == 1 and emulator.dump(log=False)["evaluations"] == []
    emulator.set_versions(["v1", "v-typo"])
    store.transaction(dead.retry_dead)
    drain_all(engine)
    (evaluation,) = emulator.dump(log=False)["evaluations"]
    assert evaluation["sessionId"] == emulator.dump(log=False)["sessions"][0]["id"]
    assert evaluation["inferenceResultId"] is None


def test_single_turn_offline_queues_session_trace_and_evaluation(store_path: Path, emulator: EmulatorHandle) -> None:
    with Galtea(store=store_path) as galtea:
        (evaluation,) = galtea.evaluations.create_single_turn(version_id="v1", input="q", actual_output="a",
                                                              metrics=["m"])
        assert evaluation.status == "QUEUED"
    drain_all(make_engine(open_store(store_path), emulator))
    dump = emulator.dump(log=False)
    assert (len(dump["sessions"]), len(dump["inferenceResults"]), len(dump["evaluations"])) == (1, 1, 1)


@pytest.mark.parametrize("metrics", [[], [3], [{"name": "m", "score": 2}], None])
def test_bad_evaluation_requests_write_nothing(galtea: Galtea, store_path: Path, metrics) -> None:
    trace = galtea.traces.create(session_id="s", input="q")
    with pytest.raises(InvalidInputError, match="metrics"):
        galtea.evaluations.create(trace_id=trace.id, metrics=metrics)
    with pytest.raises(InvalidInputError, match="metrics"):
        galtea.traces.create_and_evaluate(session_id="s", input="q2", metrics=metrics)
    with pytest.raises(InvalidInputError, match="session_id or trace_id"):
        galtea.evaluations.create(trace_id=trace.id, session_id="s", metrics=["m"])
    assert query(store_path, "SELECT COUNT(*) FROM evaluations") == [(0,)]
    assert query(store_path, "SELECT COUNT(*) FROM inference_results") == [(1,)]
