"""The official galtea SDK (5.12, from PyPI) against the emulator, pointed at it with GALTEA_API_URL."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from galtea import Galtea

from tests.emulator_fixture import EmulatorHandle, emulator, emulator_factory  # noqa: F401  (fixtures)

VERSION_ID = "ver_emulated"


@pytest.fixture
def sdk(emulator: EmulatorHandle, monkeypatch: pytest.MonkeyPatch) -> Iterator[Galtea]:  # noqa: F811
    monkeypatch.setenv("GALTEA_API_URL", emulator.url)
    client = Galtea(api_key=emulator.api_key)
    yield client
    client.shutdown()


@pytest.fixture
def results(sdk: Galtea) -> Any:
    """``sdk.inference_results`` (deprecated upstream, but the name our contract keeps)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return sdk.inference_results


def stored(emulator: EmulatorHandle, result_id: str) -> dict[str, Any]:  # noqa: F811
    (record,) = [r for r in emulator.dump(log=False)["inferenceResults"] if r["id"] == result_id]
    return record


def test_constructor_checks_version_quietly(
    emulator: EmulatorHandle,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("GALTEA_API_URL", emulator.url)
    Galtea(api_key=emulator.api_key).shutdown()
    assert capsys.readouterr().out == ""
    assert emulator.dump()["log"] == []  # the version probe is not an API path: never faulted or counted


def test_doc_example_create(sdk: Galtea, results: Any, emulator: EmulatorHandle) -> None:  # noqa: F811
    session = sdk.sessions.create(version_id=VERSION_ID)
    created = results.create(
        session_id=session.id, input="What is the capital of France?", output="Paris", latency=150.5
    )
    assert (created.session_id, created.index, created.status) == (session.id, 0, "GENERATED")
    assert (created.input, created.actual_output, created.latency) == ("What is the capital of France?", "Paris", 150.5)
    record = stored(emulator, created.id)
    assert record["input"] == {"user_message": "What is the capital of France?"}
    assert record["actualOutput"] == "Paris"
    assert record["createdAt"].endswith("Z") and len(record["createdAt"]) == len("2026-11-26T06:40:00.123Z")


def test_every_parameter_then_update_get_list_delete(
    sdk: Galtea, results: Any, emulator: EmulatorHandle  # noqa: F811
) -> None:
    session = sdk.sessions.create(version_id=VERSION_ID, custom_id="conv-1", metadata={"site": "edge"})
    created = results.create(
        session_id=session.id,
        input={"user_message": "Hi", "chat_type": "support"},
        output="Hello",
        retrieval_context="greeting docs",
        latency=12.5,
        usage_info={"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 2, "tokens": 17},
        cost_info={
            "cost_per_input_token": 0.001,
            "cost_per_output_token": 0.002,
            "cost_per_cache_read_input_token": 0.0005,
            "cost": 0.021,
        },
        conversation_simulator_version="sim-1",
        status="PENDING",
    )
    record = stored(emulator, created.id)
    assert record.pop("createdAt").endswith("Z")
    assert record == {
        "id": created.id, "sessionId": session.id, "index": 0, "status": "PENDING", "error": None,
        "input": {"user_message": "Hi", "chat_type": "support"}, "actualOutput": "Hello",
        "retrievalContext": "greeting docs", "latency": 12.5, "inputTokens": 10, "outputTokens": 5,
        "cacheReadInputTokens": 2, "tokens": 17, "costPerInputToken": 0.001, "costPerOutputToken": 0.002,
        "costPerCacheReadInputToken": 0.0005, "cost": 0.021, "conversationSimulatorVersion": "sim-1",
        "deletedAt": None,
    }  # fmt: skip

    generated = results.update(created.id, status="GENERATED", output="Hello there")
    assert (generated.status, generated.actual_output) == ("GENERATED", "Hello there")
    assert stored(emulator, created.id)["latency"] == 12.5  # a PATCH leaves other fields alone

    failed = results.update(created.id, status="FAILED", error="model timed out", output=None)
    assert (failed.status, failed.error, failed.actual_output) == ("FAILED", "model timed out", None)
    assert stored(emulator, created.id)["actualOutput"] is None  # explicit null clears

    assert results.get(created.id).error == "model timed out"
    second = results.create(session_id=session.id, input="again", output="ok")
    assert [r.id for r in results.list(session_id=session.id)] == [created.id, second.id]
    assert second.index == 1

    results.delete(created.id)
    assert [r.id for r in results.list(session_id=session.id)] == [second.id]
    dump = emulator.dump(log=False)
    assert [r["id"] for r in dump["deletedInferenceResults"]] == [created.id]
    with pytest.raises(Exception, match="not found"):
        results.get(created.id)


def test_custom_id_sessions(sdk: Galtea, results: Any) -> None:
    session = sdk.sessions.get_or_create(custom_id="conv-7", version_id=VERSION_ID)
    assert sdk.sessions.get_or_create(custom_id="conv-7", version_id=VERSION_ID).id == session.id
    assert sdk.sessions.get(session.id).custom_id == "conv-7"
    turn = results.create(session_custom_id="conv-7", version_id=VERSION_ID, input="q", output="a")
    assert turn.session_id == session.id
    by_product = sdk.sessions.create(product_id="prod-1", custom_id="conv-8")
    turn = results.create(session_custom_id="conv-8", product_id="prod-1", input="q", output="a")
    assert turn.session_id == by_product.id
    assert sdk.sessions.finish(session.id).status == "COMPLETED"


def test_create_batch(sdk: Galtea, results: Any, emulator: EmulatorHandle) -> None:  # noqa: F811
    session = sdk.sessions.create(version_id=VERSION_ID)
    turns = [
        {"role": "user", "content": "capital of France?"},
        {"role": "assistant", "content": "Paris", "retrieval_context": "France's capital is Paris."},
        {"role": "user", "content": "population?"},
        {"role": "assistant", "content": "2M"},
    ]
    created = results.create_batch(session_id=session.id, conversation_turns=turns)
    assert [(t.index, t.input, t.actual_output) for t in created] == [
        (0, "capital of France?", "Paris"),
        (1, "population?", "2M"),
    ]
    assert stored(emulator, created[0].id)["retrievalContext"] == "France's capital is Paris."
