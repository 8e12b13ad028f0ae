"""The emulator's /traces (spans) and /evaluations routes behave as the real API does."""

from __future__ import annotations

from typing import Any

from tests.emulator_fixture import EmulatorHandle
from tests.sync_helpers import new_session


def _trace(emulator: EmulatorHandle) -> str:
    with emulator.client() as http:
        return http.post("/inferenceResults", json={"sessionId": new_session(emulator), "input": "q"}).json()["id"]


def _span(trace_id: str, span_id: str, **extra: Any) -> dict[str, Any]:
    return {"id": span_id, "inferenceResultId": trace_id, "name": f"n-{span_id}", **extra}


def test_batch_refuses_duplicate_ids_and_reports_each_refusal(emulator: EmulatorHandle) -> None:
    trace = _trace(emulator)
    with emulator.client() as http:
        first = http.post("/traces/batch?includeRejected=true", json={"traces": [_span(trace, "trace_a")]})
        assert first.status_code == 201 and first.json() == {"spans": [first.json()["spans"][0]]}
        again = http.post("/traces/batch?includeRejected=true", json={"traces": [
            _span(trace, "trace_a"), _span(trace, "trace_b", type="novel"), _span("c-missing", "trace_c"),
            _span(trace, "trace_d", latencyMs=-1),
        ]}).json()
        assert [s["id"] for s in again["spans"]] == ["trace_b"]
        assert again["spans"][0]["type"] == "SPAN"
        assert again["spans"][0]["metadata"] == {"galtea.span.original_type": "novel"}
        errors = again["partialSuccess"]["errors"]
        assert again["partialSuccess"]["rejectedSpans"] == 3 and [e["index"] for e in errors] == [0, 2, 3]
        assert "already exists" in errors[0]["reason"]
        every = http.post("/traces/batch?includeRejected=true", json={"traces": [_span(trace, "trace_a")]})
        assert every.status_code == 400 and "already exists" in every.json()["message"]
        plain = http.post("/traces/batch", json={"traces": [_span(trace, "trace_e")]})
        assert isinstance(plain.json(), list)
        listed = http.get(f"/traces?inferenceResultIds[]={trace}&sort[]=startTime&sort[]=asc").json()
        assert sorted(s["id"] for s in listed) == ["trace_a", "trace_b", "trace_e"]
        assert http.get("/traces?ids[]=trace_a&ids[]=trace_zz").status_code == 404
        assert http.delete("/traces/trace_a").status_code == 204
        assert http.get("/traces/trace_a").status_code == 404
        # A deleted span's id stays taken.
        assert http.post("/traces/batch?includeRejected=true",
                         json={"traces": [_span(trace, "trace_a")]}).status_code == 400


def test_evaluation_routes(emulator: EmulatorHandle) -> None:
    trace = _trace(emulator)
    with emulator.client() as http:
        made = http.post("/evaluations/fromInferenceResult", json={
            "inferenceResultId": trace, "metrics": [{"name": "m"}, {"id": "met_x", "score": 0.4}]}).json()
        assert [(e["metricId"], e["status"], e["inferenceResultId"]) for e in made] == [
            ("met_m", "PENDING", trace), ("met_x", "SUCCESS", trace)]
        assert http.post("/evaluations/fromInferenceResult", json={"inferenceResultId": trace}).status_code == 400
        assert http.post("/evaluations/fromInferenceResult",
                         json={"inferenceResultId": "c-missing", "metrics": [{"name": "m"}]}).status_code == 404
        session = made[0]["sessionId"]
        assert len(http.get(f"/evaluations?sessionIds[]={session}").json()) == 2
        assert http.get(f"/evaluations/{made[0]['id']}").json() == made[0]
        single = http.post("/evaluations/singleTurn", json={"versionId": "v1", "input": "q", "actualOutput": "a",
                                                           "metrics": [{"name": "m"}]})
        assert single.status_code == 201 and single.json()[0]["inferenceResultId"]
