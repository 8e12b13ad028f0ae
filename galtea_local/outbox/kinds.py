"""Operation kinds and states, named once, and the SQL fragments built on them.

``OpKind`` and ``OpState`` are ``str`` enums: they compare equal to the text
stored in ``outbox.kind`` and ``outbox.state``, so rows read back from either
backend need no conversion.
"""

from __future__ import annotations

from enum import Enum
from typing import Any


class OpKind(str, Enum):
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"
    SESSION_CREATE = "session_create"
    SESSION_UPDATE = "session_update"
    SESSION_FINISH = "session_finish"
    SESSION_DELETE = "session_delete"
    STAMP = "stamp"  # a created record's createdAt, PATCHed after its create
    SESSION_STAMP = "session_stamp"
    CREATE_BATCH = "create_batch"  # one POST /inferenceResults/batch for a whole conversation

    def __str__(self) -> str:
        return self.value

    @property
    def creates(self) -> bool:
        """A create: the API has no idempotency key, so a maybe-sent one is reconciled before it goes again."""
        return self in (OpKind.CREATE, OpKind.SESSION_CREATE, OpKind.CREATE_BATCH)

    @property
    def on_session(self) -> bool:
        return self.value.startswith("session_")


class OpState(str, Enum):
    PENDING = "pending"  # waiting; surely never sent since it was last settled
    SENDING = "sending"  # write-ahead mark taken: maybe sent
    DONE = "done"
    DEAD = "dead"

    def __str__(self) -> str:
        return self.value


# An operation still to push (pending, or maybe sent). Every partial index on open operations
# uses exactly this text, so a query that repeats it can use them.
OPEN = "state IN ('pending', 'sending')"


def open_in(alias: str) -> str:
    """:data:`OPEN` for a table alias: ``o.state IN ('pending', 'sending')``."""
    return f"{alias}.{OPEN}"


def lane_head_seq(lane: str) -> str:
    """A subquery: the seq of the head (first open operation) of the lane keyed ``lane`` (a column
    expression), one probe of the (lane, seq) index. A lane's operations go in order, so its head
    is the only one that can be in flight or due."""
    return f"(SELECT o.seq FROM outbox o WHERE o.lane = {lane} AND {open_in('o')} ORDER BY o.seq LIMIT 1)"


# A session created offline whose create has not gone up (dead, or not yet sent) holds its
# turns: the lane (``ls:<seq>``) has no remote session id, and only the session create may go.
def held_behind_session_sql(lane: str, remote_session_id: str, kind: str) -> str:
    """The rule in SQL, over the given column expressions."""
    return f"({lane} LIKE 'ls:%' AND {remote_session_id} IS NULL AND {kind} != 'session_create')"


def held_behind_session(lane: str, remote_session_id: Any, kind: str) -> bool:
    """The same rule in Python."""
    return lane.startswith("ls:") and remote_session_id is None and kind != OpKind.SESSION_CREATE
