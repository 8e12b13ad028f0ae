"""Bundle and receipt files as an operator handles them: owner-only, a folder as ``--out``, and
no ``.partial`` left behind whatever happens."""

from __future__ import annotations

import stat
from pathlib import Path

from galtea_local import Galtea
from galtea_local.bundle import export_bundle
from tests.bundle_helpers import SIGNING, key_env
from tests.sync_helpers import cli_env, galtea_local, open_store


def _origin(tmp_path: Path) -> Path:
    path = tmp_path / "origin.db"
    with Galtea(store=path) as galtea:
        galtea.inference_results.create(session_id="s1", input="q", output="a")
    return path


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_export_into_a_folder_writes_a_named_owner_only_file(tmp_path: Path) -> None:
    folder = tmp_path / "usb"
    folder.mkdir()
    store = open_store(_origin(tmp_path))
    try:
        (folder / "stale.glb.partial").write_bytes(b"x")
        result = export_bundle(store, folder, signing=SIGNING)
    finally:
        store.close()
    assert result.path.parent == folder and result.path.name.startswith(f"galtea-local-records-{store.store_id[:8]}-")
    assert _mode(result.path) == 0o600
    assert [p.name for p in folder.glob("*.partial")] == ["stale.glb.partial"]  # only the one we put there


def test_the_cli_exports_into_a_folder_without_traceback_or_partial(tmp_path: Path) -> None:
    store_path = _origin(tmp_path)
    folder = tmp_path / "usb"
    folder.mkdir()
    env = key_env(cli_env(store_path, "http://127.0.0.1:9", "gsk_unused"), tmp_path)
    result = galtea_local("export", "--out", str(folder), "--no-progress", env=env)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    written = list(folder.iterdir())
    assert len(written) == 1 and written[0].suffix == ".glb" and str(written[0]) in result.stdout
    assert not list(tmp_path.rglob("*.partial"))


def test_an_unwritable_out_is_one_clear_line(tmp_path: Path) -> None:
    store_path = _origin(tmp_path)
    env = key_env(cli_env(store_path, "http://127.0.0.1:9", "gsk_unused"), tmp_path)
    result = galtea_local("export", "--out", str(tmp_path / "no" / "such" / "dir" / "x.glb"), env=env)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "--out" in result.stderr
    assert not list(tmp_path.rglob("*.partial"))
