"""Forgery: bundles and receipts are signed with the key two sites share; an unsigned, wrongly
signed or altered file is refused before anything changes; a receipt confirms only rows that were
exported in a bundle its writer imported; the key is managed like the API key."""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path

import pytest

from galtea_local import Galtea
from galtea_local.bundle import BundleWriter, export_bundle, import_bundle, import_receipt, write_receipt
from galtea_local.bundle.signing import Signing
from galtea_local.config import load_settings
from galtea_local.errors import BundleError
from galtea_local.status import store_status
from galtea_local_daemon.bundle_keys import signing_for
from tests.bundle_helpers import SIGNING, TEST_KEY, key_env, read_lines, rows, table_counts, write_lines
from tests.sync_helpers import cli_env, drain, galtea_local, make_engine, new_session, open_store

OTHER = Signing(bytes(32))


@pytest.fixture
def sites(tmp_path: Path, emulator):
    """An origin with three queued turns and an empty connected store; yields both stores."""
    session = new_session(emulator)
    with Galtea(store=tmp_path / "origin.db") as galtea:
        for n in range(3):
            galtea.inference_results.create(session_id=session, input=f"q{n}", output=f"a{n}")
    origin, connected = open_store(tmp_path / "origin.db"), open_store(tmp_path / "connected.db")
    yield origin, connected
    origin.close()
    connected.close()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _resign(source: Path, out: Path, change: dict, signing: Signing | None) -> Path:
    """The file with its last content line changed and a valid checksum; signed with ``signing``
    (None: the original HMAC kept, as a forger without the key would have to)."""
    header, *content, trailer = read_lines(source)
    content[-1].update(change)
    kept = {k: v for k, v in header.items() if k not in ("format", "version")}
    with BundleWriter(out, kept, signing or Signing(None, allow_unsigned=True)) as writer:
        for entry in content:
            writer.write(entry)
    if signing is None:  # put the old signature back under the new checksum
        lines = read_lines(out)
        lines[-1].update(hmac=trailer["hmac"], key_id=trailer["key_id"])
        write_lines(out, lines)
    return out


def test_files_are_owner_only_and_signed(sites, tmp_path):
    origin, connected = sites
    bundle = export_bundle(origin, tmp_path / "b.glb", signing=SIGNING).path
    import_bundle(connected, bundle, signing=SIGNING)
    receipt = write_receipt(connected, origin.store_id, tmp_path / "r.glb", signing=SIGNING).path
    for path in (bundle, receipt):
        trailer = read_lines(path)[-1]
        assert _mode(path) == 0o600 and trailer["key_id"] == SIGNING.key_id() and len(trailer["hmac"]) == 64


@pytest.mark.parametrize("reader, refusal", [
    (Signing(None), "no bundle key"), (OTHER, "wrong signature"), (Signing(TEST_KEY), None),
])
def test_a_bundle_is_checked_against_this_sites_key(sites, tmp_path, reader, refusal):
    origin, connected = sites
    bundle = export_bundle(origin, tmp_path / "b.glb", signing=SIGNING).path
    if refusal is None:
        assert import_bundle(connected, bundle, signing=reader).records_added == 3
        return
    with pytest.raises(BundleError, match=refusal):
        import_bundle(connected, bundle, signing=reader)
    assert table_counts(connected.path) == (0, 0, 0)


def test_unsigned_is_refused_unless_explicitly_allowed(sites, tmp_path):
    origin, connected = sites
    with pytest.raises(BundleError, match="no bundle key"):
        export_bundle(origin, tmp_path / "b.glb", signing=Signing(None))
    bundle = export_bundle(origin, tmp_path / "b.glb", signing=Signing(None, allow_unsigned=True)).path
    with pytest.raises(BundleError, match="unsigned.*--allow-unsigned"):
        import_bundle(connected, bundle, signing=SIGNING)
    assert import_bundle(connected, bundle, signing=Signing(TEST_KEY, allow_unsigned=True)).records_added == 3


def test_a_forged_bundle_cannot_overwrite_an_imported_record(sites, tmp_path):
    origin, connected = sites
    bundle = export_bundle(origin, tmp_path / "b.glb", signing=SIGNING).path
    import_bundle(connected, bundle, signing=SIGNING)
    before = rows(connected.path, "SELECT actual_output FROM inference_results ORDER BY seq")
    # Same origin id and origin seq, a newer updated_at and another output: valid checksum, old signature.
    line = read_lines(bundle)[-2]
    forged = _resign(bundle, tmp_path / "forged.glb",
                     {"actual_output": json.dumps("pwned"), "updated_at": line["updated_at"] + 60}, None)
    with pytest.raises(BundleError, match="wrong signature"):
        import_bundle(connected, forged, signing=SIGNING)
    assert rows(connected.path, "SELECT actual_output FROM inference_results ORDER BY seq") == before


def _pushed_receipt(origin, connected, emulator, tmp_path) -> Path:
    import_bundle(connected, export_bundle(origin, tmp_path / "b.glb", signing=SIGNING).path, signing=SIGNING)
    engine = make_engine(connected, emulator)
    try:
        drain(engine)
    finally:
        engine.close()
    return write_receipt(connected, origin.store_id, tmp_path / "r.glb", signing=SIGNING).path


def test_a_forged_receipt_marks_nothing_synced(sites, tmp_path, emulator):
    origin, connected = sites
    receipt = _pushed_receipt(origin, connected, emulator, tmp_path)
    forged = _resign(receipt, tmp_path / "forged.glb", {"remote_id": "fake-remote-id"}, None)
    for path, signing, refusal in ((forged, SIGNING, "wrong signature"), (receipt, OTHER, "wrong signature"),
                                   (receipt, Signing(None), "no bundle key")):
        with pytest.raises(BundleError, match=refusal):
            import_receipt(origin, path, signing=signing)
    assert store_status(origin)["queued"] == 3
    assert import_receipt(origin, receipt, signing=SIGNING).records == 3


def test_a_receipt_confirms_only_rows_exported_to_its_writer(sites, tmp_path, emulator):
    origin, connected = sites
    receipt = _pushed_receipt(origin, connected, emulator, tmp_path)
    with Galtea(store=origin.path) as galtea:  # queued after the export: never carried anywhere
        late = galtea.inference_results.create(session_id="s-late", input="late")
    seq = int(late.id.rsplit("_", 1)[1])
    # The connected site (it has the key) claims the late record too.
    claim = _resign(receipt, tmp_path / "claim.glb", {"origin_seq": seq}, SIGNING)
    with pytest.raises(BundleError, match=f"line 4: record {seq} was not exported"):
        import_receipt(origin, claim, signing=SIGNING)
    assert store_status(origin)["queued"] == 4  # nothing changed
    header = read_lines(receipt)[0]
    assert header["exports"] and len(header["exports"]) == 1


def test_keygen_and_the_key_sources(tmp_path, monkeypatch):
    env = cli_env(tmp_path / "s.db", "http://127.0.0.1:9", "gsk_unused")
    key = tmp_path / "site.key"
    made = galtea_local("keygen", "--out", str(key), env=env)
    assert made.returncode == 0 and _mode(key) == 0o600, made.stderr
    key_id = hashlib.sha256(bytes.fromhex(key.read_text().strip())).hexdigest()[:16]
    assert key_id in made.stdout
    again = galtea_local("keygen", "--out", str(key), env=env)
    assert again.returncode == 1 and "already there" in again.stderr and "Traceback" not in again.stderr

    from_env = signing_for(load_settings(None, env={"GALTEA_LOCAL_BUNDLE_KEY_FILE": str(key)}), env={})
    assert from_env.key_id() == key_id
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "galtea-bundle-key").write_text(key.read_text())
    from_systemd = signing_for(load_settings(None, env={}), env={"CREDENTIALS_DIRECTORY": str(credentials)})
    assert from_systemd.key_id() == key_id and "key" not in repr(from_systemd).replace("key_id", "")


def test_the_cli_refuses_unsigned_with_one_line_and_accepts_it_when_told(tmp_path):
    with Galtea(store=tmp_path / "origin.db") as galtea:
        galtea.inference_results.create(session_id="s", input="q")
    origin = cli_env(tmp_path / "origin.db", "http://127.0.0.1:9", "gsk_unused")
    connected = key_env(cli_env(tmp_path / "connected.db", "http://127.0.0.1:9", "gsk_unused"), tmp_path)
    bundle = tmp_path / "b.glb"
    refused = galtea_local("export", "--out", str(bundle), env=origin)
    assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1 and "keygen" in refused.stderr
    assert galtea_local("export", "--out", str(bundle), "--unsigned", env=origin).returncode == 0
    unsigned = galtea_local("import", str(bundle), env=connected)
    assert unsigned.returncode == 1 and "unsigned" in unsigned.stderr and "Traceback" not in unsigned.stderr
    accepted = galtea_local("import", str(bundle), "--allow-unsigned", env=connected)
    assert accepted.returncode == 0 and "records 1 added" in accepted.stdout
