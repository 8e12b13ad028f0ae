"""One upstream session is one lane (issue 11 #10): turns logged by the session's custom id or
local id and turns logged by its remote id go upstream in creation order."""

from __future__ import annotations

from contextlib import closing
from pathlib import Path

import pytest

from galtea_local import Galtea
from galtea_local_daemon import engine as engine_module
from tests.emulator_fixture import EmulatorHandle
from tests.sync_helpers import drain, make_engine, new_session, open_store, upstream_by_session

TURNS = 12


def test_custom_id_and_remote_id_turns_keep_creation_order(emulator: EmulatorHandle, tmp_path: Path) -> None:
    remote = new_session(emulator, custom_id="ticket-9")
    store_path = tmp_path / "store.db"
    emulator.set_faults(latency_ms=5)
    with Galtea(store=store_path) as local, closing(open_store(store_path)) as store:
        engine = make_engine(store, emulator, concurrency=4)
        local.traces.create(session_custom_id="ticket-9", version_id="v1", input="t0")
        drain(engine)  # the custom-id lane learns its remote session
        for turn in range(1, TURNS):
            if turn % 2:
                local.traces.create(session_id=remote, input=f"t{turn}")
            else:
                local.traces.create(session_custom_id="ticket-9", version_id="v1", input=f"t{turn}")
        drain(engine)
    records = upstream_by_session(emulator)[remote]
    assert [r["input"]["user_message"] for r in records] == [f"t{n}" for n in range(TURNS)]


def test_local_session_and_its_remote_id_share_a_lane(emulator: EmulatorHandle, tmp_path: Path) -> None:
    store_path = tmp_path / "store.db"
    with Galtea(store=store_path) as local, closing(open_store(store_path)) as store:
        session = local.sessions.create(version_id="v1", custom_id="conv-3")
        local.traces.create(session_id=session.id, input="t0")
        engine = make_engine(store, emulator, concurrency=4)
        drain(engine)
        remote = local.sessions.get(session.id).remote_id
        for turn in range(1, TURNS):
            local.traces.create(session_id=remote if turn % 2 else session.id, input=f"t{turn}")
        drain(engine)
    records = upstream_by_session(emulator)[remote]
    assert [r["input"]["user_message"] for r in records] == [f"t{n}" for n in range(TURNS)]


def test_turns_queued_under_both_names_go_in_creation_order(emulator: EmulatorHandle, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Turns logged by the remote id while the custom-id lane had not learned it yet are folded
    into that lane once it has, and go up in creation order with its own.

    One push thread: with two, the remote-id lane may go before the custom-id lane has learned
    that both names are one session, and those turns go up in push order (docs/delivery.md).
    """
    monkeypatch.setattr(engine_module, "WORKERS_PER_REQUEST_SLOT", 1)
    remote = new_session(emulator, custom_id="ticket-4")
    store_path = tmp_path / "store.db"
    with Galtea(store=store_path) as local, closing(open_store(store_path)) as store:
        for turn in range(TURNS):
            if turn % 3 == 1:
                local.traces.create(session_id=remote, input=f"t{turn}")
            else:
                local.traces.create(session_custom_id="ticket-4", version_id="v1", input=f"t{turn}")
        drain(make_engine(store, emulator, concurrency=1))
    records = upstream_by_session(emulator)[remote]
    assert [r["input"]["user_message"] for r in records] == [f"t{n}" for n in range(TURNS)]
