"""The version and product cache's tables (migration ``0013_versions_cache``), declared with SQLModel.

- ``versions``: one row per version this store knows. A row read from upstream
  (the daemon's refresh, or the answer to a push) has ``remote_id``; a row that
  ``versions.get_or_create`` made offline has a ``local_id`` (``ver_<store>_<n>``)
  and ``sync_state`` ``queued`` until the daemon's ``POST /versions/get-or-create``
  answers, then both. ``facts_key`` is the trimmed facts as sorted JSON: what
  ``get_or_create`` matches, as the API matches a product's live versions.
- ``products``: the API's product JSON by id, as last refreshed.

An operation that names a local version waits for it (``outbox.waits_version``).
"""

from __future__ import annotations

from typing import Optional

from sqlalchemy import Index, text
from sqlmodel import Field, SQLModel


def _unique_when_set(name: str, column: str) -> Index:
    where = text(f"{column} IS NOT NULL")
    return Index(name, column, unique=True, sqlite_where=where, postgresql_where=where)


class VersionRow(SQLModel, table=True):
    __tablename__ = "versions"
    __table_args__ = (
        _unique_when_set("ix_versions_local_id", "local_id"),
        Index("ix_versions_remote_id", "remote_id"),  # not unique: a version made offline may answer with a cached one
        Index("ix_versions_facts", "product_id", "facts_key"),
        Index("ix_versions_queued", "seq", sqlite_where=text("sync_state = 'queued'"),
              postgresql_where=text("sync_state = 'queued'")),
    )

    seq: Optional[int] = Field(default=None, primary_key=True)
    local_id: Optional[str] = None  # set when get_or_create made it offline
    remote_id: Optional[str] = None  # set once upstream has it
    product_id: str
    name: Optional[str] = None  # the name asked for (offline) or the API's
    facts_key: Optional[str] = None  # trimmed facts, sorted JSON: the get_or_create match
    remote_json: Optional[str] = None  # the API's Version as last read
    sync_state: str = "synced"  # synced | queued (offline, not yet answered) | dead
    attempts: int = 0
    not_before: float = 0.0
    sending_since: Optional[float] = None  # write-ahead mark of a push
    lease_owner: Optional[str] = None
    lease_until: Optional[float] = None
    last_error: Optional[str] = None
    created_at: float
    refreshed_at: Optional[float] = None  # when the daemon last read it upstream


class ProductRow(SQLModel, table=True):
    __tablename__ = "products"

    id: str = Field(primary_key=True)
    remote_json: str
    refreshed_at: float
