"""The outbox: every change of an operation's state happens in this package.

Operation life cycle (``outbox.state``)::

    pending --begin_attempt--> sending --settle_done--> done
       ^                          |  \\
       |                          |   settle_retry(maybe_sent): stays "sending"; the
       |                          |   next attempt reconciles a create before re-sending
       +--- settle_retry(not sent)+
                                  +--settle_dead--> dead --retry_dead--> pending
                                                         --drop_dead---> done (dropped)

- :mod:`.enqueue`: what the library appends (create/update/delete), inside the
  caller's transaction with the record row.
- :mod:`.attempts`: what the sync engine does: claim lanes with a lease, the
  durable write-ahead mark before a request leaves, settling each outcome.
- :mod:`.dead`: dead letters, for the operator.

Every function takes an open connection and runs inside the caller's
:meth:`Store.transaction`, so each state change commits with its record.
"""

from galtea_local.outbox.enqueue import (
    enqueue_create,
    enqueue_delete,
    enqueue_update,
    lane_for,
    local_id,
    open_lane,
    parse_local_id,
    require_record,
)

__all__ = [
    "enqueue_create",
    "enqueue_delete",
    "enqueue_update",
    "lane_for",
    "local_id",
    "open_lane",
    "parse_local_id",
    "require_record",
]
