"""``stamp`` operations: set a turn's upstream ``createdAt`` to the moment ``create()`` was called.

``POST /inferenceResults`` stamps the arrival time, so a box that was offline for
days would show every turn created in the minute it reconnected. The API accepts
``createdAt`` on ``PATCH /inferenceResults/{id}`` (the SDK's ``TraceUpdate``), so
once a create is settled, one ``stamp`` operation carries the call time up.

The stamp is enqueued in the create's settle transaction, already ``sending``
(its write-ahead mark), in a sibling lane (``st:<lane>``), so it never stands
in the way of the session's next turns: the engine's side path sends it at
once, concurrently with the lane's next create, and settles it here. If that
path fails or the daemon dies, the engine finds it later like any maybe-sent
operation (after :data:`SIDE_PATH_GRACE_S`) and sends it again: a PATCH of the
same ``createdAt`` is idempotent.
A create answered within :data:`TOLERANCE_S` of the call needs no stamp. Both are in
server time when the server's clock is measurably off ours (``offset_s``, from the
API's ``Date`` headers): dashboards read ``createdAt`` beside the server's own stamps.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from galtea_local.outbox import probes
from galtea_local.outbox.enqueue import ACTIVATE_LANE
from galtea_local.outbox.kinds import OpKind
from galtea_local.read_model import iso_utc

KIND = OpKind.STAMP
RECORD_STATE = probes.target_state("record_seq", "inference_results.seq")  # each row's own, in one UPDATE
SESSION_KIND = OpKind.SESSION_STAMP
TOLERANCE_S = 0.5  # the parity promise is "within a second of the call"; half of it is left for clocks
# The engine leaves a stamp to the side path this long; past it (a failed or crashed side path) the
# stamp lane is claimed and sends it. Without it the engine would send every stamp a second time.
SIDE_PATH_GRACE_S = 10.0
# ``Date`` has whole seconds, so a measured offset within this is no skew at all.
MEASURABLE_SKEW_S = 1.0

_INSERT = (
    "INSERT INTO outbox (record_seq, lane, kind, payload, state, attempts, not_before, sending_since, sent_body,"
    " created_at) VALUES (?, ?, 'stamp', ?, 'sending', 1, ?, ?, ?, ?)"
)


def _epoch(text: Any) -> float | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def stamp_lane(lane: str) -> str:
    """Stamps of a session's records go in a lane of their own: order among them does not matter."""
    return "st:" + lane


def call_time(record: dict[str, Any], offset_s: float | None) -> float:
    """When ``create()`` was called, in server time (``offset_s``: server minus ours, if measured)."""
    skewed = offset_s is not None and abs(offset_s) > MEASURABLE_SKEW_S
    return record["created_at"] + (offset_s if skewed else 0.0)  # type: ignore[operator]


def stamp_body(record: dict[str, Any], remote: dict[str, Any], offset_s: float | None = None) -> dict[str, str] | None:
    """The PATCH body that sets ``createdAt`` to the call time; None when the create landed close enough."""
    called = call_time(record, offset_s)
    arrived = _epoch(remote.get("createdAt"))
    if arrived is not None and abs(arrived - called) < TOLERANCE_S:
        return None
    return {"createdAt": iso_utc(called)}


def enqueue_stamp(conn: sqlite3.Connection, record: dict[str, Any], lane: str, remote: dict[str, Any],
                  now: float, *, due_now: bool = False, offset_s: float | None = None) -> None:
    """In a create's settle transaction: queue its stamp if needed, already marked sending.

    ``due_now``: no side path will send it, so the lane does, as soon as it reaches it.
    """
    body = stamp_body(record, remote, offset_s)
    if body is None:
        return
    text = json.dumps(body)
    conn.execute(_INSERT, (record["seq"], stamp_lane(lane), text, 0 if due_now else now + SIDE_PATH_GRACE_S, now,
                           text, now))
    conn.execute(ACTIVATE_LANE, (stamp_lane(lane),))


def settle_stamps(conn: sqlite3.Connection, stamped: Iterable[tuple[str, int]], now: float) -> None:
    """The side path's PATCHes were answered: mark them done and re-derive each record's sync state.

    ``stamped`` holds (lane, record seq) pairs. Two statements for the whole batch, whatever its
    size: each statement of a daemon's write can wait for the GIL, and one pair of statements per
    stamp made this the daemon's longest write (docs/benchmarks-soak.md §10). Each record is still
    one lookup in the by-record index.
    """
    seqs = sorted({record_seq for _, record_seq in stamped})
    if not seqs:
        return
    marks = ", ".join("?" * len(seqs))
    settled = [row[0] for row in conn.execute(
        "UPDATE outbox SET state = 'done', settled_at = ?, sent_body = NULL, last_error = NULL"
        f" WHERE record_seq IN ({marks}) AND state IN {probes.OPEN_STATES} AND kind = 'stamp' RETURNING record_seq",
        (now, *seqs),
    )]
    if settled:  # those the lane got to first are settled already, and so are their records
        marks = ", ".join("?" * len(settled))
        conn.execute(f"UPDATE inference_results SET sync_state = {RECORD_STATE} WHERE seq IN ({marks})", settled)


def hand_to_lane(conn: sqlite3.Connection, lane: str, record_seq: int, *, sent: bool = True) -> None:
    """The side path failed: the stamp lane sends it at its next claim. ``sent=False``: the
    request never left, so the stamp is pending again rather than "maybe sent" (harmless for an
    idempotent PATCH, but a warm stop must leave nothing looking half-sent)."""
    state = "state" if sent else "'pending', sending_since = NULL, sent_body = NULL"
    conn.execute(
        f"UPDATE outbox SET not_before = 0, state = {state}"
        f" WHERE {probes.open_of_record('?', 'outbox')} AND kind = 'stamp'",
        (record_seq,),
    )


def stale_stamps(conn: sqlite3.Connection) -> list[int]:
    """A read: the stamps a side path left waiting (for a pusher holding the store's exclusive
    lock, no side path is alive, so every one is due). Read outside the write lock: it scans."""
    return [row[0] for row in conn.execute(
        "SELECT seq FROM outbox WHERE kind = 'stamp' AND state IN ('pending', 'sending') AND not_before > 0")]


def release_stamps(conn: sqlite3.Connection, seqs: list[int]) -> int:
    """Make these waiting stamps due now: one lookup each, in a short write transaction."""
    return conn.executemany("UPDATE outbox SET not_before = 0 WHERE seq = ? AND kind = 'stamp' AND not_before > 0",
                            [(seq,) for seq in seqs]).rowcount


def enqueue_session_stamp(conn: sqlite3.Connection, session: dict[str, Any], lane: str, remote: dict[str, Any],
                          now: float, offset_s: float | None = None) -> None:
    """In the settle transaction of a session this store created upstream: queue its createdAt PATCH.

    In the sibling lane, due at once: it delays none of the session's turns.
    A session joined by ``get_or_create()`` is someone else's: never stamped.
    """
    body = stamp_body(session, remote, offset_s)
    if body is None:
        return
    conn.execute(
        "INSERT INTO outbox (session_seq, lane, kind, payload, state, attempts, not_before, created_at)"
        " VALUES (?, ?, 'session_stamp', ?, 'pending', 0, 0, ?)",
        (session["seq"], stamp_lane(lane), json.dumps(body), now))
    conn.execute(ACTIVATE_LANE, (stamp_lane(lane),))
