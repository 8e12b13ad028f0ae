"""Spans and evaluations on both store backends: the same calls, the same counts after a sync."""

from __future__ import annotations


import pytest

import galtea_local
from galtea_local import Galtea, NotFoundError
from galtea_local.store import open_store
from tests.emulator_fixture import EmulatorHandle
from tests.sync_helpers import make_engine, new_session
from tests.test_spans_sync import drain_all


def test_spans_and_evaluations_round_trip(local: Galtea, location: str, emulator: EmulatorHandle) -> None:
    session_id = new_session(emulator)
    trace = local.traces.create(session_id=session_id, input="q", output="a")
    token = galtea_local.set_context(trace_id=trace.id)
    with galtea_local.start_span("outer", type="AGENT", input={"q": 1}):
        with galtea_local.start_span("inner", type="TOOL") as inner:
            inner.update(output=[1, 2])
    galtea_local.clear_context(token)
    manual, doomed = local.spans.create_batch([{"trace_id": trace.id, "name": "manual", "latency_ms": 2.5},
                                               {"trace_id": trace.id, "name": "doomed"}])
    local.spans.delete(doomed.id)
    with pytest.raises(NotFoundError):
        local.spans.get(doomed.id)
    local.evaluations.create(trace_id=trace.id, metrics=["m1", {"id": "met_x", "score": 0.5}])
    assert sorted(s.name for s in local.spans.list(trace_id=trace.id)) == ["inner", "manual", "outer"]
    drain_all(make_engine(open_store(location), emulator))
    dump = emulator.dump(log=False)
    assert sorted(s["name"] for s in dump["spans"]) == ["inner", "manual", "outer"]
    assert len(dump["evaluations"]) == 2
    remote = local.traces.get(trace.id).remote_id
    assert {s["inferenceResultId"] for s in dump["spans"]} == {remote}
    assert {s.sync_state for s in local.spans.list(trace_id=remote)} == {"synced"}
    assert local.spans.get(manual.id).latency_ms == 2.5
    local.spans.delete(manual.id)  # upstream now: the daemon deletes it there
    drain_all(make_engine(open_store(location), emulator))
    assert sorted(s["name"] for s in emulator.dump(log=False)["spans"]) == ["inner", "outer"]
