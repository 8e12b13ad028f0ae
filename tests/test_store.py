"""Opening a store: errors that name the file, private modes, pragmas, migrations."""

from __future__ import annotations

import os
import sqlite3
import stat
from contextlib import closing
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from galtea_local import Galtea, NotAStoreError, StoreOpenError
from galtea_local.store.migrations import MIGRATIONS
from galtea_local.models import TABLES, SQLModel
from tests.helpers import execute, query


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# -- cannot open / not a store ---------------------------------------------------------


def test_path_under_a_regular_file_is_a_store_open_error(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    target = blocker / "store.db"
    with pytest.raises(StoreOpenError, match=str(target)):
        Galtea(store=target)


def test_store_path_that_is_a_folder_is_refused(tmp_path):
    with pytest.raises(StoreOpenError, match=str(tmp_path)):
        Galtea(store=tmp_path)


def test_random_bytes_are_not_a_store(tmp_path):
    target = tmp_path / "noise.db"
    content = os.urandom(8192)
    target.write_bytes(content)
    with pytest.raises(NotAStoreError, match=str(target)):
        Galtea(store=target)
    assert target.read_bytes() == content


@pytest.fixture
def foreign_db(tmp_path: Path) -> Path:
    """Somebody else's SQLite database, in the default rollback-journal mode."""
    target = tmp_path / "app.db"
    with closing(sqlite3.connect(target)) as conn, conn:
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("INSERT INTO users (name) VALUES ('ada')")
    return target


def test_sqlite_database_with_other_tables_is_not_a_store(foreign_db):
    with pytest.raises(NotAStoreError, match=str(foreign_db)):
        Galtea(store=foreign_db)
    assert query(foreign_db, "SELECT name FROM users") == [("ada",)]
    assert query(foreign_db, "SELECT name FROM sqlite_master WHERE type = 'table'") == [("users",)]


def test_refusing_a_foreign_database_leaves_its_journal_mode(foreign_db):
    with pytest.raises(NotAStoreError):
        Galtea(store=foreign_db)
    assert query(foreign_db, "PRAGMA journal_mode") == [("delete",)]


def test_in_memory_url_is_refused():
    with pytest.raises(StoreOpenError, match="memory"):
        Galtea(store="sqlite:///:memory:")


def test_sqlite_url_opens_the_file(tmp_path):
    target = tmp_path / "by-url.db"
    with Galtea(store=f"sqlite:///{target}") as galtea:
        galtea.inference_results.create(session_id="s", input="q")
    assert query(target, "SELECT count(*) FROM inference_results") == [(1,)]


def test_store_from_environment(tmp_path, monkeypatch):
    target = tmp_path / "env" / "store.db"
    monkeypatch.setenv("GALTEA_LOCAL_STORE", str(target))
    with Galtea() as galtea:
        assert galtea.store_path == str(target)
        galtea.inference_results.create(session_id="s")
    assert query(target, "SELECT count(*) FROM inference_results") == [(1,)]


# -- private files -----------------------------------------------------------------------


@pytest.fixture
def open_umask():
    """A umask that would leave new files world-readable: the store must not rely on it."""
    old = os.umask(0)
    yield
    os.umask(old)


def test_new_store_file_and_folder_are_private(tmp_path, open_umask):
    target = tmp_path / "private" / "store.db"
    with Galtea(store=target) as galtea:
        galtea.inference_results.create(session_id="s", input="q")
        assert mode_of(target.parent) == 0o700
        for suffix in ("", "-wal", "-shm"):
            assert mode_of(Path(f"{target}{suffix}")) == 0o600, suffix


# -- pragmas ---------------------------------------------------------------------------------


@pytest.mark.parametrize("durability, synchronous", [(None, 1), ("process", 1), ("power", 2)])
def test_durability_sets_synchronous(store_path, durability, synchronous):
    with Galtea(store=store_path, durability=durability) as galtea:
        conn = galtea._store.connection()
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == synchronous
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] > 0


# -- migrations ------------------------------------------------------------------------------


def schema(path: Path) -> dict[str, object]:
    """Tables with their columns, indexes (with partial-index SQL) and foreign keys."""
    with closing(sqlite3.connect(path)) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
        indexes = conn.execute("SELECT tbl_name, name, sql FROM sqlite_master WHERE type='index' AND sql IS NOT NULL")
        normalized = {(t, n, " ".join(sql.replace('"', "").split())) for t, n, sql in indexes}
        return {
            "columns": {t: conn.execute(f"PRAGMA table_info('{t}')").fetchall() for t in tables},
            "foreign_keys": {t: conn.execute(f"PRAGMA foreign_key_list('{t}')").fetchall() for t in tables},
            "indexes": normalized,
        }


def test_fresh_store_matches_the_sqlmodel_tables(galtea, tmp_path):
    reference = tmp_path / "reference.db"
    engine = create_engine(f"sqlite:///{reference}")
    SQLModel.metadata.create_all(engine, tables=TABLES)
    engine.dispose()
    assert schema(Path(galtea.store_path)) == schema(reference)


def test_reopening_applies_nothing(store_path):
    Galtea(store=store_path).close()
    first = query(store_path, "SELECT name, applied_at FROM schema_migrations")
    store_id = query(store_path, "SELECT value FROM meta WHERE key = 'store_id'")
    with Galtea(store=store_path) as galtea:
        assert galtea.store_id == store_id[0][0]
    assert first == [(name, first[i][1]) for i, (name, _) in enumerate(MIGRATIONS)]
    assert query(store_path, "SELECT name, applied_at FROM schema_migrations") == first


def test_queued_records_survive_reopening(store_path):
    with Galtea(store=store_path) as galtea:
        record = galtea.inference_results.create(session_id="s", input="q")
    with Galtea(store=store_path) as galtea:
        assert galtea.inference_results.get(record.id) == record


def test_store_from_a_newer_release_is_refused(store_path):
    Galtea(store=store_path).close()
    execute(store_path, "INSERT INTO schema_migrations (name, applied_at) VALUES ('9999_future', 0)")
    with pytest.raises(NotAStoreError, match=str(store_path)) as raised:
        Galtea(store=store_path)
    assert "9999_future" in str(raised.value)
