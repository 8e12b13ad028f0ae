"""Retention and the size cap cover spans and evaluation requests; a waiting span holds its trace."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import galtea_local
from galtea_local import Galtea, retention
from galtea_local.config import RetentionSettings
from galtea_local.errors import StoreFullError
from galtea_local.status import store_status
from galtea_local_daemon.housekeeping import DAY_S, Housekeeper
from tests.emulator_fixture import EmulatorHandle
from tests.helpers import query
from tests.sync_helpers import make_engine, new_session, open_store
from tests.test_spans_sync import drain_all


def traced(galtea: Galtea, session_id: str, text: str) -> str:
    trace = galtea.traces.create(session_id=session_id, input=text)
    token = galtea_local.set_context(trace_id=trace.id)
    with galtea_local.start_span("step", type="TOOL"):
        pass
    galtea_local.clear_context(token)
    galtea.evaluations.create(trace_id=trace.id, metrics=["m"])
    return trace.id


def test_retention_deletes_synced_spans_and_keeps_what_waits(store_path: Path, emulator: EmulatorHandle) -> None:
    session_id = new_session(emulator)
    with Galtea(store=store_path) as galtea:
        for turn in range(3):
            traced(galtea, session_id, f"q{turn}")
        store = open_store(store_path)
        drain_all(make_engine(store, emulator))
        waiting = traced(galtea, "not-upstream-yet", "later")  # its trace never goes: spans wait
        keeper = Housekeeper(store, RetentionSettings(synced_days=7))
        keeper.expire(time.time() + 8 * DAY_S)
        status = store_status(store)
        assert (status["spans_synced"], status["evaluations_synced"]) == (0, 0)
        assert (status["spans_queued"], status["evaluations_queued"]) == (1, 1)
        assert query(store_path, "SELECT COUNT(*) FROM evaluation_ids") == [(0,)]
        assert galtea.traces.get(waiting).sync_state == "queued"


def test_a_queued_span_holds_its_synced_trace(store_path: Path, emulator: EmulatorHandle) -> None:
    session_id = new_session(emulator)
    with Galtea(store=store_path) as galtea:
        first = galtea.traces.create(session_id=session_id, input="q")
        galtea.traces.create(session_id=session_id, input="newest")  # retention always keeps the newest
        store = open_store(store_path)
        drain_all(make_engine(store, emulator))
        galtea.spans.create(trace_id=first.id, name="late span")  # recorded after the trace synced
        Housekeeper(store, RetentionSettings(synced_days=0)).expire(time.time() + 1)
        assert galtea.traces.get(first.id).sync_state == "synced"  # held: its span needs the remote id
        drain_all(make_engine(store, emulator))
        assert [s["name"] for s in emulator.dump(log=False)["spans"]] == ["late span"]


def test_a_full_store_refuses_evaluations_and_keeps_no_span(store_path: Path) -> None:
    with Galtea(store=store_path) as galtea:
        trace = galtea.traces.create(session_id="s", input="q")
        store = open_store(store_path)
        store.transaction(retention.set_store_full, "full (as the daemon's size cap says)")
        with pytest.raises(StoreFullError):
            galtea.evaluations.create(trace_id=trace.id, metrics=["m"])
        with pytest.raises(StoreFullError):
            galtea.spans.create(trace_id=trace.id, name="s")
        token = galtea_local.set_context(trace_id=trace.id)
        with galtea_local.start_span("dropped"):  # the app is not broken: the span is logged and left out
            pass
        galtea_local.clear_context(token)
    assert query(store_path, "SELECT COUNT(*) FROM spans") == [(0,)]
    assert query(store_path, "SELECT COUNT(*) FROM evaluations") == [(0,)]
