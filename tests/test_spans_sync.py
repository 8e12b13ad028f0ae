"""Spans go upstream after their trace, with its remote id, exactly once, against the emulator."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import galtea_local
from galtea_local import Galtea
from galtea_local.outbox import dead
from galtea_local.status import store_status
from galtea_local_daemon.engine import SyncEngine
from galtea_local_daemon.evaluations_push import EvaluationPusher
from galtea_local_daemon.side_queues import PassHost
from galtea_local_daemon.spans_push import SpanPusher
from galtea_local_daemon.steps import PassReport
from tests.emulator_fixture import EmulatorHandle
from tests.sync_helpers import idle_pause, make_engine, new_session, open_store


def drain_all(engine: SyncEngine, max_passes: int = 300) -> None:
    """Passes until no record, span or evaluation waits (bounded by passes, not time)."""
    for _ in range(max_passes):
        report = engine.run_once()
        status = store_status(engine.store)
        if status["queued"] == status["spans_queued"] == status["evaluations_queued"] == 0:
            return
        if not report.more_due:
            time.sleep(idle_pause(report, 0.02))
    raise AssertionError(f"still waiting after {max_passes} passes: {store_status(engine.store)}")


def record_agent_turn(galtea: Galtea, session_id: str, turn: int) -> str:
    """One turn traced as an agent with a tool and a retriever inside: three spans."""
    trace = galtea.traces.create(session_id=session_id, input=f"question {turn}")
    token = galtea.spans.set_context(trace_id=trace.id)
    try:
        @galtea_local.traced(type="TOOL")
        def lookup(key: str) -> dict[str, str]:
            return {"key": key, "value": "found"}

        with galtea_local.start_span("agent", type="AGENT", input={"turn": turn}) as span:
            with galtea.spans.start_span("retrieve", type="RETRIEVER") as inner:
                inner.update(output=["doc"], metadata={"k": turn})
            span.update(output=lookup(f"k{turn}"))
    finally:
        galtea.spans.clear_context(token)
    return trace.id


class DeclaredSurface:
    """An engine seen only through :class:`PassHost`: a pusher reaching for anything else fails."""

    def __init__(self, engine: SyncEngine) -> None:
        for name in PASS_HOST_MEMBERS:
            setattr(self, name, getattr(engine, name))


PASS_HOST_MEMBERS = ("store", "client", "owner", "settings", "backoff", "clock",
                     "halted", "halt", "wait_for_throttle", "throttle", "submit")


def test_spans_and_evaluations_are_pushed_through_the_declared_engine_surface(
    store_path: Path, emulator: EmulatorHandle
) -> None:
    declared = {name for name in dir(PassHost) if not name.startswith("_")} | set(PassHost.__annotations__)
    assert declared == set(PASS_HOST_MEMBERS)
    session_id = new_session(emulator)
    engine = make_engine(open_store(store_path), emulator)
    with Galtea(store=store_path) as galtea:
        trace = galtea.traces.create(session_id=session_id, input="q")
        engine.run_once()  # the trace is upstream: what follows is due at once
        token = galtea.spans.set_context(trace_id=trace.id)
        try:
            for name in ("plan", "act"):
                with galtea_local.start_span(name, type="AGENT"):
                    pass
        finally:
            galtea.spans.clear_context(token)
        galtea.evaluations.create(trace_id=trace.id, metrics=["resolution"])
    assert isinstance(engine, PassHost)
    host, report = DeclaredSurface(engine), PassReport()
    SpanPusher(host).push_due(report, time.monotonic() + 60)  # type: ignore[arg-type]
    EvaluationPusher(host).push_due(report, time.monotonic() + 60)  # type: ignore[arg-type]
    assert (report.spans_pushed, report.evaluations_pushed) == (2, 1)
    assert sorted(span["name"] for span in upstream_spans(emulator)) == ["act", "plan"]


def upstream_spans(emulator: EmulatorHandle) -> list[dict[str, Any]]:
    return emulator.dump(log=False)["spans"]


def test_spans_follow_their_trace_with_its_remote_id(store_path: Path, emulator: EmulatorHandle) -> None:
    session_id = new_session(emulator)
    with Galtea(store=store_path) as galtea:
        trace_ids = [record_agent_turn(galtea, session_id, turn) for turn in range(3)]
        local = {span.id: span for t in trace_ids for span in galtea.spans.list(trace_id=t)}
    assert len(local) == 9
    engine = make_engine(open_store(store_path), emulator)
    drain_all(engine)
    spans = upstream_spans(emulator)
    assert sorted(s["id"] for s in spans) == sorted(local)  # the ids generated at record time
    with Galtea(store=store_path) as galtea:
        remote = {t: galtea.traces.get(t).remote_id for t in trace_ids}
        for span in spans:
            mine = local[span["id"]]
            assert span["inferenceResultId"] == remote[mine.trace_id]
            assert (span["name"], span["type"], span.get("parentTraceId")) == (mine.name, mine.type,
                                                                              mine.parent_span_id)
        assert {s.sync_state for t in trace_ids for s in galtea.spans.list(trace_id=t)} == {"synced"}
    by_id = {s["id"]: s for s in spans}
    agent = next(s for s in spans if s["name"] == "agent")
    assert {by_id[s]["name"] for s in by_id if by_id[s].get("parentTraceId") == agent["id"]} >= {"retrieve",
                                                                                               "lookup"}


def test_lost_answers_and_failures_store_no_span_twice(store_path: Path, emulator_factory) -> None:
    emulator: EmulatorHandle = emulator_factory(seed=7)
    session_id = new_session(emulator)
    with Galtea(store=store_path) as galtea:
        for turn in range(20):
            record_agent_turn(galtea, session_id, turn)
    emulator.set_faults(ambiguous_rate=0.3, fail_rate=0.2)
    engine = make_engine(open_store(store_path), emulator)
    drain_all(engine)
    spans = upstream_spans(emulator)
    assert len(spans) == 60 and len({s["id"] for s in spans}) == 60
    assert len(emulator.dump(log=False)["inferenceResults"]) == 20


def test_a_span_sent_again_after_a_crash_counts_as_already_there(store_path: Path, emulator: EmulatorHandle) -> None:
    session_id = new_session(emulator)
    with Galtea(store=store_path) as galtea:
        record_agent_turn(galtea, session_id, 0)
    store = open_store(store_path)
    engine = make_engine(store, emulator)
    drain_all(engine)
    # As if the daemon died after the batch landed and before it settled: every span queued again.
    store.transaction(lambda conn: conn.execute("UPDATE spans SET sync_state = 'queued', settled_at = NULL"))
    drain_all(engine)
    dump = emulator.dump(log=False)
    assert len(dump["spans"]) == 3 and dump["refusedDuplicateSpans"] == 3
    assert store_status(store)["spans_synced"] == 3


def test_a_refused_span_is_dead_and_its_batch_mates_go(store_path: Path, emulator: EmulatorHandle) -> None:
    session_id = new_session(emulator)
    with Galtea(store=store_path) as galtea:
        trace = galtea.traces.create(session_id=session_id, input="q")
        galtea.spans.create(trace_id=trace.id, name="good", type="TOOL", input_data={"a": 1})
        galtea.spans.create(trace_id="c-no-such-trace", name="orphan")
    engine = make_engine(open_store(store_path), emulator)
    drain_all(engine)
    assert [s["name"] for s in upstream_spans(emulator)] == ["good"]
    with Galtea(store=store_path) as galtea:
        status = store_status(galtea._store)
        assert (status["spans_synced"], status["spans_dead"]) == (1, 1)


def test_spans_of_a_dead_trace_wait_and_go_on_dead_retry(store_path: Path, emulator: EmulatorHandle) -> None:
    with Galtea(store=store_path) as galtea:
        session = galtea.sessions.create(version_id="v-typo", custom_id="bad")
        record_agent_turn(galtea, session.id, 0)
    emulator.set_versions(["v1"])
    store = open_store(store_path)
    engine = make_engine(store, emulator)
    for _ in range(5):
        engine.run_once()
    assert store_status(store)["spans_queued"] == 3 and upstream_spans(emulator) == []
    emulator.set_versions(["v1", "v-typo"])
    assert store.transaction(dead.retry_dead) == 1
    drain_all(engine)
    assert len(upstream_spans(emulator)) == 3
