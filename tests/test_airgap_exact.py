"""Across the air gap (issue 11 #9): a receipt never crashes on a remote id this store already owns
(the entry is a conflict, the rest applies), and the final state of a maybe-sent create reaches the API."""

from __future__ import annotations

import time
from pathlib import Path

from galtea_local import Galtea
from galtea_local.bundle import export_bundle, import_bundle, import_receipt, write_receipt
from galtea_local.outbox import attempts as ob
from galtea_local.status import store_status
from galtea_local_daemon.bodies import build_body
from tests.bundle_helpers import SIGNING
from tests.emulator_fixture import EmulatorHandle
from tests.sync_helpers import cli_env, drain, galtea_local, make_engine, new_session, open_store, upstream_by_session


def test_a_receipt_naming_an_owned_remote_id_is_a_conflict(tmp_path: Path, emulator: EmulatorHandle) -> None:
    session_id = new_session(emulator)
    with Galtea(store=tmp_path / "origin.db") as origin_app:
        first = origin_app.traces.create(session_id=session_id, input="same")
        second = origin_app.traces.create(session_id=session_id, input="other")
    origin, connected = open_store(tmp_path / "origin.db"), open_store(tmp_path / "connected.db")
    try:
        export_bundle(origin, tmp_path / "queue.glb", signing=SIGNING)
        import_bundle(connected, tmp_path / "queue.glb", signing=SIGNING)
        drain(make_engine(connected, emulator))
        write_receipt(connected, origin.store_id, tmp_path / "receipt.glb", signing=SIGNING)
        taken = connected.read(lambda c: c.execute(
            "SELECT remote_id FROM inference_results WHERE origin_seq = 1").fetchone()[0])
        # Meanwhile the origin learned that id for another row (its own daemon, an earlier receipt).
        with Galtea(store=tmp_path / "origin.db") as origin_app:
            third = origin_app.traces.create(session_id=session_id, input="same")
        origin.transaction(lambda c: c.execute("UPDATE inference_results SET remote_id = ? WHERE seq = 3",
                                               (taken,)))
        result = import_receipt(origin, tmp_path / "receipt.glb", signing=SIGNING)
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
        export_bundle(origin, tmp_path / "queue.glb", signing=SIGNING)
        import_bundle(connected, tmp_path / "queue.glb", signing=SIGNING)
        drain(make_engine(connected, emulator))
    finally:
        origin.close()
        connected.close()
    (record,) = emulator.dump(log=False)["inferenceResults"]
    assert (record["status"], record["actualOutput"]) == ("GENERATED", "a")


def test_export_hands_custody_over_until_a_receipt_or_a_reclaim(tmp_path: Path, emulator: EmulatorHandle) -> None:
    """Issue 11 #9c: the origin's own daemon, online before the receipt, pushes nothing it exported."""
    session_id = new_session(emulator)
    origin, connected = open_store(tmp_path / "origin.db"), open_store(tmp_path / "connected.db")
    try:
        with Galtea(store=tmp_path / "origin.db") as origin_app:
            for n in range(3):
                origin_app.traces.create(session_id=session_id, input=f"t{n}")
        export_bundle(origin, tmp_path / "queue.glb", signing=SIGNING)
        with Galtea(store=tmp_path / "origin.db") as origin_app:
            origin_app.traces.create(session_id=session_id, input="t3")  # after the export: waits behind it
        engine = make_engine(origin, emulator)
        engine.run_once()
        assert emulator.dump(log=False)["inferenceResults"] == []
        assert store_status(origin)["handed_over"] == 3
        import_bundle(connected, tmp_path / "queue.glb", signing=SIGNING)
        drain(make_engine(connected, emulator))
        write_receipt(connected, origin.store_id, tmp_path / "receipt.glb", signing=SIGNING)
        import_receipt(origin, tmp_path / "receipt.glb", signing=SIGNING)
        assert store_status(origin)["handed_over"] == 0
        drain(engine)  # now t3 goes, after the three the connected machine pushed
        export_bundle(origin, tmp_path / "empty.glb", signing=SIGNING)
        with Galtea(store=tmp_path / "origin.db") as origin_app:
            origin_app.traces.create(session_id=session_id, input="t4")
        export_bundle(origin, tmp_path / "lost.glb", signing=SIGNING)  # this bundle is lost on the way
        env = cli_env(tmp_path / "origin.db", emulator.url, emulator.api_key)
        assert galtea_local("reclaim", "--all", env=env).returncode == 0
        drain(engine)
    finally:
        origin.close()
        connected.close()
    inputs = [r["input"]["user_message"] for r in upstream_by_session(emulator)[session_id]]
    assert inputs == ["t0", "t1", "t2", "t3", "t4"]
