"""What ``galtea-local status`` shows: counts and health, read from the store by any process."""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from galtea_local.outbox import custody, health
from galtea_local.outbox import evaluations as evaluation_queue
from galtea_local.outbox import spans as span_queue
from galtea_local.outbox import versions as version_queue
from galtea_local.outbox.kinds import lane_head_seq
from galtea_local.store import Store

_STATES = ("queued", "synced", "dead", "dropped", "cancelled")


def _counts(conn: sqlite3.Connection) -> dict[str, int]:
    counts = dict.fromkeys(_STATES, 0)
    for state, count in conn.execute("SELECT sync_state, COUNT(*) FROM inference_results GROUP BY sync_state"):
        counts[state] = count
    return counts


# Read from each active lane's head (one index probe per lane), not from every open operation:
# a lane's operations go in order, so its head is its oldest and the only one that can be in
# flight. The cost follows the number of sessions, not the backlog.
_HEADS = (
    "SELECT COUNT(CASE WHEN h.state = 'sending' AND h.record_seq IS NOT NULL THEN 1 END), MIN(h.created_at)"
    f" FROM lanes l JOIN outbox h ON h.seq = {lane_head_seq('l.key')}"
    " WHERE l.active = 1"
)


def _queue_facts(conn: sqlite3.Connection, now: float) -> dict[str, Any]:
    in_flight, oldest = conn.execute(_HEADS).fetchone()
    dead_ops = conn.execute("SELECT COUNT(*) FROM outbox WHERE state = 'dead'").fetchone()[0]
    sessions = dict(conn.execute("SELECT sync_state, COUNT(*) FROM sessions GROUP BY sync_state").fetchall())
    versions = version_queue.counts(conn)
    return {
        "versions_queued": versions["queued"],  # made offline, not answered yet: what names them waits
        "versions_dead": versions["dead"],
        "sessions_queued": sessions.get("queued", 0),
        "sessions_synced": sessions.get("synced", 0),
        "sessions_dead": sessions.get("dead", 0),
        "in_flight": in_flight or 0,
        "dead_operations": dead_ops,
        "oldest_queued_age_s": round(now - oldest, 3) if oldest is not None else None,
    }


def _health(conn: sqlite3.Connection, now: float) -> dict[str, Any]:
    auth_since = health.get_float(conn, health.AUTH_FAILING)
    throttled = health.get_float(conn, health.THROTTLED_UNTIL)
    return {
        "last_success_at": health.get_float(conn, health.LAST_SUCCESS),
        "last_error": health.get(conn, health.LAST_ERROR),
        "last_error_at": health.get_float(conn, health.LAST_ERROR_AT),
        "auth_failing": auth_since is not None,
        "auth_failing_since": auth_since,
        "throttled_until": throttled if throttled and throttled > now else None,
        # Seconds left; a value past any cap (an older release stored any Retry-After) still prints.
        "throttled_for_s": round(min(throttled - now, 1e12), 3) if throttled and throttled > now else None,
        "server_clock_offset_s": health.get_float(conn, health.SERVER_CLOCK_OFFSET),
        "resent_unconfirmed": int(health.get_float(conn, health.RESENT_UNCONFIRMED) or 0),
        "handed_over": int(health.get_float(conn, custody.HANDED_OVER_COUNT) or 0),
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def _load(conn: sqlite3.Connection) -> dict[str, Any]:
    """The daemon's longest write transaction (published by it every few seconds; None before)."""
    return {
        "longest_write_ms": _ms(health.get_float(conn, health.LONGEST_WRITE)),
        "longest_write_name": health.get(conn, health.LONGEST_WRITE_NAME),
        "longest_write_recent_ms": _ms(health.get_float(conn, health.LONGEST_WRITE_RECENT)),
        "longest_write_cpu_ms": _ms(health.get_float(conn, health.LONGEST_WRITE_CPU)),
        "writes_given_way": int(health.get_float(conn, health.WRITES_GIVEN_WAY) or 0),
        "send_rate_per_s": health.get_float(conn, health.SEND_RATE),
        "send_limit": health.get_float(conn, health.SEND_LIMIT),
    }


def _files(conn: sqlite3.Connection) -> dict[str, Any]:
    """Attached files still to upload before their turn's create (a dead or cancelled turn's are not)."""
    count, size = conn.execute(
        "SELECT count(*), coalesce(sum(a.size), 0) FROM attachments a JOIN inference_results r ON r.seq = a.record_seq"
        " WHERE a.state != 'uploaded' AND r.sync_state = 'queued'").fetchone()
    return {"files_pending": count, "files_pending_bytes": size}


def store_status(store: Store, now: float | None = None) -> dict[str, Any]:
    """Record counts by sync state, queue facts and pusher health, as one JSON-ready dict.

    ``queued`` counts records not yet confirmed upstream (in flight included);
    ``synced``, ``dead`` likewise count records.
    """
    now = time.time() if now is None else now

    def read(conn: sqlite3.Connection) -> dict[str, Any]:
        spans = {f"spans_{state}": count for state, count in span_queue.counts(conn).items()}
        evaluations = {f"evaluations_{state}": count for state, count in evaluation_queue.counts(conn).items()}
        return {**_counts(conn), **_queue_facts(conn, now), **spans, **evaluations, **_files(conn),
                **_health(conn, now), **_load(conn)}

    return {"store_id": store.store_id, "store": str(store.path), **store.read(read)}


def format_status(status: dict[str, Any]) -> str:
    """The human view: one fact per line."""
    when = _when
    lines = [
        f"store       {status['store']} (id {status['store_id']})",
        f"queued      {status['queued']} (in flight {status['in_flight']})",
        f"synced      {status['synced']}",
        f"dead        {status['dead']} records ({status['dead_operations']} operations; see `galtea-local dead list`)",
        f"sessions    {status['sessions_queued']} queued, {status['sessions_synced']} synced,"
        f" {status['sessions_dead']} dead (a dead session holds its turns)",
        f"versions    {status['versions_queued']} made offline and queued, {status['versions_dead']} dead"
        " (a dead version holds the sessions and turns that name it)",
        f"spans       {status['spans_queued']} queued, {status['spans_synced']} synced, {status['spans_dead']} dead",
        f"evaluations {status['evaluations_queued']} queued, {status['evaluations_synced']} synced,"
        f" {status['evaluations_dead']} dead",
        f"files       {status['files_pending']} to upload ({status['files_pending_bytes']} bytes), before their turns",
        f"oldest      {status['oldest_queued_age_s'] if status['oldest_queued_age_s'] is not None else '-'} s",
        f"last push   {when(status['last_success_at'])}",
        f"last error  {status['last_error'] or '-'}",
    ]
    if status.get("longest_write_ms") is not None:
        lines.append(f"writes      daemon's longest write transaction {status['longest_write_ms']:g} ms"
                     f" ({status['longest_write_name'] or '?'}), last minute {status['longest_write_recent_ms']:g} ms,"
                     f" most CPU in one {status['longest_write_cpu_ms']:g} ms,"
                     f" {status['writes_given_way']:,} rolled back for an app and run again")
    if status.get("send_rate_per_s") is not None:
        lines.append(f"sending     at most {status['send_rate_per_s']:g} requests/s, {status['send_limit']:g} in flight"
                     " (adaptive: follows what the API accepts)")
    if status["auth_failing"]:
        lines.append(f"AUTH FAILING since {when(status['auth_failing_since'])}: pushing is paused; fix the API key")
    offset = status.get("server_clock_offset_s")
    lines.append(f"server clock {'not measured yet' if offset is None else f'{offset:+.1f} s from ours'}")
    if status.get("handed_over"):
        lines.append(f"exported    {status['handed_over']} operations handed over in a bundle: not pushed from here until"
                     " `galtea-local import-receipt` (or `galtea-local reclaim`)")
    if status.get("resent_unconfirmed"):
        lines.append(f"UNCONFIRMED RE-SENDS {status['resent_unconfirmed']}: creates re-sent after their first attempt"
                     " was not found within sync.commit_grace_s; run `galtea-local verify` to check for duplicates")
    throttled = throttle_line(status)
    if throttled:
        lines.append(throttled)
    return "\n".join(lines)


def _when(epoch: float | None) -> str:
    if not epoch:
        return "never"
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))
    except (OverflowError, ValueError, OSError):  # a stored Retry-After can be absurd: never crash on it
        return "the far future"


def throttle_line(status: dict[str, Any]) -> str | None:
    """The pause of all pushing, if any, as one line of ``status``."""
    if not status.get("throttled_until"):
        return None
    return (f"throttled   until {_when(status['throttled_until'])} ({status['throttled_for_s']:g} s left: the API"
            " refused every request; `galtea-local throttle clear` ends it)")
