"""One upstream session, one lane: the engine gathers the open operations of every lane that pushes
to the same upstream session into one, so they go up in creation order whatever name each turn
was logged under.

A session can be named three ways: its remote id (lane ``s:<id>``), the caller's
custom id plus an anchor (lane ``c:...``), or a local session id (lane
``ls:<seq>``). ``create()`` cannot tell that two names are one session (that
would take the network, or a lookup on the hot path); the engine learns it when
a lane's first turn goes up (``lanes.remote_session_id``). From then on, taking
any lane's head first folds the session's other lanes into it
(:func:`fold_siblings`). Turns pushed before the engine learned that two names
are one session went up in push order (docs/delivery.md).
"""

from __future__ import annotations

from galtea_local.outbox.kinds import OPEN, lane_head_seq
from galtea_local.store import dialects
from galtea_local.store.contract import StoreConnection

# The other lanes of the same upstream session: ``s:<id>`` by its key, the others by the session
# they learned (primary key and ix_lanes_remote_session: two index probes, usually finding none).
_SIBLINGS = (
    "SELECT key, (lease_owner IS NOT NULL AND lease_until >= :now) AS held FROM lanes"
    " WHERE (key = :by_key OR remote_session_id = :session) AND key != :lane"
)
_HEAD_SEQ = f"SELECT MIN(seq) FROM outbox WHERE lane = ? AND {OPEN}"
_OLDER_IN = f"SELECT 1 FROM outbox WHERE lane = ? AND {OPEN} AND seq < ? LIMIT 1"


def fold_siblings(conn: StoreConnection, lane: str, remote_session_id: str | None, now: float) -> bool:
    """Gather the session's open operations into ``lane`` (whose lease the caller holds) before its head goes.

    The open operations of the session's other lanes that no pusher holds move in, and wait in
    ``seq`` (creation) order with this lane's own. A sibling that another pusher (or another thread)
    holds, or a local session's lane, is left alone; if it has an older operation than this lane's
    head, this lane must wait: False (that lane folds this one in when it next takes its head, once
    this one is released). True: the head may go.
    """
    session = remote_session_id or (lane[2:] if lane.startswith("s:") else None)
    if session is None:
        return True
    # PostgreSQL: lock them, skipping any another daemon is claiming right now (as claims do).
    lock = " FOR UPDATE SKIP LOCKED" if dialects.of(conn) == dialects.POSTGRESQL else ""
    siblings = conn.execute(_SIBLINGS + lock, {"by_key": "s:" + session, "session": session, "lane": lane,
                                               "now": now}).fetchall()
    held = []
    for key, is_held in siblings:
        if is_held or key.startswith("ls:"):
            # A local session's lane is never emptied into another: its turns name the session by
            # its local id, which only that lane turns into the remote one. It gathers the others.
            held.append(key)
        elif conn.execute(f"UPDATE outbox SET lane = ? WHERE lane = ? AND {OPEN}", (lane, key)).rowcount:
            conn.execute("UPDATE inference_results SET lane = ? WHERE lane = ? AND sync_state != 'synced'",
                         (lane, key))
    if not held:
        return True
    head = conn.execute(_HEAD_SEQ, (lane,)).fetchone()[0]
    return head is None or not any(conn.execute(_OLDER_IN, (key, head)).fetchone() for key in held)


# Per active lane its head, then the head's not_before: bounded by the lanes, not the backlog.
# Heads waiting for a version are woken by the version, not by the clock.
_NEXT_DUE = (
    f"SELECT MIN(h.not_before) FROM lanes l JOIN outbox h ON h.seq = {lane_head_seq('l.key')}"
    " WHERE l.active = 1 AND h.not_before > ? AND h.waits_version IS NULL"
)


def next_due_at(conn: StoreConnection, now: float) -> float | None:
    """When the first lane head not due at ``now`` will be (its Retry-After or backoff ends), or None."""
    row = conn.execute(_NEXT_DUE, (now,)).fetchone()
    return None if row is None or row[0] is None else float(row[0])
