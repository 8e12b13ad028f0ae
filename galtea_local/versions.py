"""``versions`` and ``products``: the official SDK's lookups, answered from this store's cache.

The sync daemon refreshes the cache from the API (``galtea-local daemon`` at
start and every few minutes, ``galtea-local sync`` once per run), so an app that
runs offline finds the versions and products it was online with. ``get_or_create``
matches the facts as the API does (trimmed keys and values, empty entries dropped,
key order ignored) against the cached and offline versions of the product; when
none matches it makes the version here, with a local id (``ver_<store>_<n>``),
queued for the daemon's ``POST /versions/get-or-create``. Sessions and turns
that name that id go upstream after it, with the id the API gave it.
"""

from __future__ import annotations

import builtins
import time
from typing import Any

from galtea_local import commit
from galtea_local.catalog_read import Product, Version, product_from_row, version_from_row
from galtea_local.errors import (
    AmbiguousVersionNameException,
    InvalidInputError,
    InvalidTypeError,
    NotFoundError,
    VersionNameConflictException,
)
from galtea_local.outbox import versions as queue
from galtea_local.store import StorageBackend, named_outcome
from galtea_local.validation import check_count, check_id, check_ids, check_order, check_text, show

COMMIT_HASH_KEY = "commit_hash"
_NOT_CACHED = "not in this store's cache: the sync daemon refreshes it from the API while online"


def normalized_facts(facts: Any) -> dict[str, str]:
    """The facts as the API keeps them: keys and values trimmed, empty entries dropped, at least one left."""
    if not isinstance(facts, dict):
        raise InvalidTypeError(f"facts: expected a dict of str to str, got {show(facts)}")
    kept: dict[str, str] = {}
    for key, value in facts.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise InvalidTypeError(f"facts: expected str keys and values, got {show(key)}: {show(value)}")
        key, value = key.strip(), value.strip()
        if not key or not value:
            continue
        if key in kept:
            raise InvalidInputError(f"facts: two keys trim to {key!r}; the API refuses the map, keep one")
        kept[key] = value
    if not kept:
        raise InvalidInputError("facts: no entry is left once keys and values are trimmed; give at least one")
    return kept


def _with_commit(facts: dict[str, Any], detect: bool) -> dict[str, Any]:
    if detect and not any(isinstance(key, str) and key.strip() == COMMIT_HASH_KEY for key in facts):
        found = commit.detect()
        if found is not None:
            return {**facts, COMMIT_HASH_KEY: found}
    return facts


def _get_or_insert(conn: Any, prefix: str, product_id: str, facts: dict[str, str], name: str | None) -> Any:
    key = queue.facts_key(facts)
    found = queue.by_facts(conn, product_id, key)
    if found is not None:
        return found  # a version that holds the facts keeps its name, as upstream
    if name is not None and queue.by_name(conn, product_id, name):
        raise VersionNameConflictException(
            f"Version name {name} already belongs to another version of product {product_id}.")
    return queue.insert_local(conn, prefix, product_id, name, key, time.time())


class VersionService:
    """The ``versions`` service of :class:`galtea_local.Galtea`: the cache, and versions made offline."""

    def __init__(self, store: StorageBackend) -> None:
        self._store = store
        self._prefix = store.store_id[:8]

    def get(self, version_id: str) -> Version:
        """The version with this id (remote, or the local id ``get_or_create`` gave); ``NotFoundError`` if unknown."""
        check_id("version_id", version_id, empty=InvalidInputError)
        row = self._store.read(queue.by_id, version_id)
        if row is None:
            raise NotFoundError(f"Version with ID {version_id} is {_NOT_CACHED}.")
        return version_from_row(row)

    def get_or_create(self, product_id: str, facts: dict[str, str], name: str | None = None,
                      auto_detect_commit_hash: bool = False) -> Version:
        """The product's version that holds these facts, made offline (and queued) when none does.

        Raises ``VersionNameConflictException`` when the version must be made and another
        version of the product this store knows already holds ``name``.
        """
        check_id("product_id", product_id, empty=InvalidInputError)
        name = check_text("name", name)
        wanted = normalized_facts(_with_commit(facts, auto_detect_commit_hash))
        with named_outcome(lambda row: row["local_id"] or row["remote_id"]):  # a lost COMMIT answer
            row = self._store.transaction(_get_or_insert, self._prefix, product_id, wanted, name)
        return version_from_row(row)

    def get_by_name(self, product_id: str, version_name: str) -> Version:
        check_id("product_id", product_id, empty=InvalidInputError)
        check_id("version_name", version_name, empty=InvalidInputError)
        rows = self._store.read(queue.by_name, product_id, version_name)
        if not rows:
            raise NotFoundError(f"Version with name {version_name} is {_NOT_CACHED}.")
        if len(rows) > 1:
            ids = ", ".join(row["local_id"] or row["remote_id"] for row in rows)
            raise AmbiguousVersionNameException(
                f"Version name {version_name} matches {len(rows)} versions in product {product_id}: {ids};"
                " use get(version_id) to select one.")
        return version_from_row(rows[0])

    def list(self, product_id: str | builtins.list[str] | None = None, sort_by_created_at: str | None = None,
             offset: int | None = None, limit: int | None = None, id: str | builtins.list[str] | None = None,
             ) -> builtins.list[Version]:
        """Cached and offline versions of these products (or with these ids), oldest first by default."""
        product_ids, ids = check_ids("product_id", product_id), check_ids("id", id)
        if not (product_ids or ids):
            raise InvalidInputError("At least one of id or product_id must be provided.")
        rows = self._store.read(queue.of_products, product_ids, ids)
        found = [version_from_row(row) for row in rows]
        if check_order(sort_by_created_at) == "desc":
            found.reverse()
        start = check_count("offset", offset) or 0
        count = check_count("limit", limit)
        return found[start:] if count is None else found[start:start + count]


class ProductService:
    """The ``products`` service of :class:`galtea_local.Galtea`: the products the daemon last read."""

    def __init__(self, store: StorageBackend) -> None:
        self._store = store

    def _rows(self, where: str = "", *params: Any) -> builtins.list[Any]:
        return self._store.read(lambda conn: conn.execute(
            f"SELECT * FROM products {where} ORDER BY id", params).fetchall())

    def get(self, product_id: str) -> Product:
        check_id("product_id", product_id, empty=InvalidInputError)
        rows = self._rows("WHERE id = ?", product_id)
        if not rows:
            raise NotFoundError(f"Product with ID {product_id} is {_NOT_CACHED}.")
        return product_from_row(rows[0])

    def get_by_name(self, name: str) -> Product:
        check_id("name", name, empty=InvalidInputError)
        for product in self.list():
            if product.name == name:
                return product
        raise NotFoundError(f"Product with name {name} is {_NOT_CACHED}.")

    def list(self, sort_by_created_at: str | None = None, offset: int | None = None, limit: int | None = None,
             id: str | builtins.list[str] | None = None) -> builtins.list[Product]:
        ids = set(check_ids("id", id))
        found = sorted((product_from_row(row) for row in self._rows()), key=lambda p: p.created_at)
        found = [product for product in found if not ids or product.id in ids]
        if check_order(sort_by_created_at) == "desc":
            found.reverse()
        start = check_count("offset", offset) or 0
        count = check_count("limit", limit)
        return found[start:] if count is None else found[start:start + count]
