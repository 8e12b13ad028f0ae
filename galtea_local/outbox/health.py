"""Pusher health kept in the store's ``meta`` table, so ``status`` can read it from any process."""

from __future__ import annotations
from galtea_local.store.contract import StoreConnection


LAST_SUCCESS = "last_success_at"
LAST_ERROR = "last_error"
LAST_ERROR_AT = "last_error_at"
AUTH_FAILING = "auth_failing_since"
THROTTLED_UNTIL = "throttled_until"
# The daemon's longest write transaction (galtea_local_daemon.loadwatch): since its start, and recently.
LONGEST_WRITE = "longest_write_s"
LONGEST_WRITE_NAME = "longest_write_name"
LONGEST_WRITE_RECENT = "longest_write_recent_s"
LONGEST_WRITE_CPU = "longest_write_cpu_s"
# Its write transactions rolled back for an app waiting for the lock, and run again (store/turns.py).
WRITES_GIVEN_WAY = "writes_given_way"
# What the daemon's adaptive concurrency holds: requests/s and requests in flight.
SEND_RATE = "send_rate"
SEND_LIMIT = "send_limit"
SERVER_CLOCK_OFFSET = "server_clock_offset_s"  # server time minus ours, from the API's Date header
# Creates re-sent after a maybe-sent attempt was not found within the commit grace: each one is
# a duplicate if that attempt still commits later (only `galtea-local verify` can tell).
RESENT_UNCONFIRMED = "resent_unconfirmed"


def add(conn: StoreConnection, key: str, count: int) -> None:
    """Add ``count`` to a counter kept in ``meta``."""
    put(conn, key, int(get_float(conn, key) or 0) + count)


def put(conn: StoreConnection, key: str, value: object | None) -> None:
    if value is None:
        conn.execute("DELETE FROM meta WHERE key = ?", (key,))
    else:
        conn.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, str(value)),
        )


def get(conn: StoreConnection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else row[0]


def get_float(conn: StoreConnection, key: str) -> float | None:
    value = get(conn, key)
    return None if value is None else float(value)
