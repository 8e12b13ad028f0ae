"""The drop-in API: every official example, read back with the official field names.

Stored state is checked through a separate ``sqlite3`` connection on the store
file (tests/helpers), so these tests see what is on disk and what the sync
daemon will find in the outbox.
"""

from __future__ import annotations

import json

import galtea as official
import pydantic
import pytest
from galtea.domain.models.trace import CostInfoProperties, Trace, TraceStatus, UsageInfoProperties

import galtea_local
from galtea_local import Galtea, InferenceResult, InferenceResultStatus, NotFoundError
from tests.helpers import execute, query

SEED = dict(session_id="sess-1", input="What is the capital of France?", output="Paris", latency=150.5)


def outbox_ops(galtea: Galtea) -> list[tuple]:
    return query(galtea.store_path, "SELECT record_seq, kind, payload, state FROM outbox ORDER BY seq")


def seq_of(record: InferenceResult) -> int:
    return int(record.id.rsplit("_", 1)[1])


# -- surface -------------------------------------------------------------------


def test_public_surface_is_explicit():
    assert {"Galtea", "InferenceResult", "InferenceResultStatus"} <= set(galtea_local.__all__)
    assert all(hasattr(galtea_local, name) for name in galtea_local.__all__)


def test_traces_is_the_same_service(galtea):
    assert galtea.traces is galtea.inference_results


def test_read_model_has_exactly_the_official_fields_plus_sync_facts():
    assert list(InferenceResult.model_fields) == [*Trace.model_fields, "sync_state", "remote_id"]
    assert issubclass(InferenceResult, pydantic.BaseModel)


# -- create: the official examples ---------------------------------------------


def test_seed_example(galtea):
    result = galtea.inference_results.create(**SEED)
    assert result.id.startswith(f"loc_{galtea.store_id[:8]}_")
    assert (result.session_id, result.input, result.actual_output, result.latency) == ("sess-1", SEED["input"], "Paris", 150.5)
    assert result.status == "GENERATED"
    assert (result.sync_state, result.remote_id, result.index) == ("queued", None, None)
    assert galtea.inference_results.get(result.id) == result
    assert outbox_ops(galtea) == [(seq_of(result), "create", None, "pending")]


def _every_parameter(usage, cost) -> dict:
    return dict(
        session_id="sess-all", input={"user_message": "hi", "chat_type": "support"},
        output={"assistant_message": "hello", "content": []}, retrieval_context="ctx", latency=12.0,
        usage_info=usage, cost_info=cost, conversation_simulator_version="sim-1", status="pending",
    )  # fmt: skip


USAGE = {"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 2, "tokens": 17}
COST = {"cost_per_input_token": 0.1, "cost_per_output_token": 0.2, "cost_per_cache_read_input_token": 0.05, "cost": 2.1}


@pytest.mark.parametrize(
    "usage, cost",
    [
        (USAGE, COST),
        (UsageInfoProperties(**USAGE), CostInfoProperties(**COST)),
        (official.UsageInfoProperties(**USAGE), official.CostInfoProperties(**COST)),
    ],
    ids=["dicts", "trace-models", "top-level-models"],
)
def test_create_with_every_parameter(galtea, usage, cost):
    result = galtea.inference_results.create(**_every_parameter(usage, cost))
    assert galtea.inference_results.get(result.id) == result
    assert (result.input, result.input_data) == ("hi", {"user_message": "hi", "chat_type": "support"})
    assert (result.actual_output, result.actual_output_data) == ("hello", {"assistant_message": "hello", "content": []})
    assert (result.retrieval_context, result.conversation_simulator_version, result.status) == ("ctx", "sim-1", "PENDING")
    assert {k: getattr(result, k) for k in USAGE} == USAGE
    assert {k: getattr(result, k) for k in COST} == COST


def test_session_custom_id_version_wins(galtea):
    result = galtea.inference_results.create(session_custom_id="conv-9", version_id="v1", product_id="p1", input="x")
    assert result.session_custom_id == "conv-9"
    assert query(galtea.store_path, "SELECT version_id, product_id, lane FROM inference_results") == [
        ("v1", None, "c:v:v1:conv-9")
    ]


def test_session_custom_id_with_product(galtea):
    galtea.inference_results.create(session_custom_id="conv-9", product_id="p1", input="x")
    assert query(galtea.store_path, "SELECT version_id, product_id FROM inference_results") == [(None, "p1")]


@pytest.mark.parametrize("status", ["SKIPPED", "FAILED", "skipped", "Failed"])
def test_skipped_and_failed_at_create(galtea, status):
    result = galtea.inference_results.create(session_id="s", status=status, input="q")
    assert result.status == status.upper()
    assert galtea.inference_results.get(result.id).status == status.upper()


@pytest.mark.parametrize("status", list(InferenceResultStatus) + list(TraceStatus), ids=str)
def test_status_enums(galtea, status):
    assert galtea.inference_results.create(session_id="s", status=status).status == status.value


def test_our_status_enum_is_case_insensitive():
    assert InferenceResultStatus("pending") is InferenceResultStatus.PENDING


def test_pending_then_generated(galtea):
    pending = galtea.inference_results.create(session_id="s", input="q", status="PENDING")
    done = galtea.inference_results.update(pending.id, output="a", latency=80.0, status="GENERATED")
    assert (done.id, done.status, done.actual_output, done.latency, done.input) == (pending.id, "GENERATED", "a", 80.0, "q")
    assert galtea.inference_results.get(pending.id) == done


def test_pending_then_failed_with_error(galtea):
    pending = galtea.inference_results.create(session_id="s", input="q", status=InferenceResultStatus.PENDING)
    failed = galtea.inference_results.update(inference_result_id=pending.id, status="failed", error="model timed out")
    assert (failed.status, failed.error) == ("FAILED", "model timed out")
    assert galtea.traces.get(pending.id).error == "model timed out"


def test_update_none_clears_and_missing_keeps(galtea):
    record = galtea.inference_results.create(session_id="s", input="q", retrieval_context="ctx", latency=5.0)
    changed = galtea.inference_results.update(record.id, latency=None)
    assert (changed.latency, changed.retrieval_context, changed.input) == (None, "ctx", "q")


def test_update_with_nothing_passed_returns_record_unchanged(galtea):
    record = galtea.inference_results.create(**SEED)
    assert galtea.inference_results.update(record.id) == record
    assert len(outbox_ops(galtea)) == 1


def test_trace_id_keyword(galtea):
    record = galtea.traces.create(**SEED)
    assert galtea.traces.update(trace_id=record.id, status="skipped").status == "SKIPPED"
    assert galtea.traces.get(trace_id=record.id).status == "SKIPPED"


def test_get_and_update_by_remote_id(galtea):
    # The sync engine fills remote_id once upstream confirms; simulate that.
    record = galtea.inference_results.create(**SEED)
    execute(galtea.store_path, "UPDATE inference_results SET remote_id = 'r-1', create_sent = 1 WHERE seq = ?", (seq_of(record),))
    assert galtea.inference_results.get("r-1").id == record.id
    assert galtea.inference_results.update("r-1", status="FAILED").id == record.id


# -- update folding --------------------------------------------------------------


def test_update_before_sync_folds_into_the_create(galtea):
    record = galtea.inference_results.create(session_id="s", input="q", status="PENDING")
    galtea.inference_results.update(record.id, output="a", status="GENERATED")
    assert outbox_ops(galtea) == [(seq_of(record), "create", None, "pending")]
    assert query(galtea.store_path, "SELECT status, actual_output FROM inference_results") == [("GENERATED", '"a"')]


def test_update_after_create_sent_queues_changed_fields_only(galtea):
    record = galtea.inference_results.create(session_id="s", input="q", status="PENDING", latency=3.0)
    execute(galtea.store_path, "UPDATE inference_results SET create_sent = 1, sync_state = 'synced'")
    galtea.inference_results.update(record.id, output="a", status="GENERATED")
    ops = outbox_ops(galtea)
    assert [(op[1], op[3]) for op in ops] == [("create", "pending"), ("update", "pending")]
    assert set(json.loads(ops[1][2])) == {"actual_output", "status"}
    assert json.loads(ops[1][2])["status"] == "GENERATED"
    assert galtea.inference_results.get(record.id).sync_state == "queued"


# -- delete -------------------------------------------------------------------------


def test_delete_then_get_raises_not_found(galtea):
    record = galtea.inference_results.create(**SEED)
    galtea.inference_results.delete(record.id)
    with pytest.raises(NotFoundError, match=record.id):
        galtea.inference_results.get(record.id)
    assert galtea.inference_results.list(session_id="sess-1") == []


def test_delete_before_sync_cancels_the_create(galtea):
    record = galtea.inference_results.create(**SEED)
    galtea.inference_results.delete(record.id)
    assert [(op[1], op[3]) for op in outbox_ops(galtea)] == [("create", "done")]


def test_delete_after_create_sent_queues_a_delete(galtea):
    record = galtea.inference_results.create(**SEED)
    execute(galtea.store_path, "UPDATE inference_results SET create_sent = 1")
    galtea.inference_results.delete(record.id)
    assert [(op[1], op[3]) for op in outbox_ops(galtea)] == [("create", "pending"), ("delete", "pending")]


# -- list ---------------------------------------------------------------------------

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z


@pytest.fixture
def three_turns(galtea):
    """Three turns of sess-a at T0, T0+10, T0+20 and one of sess-b; returns their ids."""
    ids = [galtea.inference_results.create(session_id="sess-a", input=f"q{i}").id for i in range(3)]
    other = galtea.inference_results.create(session_id="sess-b", input="other").id
    for i, record_id in enumerate(ids):
        execute(galtea.store_path, "UPDATE inference_results SET created_at = ? WHERE seq = ?",
                (T0 + 10 * i, int(record_id.rsplit("_", 1)[1])))  # fmt: skip
    return ids, other


def test_list_returns_what_get_returns(galtea, three_turns):
    ids, _ = three_turns
    listed = galtea.inference_results.list(session_id="sess-a")
    assert listed == [galtea.inference_results.get(i) for i in ids]
    assert listed[0].created_at == "2023-11-14T22:13:20.000Z"


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({"session_id": ["sess-a", "sess-b"]}, [0, 1, 2, 3]),
        ({"id": 1}, [1]),
        ({"from_created_at": "2023-11-14T22:13:30Z"}, [1, 2]),
        ({"to_created_at": int(T0 + 10)}, [0, 1]),
        ({"from_created_at": T0 + 5, "to_created_at": "2023-11-14T22:13:35+00:00"}, [1]),
        ({"sort_by_created_at": "desc"}, [2, 1, 0]),
        ({"sort_by_created_at": "asc", "offset": 1, "limit": 1}, [1]),
        ({"limit": 2}, [0, 1]),
        ({"offset": 2}, [2]),
    ],
)
def test_list_filters(galtea, three_turns, kwargs, expected):
    ids, other = three_turns
    everything = [*ids, other]
    if "id" in kwargs:
        kwargs = {"id": everything[kwargs["id"]]}
    elif "session_id" not in kwargs:
        kwargs = {"session_id": "sess-a", **kwargs}
    assert [r.id for r in galtea.inference_results.list(**kwargs)] == [everything[i] for i in expected]


def test_list_needs_a_filter(galtea):
    with pytest.raises(ValueError, match="session_id"):
        galtea.inference_results.list()


# -- create_batch -------------------------------------------------------------------------


def test_create_batch_pairs_user_and_assistant_turns(galtea):
    turns = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello", "retrieval_context": "doc"},
        {"role": "user", "content": "bye"},
        {"role": "assistant", "content": "ciao"},
        {"role": "user", "content": "still there?"},
    ]
    results = galtea.inference_results.create_batch(session_id="s", conversation_turns=turns)
    assert [(r.input, r.actual_output, r.retrieval_context) for r in results] == [
        ("hi", "hello", "doc"), ("bye", "ciao", None), ("still there?", None, None)
    ]  # fmt: skip
    assert galtea.inference_results.list(session_id="s") == results
    # One operation for the whole conversation: one POST /inferenceResults/batch, as the SDK sends.
    (op,) = outbox_ops(galtea)
    assert op[:2] == (seq_of(results[0]), "create_batch")
    assert json.loads(op[2]) == {"records": [seq_of(r) for r in results], "body": {
        "conversationTurns": turns, "sessionId": "s", "conversationSimulatorVersion": None}}


def test_create_batch_accepts_an_assistant_turn_first_as_the_api_does(galtea):
    results = galtea.inference_results.create_batch(
        session_id="s", conversation_turns=[{"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}])
    assert [(r.input, r.actual_output) for r in results] == [(None, "x"), ("y", None)]


def test_create_batch_refuses_a_turn_the_api_refuses(galtea):
    with pytest.raises(ValueError, match=r"conversation_turns\[1\]"):
        galtea.inference_results.create_batch(session_id="s", conversation_turns=[
            {"role": "user", "content": "x"}, {"role": "system", "content": "y"}])
    assert outbox_ops(galtea) == []
