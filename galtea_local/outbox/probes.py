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
