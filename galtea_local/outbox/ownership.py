"""How long the store remembers the remote ids its records owned (``owned_remote_ids``).

Reconciliation must never adopt an upstream record that a local record owns or
owned, even after retention deleted that row. It only looks at records created
upstream since a maybe-sent attempt began (less the clock allowance), so an id
owned before the oldest attempt that could still be reconciled can never be a
candidate again, and is forgotten. ``owned_at`` is when the store learned the
id (set by the triggers from the database clock), never earlier than the
record's ``createdAt`` upstream, up to the clock offset the margin covers.
"""

from __future__ import annotations

import sqlite3

from galtea_local.outbox.kinds import OPEN

# Far beyond any clock offset or commit grace the engine tolerates (minutes): a week of ids
# costs about 100 bytes each.
MARGIN_S = 7 * 86_400.0
_OLDEST_MAYBE_SENT = f"SELECT MIN(sending_since) FROM outbox WHERE kind IN ('create', 'session_create') AND {OPEN}"


def prune(conn: sqlite3.Connection, now: float, margin_s: float = MARGIN_S) -> int:
    """Forget ids owned before any reconciliation still possible could look; return how many."""
    oldest = conn.execute(_OLDEST_MAYBE_SENT).fetchone()[0]
    reach_back = min(now, oldest if oldest is not None else now) - margin_s
    return conn.execute("DELETE FROM owned_remote_ids WHERE owned_at < ?", (reach_back,)).rowcount
