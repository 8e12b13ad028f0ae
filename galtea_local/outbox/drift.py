"""An adopted record that differs from what the store holds now is brought up to date.

Reconciliation adopts the upstream record a maybe-sent create made, as it was
sent. Normally every later ``update()`` of that record is already queued as a
PATCH behind the create. A record that changed while no PATCH could be queued
for it (a maybe-sent create carried across the air gap in a bundle, with its
final state folded into the row) would otherwise stay upstream as first sent,
while both stores say synced. Then one PATCH of every field goes after it.
"""

from __future__ import annotations

import json
from typing import Any

from galtea_local.outbox import attempts as ob
from galtea_local.outbox.enqueue import ACTIVATE_LANE
from galtea_local.outbox.imports import full_patch
from galtea_local.outbox.kinds import OPEN
from galtea_local.store.contract import StoreConnection

_HAS_OPEN_UPDATE = f"SELECT 1 FROM outbox WHERE record_seq = ? AND kind = 'update' AND {OPEN} LIMIT 1"
_INSERT_PATCH = (
    "INSERT INTO outbox (record_seq, lane, kind, payload, state, attempts, not_before, created_at)"
    " VALUES (?, ?, 'update', ?, 'pending', 0, 0, ?)"
)


@ob.lease_protected
def settle_adopted(conn: StoreConnection, attempt: ob.Attempt, now: float, remote: dict[str, Any],
                   drifted: bool, offset_s: float | None = None) -> bool:
    """Settle an adopted create; when the record ``drifted`` from the adopted copy and no update of
    it is queued, queue a PATCH of every field (before settling, so its state reads queued).
    Returns True when a PATCH was queued."""
    queued = False
    if drifted and conn.execute(_HAS_OPEN_UPDATE, (attempt.record["seq"],)).fetchone() is None:
        row = conn.execute("SELECT * FROM inference_results WHERE seq = ?", (attempt.record["seq"],)).fetchone()
        conn.execute(_INSERT_PATCH, (row["seq"], row["lane"], json.dumps(full_patch(row)), now))
        conn.execute(ACTIVATE_LANE, (row["lane"],))
        queued = True
    ob.settle_done(conn, attempt, now, remote, offset_s)
    return queued
