"""Spans across the air gap: exported with their trace, pushed by the connected side, and
recognised as already there when the origin sends them after the receipt: one copy upstream."""

from __future__ import annotations

from pathlib import Path

import pytest

import galtea_local
from galtea_local import Galtea
from galtea_local.bundle import export_bundle, import_bundle, import_receipt, write_receipt
from galtea_local.status import store_status
from tests.bundle_helpers import SIGNING
from tests.emulator_fixture import EmulatorHandle
from tests.sync_helpers import make_engine, new_session, open_store
from tests.test_spans_sync import drain_all


def test_spans_travel_with_their_trace_and_go_up_once(tmp_path: Path, emulator: EmulatorHandle) -> None:
    session_id = new_session(emulator)
    origin_path, connected_path = tmp_path / "kiosk.db", tmp_path / "office.db"
    with Galtea(store=origin_path) as kiosk:
        trace = kiosk.traces.create(session_id=session_id, input="q")
        token = galtea_local.set_context(trace_id=trace.id)
        with galtea_local.start_span("agent", type="AGENT"):
            with galtea_local.start_span("tool", type="TOOL") as tool:
                tool.update(output={"ok": True})
        galtea_local.clear_context(token)
        origin_id = kiosk.store_id
    origin, connected = open_store(origin_path), open_store(connected_path)
    bundle = export_bundle(origin, tmp_path / "usb.glb", signing=SIGNING)
    first = import_bundle(connected, bundle.path, signing=SIGNING)
    again = import_bundle(connected, bundle.path, signing=SIGNING)
    assert (first.spans_added, again.spans_added) == (2, 0)
    drain_all(make_engine(connected, emulator))
    spans = emulator.dump(log=False)["spans"]
    assert sorted(s["name"] for s in spans) == ["agent", "tool"]
    assert {s["inferenceResultId"] for s in spans} == {emulator.dump(log=False)["inferenceResults"][0]["id"]}
    write_receipt(connected, origin_id, tmp_path / "receipt.glb", signing=SIGNING)
    import_receipt(origin, tmp_path / "receipt.glb", signing=SIGNING)
    drain_all(make_engine(origin, emulator))  # the origin's copies are recognised, not stored again
    dump = emulator.dump(log=False)
    assert len(dump["spans"]) == 2 and dump["refusedDuplicateSpans"] == 2
    assert store_status(origin)["spans_synced"] == 2 and store_status(connected)["spans_synced"] == 2


def test_a_corrupt_span_line_refuses_the_bundle_and_imports_nothing(tmp_path: Path) -> None:
    from galtea_local.bundle.format import BundleWriter
    from galtea_local.errors import BundleError
    from tests.bundle_helpers import read_lines

    origin_path = tmp_path / "kiosk.db"
    with Galtea(store=origin_path) as kiosk:
        trace = kiosk.traces.create(session_id="s", input="q")
        kiosk.spans.create(trace_id=trace.id, name="step")
    good = export_bundle(open_store(origin_path), tmp_path / "good.glb", signing=SIGNING).path
    header, *entries, _trailer = read_lines(good)
    span = next(entry for entry in entries if entry["type"] == "span")
    span["latency_ms"] = "fast"  # signed by a writer with the key, but not a span line we accept
    header = {key: value for key, value in header.items() if key not in ("format", "version")}
    with BundleWriter(tmp_path / "bad.glb", header, SIGNING) as writer:
        for entry in entries:
            writer.write(entry)
    connected = open_store(tmp_path / "office.db")
    with pytest.raises(BundleError, match="corrupt span line .*latency_ms"):
        import_bundle(connected, tmp_path / "bad.glb", signing=SIGNING)
    assert store_status(connected)["queued"] == 0 and store_status(connected)["spans_queued"] == 0
