"""Ending a throttle by hand: what ``galtea-local throttle clear`` changes in the store.

A Retry-After pauses all pushing (``meta`` key ``throttled_until``) and delays the
operation it answered (its ``not_before``). An absurd one (a day, or a 400-digit
number from a misbehaving proxy) is capped by the daemon since issue 17, but a
store written before that, or a cap set high, can still hold a far wait. Clearing
removes the pause and makes every operation that waits on a 429/503 due now; the
daemon adopts the change within a second (or at its next pass when idle).
"""

from __future__ import annotations

import sqlite3

from galtea_local.outbox import health

_RETRY_LATER = (429, 503)


def clear_throttle(conn: sqlite3.Connection, now: float) -> tuple[bool, int]:
    """Remove the pause and the Retry-After waits; (whether a pause was set, operations made due)."""
    paused = health.get(conn, health.THROTTLED_UNTIL) is not None
    health.put(conn, health.THROTTLED_UNTIL, None)
    marks = ", ".join(str(status) for status in _RETRY_LATER)
    made_due = conn.execute(
        f"UPDATE outbox SET not_before = :now WHERE state IN ('pending', 'sending') AND not_before > :now"
        f" AND last_status IN ({marks})",
        {"now": now},
    ).rowcount
    return paused, made_due
