"""Import in chunks: each chunk its own short transaction, writers go between chunks, a file that
changes mid-import stops it with only verified lines in, and export reads each row once."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from galtea_local import Galtea
from galtea_local.bundle import export_bundle, import_bundle
from galtea_local.bundle import importer
from galtea_local.errors import BundleError
from tests.bundle_helpers import SIGNING, rows
from tests.sync_helpers import open_store

CHUNK = 7


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    """Chunks of 7 lines, each applied in one transaction (no time limit), with no pause between."""
    monkeypatch.setattr(importer, "CHUNK", CHUNK)
    monkeypatch.setattr(importer, "HOLD_S", 3600.0)
    monkeypatch.setattr(importer, "PAUSE", 0.0)


@pytest.fixture
def origin(tmp_path: Path):
    with Galtea(store=tmp_path / "origin.db") as galtea:
        for n in range(40):
            galtea.inference_results.create(session_id="one-session", input=f"q{n}")
    store = open_store(tmp_path / "origin.db")
    yield store
    store.close()


def test_import_commits_chunk_by_chunk_and_a_writer_gets_in_between(origin, tmp_path, monkeypatch):
    bundle = export_bundle(origin, tmp_path / "b.glb", signing=SIGNING).path
    connected = open_store(tmp_path / "connected.db")
    app = Galtea(store=tmp_path / "connected.db")
    chunks = []
    transaction = connected.transaction

    def commit_then_let_a_writer_in(fn, *args):
        result = transaction(fn, *args)
        if fn is importer._apply_chunk:
            chunks.append(len(args[2]))
            if len(chunks) == 2:  # an app writes between two chunks: the import holds no lock now
                writer = threading.Thread(target=app.inference_results.create,
                                          kwargs={"session_id": "app", "input": "x"})
                writer.start()
                writer.join(timeout=30)
                assert not writer.is_alive()
        return result

    connected.transaction = commit_then_let_a_writer_in
    try:
        assert import_bundle(connected, bundle, signing=SIGNING).records_added == 40
    finally:
        app.close()
        connected.close()
    assert chunks == [CHUNK] * 5 + [40 - 5 * CHUNK]
    inputs = [r[0] for r in rows(tmp_path / "connected.db", "SELECT input FROM inference_results ORDER BY seq")]
    imported = [i for i in inputs if i != '"x"']
    assert imported == [f'"q{n}"' for n in range(40)] and inputs.index('"x"') == 2 * CHUNK  # order kept


def test_a_file_changed_mid_import_stops_it_and_a_new_import_adds_the_rest_once(origin, tmp_path, monkeypatch):
    bundle = export_bundle(origin, tmp_path / "b.glb", signing=SIGNING).path
    genuine = bundle.read_bytes()
    with Galtea(store=origin.path) as galtea:
        galtea.inference_results.create(session_id="one-session", input="newer")
    other = export_bundle(origin, tmp_path / "other.glb", signing=SIGNING).path  # also valid, other bytes
    original = importer._apply_chunk

    def swap_after_first(conn, run, reader, chunk, start, last):
        at = original(conn, run, reader, chunk, start, last)
        if not swapped:
            swapped.append(True)
            bundle.write_bytes(other.read_bytes())
        return at

    swapped: list[bool] = []

    monkeypatch.setattr(importer, "_apply_chunk", swap_after_first)
    connected = open_store(tmp_path / "connected.db")
    try:
        with pytest.raises(BundleError):  # in place: seen as damage or as a changed chunk, either way refused
            import_bundle(connected, bundle, signing=SIGNING)
        # Only whole chunks of the verified file went in (how many depends on what was already buffered).
        inputs = [r[0] for r in rows(tmp_path / "connected.db", "SELECT input FROM inference_results ORDER BY seq")]
        assert inputs == [f'"q{n}"' for n in range(len(inputs))] and len(inputs) % CHUNK == 0 and len(inputs) < 40
        monkeypatch.setattr(importer, "_apply_chunk", original)
        bundle.write_bytes(genuine)
        result = import_bundle(connected, bundle, signing=SIGNING)
        assert (result.records_added, result.records_unchanged) == (40 - len(inputs), len(inputs))
    finally:
        connected.close()


def test_export_reads_each_row_once(origin, tmp_path):
    """Linear in a session's backlog: SQLite's VM steps grow with the rows, not their square."""
    steps = []
    for count in (40, 80):
        with Galtea(store=origin.path) as galtea:
            while rows(origin.path, "SELECT COUNT(*) FROM inference_results")[0][0] < count:
                galtea.inference_results.create(session_id="one-session", input="more")
        conn = origin.connection()
        counter = [0]
        conn.set_progress_handler(lambda: counter.__setitem__(0, counter[0] + 1) or 0, 100)
        try:
            export_bundle(origin, tmp_path / f"{count}.glb", signing=SIGNING)
        finally:
            conn.set_progress_handler(None, 100)
        steps.append(counter[0])
    assert steps[1] < 2.6 * steps[0], steps  # quadratic would be 4x


def test_a_transaction_stops_at_its_time_budget_and_the_next_one_goes_on(origin, tmp_path, monkeypatch):
    monkeypatch.setattr(importer, "HOLD_S", 0.0)  # every transaction applies one line, then yields the lock
    bundle = export_bundle(origin, tmp_path / "b.glb", signing=SIGNING).path
    connected = open_store(tmp_path / "connected.db")
    transactions = []
    transaction = connected.transaction

    def counted(fn, *args):
        transactions.append(fn)
        return transaction(fn, *args)

    connected.transaction = counted
    try:
        assert import_bundle(connected, bundle, signing=SIGNING).records_added == 40
    finally:
        connected.close()
    assert transactions.count(importer._apply_chunk) == 40
    inputs = [r[0] for r in rows(tmp_path / "connected.db", "SELECT input FROM inference_results ORDER BY seq")]
    assert inputs == [f'"q{n}"' for n in range(40)]
