"""Air-gap bundles: the container's checks, refused files importing nothing, export selection,
receipts addressed to one store, and a maybe-sent create reconciled rather than sent twice."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from galtea_local import Galtea
from galtea_local.bundle import VERSION, BundleReader, export_bundle, import_bundle, import_receipt, write_receipt
from galtea_local.errors import BundleError
from galtea_local.status import store_status
from galtea_local.store import Store
from tests.bundle_helpers import SIGNING, add_turn, read_lines, rows, table_counts, upstream_markers, write_lines
from tests.emulator_fixture import EmulatorHandle
from tests.sync_helpers import cli_env, drain, galtea_local, make_engine, new_session, open_store


@pytest.fixture
def origin(tmp_path: Path):
    """An origin store with turns in a remote session and in a session created offline."""
    with Galtea(store=tmp_path / "origin.db") as galtea:
        offline = galtea.sessions.create(version_id="v1", custom_id="conv-1")
        for n in range(6):
            add_turn(galtea, {"session_id": "remote-session-1"}, f"r{n}", pending=n % 2 == 0)
            add_turn(galtea, {"session_id": offline.id}, f"o{n}")
        galtea.sessions.finish(offline.id)
    store = open_store(tmp_path / "origin.db")
    yield store
    store.close()


@pytest.fixture
def bundle(origin: Store, tmp_path: Path) -> Path:
    path = tmp_path / "queue.glb"
    export_bundle(origin, path, signing=SIGNING)
    return path


@pytest.fixture
def connected(tmp_path: Path):
    store = open_store(tmp_path / "connected.db")
    yield store
    store.close()


def test_a_bundle_is_self_describing(origin: Store, bundle: Path) -> None:
    lines = read_lines(bundle)
    header, trailer = lines[0], lines[-1]
    assert (header["format"], header["version"], header["kind"]) == ("galtea-local-bundle", VERSION, "records")
    assert header["origin_store_id"] == origin.store_id
    assert trailer["type"] == "trailer" and trailer["counts"] == {"session": 1, "record": 12}
    assert len(trailer["sha256"]) == 64
    turns = [line for line in lines[1:] if line["type"] == "record"]
    assert {line["status"] for line in turns} == {"GENERATED"}  # pending updates folded into the row
    assert {line["session_ref"] for line in turns} == {None, 1}
    assert not list(bundle.parent.glob("*.partial"))


def test_import_queues_creates_in_the_right_lanes(bundle: Path, connected: Store) -> None:
    result = import_bundle(connected, bundle, signing=SIGNING)
    assert (result.records_added, result.sessions_added) == (12, 1)
    ops = rows(connected.path, "SELECT lane, kind FROM outbox ORDER BY seq")
    assert ops[0] == ("ls:1", "session_create") and ops[-1] == ("ls:1", "session_finish")  # finish after the turns
    assert {lane for lane, kind in ops if kind == "create"} == {"ls:1", "s:remote-session-1"}
    prefix = connected.store_id[:8]
    local_ids = rows(connected.path, "SELECT DISTINCT session_id FROM inference_results WHERE lane = 'ls:1'")
    assert local_ids == [(f"ses_{prefix}_1",)]  # the origin's local session id, mapped to this store's


# -- refused files import nothing --------------------------------------------------------------------


def flip_byte(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at % len(data)] ^= 0x01
    path.write_bytes(bytes(data))


def assert_refused(connected: Store, path: Path, match: str) -> None:
    with pytest.raises(BundleError, match=match) as refused:
        import_bundle(connected, path, signing=SIGNING)
    assert str(path) in str(refused.value)
    assert table_counts(connected.path) == (0, 0, 0)


@pytest.mark.parametrize("at", [0, 200, -12, -3])  # gzip magic, deflate data, CRC, length
def test_a_flipped_byte_is_refused(bundle: Path, connected: Store, at: int) -> None:
    flip_byte(bundle, at)
    assert_refused(connected, bundle, "corrupt|truncated|not a galtea-local bundle")


def test_every_flipped_bit_is_refused_or_changes_no_content(bundle: Path) -> None:
    """Some gzip bits carry no content (mtime, OS byte, a text hint): a flip there leaves the same
    bytes to import. Every other flip, wherever it lands, is refused."""
    original, content = bundle.read_bytes(), read_lines(bundle)
    refused = 0
    for at in range(len(original)):
        for bit in (0x01, 0x80):
            damaged = bytearray(original)
            damaged[at] ^= bit
            bundle.write_bytes(bytes(damaged))
            try:
                BundleReader(bundle, "records").verify()
            except BundleError:
                refused += 1
            else:
                assert read_lines(bundle) == content, f"byte {at} bit {bit:#x}: accepted with other content"
    assert refused > 1.8 * len(original)


def test_a_truncated_copy_is_refused(bundle: Path, connected: Store) -> None:
    bundle.write_bytes(bundle.read_bytes()[: bundle.stat().st_size // 2])
    assert_refused(connected, bundle, "truncated")


def test_a_bundle_without_its_trailer_is_refused(bundle: Path, connected: Store) -> None:
    write_lines(bundle, read_lines(bundle)[:-1])  # valid gzip, cut at a line boundary
    assert_refused(connected, bundle, "truncated .no trailer")


def test_a_changed_line_fails_the_checksum(bundle: Path, connected: Store) -> None:
    lines = read_lines(bundle)
    lines[3]["input"] = json.dumps("tampered")
    write_lines(bundle, lines)
    assert_refused(connected, bundle, "checksum mismatch")


def test_a_wrong_manifest_is_refused(bundle: Path, connected: Store) -> None:
    lines = read_lines(bundle)
    lines[-1]["counts"]["record"] = 11
    write_lines(bundle, lines)
    assert_refused(connected, bundle, "manifest")


def test_a_future_format_version_is_refused_by_number(bundle: Path, connected: Store) -> None:
    lines = read_lines(bundle)
    lines[0]["version"] = VERSION + 1
    write_lines(bundle, lines)
    assert_refused(connected, bundle, f"version {VERSION + 1} is newer.*upgrade galtea-local")


@pytest.mark.parametrize("content", [b"", b"just some text\n", b"SQLite format 3\x00" + bytes(100)])
def test_a_file_that_is_no_bundle_is_refused(tmp_path: Path, connected: Store, content: bytes) -> None:
    path = tmp_path / "not-a-bundle"
    path.write_bytes(content)
    assert_refused(connected, path, "not a galtea-local bundle|empty file")


def test_gzip_json_of_something_else_is_refused(tmp_path: Path, connected: Store) -> None:
    path = tmp_path / "other.jsonl.gz"
    write_lines(path, [{"event": "login"}, {"event": "logout"}])
    assert_refused(connected, path, "not a galtea-local bundle")


def test_a_receipt_is_not_a_bundle(origin: Store, connected: Store, tmp_path: Path) -> None:
    write_receipt(connected, origin.store_id, tmp_path / "receipt.glb", signing=SIGNING)
    assert_refused(connected, tmp_path / "receipt.glb", "import-receipt")


def test_a_bundle_is_not_imported_into_its_own_origin(origin: Store, bundle: Path) -> None:
    with pytest.raises(BundleError, match="exported from this very store"):
        import_bundle(origin, bundle, signing=SIGNING)


def test_the_cli_refuses_a_corrupt_bundle_with_exit_1(bundle: Path, tmp_path: Path) -> None:
    flip_byte(bundle, 200)
    target = tmp_path / "cli.db"
    result = galtea_local("import", str(bundle), env=cli_env(target, "http://127.0.0.1:9", "gsk_x"))
    assert result.returncode == 1
    assert str(bundle) in result.stderr and "galtea-local import:" in result.stderr
    assert table_counts(target) == (0, 0, 0)


# -- export selection ---------------------------------------------------------------------------------


def test_export_marks_nothing_and_since_last_takes_only_changes(origin: Store, tmp_path: Path) -> None:
    assert export_bundle(origin, tmp_path / "1.glb", since_last=True, overlap_s=0, signing=SIGNING).records == 12
    assert store_status(origin)["queued"] == 12
    with Galtea(store=origin.path) as galtea:
        add_turn(galtea, {"session_id": "remote-session-2"}, "new")
    second = export_bundle(origin, tmp_path / "2.glb", since_last=True, overlap_s=0, signing=SIGNING)
    assert (second.records, second.sessions) == (1, 0)
    # A full export still carries everything.
    assert export_bundle(origin, tmp_path / "3.glb", signing=SIGNING).records == 13


def test_a_time_range_selects_on_created_at_and_keeps_the_watermark(origin: Store, tmp_path: Path) -> None:
    middle = time.time()
    with Galtea(store=origin.path) as galtea:
        add_turn(galtea, {"session_id": "remote-session-2"}, "late")
    ranged = export_bundle(origin, tmp_path / "range.glb", start=middle, overlap_s=0, signing=SIGNING)
    assert ranged.records == 1 and read_lines(tmp_path / "range.glb")[1]["input"] == json.dumps("late")
    assert export_bundle(origin, tmp_path / "since.glb", since_last=True, overlap_s=0, signing=SIGNING).records == 13


def test_export_reports_progress(origin: Store, tmp_path: Path) -> None:
    seen: list[tuple[str, int]] = []

    class Bar:
        def update(self, n: int = 1) -> None:
            seen.append(("update", n))

        def close(self) -> None:
            seen.append(("close", 0))

    export_bundle(origin, tmp_path / "b.glb", progress=lambda total: seen.append(("total", total)) or Bar(),
                  signing=SIGNING)
    assert seen[0] == ("total", 12) and seen.count(("update", 1)) == 12 and seen[-1] == ("close", 0)


# -- receipts ---------------------------------------------------------------------------------------


def test_a_receipt_for_another_store_is_refused(origin: Store, connected: Store, bundle: Path,
                                                 tmp_path: Path) -> None:
    import_bundle(connected, bundle, signing=SIGNING)
    write_receipt(connected, "0" * 32, tmp_path / "receipt.glb", signing=SIGNING)
    with pytest.raises(BundleError, match="receipt is for store 0{32}"):
        import_receipt(origin, tmp_path / "receipt.glb", signing=SIGNING)
    assert store_status(origin)["queued"] == 12


def test_a_corrupt_receipt_changes_nothing(origin: Store, connected: Store, tmp_path: Path) -> None:
    write_receipt(connected, origin.store_id, tmp_path / "receipt.glb", signing=SIGNING)
    flip_byte(tmp_path / "receipt.glb", -12)
    with pytest.raises(BundleError, match="receipt.glb"):
        import_receipt(origin, tmp_path / "receipt.glb", signing=SIGNING)


def test_a_maybe_sent_create_is_reconciled_not_sent_twice(tmp_path: Path, emulator: EmulatorHandle) -> None:
    """The origin was online once and lost the answer to a create: the connected store adopts it."""
    session = new_session(emulator)
    with Galtea(store=tmp_path / "origin.db") as galtea:
        record = galtea.inference_results.create(session_id=session, input="maybe", output="sent")
    body = {"sessionId": session, "input": "maybe", "actualOutput": "sent", "status": "GENERATED"}
    with emulator.client() as http:
        remote_id = http.post("/inferenceResults", json=body).raise_for_status().json()["id"]
    origin = open_store(tmp_path / "origin.db")
    origin.transaction(lambda conn: conn.execute(
        "UPDATE outbox SET state = 'sending', sending_since = ?, sent_body = ?", (time.time() - 5, json.dumps(body))))
    export_bundle(origin, tmp_path / "b.glb", signing=SIGNING)
    connected = open_store(tmp_path / "connected.db")
    import_bundle(connected, tmp_path / "b.glb", signing=SIGNING)
    drain(make_engine(connected, emulator))
    assert upstream_markers(emulator) == {"maybe": 1}
    write_receipt(connected, origin.store_id, tmp_path / "r.glb", signing=SIGNING)
    import_receipt(origin, tmp_path / "r.glb", signing=SIGNING)
    assert rows(origin.path, "SELECT remote_id, sync_state FROM inference_results") == [(remote_id, "synced")]
    assert record.id.startswith("loc_")


def test_a_newer_session_version_is_applied_after_its_turns(tmp_path: Path, emulator: EmulatorHandle) -> None:
    with Galtea(store=tmp_path / "origin.db") as galtea:
        session = galtea.sessions.create(version_id="v1", custom_id="conv-9", context="first")
        add_turn(galtea, {"session_id": session.id}, "t1")
        origin = open_store(tmp_path / "origin.db")
        export_bundle(origin, tmp_path / "1.glb", signing=SIGNING)
        galtea.sessions.update(session.id, context="second")
        galtea.sessions.finish(session.id, stopping_reason="GOAL_ACHIEVED")
        add_turn(galtea, {"session_id": session.id}, "t2")
    export_bundle(origin, tmp_path / "2.glb", signing=SIGNING)
    connected = open_store(tmp_path / "connected.db")
    import_bundle(connected, tmp_path / "1.glb", signing=SIGNING)
    assert import_bundle(connected, tmp_path / "2.glb", signing=SIGNING).sessions_updated == 1
    kinds = [kind for (kind,) in rows(connected.path, "SELECT kind FROM outbox ORDER BY seq")]
    assert kinds == ["session_create", "create", "create", "session_finish"]  # the context folded into the create
    drain(make_engine(connected, emulator))
    [upstream] = emulator.dump(log=False)["sessions"]
    assert (upstream["customId"], upstream["context"], upstream["status"], upstream["stoppingReason"]) == (
        "conv-9", {"value": "second"}, "COMPLETED", "GOAL_ACHIEVED")
    assert upstream_markers(emulator) == {"t1": 1, "t2": 1}
