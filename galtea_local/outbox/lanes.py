"""One upstream session, one lane: a turn addressed by a remote session id joins the lane that
already pushes to that session under another name.

A session can be named three ways: its remote id (lane ``s:<id>``), the caller's
custom id plus an anchor (lane ``c:...``), or a local session id (lane
``ls:<seq>``). Once the engine learns the remote session behind a ``c:`` or
``ls:`` lane it records it (``lanes.remote_session_id``), and from then on a turn
logged by the remote id goes into that lane, behind the turns logged by the
other name, so the session's order upstream is creation order.

Not while turns logged by the remote id still wait in their own lane: joining
the other lane then could overtake them. Turns logged by both names before the
engine learned that they are one session go up in push order (docs/delivery.md).
"""

from __future__ import annotations

import sqlite3

from galtea_local.outbox.kinds import OPEN

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
