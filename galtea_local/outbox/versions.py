"""The version cache and the versions made offline: every change of a ``versions`` row happens here.

Life cycle of a row ``versions.get_or_create`` made offline (``sync_state``)::

    queued --claim (write-ahead: sending_since)--> settle_synced --> synced (remote_id, the API's JSON)
       ^  \\--settle_retry (not sent: mark cleared | maybe sent: mark kept)--+
       |   \\--settle_dead--> dead --retry_dead--> queued

``POST /versions/get-or-create`` answers the product's live version with the same
facts, creating it only when there is none, so a maybe-sent push is looked up by
name and facts first and, if not found, sent again: the API joins a late commit
of the first attempt instead of making a second version. Operations that name the
local id (a session's create, a turn by custom id) carry ``waits_version`` and are
not claimed until the row settles; the settle clears it in the same transaction.
Rows read from upstream (the daemon's refresh) are ``synced`` with no local id.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from galtea_local.outbox import leased
from galtea_local.outbox.enqueue import format_id
from galtea_local.store.contract import StoreConnection

LOCAL_TAG = "ver"
_COLUMNS = ("product_id", "name", "facts_key", "sync_state", "attempts", "not_before", "created_at")


def facts_key(facts: dict[str, str] | None) -> str | None:
    """Facts as the match key: sorted JSON (the API ignores key order)."""
    return None if facts is None else json.dumps(facts, sort_keys=True, separators=(",", ":"))


def by_id(conn: StoreConnection, any_id: str) -> Any | None:
    row = conn.execute("SELECT * FROM versions WHERE local_id = ?", (any_id,)).fetchone()
    if row is None:
        row = conn.execute("SELECT * FROM versions WHERE remote_id = ? ORDER BY seq LIMIT 1", (any_id,)).fetchone()
    return row


def by_facts(conn: StoreConnection, product_id: str, key: str) -> Any | None:
    """The product's live version holding these facts (offline ones included), oldest first."""
    return conn.execute(
        "SELECT * FROM versions WHERE product_id = ? AND facts_key = ? AND sync_state != 'dead'"
        " ORDER BY seq LIMIT 1", (product_id, key)).fetchone()


def by_name(conn: StoreConnection, product_id: str, name: str) -> list[Any]:
    return conn.execute("SELECT * FROM versions WHERE product_id = ? AND name = ? AND sync_state != 'dead'"
                        " ORDER BY seq", (product_id, name)).fetchall()


def of_products(conn: StoreConnection, product_ids: list[str] | None, ids: list[str] | None) -> list[Any]:
    clauses, params = ["sync_state != 'dead'"], []
    for column, values in (("product_id", product_ids), ("COALESCE(local_id, remote_id)", ids)):
        if values:
            clauses.append(f"{column} IN ({', '.join('?' * len(values))})")
            params.extend(values)
    return conn.execute(f"SELECT * FROM versions WHERE {' AND '.join(clauses)} ORDER BY created_at, seq",
                        params).fetchall()


def insert_local(conn: StoreConnection, prefix: str, product_id: str, name: str | None, key: str,
                 now: float) -> Any:
    """Queue a version made offline; return its row (with its local id)."""
    seq = conn.execute(
        f"INSERT INTO versions ({', '.join(_COLUMNS)}) VALUES (?, ?, ?, 'queued', 0, 0, ?) RETURNING seq",
        (product_id, name, key, now)).fetchone()[0]
    return conn.execute("UPDATE versions SET local_id = ? WHERE seq = ? RETURNING *",
                        (format_id(LOCAL_TAG, prefix, seq), seq)).fetchone()


def waiting_for(conn: StoreConnection, version_id: str | None) -> int | None:
    """The seq of the offline version ``version_id`` names while upstream has not answered it, else None."""
    if version_id is None or not version_id.startswith(LOCAL_TAG + "_"):
        return None  # the hot path's whole cost for a remote id
    row = conn.execute("SELECT seq, remote_id FROM versions WHERE local_id = ?", (version_id,)).fetchone()
    return row[0] if row is not None and row[1] is None else None


def hold(conn: StoreConnection, version_seq: int, *, record_seq: int | None = None,
         session_seq: int | None = None) -> None:
    """The create of this record (or session) waits for the version's push."""
    column, target, kind = ("record_seq", record_seq, "create") if record_seq is not None else (
        "session_seq", session_seq, "session_create")
    conn.execute(f"UPDATE outbox SET waits_version = ? WHERE {column} = ? AND kind = ?", (version_seq, target, kind))


def with_remote_version(conn: StoreConnection, row: dict[str, Any]) -> dict[str, Any]:
    """``row`` (a record or a session about to be sent) naming its version by the remote id."""
    version_id = row.get("version_id")
    if version_id is not None and version_id.startswith(LOCAL_TAG + "_"):
        found = conn.execute("SELECT remote_id FROM versions WHERE local_id = ?", (version_id,)).fetchone()
        if found is not None and found[0] is not None:
            row["version_id"] = found[0]
    return row


_DUE = ("SELECT * FROM versions WHERE sync_state = 'queued' AND not_before <= ?"
        " AND (lease_until IS NULL OR lease_until < ?) ORDER BY seq LIMIT ?")


def due(conn: StoreConnection, now: float, limit: int) -> list[dict[str, Any]]:
    return [dict(row) for row in conn.execute(_DUE, (now, now, limit))]


def claim_due(conn: StoreConnection, owner: str, now: float, lease_s: float, limit: int) -> list[dict[str, Any]]:
    """Lease due rows to ``owner``, count the attempt and mark it (write-ahead) before any request."""
    rows = due(conn, now, limit)
    leased.lease(conn, "versions", [row["seq"] for row in rows], owner, now + lease_s, mark_sending_at=now)
    return rows


def settle_synced(conn: StoreConnection, seq: int, remote: dict[str, Any], now: float) -> None:
    """Upstream answered ``remote`` for row ``seq``; what waited for it may go."""
    conn.execute("DELETE FROM versions WHERE remote_id = ? AND local_id IS NULL", (remote["id"],))  # its cache twin
    conn.execute(
        "UPDATE versions SET remote_id = ?, name = ?, facts_key = ?, remote_json = ?, sync_state = 'synced',"
        " refreshed_at = ?, sending_since = NULL, lease_owner = NULL, lease_until = NULL, last_error = NULL"
        " WHERE seq = ? AND sync_state = 'queued'",
        (remote["id"], remote.get("name"), facts_key(remote.get("facts")), json.dumps(remote), now, seq))
    conn.execute("UPDATE outbox SET waits_version = NULL WHERE waits_version = ?", (seq,))


def settle_retry(conn: StoreConnection, seq: int, not_before: float, error: str, *, maybe_sent: bool) -> None:
    conn.execute(
        "UPDATE versions SET not_before = ?, last_error = ?, lease_owner = NULL, lease_until = NULL,"
        " sending_since = CASE WHEN ? = 1 THEN sending_since END WHERE seq = ? AND sync_state = 'queued'",
        (not_before, error[:500], 1 if maybe_sent else 0, seq))


def settle_dead(conn: StoreConnection, seq: int, reason: str) -> None:
    """Refused for good: kept with the API's message. What waits for it keeps waiting, as turns wait
    behind a dead session, until ``retry_dead`` sends it again."""
    conn.execute("UPDATE versions SET sync_state = 'dead', last_error = ?, lease_owner = NULL, lease_until = NULL,"
                 " sending_since = NULL WHERE seq = ? AND sync_state = 'queued'", (reason[:500], seq))


def retry_dead(conn: StoreConnection) -> int:
    return conn.execute("UPDATE versions SET sync_state = 'queued', not_before = 0, attempts = 0"
                        " WHERE sync_state = 'dead'").rowcount


def release_resolved(conn: StoreConnection) -> int:
    """Operations still marked as waiting for a version upstream has answered (a settle that raced a
    writer on PostgreSQL): free them. One probe of a partial index when there are none."""
    return conn.execute(
        "UPDATE outbox SET waits_version = NULL WHERE waits_version IS NOT NULL AND waits_version IN"
        " (SELECT seq FROM versions WHERE remote_id IS NOT NULL)").rowcount


def counts(conn: StoreConnection) -> dict[str, int]:
    """Versions made offline by state (cached ones count as synced)."""
    return leased.count_states(conn, "versions")


# -- the cache, as the daemon refreshes it -----------------------------------------------------

def upsert_versions(conn: StoreConnection, versions: Iterable[dict[str, Any]], now: float) -> None:
    for version in versions:
        values = (version.get("productId"), version.get("name"), facts_key(version.get("facts")),
                  json.dumps(version), now, version["id"])
        if version.get("deletedAt"):
            conn.execute("DELETE FROM versions WHERE remote_id = ? AND local_id IS NULL", (version["id"],))
        elif not conn.execute("UPDATE versions SET product_id = ?, name = ?, facts_key = ?, remote_json = ?,"
                              " refreshed_at = ? WHERE remote_id = ?", values).rowcount:
            conn.execute(
                "INSERT INTO versions (product_id, name, facts_key, remote_json, refreshed_at, remote_id,"
                " sync_state, attempts, not_before, created_at) VALUES (?, ?, ?, ?, ?, ?, 'synced', 0, 0, ?)",
                (*values, now))


def forget_versions_not_seen(conn: StoreConnection, product_id: str, since: float) -> int:
    """After a complete listing of the product: cached versions it no longer has (deleted upstream)."""
    return conn.execute("DELETE FROM versions WHERE product_id = ? AND local_id IS NULL AND refreshed_at < ?",
                        (product_id, since)).rowcount


def upsert_products(conn: StoreConnection, products: Iterable[dict[str, Any]], now: float) -> None:
    for product in products:
        if product.get("deletedAt"):
            conn.execute("DELETE FROM products WHERE id = ?", (product["id"],))
            continue
        conn.execute("INSERT INTO products (id, remote_json, refreshed_at) VALUES (?, ?, ?) ON CONFLICT (id)"
                     " DO UPDATE SET remote_json = excluded.remote_json, refreshed_at = excluded.refreshed_at",
                     (product["id"], json.dumps(product), now))


def forget_products_not_seen(conn: StoreConnection, since: float) -> int:
    return conn.execute("DELETE FROM products WHERE refreshed_at < ?", (since,)).rowcount


def has_stale_holds(conn: StoreConnection) -> bool:
    return conn.execute(
        "SELECT 1 FROM outbox o JOIN versions v ON v.seq = o.waits_version"
        " WHERE o.waits_version IS NOT NULL AND v.remote_id IS NOT NULL LIMIT 1").fetchone() is not None
