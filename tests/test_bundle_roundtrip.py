"""The air-gap round trip against the emulator: export on the origin, import and push on a
connected store, receipt back: every record upstream exactly once, and the origin knows it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from galtea_local import Galtea, retention
from galtea_local.bundle import export_bundle, import_bundle, import_receipt, write_receipt
from galtea_local.status import store_status
from galtea_local.store import Store
from tests.bundle_helpers import SIGNING, key_env, add_turn, populate, rows, upstream_markers, upstream_records
from tests.emulator_fixture import EmulatorHandle
from tests.sync_helpers import cli_env, drain, galtea_local, make_engine, new_session, open_store, write_config


def push(store: Store, handle: EmulatorHandle, **faults: float) -> None:
    """Drain the connected store, with these fault rates on while it pushes."""
    handle.set_faults(**faults)
    engine = make_engine(store, handle)
    try:
        drain(engine)
    finally:
        engine.client.close()
        handle.set_faults(**dict.fromkeys(faults, 0.0))


def remote_ids(path: Path) -> list[str | None]:
    return [row[0] for row in rows(path, "SELECT remote_id FROM inference_results ORDER BY seq")]


@pytest.mark.slow
def test_round_trip_of_2000_records_through_the_cli(tmp_path: Path, emulator_factory: Callable[..., EmulatorHandle]):
    handle = emulator_factory(seed=7)
    origin_path, connected_path = tmp_path / "origin.db", tmp_path / "connected.db"
    with Galtea(store=origin_path) as origin:
        ids = populate(origin, handle, "rt", remote_sessions=10, offline_sessions=10, per_session=100)
        origin_id = origin.store_id
    assert len(ids) == 2000
    config = write_config(tmp_path)
    # The origin has no network; both sites hold the same bundle key.
    on_origin = key_env(cli_env(origin_path, "http://127.0.0.1:9", "gsk_unused", config), tmp_path)
    on_connected = key_env(cli_env(connected_path, handle.url, handle.api_key, config), tmp_path)
    bundle, receipt = tmp_path / "usb" / "queue.glb", tmp_path / "usb" / "receipt.glb"
    bundle.parent.mkdir()

    exported = galtea_local("export", "--out", str(bundle), env=on_origin)
    assert exported.returncode == 0, exported.stderr
    assert "2000 record(s) and 10 session(s)" in exported.stdout
    assert store_status(open_store(origin_path))["queued"] == 2000  # exporting marks nothing
    imported = galtea_local("import", str(bundle), env=on_connected)
    assert imported.returncode == 0, imported.stderr
    assert "records 2000 added" in imported.stdout

    push(open_store(connected_path), handle, ambiguous_rate=0.1, fail_rate=0.1)
    written = galtea_local("receipt", "--for", origin_id, "--out", str(receipt), env=on_connected)
    assert written.returncode == 0, written.stderr
    assert "2000 record(s) and 10 session(s)" in written.stdout
    confirmed = galtea_local("import-receipt", str(receipt), env=on_origin)
    assert confirmed.returncode == 0, confirmed.stderr

    faults = handle.dump(log=False)["faults"]
    assert faults.get("ambiguous", 0) > 50 and faults.get("fail", 0) > 50  # lost answers and 5xx were survived
    assert upstream_markers(handle) == dict.fromkeys(ids, 1)  # each record exactly once
    assert all(r["status"] == "GENERATED" and r["actualOutput"] for r in upstream_records(handle))
    assert len(handle.dump(log=False)["sessions"]) == 20  # 10 remote + 10 created offline, once each
    status = store_status(open_store(origin_path))
    assert (status["synced"], status["queued"], status["sessions_synced"]) == (2000, 0, 10)
    assert sorted(remote_ids(origin_path)) == sorted(r["id"] for r in upstream_records(handle))
    again = galtea_local("import-receipt", str(receipt), env=on_origin)
    assert "0 record(s)" in again.stdout and "2010 confirmed before" in again.stdout


def test_same_and_overlapping_bundles_go_upstream_once(tmp_path: Path,
                                                       emulator_factory: Callable[..., EmulatorHandle]):
    handle = emulator_factory(seed=3)
    origin, connected = Galtea(store=tmp_path / "origin.db"), open_store(tmp_path / "connected.db")
    ids = populate(origin, handle, "a", remote_sessions=2, offline_sessions=2, per_session=15)
    pending = origin.inference_results.create(session_id=new_session(handle), input="late-answer", status="PENDING")
    store = open_store(tmp_path / "origin.db")
    export_bundle(store, tmp_path / "first.glb", signing=SIGNING)
    assert import_bundle(connected, tmp_path / "first.glb", signing=SIGNING).records_added == 61
    push(connected, handle, ambiguous_rate=0.1, fail_rate=0.1)  # the first bundle's creates are upstream now
    assert import_bundle(connected, tmp_path / "first.glb", signing=SIGNING).records_unchanged == 61

    more = populate(origin, handle, "b", remote_sessions=1, offline_sessions=1, per_session=10)
    origin.inference_results.update(pending.id, status="GENERATED", output="answered")
    export_bundle(store, tmp_path / "second.glb", signing=SIGNING)  # overlaps the first: everything still queued
    result = import_bundle(connected, tmp_path / "second.glb", signing=SIGNING)
    assert (result.records_added, result.records_updated, result.records_unchanged) == (20, 1, 60)
    assert import_bundle(connected, tmp_path / "second.glb", signing=SIGNING).records_unchanged == 81
    push(connected, handle, ambiguous_rate=0.1, fail_rate=0.1)

    assert upstream_markers(handle) == dict.fromkeys([*ids, *more, "late-answer"], 1)
    answered = [r for r in upstream_records(handle) if r["input"]["user_message"] == "late-answer"]
    assert (answered[0]["status"], answered[0]["actualOutput"]) == ("GENERATED", "answered")  # sent as a PATCH
    write_receipt(connected, origin.store_id, tmp_path / "receipt.glb", signing=SIGNING)
    import_receipt(store, tmp_path / "receipt.glb", signing=SIGNING)
    assert store_status(store)["synced"] == 81
    assert store.transaction(retention.delete_synced_before, float("inf")) == 80  # all but the newest row
    # The connected store keeps what it imported: its keys make an old bundle add nothing.
    assert connected.transaction(retention.delete_synced_before, float("inf")) == 0
    assert import_bundle(connected, tmp_path / "first.glb", signing=SIGNING).records_added == 0
    origin.close()


def test_records_created_after_an_export_go_in_the_next_one(tmp_path: Path, emulator: EmulatorHandle):
    origin, connected = Galtea(store=tmp_path / "origin.db"), open_store(tmp_path / "connected.db")
    store = open_store(tmp_path / "origin.db")
    first = populate(origin, emulator, "one", remote_sessions=1, offline_sessions=1, per_session=20)
    session = origin.sessions.list()[0]
    changed = origin.inference_results.list(session_id=session.id)[0]
    export_bundle(store, tmp_path / "1.glb", since_last=True, signing=SIGNING)
    later = {f"two-{n}": add_turn(origin, {"session_id": session.id}, f"two-{n}") for n in range(15)}
    origin.inference_results.update(changed.id, output="changed after the export")
    import_bundle(connected, tmp_path / "1.glb", signing=SIGNING)
    push(connected, emulator)
    write_receipt(connected, origin.store_id, tmp_path / "r1.glb", signing=SIGNING)
    result = import_receipt(store, tmp_path / "r1.glb", signing=SIGNING)
    assert (result.records, result.still_queued) == (39, 1)  # the changed one waits, with its remote id
    assert store_status(store)["queued"] == 16

    second = export_bundle(store, tmp_path / "2.glb", since_last=True, signing=SIGNING)
    assert (second.records, second.sessions) == (16, 1)  # the new turns, the change, their session
    import_bundle(connected, tmp_path / "2.glb", signing=SIGNING)
    push(connected, emulator)
    write_receipt(connected, origin.store_id, tmp_path / "r2.glb", signing=SIGNING)
    import_receipt(store, tmp_path / "r2.glb", signing=SIGNING)

    assert upstream_markers(emulator) == dict.fromkeys([*first, *later], 1)
    patched = [r for r in upstream_records(emulator) if r["actualOutput"] == "changed after the export"]
    assert len(patched) == 1
    status = store_status(store)
    assert (status["synced"], status["queued"]) == (55, 0)
    assert None not in remote_ids(tmp_path / "origin.db")
    assert export_bundle(store, tmp_path / "3.glb", signing=SIGNING).records == 0  # nothing left to carry
    origin.close()
