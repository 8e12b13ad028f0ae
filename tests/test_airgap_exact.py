"""Across the air gap (issue 11 #9): a receipt never crashes on a remote id this store already owns
(the entry is a conflict, the rest applies), and the final state of a maybe-sent create reaches the API."""

from __future__ import annotations

import time
from pathlib import Path

from galtea_local import Galtea
from galtea_local.bundle import export_bundle, import_bundle, import_receipt, write_receipt
from galtea_local.outbox import attempts as ob
from galtea_local_daemon.bodies import build_body
from tests.emulator_fixture import EmulatorHandle
from tests.sync_helpers import drain, make_engine, new_session, open_store


def test_a_receipt_naming_an_owned_remote_id_is_a_conflict(tmp_path: Path, emulator: EmulatorHandle) -> None:
    session_id = new_session(emulator)
    with Galtea(store=tmp_path / "origin.db") as origin_app:
        first = origin_app.traces.create(session_id=session_id, input="same")
        second = origin_app.traces.create(session_id=session_id, input="other")
    origin, connected = open_store(tmp_path / "origin.db"), open_store(tmp_path / "connected.db")
    try:
        export_bundle(origin, tmp_path / "queue.glb")
        import_bundle(connected, tmp_path / "queue.glb")
        drain(make_engine(connected, emulator))
        write_receipt(connected, origin.store_id, tmp_path / "receipt.glb")
        taken = connected.read(lambda c: c.execute(
            "SELECT remote_id FROM inference_results WHERE origin_seq = 1").fetchone()[0])
        # Meanwhile the origin learned that id for another row (its own daemon, an earlier receipt).
        with Galtea(store=tmp_path / "origin.db") as origin_app:
            third = origin_app.traces.create(session_id=session_id, input="same")
        origin.transaction(lambda c: c.execute("UPDATE inference_results SET remote_id = ? WHERE seq = 3",
                                               (taken,)))
        result = import_receipt(origin, tmp_path / "receipt.glb")
        assert result.conflicts == 1
        with Galtea(store=tmp_path / "origin.db") as origin_app:
            states = [origin_app.traces.get(r.id).sync_state for r in (first, second, third)]
        assert states == ["queued", "synced", "queued"]  # the conflicting one is not marked synced
    finally:
        origin.close()
        connected.close()


def test_an_update_after_a_maybe_sent_create_travels_in_the_bundle(tmp_path: Path, emulator: EmulatorHandle) -> None:
    """Issue 11 #9a: PENDING sent (answer lost), answered GENERATED, exported: upstream ends GENERATED."""
    session_id = new_session(emulator)
    origin, connected = open_store(tmp_path / "origin.db"), open_store(tmp_path / "connected.db")
    try:
        with Galtea(store=tmp_path / "origin.db") as origin_app:
            turn = origin_app.traces.create(session_id=session_id, input="q", status="PENDING")
            # The origin's daemon marks the create and sends it; the server applies it; the answer
            # and then the link are lost.
            (lane,) = origin.transaction(ob.claim_lanes, "origin", time.time(), 60.0, 1)
            attempt = origin.transaction(ob.take_next, lane, "origin", time.time(), 60.0, build_body)
            with emulator.client() as http:
                http.post("/inferenceResults", json=attempt.body).raise_for_status()
            origin.transaction(ob.release_lane, lane, "origin")
            origin_app.traces.update(turn.id, status="GENERATED", output="a")
        export_bundle(origin, tmp_path / "queue.glb")
        import_bundle(connected, tmp_path / "queue.glb")
        drain(make_engine(connected, emulator))
    finally:
        origin.close()
        connected.close()
    (record,) = emulator.dump(log=False)["inferenceResults"]
    assert (record["status"], record["actualOutput"]) == ("GENERATED", "a")
