"""Shared SQL fragments for finding a record's operations through an index, whatever the backlog.

A lane can hold thousands of open operations. A probe written as "open
operations of this lane whose record is X" walks the lane's part of
``ix_outbox_open`` until it meets X: its cost grows with the lane's backlog, and
it ran inside write transactions (retention, every settle), holding the store's
write lock for seconds. These fragments match ``ix_outbox_by_record``
(migration ``0006a``), so each probe is one index lookup. Say nothing about the
lane here: with a lane condition the planner may pick the lane index again.
"""

from __future__ import annotations

OPEN_STATES = "('pending', 'sending')"


def open_of_record(record: str, alias: str = "o") -> str:
    """Condition: ``alias`` is an open operation of the record whose seq is the SQL ``record``."""
    return f"{alias}.record_seq = {record} AND {alias}.state IN {OPEN_STATES}"


def open_of_session(session: str, alias: str = "o") -> str:
    """Condition: ``alias`` is an open operation of the session whose seq is ``session`` (``ix_outbox_session``)."""
    return f"{alias}.session_seq = {session} AND {alias}.state IN {OPEN_STATES}"


def target_state(column: str, target: str) -> str:
    """SQL: the sync state of a record (``column`` = ``record_seq``) or a session (``session_seq``)
    whose seq is the SQL ``target``, from its operations: ``dead`` if one is dead, ``queued`` while
    one is open, else ``synced``. Computed inside the UPDATE that writes it, which locks the row, so
    an operation an app adds concurrently is never overwritten by a stale verdict."""
    is_open = open_of_session(target) if column == "session_seq" else open_of_record(target)
    return (
        f"CASE WHEN EXISTS (SELECT 1 FROM outbox o WHERE o.{column} = {target} AND o.state = 'dead') THEN 'dead'"
        f" WHEN EXISTS (SELECT 1 FROM outbox o WHERE {is_open}) THEN 'queued' ELSE 'synced' END"
    )
