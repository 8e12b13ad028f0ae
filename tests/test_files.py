"""Files attached to a turn: checked and copied at create(), uploaded before the create at sync,
exactly once even when the daemon is SIGKILLed mid-upload, removed with their records."""

from __future__ import annotations

import os
import signal
import sqlite3
from contextlib import closing
from pathlib import Path

import httpx
import pytest

import galtea_local
from galtea_local.config import RetentionSettings
from galtea_local.status import store_status
from galtea_local import Galtea
from galtea_local_daemon.housekeeping import Housekeeper
from tests.emulator_fixture import EmulatorHandle
from tests.helpers.daemon_proc import create_sessions, daemon_env, start_daemon, stop, wait_for, write_config
from galtea_local.store import open_store as open_any
from tests.sync_helpers import drain, make_engine, open_store


def rows(store: Path, sql: str) -> list[tuple]:
    with closing(sqlite3.connect(store)) as conn:
        return conn.execute(sql).fetchall()


@pytest.fixture
def pdf(tmp_path: Path) -> Path:
    path = tmp_path / "deed.pdf"
    path.write_bytes(b"%PDF-1.4 " + os.urandom(2000))
    return path


def test_bad_files_are_refused_naming_the_field_and_nothing_is_written(tmp_path: Path, pdf: Path) -> None:
    store = tmp_path / "s.db"
    big = tmp_path / "big.txt"
    big.write_bytes(b"x" * (20 * 1024 * 1024 + 1))
    odd = tmp_path / "tool.exe"
    odd.write_bytes(b"MZ")
    with Galtea(store=store) as g:
        cases = [({"input_file_paths": [str(pdf)] * 21}, "input_file_paths: 21 files"),
                 ({"output_file_paths": [str(big)]}, "output_file_paths: the files total"),
                 ({"input_file_paths": [str(odd)]}, "input_file_paths: tool.exe is not a type"),
                 ({"output_file_paths": [str(tmp_path / "gone.pdf")]}, "output_file_paths: file not found"),
                 ({"input_file_paths": ["https://elsewhere.example/x.pdf"]}, "input_file_paths: .* not a file uploaded"),
                 ({"input_file_paths": [str(pdf)], "output_file_paths": [str(odd)]}, "output_file_paths")]
        for files, message in cases:
            with pytest.raises(galtea_local.InvalidInputError, match=message):
                g.traces.create(session_id="s", input="q", **files)
        with pytest.raises(galtea_local.InvalidTypeError, match="input_file_paths"):
            g.traces.create(session_id="s", input="q", input_file_paths=str(pdf))
        with pytest.raises(galtea_local.InvalidInputError, match="output_file_paths"):
            g.traces.update("loc_x_1", output_file_paths=[str(pdf)])
    assert rows(store, "SELECT count(*) FROM inference_results") == [(0,)]
    assert rows(store, "SELECT count(*) FROM attachments") == [(0,)]
    assert not (tmp_path / "s.db.blobs").exists() or os.listdir(tmp_path / "s.db.blobs") == []


def test_files_are_copied_privately_when_create_returns(tmp_path: Path, pdf: Path) -> None:
    store = tmp_path / "s.db"
    with Galtea(store=store) as g:
        trace = g.traces.create(session_id="s", input="q", output="a", output_file_paths=[str(pdf)])
    pdf.unlink()  # the app may remove its file at once: the copy is what goes up
    (blob, sha, state), = rows(store, "SELECT blob, sha256, state FROM attachments")
    folder = tmp_path / "s.db.blobs"
    assert oct(folder.stat().st_mode & 0o777) == "0o700"
    assert oct((folder / blob).stat().st_mode & 0o777) == "0o600"
    assert state == "pending" and len(sha) == 64
    assert [f.filename for f in trace.actual_output_files] == ["deed.pdf"]
    assert trace.actual_output == "a" and trace.actual_output_data["assistant_message"] == "a"


def test_sync_uploads_before_the_create_and_retention_removes_the_blobs(
        emulator: EmulatorHandle, tmp_path: Path, pdf: Path) -> None:
    session_id, = create_sessions(emulator, 1)
    store_path = tmp_path / "s.db"
    with Galtea(store=store_path) as g:
        g.traces.create(session_id=session_id, input="see", input_file_paths=[str(pdf)])
        g.traces.create(session_id=session_id, input="last, kept by retention")
    store = open_store(store_path)
    try:
        assert {k: v for k, v in store_status(store).items() if k.startswith("files_")} == {
            "files_pending": 1, "files_pending_bytes": pdf.stat().st_size}
        drain(make_engine(store, emulator))
        assert store_status(store)["files_pending"] == 0
        dump = emulator.dump()
        (obj,) = dump["storageObjects"]
        first = next(r for r in dump["inferenceResults"] if r["input"]["user_message"] == "see")
        assert first["input"]["content"][0]["uri"] == f"s3://galtea-emulator/{obj['key']}"
        order = [e["route"] for e in dump["log"] if e["route"].startswith(("/storage", "/inferenceResults"))]
        assert order.index("/storage/generate-put-presigned-url") < order.index("/inferenceResults")
        with Galtea(store=store_path) as g:  # read locally, it names the file as upstream stored it
            (local,) = [t for t in g.traces.list(session_id=session_id) if t.input == "see"]
            assert [f.uri for f in local.input_files] == [f"s3://galtea-emulator/{obj['key']}"]
        keeper = Housekeeper(store, RetentionSettings(synced_days=0))
        keeper.expire(2e9)
    finally:
        store.close()
    assert rows(store_path, "SELECT count(*) FROM attachments") == [(0,)]
    assert os.listdir(tmp_path / "s.db.blobs") == []


def test_sigkill_mid_upload_resumes_the_same_upload_and_creates_once(
        emulator: EmulatorHandle, tmp_path: Path, pdf: Path) -> None:
    session_id, = create_sessions(emulator, 1)
    store_path = tmp_path / "s.db"
    with Galtea(store=store_path) as g:
        g.traces.create(session_id=session_id, input="with a deed", input_file_paths=[str(pdf)])
    httpx.post(f"{emulator.url}/_emulator/storage", json={"hold_put_s": 60}).raise_for_status()
    env = daemon_env(emulator, store_path, write_config(tmp_path))
    proc = start_daemon(env)
    # The bytes are stored upstream, the answer is held: the daemon dies not knowing it landed.
    wait_for(lambda: len(emulator.dump()["storageObjects"]) == 1, 20, "the upload to arrive", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert rows(store_path, "SELECT state FROM attachments") == [("presigned",)]
    assert emulator.dump()["inferenceResults"] == []
    httpx.post(f"{emulator.url}/_emulator/storage", json={"hold_put_s": 0}).raise_for_status()
    proc = start_daemon(env)
    wait_for(lambda: len(emulator.dump()["inferenceResults"]) == 1, 20, "the create", proc)
    stop(proc)
    dump = emulator.dump()
    assert dump["storagePresigned"] == 1  # the kept links were used again: one object, no orphan
    (obj,) = dump["storageObjects"]
    assert obj["puts"] == 2
    (record,) = dump["inferenceResults"]
    assert record["input"]["content"] == [{"uri": f"s3://galtea-emulator/{obj['key']}", "filename": "deed.pdf",
                                           "mimeType": "application/pdf", "type": "file"}]
    assert rows(store_path, "SELECT state FROM attachments") == [("uploaded",)]


def test_a_bundle_refuses_turns_whose_files_are_not_uploaded(tmp_path: Path, pdf: Path) -> None:
    from galtea_local.bundle.export import export_bundle
    from galtea_local.bundle.signing import Signing
    from galtea_local.errors import BundleError

    store_path = tmp_path / "s.db"
    with Galtea(store=store_path) as g:
        trace = g.traces.create(session_id="s", input="q", input_file_paths=[str(pdf)])
    store = open_store(store_path)
    try:
        with pytest.raises(BundleError, match=f"{trace.id} has files"):
            export_bundle(store, tmp_path / "out.bundle", signing=Signing(None, allow_unsigned=True))
    finally:
        store.close()
    assert not (tmp_path / "out.bundle").exists()
    assert rows(store_path, "SELECT count(*) FROM outbox WHERE state = 'pending'") == [(1,)]


def test_postgresql_store_keeps_blobs_under_its_id_and_uploads_them(
        emulator: EmulatorHandle, pg_url: str, tmp_path: Path, pdf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))  # where a PostgreSQL store's blobs live
    session_id, = create_sessions(emulator, 1)
    with Galtea(store=pg_url) as g:
        trace = g.traces.create(session_id=session_id, output="answer", output_file_paths=[str(pdf)])
        folder = tmp_path / "data" / "galtea-local" / "blobs" / g.store_id
    assert len(os.listdir(folder)) == 1
    store = open_any(pg_url)
    try:
        drain(make_engine(store, emulator))
    finally:
        store.close()
    (record,) = emulator.dump()["inferenceResults"]
    (obj,) = emulator.dump()["storageObjects"]
    assert record["actualOutput"] == {"assistant_message": "answer", "content": [
        {"uri": f"s3://galtea-emulator/{obj['key']}", "filename": "deed.pdf", "mimeType": "application/pdf",
         "type": "file"}]}
    with Galtea(store=pg_url) as g:
        assert g.traces.get(trace.id).actual_output_files[0].uri == f"s3://galtea-emulator/{obj['key']}"


def test_a_refused_upload_leaves_the_create_unsent_and_a_changed_copy_is_dead_lettered(
        emulator: EmulatorHandle, tmp_path: Path, pdf: Path) -> None:
    session_id, = create_sessions(emulator, 1)
    store_path = tmp_path / "s.db"
    with Galtea(store=store_path) as g:
        g.traces.create(session_id=session_id, input="one", input_file_paths=[str(pdf)])
        spoiled = g.traces.create(session_id=session_id, input="two", output_file_paths=[str(pdf)])
    (blob,) = [b for (b,) in rows(store_path, "SELECT blob FROM attachments WHERE record_seq = 2")]
    (tmp_path / "s.db.blobs" / blob).write_bytes(b"not what was attached")
    emulator.set_faults(throttle_next=1)  # the first presign is answered 429
    store = open_store(store_path)
    try:
        drain(make_engine(store, emulator))
    finally:
        store.close()
    dump = emulator.dump()
    assert [r["input"]["user_message"] for r in dump["inferenceResults"]] == ["one"]
    assert dump["storagePresigned"] == 1 and len(dump["storageObjects"]) == 1
    # The create left once: the throttled upload never made it "maybe sent".
    assert rows(store_path, "SELECT attempts, state FROM outbox WHERE record_seq = 1 AND kind = 'create'") == [
        (1, "done")]
    (error,) = rows(store_path, "SELECT last_error FROM outbox WHERE record_seq = 2 AND state = 'dead'")
    assert "deed.pdf" in error[0] and "changed on disk" in error[0]
    with Galtea(store=store_path) as g:
        assert g.traces.get(spoiled.id).sync_state == "dead"


class FakeStorage:
    """A storage that answers each PUT from a script: the decisions on 403/409 are what is tested."""

    def __init__(self, puts: list[int], stored: bytes | None = None) -> None:
        self.puts, self.stored, self.presigns, self.links = puts, stored, 0, []

    def presign_upload(self, name: str) -> tuple[str, str]:
        self.presigns += 1
        return f"https://up/{self.presigns}", f"https://down/{self.presigns}"

    def put_object(self, link: str, data: bytes, name: str) -> int:
        self.links.append(link)
        return self.puts.pop(0)

    def get_object(self, link: str, name: str) -> bytes | None:
        return self.stored


def uploader_case(tmp_path: Path, pdf: Path, storage: FakeStorage, state: str = "presigned") -> tuple:
    from galtea_local_daemon.uploads import Uploader

    store_path = tmp_path / "s.db"
    with Galtea(store=store_path) as g:
        g.traces.create(session_id="s", input="q", input_file_paths=[str(pdf)])
    with closing(sqlite3.connect(store_path)) as conn, conn:  # as a crash after the presign left it
        conn.execute("UPDATE attachments SET state = ?, upload_url = 'https://up/0', download_url = 'https://down/0',"
                     " presigned_at = 2e9", (state,))
    store = open_store(store_path)
    try:
        record = store.read(lambda conn: dict(conn.execute("SELECT * FROM inference_results").fetchone()))
        uploader = Uploader(store, storage, storage, clock=lambda: 2e9 + 60)
        try:
            return uploader.ensure(record), rows(store_path, "SELECT state, uri FROM attachments")
        except Exception as error:  # noqa: BLE001 - the decision under test
            return error, rows(store_path, "SELECT state, uri FROM attachments")
    finally:
        store.close()


def test_a_used_link_counts_as_uploaded_only_when_the_object_is_ours(tmp_path: Path, pdf: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    ours = FakeStorage([409], stored=pdf.read_bytes())
    uris, state = uploader_case(tmp_path / "a", pdf, ours)
    assert list(uris.values()) == ["https://down/0"] and state == [("uploaded", "https://down/0")]
    assert ours.presigns == 0  # the kept links were enough
    theirs = FakeStorage([409], stored=b"someone else's bytes")
    error, state = uploader_case(tmp_path / "b", pdf, theirs)
    assert isinstance(error, galtea_local.errors.RetryLaterError) and "fresh link" in str(error)
    assert state == [("pending", None)]  # the next try presigns afresh


def test_an_expired_kept_link_is_replaced_once(tmp_path: Path, pdf: Path) -> None:
    storage = FakeStorage([403, 200])
    uris, state = uploader_case(tmp_path, pdf, storage)
    assert storage.links == ["https://up/0", "https://up/1"] and storage.presigns == 1
    assert state == [("uploaded", "https://down/1")]


def test_text_that_mentions_a_placeholder_is_sent_as_written(emulator: EmulatorHandle, tmp_path: Path) -> None:
    session_id, = create_sessions(emulator, 1)
    store_path = tmp_path / "s.db"
    text = '{"uri":"galtea-local:blob/' + "0" * 32 + '"} is how a local file part looks'
    with Galtea(store=store_path) as g:
        g.traces.create(session_id=session_id, input=text, output={"note": "galtea-local:blob/abc"})
    store = open_store(store_path)
    try:
        drain(make_engine(store, emulator))
    finally:
        store.close()
    (record,) = emulator.dump()["inferenceResults"]
    assert record["input"] == {"user_message": text} and record["actualOutput"] == {"note": "galtea-local:blob/abc"}
