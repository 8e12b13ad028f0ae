"""Spans offline: the official SDK's tracing calls, unchanged, recording into the local store."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import galtea_local
from galtea_local import Galtea, InvalidInputError, NotFoundError
from tests.helpers import NETWORK_TRAP, query

PROBE = NETWORK_TRAP + textwrap.dedent(
    """
    import galtea_local
    from galtea_local import Galtea

    galtea = Galtea(api_key="gsk_not_used", store=sys.argv[1])
    loaded_at_start = "opentelemetry" in sys.modules
    trace = galtea.traces.create(session_id="s", input="hi")
    token = galtea.spans.set_context(trace_id=trace.id)

    @galtea.spans.traced(type="TOOL")
    def tool(x):
        return x * 2

    @galtea_local.traced
    def agent(q):
        with galtea.spans.start_span("inner", type="RETRIEVER", input={"q": q}) as span:
            span.update(output=["doc"])
        return tool(3)

    agent("q")
    with galtea_local.start_span("block"):
        assert galtea_local.get_trace_id() == trace.id
    galtea.spans.clear_context(token)
    galtea.spans.create(trace_id=trace.id, name="manual", latency_ms=1.0)
    spans = galtea.spans.list(trace_id=trace.id)
    galtea.spans.delete(galtea.spans.get(spans[0].id).id)
    galtea.evaluations.create(trace_id=trace.id, metrics=["m"])
    galtea.traces.create_and_evaluate(session_id="s", input="q", output="a", metrics=[{"name": "m", "score": 1}])
    clients = sorted({"httpx", "requests", "urllib3", "http.client", "aiohttp"} & set(sys.modules))
    print(len(spans), loaded_at_start, clients, calls)
    """
)


def test_tracing_and_evaluations_run_offline_with_no_network(store_path: Path) -> None:
    probe = subprocess.run([sys.executable, "-c", PROBE, str(store_path)], capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == "5 False [] []"  # OpenTelemetry loaded by the first use, not the import


def traced_turn(galtea: Galtea) -> str:
    trace = galtea.traces.create(session_id="s", input="hello")
    token = galtea_local.set_context(trace_id=trace.id)

    @galtea_local.traced(type="TOOL", attributes={"model": "m1"})
    def lookup(key: str, limit: int = 3) -> dict[str, int]:
        return {"limit": limit}

    @galtea.spans.traced(name="planner", type="AGENT")
    def plan(question: str) -> str:
        with galtea.spans.start_span("search", type="RETRIEVER", input={"q": question}) as span:
            span.update(output=["a", "b"], metadata={"hits": 2})
        lookup("k")
        return "done"

    plan("why?")
    with pytest.raises(RuntimeError):
        with galtea_local.start_span("failing", type="generation"):
            raise RuntimeError("model timed out")
    galtea_local.clear_context(token)
    return trace.id


def test_nested_spans_keep_parents_fields_and_errors(galtea: Galtea) -> None:
    trace_id = traced_turn(galtea)
    spans = {span.name: span for span in galtea.spans.list(trace_id=trace_id)}
    assert set(spans) == {"planner", "search", "lookup", "failing"}
    planner = spans["planner"]
    assert planner.parent_span_id is None and planner.type == "AGENT"
    assert planner.input_data == {"question": "why?"} and planner.output_data == "done"
    assert spans["search"].parent_span_id == planner.id == spans["lookup"].parent_span_id
    assert (spans["search"].input_data, spans["search"].output_data, spans["search"].metadata) == (
        {"q": "why?"}, ["a", "b"], {"hits": 2})
    assert (spans["lookup"].input_data, spans["lookup"].metadata) == ({"key": "k", "limit": 3}, {"model": "m1"})
    assert spans["failing"].error == "model timed out" and spans["failing"].type == "GENERATION"
    assert all(span.id.startswith("trace_") and len(span.id) == 22 for span in spans.values())
    assert all(span.start_time <= span.end_time and span.latency_ms >= 0 for span in spans.values())
    assert {span.sync_state for span in spans.values()} == {"queued"}


def test_langfuse_style_spans_are_mapped_as_the_sdk_maps_them(galtea: Galtea) -> None:
    from opentelemetry import trace as otel_trace

    trace = galtea.traces.create(session_id="s", input="q")
    token = galtea.spans.set_context(trace_id=trace.id)
    tracer = otel_trace.get_tracer("langfuse")  # another instrumentation on the same provider
    with tracer.start_as_current_span("observed", attributes={
        "langfuse.observation.type": "generation", "langfuse.trace.input": '{"prompt": "p"}',
        "langfuse.observation.output": "plain text", "langfuse.observation.metadata": '{"m": 1}',
    }):
        pass
    with tracer.start_as_current_span("odd", attributes={"langfuse.observation.type": "novel-kind"}):
        pass
    galtea.spans.clear_context(token)
    spans = {span.name: span for span in galtea.spans.list(trace_id=trace.id)}
    observed = spans["observed"]
    assert (observed.type, observed.input_data, observed.output_data, observed.metadata) == (
        "GENERATION", {"prompt": "p"}, {"value": "plain text"}, {"m": 1})
    assert spans["odd"].type == "SPAN"  # an unknown type collapses to SPAN, as the SDK sends it


def test_spans_outside_a_context_are_not_kept(galtea: Galtea, store_path: Path) -> None:
    with galtea_local.start_span("no trace"):
        pass
    assert query(store_path, "SELECT COUNT(*) FROM spans") == [(0,)]


def test_create_batch_list_get_delete(galtea: Galtea, store_path: Path) -> None:
    from galtea import SpanBase  # the official model works as input

    trace = galtea.traces.create(session_id="s", input="q")
    first, second = galtea.spans.create_batch([
        SpanBase(trace_id=trace.id, name="one", type="TOOL", input_data={"a": 1}, start_time="2026-01-01T00:00:00Z"),
        {"trace_id": trace.id, "name": "two", "start_time": "2026-01-02T00:00:00Z"},
    ])
    assert galtea.spans.get(first.id) == first and first.input_data == {"a": 1}
    assert [s.name for s in galtea.spans.list(trace_id=trace.id, sort_by_start_time="desc")] == ["two", "one"]
    assert [s.name for s in galtea.spans.list(trace_id=trace.id, types=["tool"])] == ["one"]
    galtea.spans.delete(second.id)  # never sent: cancelled, gone from reads
    with pytest.raises(NotFoundError):
        galtea.spans.get(second.id)
    assert query(store_path, "SELECT sync_state FROM spans ORDER BY seq") == [("queued",), ("cancelled",)]


@pytest.mark.parametrize("kwargs, field", [
    ({"name": "x"}, "trace_id"), ({"trace_id": "t", "name": " "}, "name"),
    ({"trace_id": "t", "name": "x", "latency_ms": -1}, "latency_ms"),
    ({"trace_id": "t", "name": "x", "start_time": "yesterday"}, "start_time"),
    ({"trace_id": "t", "name": "x", "input_data": object()}, "input_data"),
])
def test_bad_input_names_the_field_and_writes_nothing(galtea: Galtea, store_path: Path, kwargs, field) -> None:
    with pytest.raises((InvalidInputError, TypeError), match=field):
        galtea.spans.create(**kwargs)
    assert query(store_path, "SELECT COUNT(*) FROM spans") == [(0,)]
