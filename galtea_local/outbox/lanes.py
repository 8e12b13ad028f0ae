"""One upstream session, one lane: a turn addressed by a remote session id joins the lane that
already pushes to that session under another name.

A session can be named three ways: its remote id (lane ``s:<id>``), the caller's
custom id plus an anchor (lane ``c:...``), or a local session id (lane
``ls:<seq>``). Once the engine learns the remote session behind a ``c:`` or
``ls:`` lane it records it (``lanes.remote_session_id``), and from then on a turn
logged by the remote id goes into that lane, behind the turns logged by the
other name, so the session's order upstream is creation order.

Not while turns logged by the remote id still wait in their own lane: joining
the other lane then could overtake them. Those are folded in by the engine
instead (:func:`fold_siblings`): whenever it takes the head of a lane whose
upstream session it knows, it first moves in the open operations of the other
lanes of that session, where they go in ``seq`` (creation) order with its own.
Turns already pushed before the engine learned that two names are one session
went up in push order (docs/delivery.md).
"""

from __future__ import annotations

import sqlite3

from galtea_local.outbox.kinds import OPEN
from galtea_local.store import dialects

# One statement (the create hot path pays for it): an index probe on ix_lanes_remote_session, which
# is empty until the engine learns a session, and one on ix_outbox_open when a sibling exists.
_SIBLING = (
    "SELECT key FROM lanes WHERE remote_session_id = :session AND key != :lane"
    f" AND NOT EXISTS (SELECT 1 FROM outbox WHERE lane = :lane AND {OPEN}) LIMIT 1"
)


def lane_for_remote_session(conn: sqlite3.Connection, remote_session_id: str, lane: str) -> str:
    """The lane for a turn logged by ``remote_session_id`` (whose own lane is ``lane``)."""
    sibling = conn.execute(_SIBLING, {"session": remote_session_id, "lane": lane}).fetchone()
    return lane if sibling is None else sibling[0]


# Other lanes of the same upstream session that no pusher holds: ``s:<id>`` by its key, the others by
# the session they learned (primary key and ix_lanes_remote_session: two index probes).
_UNHELD_SIBLINGS = (
    "SELECT key FROM lanes WHERE (key = :by_key OR remote_session_id = :session) AND key != :lane"
    " AND (lease_owner IS NULL OR lease_until < :now)"
)


def fold_siblings(conn: sqlite3.Connection, lane: str, remote_session_id: str | None, now: float) -> int:
    """Move into ``lane`` (whose lease the caller holds) the open operations of the other, unheld
    lanes that push to the same upstream session; return how many moved.

    Then the session's operations wait in one lane, in ``seq`` (creation) order, whichever name
    each turn was logged under. A sibling another pusher holds is left alone (it is pushing).
    """
    session = remote_session_id or (lane[2:] if lane.startswith("s:") else None)
    if session is None:
        return 0
    # PostgreSQL: lock them, skipping any another daemon is claiming right now (as claims do).
    lock = " FOR UPDATE SKIP LOCKED" if dialects.of(conn) == dialects.POSTGRESQL else ""
    siblings = conn.execute(_UNHELD_SIBLINGS + lock, {"by_key": "s:" + session, "session": session, "lane": lane,
                                                      "now": now}).fetchall()
    moved = 0
    for (key,) in siblings:
        count = conn.execute(f"UPDATE outbox SET lane = ? WHERE lane = ? AND {OPEN}", (lane, key)).rowcount
        if count:
            conn.execute("UPDATE inference_results SET lane = ? WHERE lane = ? AND sync_state != 'synced'",
                         (lane, key))
        moved += count
    return moved
