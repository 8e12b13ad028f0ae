"""PostgreSQL for the tests: a fresh schema per use, dropped afterwards.

The server is ``GALTEA_TEST_POSTGRES`` (default: CI's, 127.0.0.1:5432, trust auth,
database ``test``). Each store gets its own schema ``gl_<random>`` through
``options=-csearch_path=...`` in the URL, so tests never see each other's rows.
When the server cannot be reached, the PostgreSQL tests are skipped, saying why;
under CI (``CI=true``) they fail instead: a silent skip would hide a broken path.

``location`` and ``local`` run a test once per backend (SQLite, PostgreSQL).

Load with ``pytest_plugins = ["tests.pg_fixture"]``.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from galtea_local import Galtea

SERVER = os.environ.get("GALTEA_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _admin() -> object:
    import psycopg

    from galtea_local.store.postgres import conninfo_from

    return psycopg.connect(conninfo_from(SERVER), autocommit=True, connect_timeout=3)


def server_error() -> str | None:
    """Why the PostgreSQL tests cannot run here, or None when they can."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install 'galtea-local[postgres]')"
    try:
        _admin().close()  # type: ignore[attr-defined]
    except psycopg.Error as exc:
        return f"no PostgreSQL server at {SERVER} ({str(exc).strip().splitlines()[0]})"
    return None


def schema_url(schema: str) -> str:
    """The store URL that puts every table in ``schema``."""
    sep = "&" if "?" in SERVER else "?"
    return f"{SERVER}{sep}options=-csearch_path%3D{schema}"


@pytest.fixture(scope="session")
def postgres_available() -> None:
    reason = server_error()
    if reason is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true and the PostgreSQL tests cannot run: {reason}", pytrace=False)
        pytest.skip(reason)


@pytest.fixture
def pg_url_factory(postgres_available: None) -> Iterator[Callable[[], str]]:
    """``pg_url_factory()`` creates an empty schema and returns a store URL on it; all are dropped after."""
    schemas: list[str] = []
    admin = _admin()

    def new_url() -> str:
        schema = f"gl_{secrets.token_hex(6)}"
        admin.execute(f"CREATE SCHEMA {schema}")  # type: ignore[attr-defined]
        schemas.append(schema)
        return schema_url(schema)

    yield new_url
    for schema in schemas:
        admin.execute(f"DROP SCHEMA {schema} CASCADE")  # type: ignore[attr-defined]
    admin.close()  # type: ignore[attr-defined]


@pytest.fixture
def pg_url(pg_url_factory: Callable[[], str]) -> str:
    """A store URL on a fresh, empty schema."""
    return pg_url_factory()


@pytest.fixture(params=["sqlite", "postgresql"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty store location on each backend: a test using it runs once per backend."""
    if request.param == "sqlite":
        return str(tmp_path / "store.db")
    return request.getfixturevalue("pg_url")


@pytest.fixture
def local(location: str) -> Iterator[Galtea]:
    """A client on ``location``'s store, closed after the test."""
    client = Galtea(store=location)
    yield client
    client.close()
