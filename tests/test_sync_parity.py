"""The same calls through galtea-local (then synced) and through the official SDK leave the same records.

Two emulators get the same sessions; the official SDK writes to one directly, galtea-local
queues to a store that the engine then pushes to the other. Every record is compared field
by field (all but id/createdAt/sessionId), session by session, in server index order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from galtea import Galtea as OfficialGaltea

from galtea_local import Galtea
from tests.emulator_fixture import EmulatorHandle
from tests.sync_helpers import comparable, drain, make_engine, new_session, open_store, upstream_by_session

CUSTOM_ID = "conv-7"
USAGE = {"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 2, "tokens": 17}
COSTS = {"cost_per_input_token": 0.001, "cost_per_output_token": 0.002,
         "cost_per_cache_read_input_token": 0.0005, "cost": 0.021}

# (verb, record name, arguments); "session" names one of the sessions made in both emulators.
CALLS: list[tuple[str, str, dict[str, Any]]] = [
    ("create", "doc", {"session": "A", "input": "What is the capital of France?", "output": "Paris",
                       "latency": 150.5}),
    ("create", "every", {"session": "A", "input": {"user_message": "Hi", "chat_type": "support"},
                         "output": "Hello", "retrieval_context": "greeting docs", "latency": 12.5,
                         "usage_info": USAGE, "cost_info": COSTS, "conversation_simulator_version": "sim-1",
                         "status": "PENDING"}),
    ("create", "to_generated", {"session": "A", "input": "still thinking", "status": "PENDING"}),
    ("create", "to_failed", {"session": "B", "input": "will fail", "status": "pending"}),
    ("create", "skipped", {"session": "B", "input": "not answered", "status": "skipped"}),
    ("create", "dicts", {"session": "B", "input": {"user_message": "Q", "lang": "en"},
                         "output": {"answer": "A", "sources": ["x", "y"]}}),
    ("create", "custom_1", {"session_custom_id": CUSTOM_ID, "version_id": "v1", "input": "first by custom id"}),
    ("update", "to_generated", {"output": "done now", "status": "GENERATED", "latency": 99.0}),
    ("update", "to_failed", {"status": "FAILED", "error": "model timed out"}),
    ("update", "every", {"status": "generated", "tokens": 20}),
    ("create", "custom_2", {"session_custom_id": CUSTOM_ID, "version_id": "v1", "input": "second",
                            "output": "ok", "usage_info": {"input_tokens": 3}}),
    ("create", "after_updates", {"session": "A", "input": "last of A"}),
]


def make_sessions(handle: EmulatorHandle) -> dict[str, str]:
    """Sessions A and B, plus the custom-id one: identical in both emulators, in the same order."""
    sessions = {"A": new_session(handle), "B": new_session(handle)}
    sessions["custom"] = new_session(handle, custom_id=CUSTOM_ID)
    return sessions


def resolved(arguments: dict[str, Any], sessions: dict[str, str]) -> dict[str, Any]:
    out = dict(arguments)
    if "session" in out:
        out["session_id"] = sessions[out.pop("session")]
    return out


def play(service: Any, sessions: dict[str, str], after_each: Callable[[], None] = lambda: None) -> None:
    """Make CALLS on a traces service (official or local), calling ``after_each`` after every call."""
    ids: dict[str, str] = {}
    for verb, name, arguments in CALLS:
        if verb == "create":
            ids[name] = service.create(**resolved(arguments, sessions)).id
        else:
            service.update(ids[name], **arguments)
        after_each()


def upstream_view(handle: EmulatorHandle, sessions: dict[str, str]) -> dict[str, list[dict[str, Any]]]:
    grouped = upstream_by_session(handle)
    return {name: [comparable(r) for r in grouped.get(sid, [])] for name, sid in sessions.items()}


@pytest.fixture
def official(emulator_factory: Callable[..., EmulatorHandle], monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    handle = emulator_factory()
    monkeypatch.setenv("GALTEA_API_URL", handle.url)
    sdk = OfficialGaltea(api_key=handle.api_key)
    yield handle, sdk
    sdk.shutdown()


@pytest.mark.parametrize("sync_after_each_call", [False, True], ids=["sync-at-end", "sync-after-each-call"])
def test_same_records_upstream_as_the_official_sdk(
    official: Any, emulator: EmulatorHandle, tmp_path: Path, sync_after_each_call: bool
) -> None:
    sdk_handle, sdk = official
    sdk_sessions = make_sessions(sdk_handle)
    play(sdk.traces, sdk_sessions)

    local_sessions = make_sessions(emulator)
    store_path = tmp_path / "store.db"
    with Galtea(store=store_path) as local, closing(open_store(store_path)) as store:
        engine = make_engine(store, emulator, concurrency=4)
        # Synced after each call, every update goes as a PATCH; synced at the end, they fold into creates.
        play(local.traces, local_sessions, (lambda: drain(engine)) if sync_after_each_call else lambda: None)
        drain(engine)

    expected = upstream_view(sdk_handle, sdk_sessions)
    assert [len(expected[name]) for name in ("A", "B", "custom")] == [4, 3, 2]
    assert upstream_view(emulator, local_sessions) == expected
    dump = emulator.dump(log=False)
    assert dump["deletedInferenceResults"] == []
    patches = dump["requests"].get("PATCH /inferenceResults/{id}", 0)
    assert patches == (3 if sync_after_each_call else 0)
