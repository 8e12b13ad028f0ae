"""Shared fixtures. Fixture modules are plugins so each area keeps its own file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from galtea_local import Galtea

pytest_plugins = ["tests.emulator_fixture", "tests.pg_fixture"]


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    """A fresh store file path under tmp_path (the file is created on first open)."""
    return tmp_path / "store" / "galtea.db"


@pytest.fixture
def galtea(store_path: Path) -> Iterator[Galtea]:
    """A Galtea client on a fresh real SQLite store; closed after the test."""
    client = Galtea(store=store_path)
    yield client
    client.close()
