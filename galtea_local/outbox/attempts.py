"""The sync engine's side of the outbox: claim lanes, mark attempts, settle outcomes.

A lane (one upstream session) is claimed with a lease, so one pusher works on
it at a time and its operations go upstream in ``seq`` order. Before a request
leaves, :func:`begin_attempt` durably marks the operation ``sending`` with the
attempt's start time and the exact body: after a crash, a ``sending`` operation
means "maybe sent", never "not sent".
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from galtea_local.attachments import adopt_uris, has_files
from galtea_local.outbox import batch, lanes, probes, stamps, versions
from galtea_local.outbox.kinds import (
    OPEN, OpKind, OpState, held_behind_session, held_behind_session_sql, lane_head_seq, open_in,
)
from galtea_local.store import dialects
from galtea_local.store.contract import StoreConnection

F = TypeVar("F", bound=Callable[..., Any])


def lease_protected(fn: F) -> F:
    """The engine's own transactions run at READ COMMITTED on PostgreSQL.

    They touch the operations of a lane this pusher leases, so no other pusher
    writes them; where an app may write the same row (a record's ``create_sent``
    and ``sync_state``), the statement that writes it also reads it, under the
    row lock. SERIALIZABLE would add nothing but aborts: its predicate locks on
    shared index pages failed more than half of these transactions when many
    lanes settle at once.
    """
    return dialects.read_committed(fn)

_HEAD = f"SELECT * FROM outbox WHERE lane = ? AND {OPEN} ORDER BY seq LIMIT 1"


@dataclass(frozen=True)
class Attempt:
    """One operation at the head of its lane, as the engine needs it."""

    op_seq: int
    kind: OpKind
    lane: str
    record: dict[str, Any]  # the target row as it is now: a record, or a session for session_* kinds
    payload: dict[str, Any] | None  # an update's changed columns
    maybe_sent_since: float | None  # set when an earlier attempt may have reached the server
    sent_body: dict[str, Any] | None  # what that earlier attempt sent
    attempts: int  # attempts made before this one
    lane_session_id: str | None  # the remote session learned for this lane, if any
    body: dict[str, Any] | None = None  # set by take_next(): already marked ``sending``, send this
    # Server clock minus ours when the earlier attempt was marked (None: not measured then).
    sent_offset_s: float | None = None
    # The HTTP status that answered the earlier attempt (None: no answer): how long it may still commit.
    sent_status: int | None = None


def deactivate_drained_lanes(conn: StoreConnection) -> int:
    """Mark lanes with no open operation inactive, so claiming skips them."""
    return conn.execute(
        "UPDATE lanes SET active = 0 WHERE active = 1 AND NOT EXISTS ("
        f" SELECT 1 FROM outbox o WHERE o.lane = lanes.key AND {open_in('o')})"
    ).rowcount


def due_lanes(conn: StoreConnection, now: float, limit: int) -> list[str]:
    """Unleased lanes whose head operation is due at ``now``, least recently served first.

    Round robin, not oldest head first: a lane that just gave back its claim
    after ``batch_size`` operations goes behind the lanes that waited, so a
    backlog drains across every session at once instead of a few at a time.
    A lane without an owner is claimable whatever its ``lease_until`` says
    (that is only the "last served" mark); an owned one once its lease is past.
    """
    clock, clock_now = dialects.lease_clock(conn, now)
    rows = conn.execute(
        "SELECT key FROM ("
        f" SELECT l.key, {lane_head_seq('l.key')} AS head"
        "   , l.remote_session_id, COALESCE(l.lease_until, 0) AS served"
        f" FROM lanes l WHERE l.active = 1 AND (l.lease_owner IS NULL OR l.lease_until < {clock})) AS heads"
        " JOIN outbox h ON h.seq = heads.head WHERE h.not_before <= ? AND h.waits_version IS NULL"
        # A session created offline whose create is dead holds its turns: nothing to claim there.
        f" AND NOT {held_behind_session_sql('heads.key', 'heads.remote_session_id', 'h.kind')}"
        " ORDER BY heads.served, heads.head LIMIT ?",
        (clock_now, now, limit),
    ).fetchall()
    return [row[0] for row in rows]


@dialects.read_committed
def claim_lanes(conn: StoreConnection, owner: str, now: float, lease_s: float, limit: int,
                skip: frozenset[str] = frozenset()) -> list[str]:
    """Lease up to ``limit`` due lanes (not in ``skip``), least recently served first.

    On PostgreSQL several daemons claim at once: the lanes are locked as they are
    read and locked ones skipped (:data:`dialects.PG_CLAIM_LANES`), so each lane
    gets one lease holder. SQLite has one pusher per store, holding the write lock.
    """
    clock, clock_now = dialects.lease_clock(conn, now)
    if dialects.of(conn) == dialects.POSTGRESQL:
        due = [row[0] for row in conn.execute(dialects.PG_CLAIM_LANES, (clock_now, now, limit + len(skip)))]
    else:
        due = due_lanes(conn, now, limit + len(skip))
    keys = [key for key in due if key not in skip][:limit]
    conn.executemany(
        f"UPDATE lanes SET lease_owner = ?, lease_until = {clock} + ? WHERE key = ?",
        [(owner, clock_now, lease_s, key) for key in keys],
    )
    return keys


@lease_protected
def release_lane(conn: StoreConnection, lane: str, owner: str, now: float | None = None) -> None:
    """Give the lane back: claimable at once by anyone (no owner). ``lease_until`` keeps the
    release time, on the lease clock: the round robin's "last served" mark."""
    clock, clock_now = dialects.lease_clock(conn, time.time() if now is None else now)
    conn.execute(
        f"UPDATE lanes SET lease_owner = NULL, lease_until = {clock} WHERE key = ? AND lease_owner = ?",
        (clock_now, lane, owner),
    )


@lease_protected
def release_lanes(conn: StoreConnection, lanes: list[str], owner: str) -> None:
    """Give back lanes whose release failed earlier (a store fault), so they do not wait out the lease."""
    for lane in lanes:
        release_lane(conn, lane, owner)


@lease_protected
def release_owned(conn: StoreConnection, owner: str) -> int:
    """Give back every lane ``owner`` holds (a daemon stopping past its deadline): claimable at once."""
    clock, clock_now = dialects.lease_clock(conn, time.time())
    return conn.execute(f"UPDATE lanes SET lease_owner = NULL, lease_until = {clock} WHERE lease_owner = ?",
                        (clock_now, owner)).rowcount


def release_all_leases(conn: StoreConnection) -> int:
    """Forget every lease: for a pusher that holds the store's exclusive lock, all are stale."""
    return conn.execute("UPDATE lanes SET lease_owner = NULL, lease_until = NULL WHERE lease_owner IS NOT NULL").rowcount


@lease_protected
def still_holds(conn: StoreConnection, lane: str, owner: str, now: float, lease_s: float) -> bool:
    """Does this pusher still hold the lane's lease? Renews it when it does.

    The one check the engine makes right before a request leaves (when time has
    passed since the mark) and when it settles: a request whose lease is gone is
    given up, since another pusher may hold the lane and reconcile it meanwhile.
    """
    return renew_lease(conn, lane, owner, now, lease_s) is not None


@lease_protected
def leaves_now(conn: StoreConnection, attempt: Attempt, owner: str, now: float, lease_s: float,
               offset_s: float | None) -> bool:
    """A marked request that waited for its slot leaves now: renew the lease and move the write-ahead
    mark to ``now``. The commit grace counts from the mark, and a request held back by the adaptive
    limit must not spend its grace before it is even sent. False (nothing changed) when another
    pusher took the lane: the request must not leave."""
    if renew_lease(conn, attempt.lane, owner, now, lease_s) is None:
        return False
    conn.execute("UPDATE outbox SET sending_since = ?, sending_offset_s = ? WHERE seq = ? AND state = 'sending'",
                 (now, offset_s, attempt.op_seq))
    return True


def renew_lease(conn: StoreConnection, lane: str, owner: str, now: float, lease_s: float) -> Any | None:
    """Renew our lease on the lane: its row (for ``remote_session_id``), or None when another pusher took it.
    A row that knows its remote session may be handed to :func:`take_next` in the same transaction."""
    clock, clock_now = dialects.lease_clock(conn, now)
    rows = conn.execute(
        f"UPDATE lanes SET lease_until = {clock} + ? WHERE key = ? AND lease_owner = ? RETURNING remote_session_id",
        (clock_now, lease_s, lane, owner),
    ).fetchall()
    return rows[0] if rows else None


@lease_protected
def next_attempt(conn: StoreConnection, lane: str, owner: str, now: float, lease_s: float,
                 lane_row: Any | None = None) -> Attempt | None:
    """The lane's head operation if it is due and the lease is still ours, else None. ``lane_row``:
    the lease was renewed in this transaction already (:func:`renew_lease`), and this is the row."""
    if lane_row is None:
        lane_row = renew_lease(conn, lane, owner, now, lease_s)
    if lane_row is None:
        return None
    if not lanes.fold_siblings(conn, lane, lane_row["remote_session_id"], now):
        return None  # an older turn of this upstream session waits in a lane another pusher holds
    op = conn.execute(_HEAD, (lane,)).fetchone()
    if op is None or op["not_before"] > now or op["waits_version"] is not None:
        return None  # not due, or it names a version made offline that upstream has not answered yet
    if held_behind_session(lane, lane_row["remote_session_id"], op["kind"]):
        return None
    maybe = op["state"] == OpState.SENDING
    return Attempt(
        op_seq=op["seq"],
        kind=OpKind(op["kind"]),
        lane=lane,
        record=_target(conn, op),
        payload=json.loads(op["payload"]) if op["payload"] else None,
        maybe_sent_since=op["sending_since"] if maybe else None,
        sent_body=json.loads(op["sent_body"]) if maybe and op["sent_body"] else None,
        attempts=op["attempts"],
        lane_session_id=lane_row["remote_session_id"],
        sent_offset_s=op["sending_offset_s"] if maybe else None,
        sent_status=op["sent_status"] if maybe else None,
    )


@lease_protected
def begin_attempt(
    conn: StoreConnection,
    attempt: Attempt,
    owner: str,
    now: float,
    lease_s: float,
    build_body: Callable[[dict[str, Any], Attempt], dict[str, Any]],
    offset_s: float | None = None,
) -> dict[str, Any] | None:
    """The write-ahead mark: build the body from the record *now* and mark the op ``sending``.

    Building and marking share one transaction with ``create_sent = 1``, so an
    ``update()`` either folded into this body or is queued after it. Returns
    the body to send, or None if the lease or the head changed meanwhile.
    """
    if renew_lease(conn, attempt.lane, owner, now, lease_s) is None:
        return None
    head = conn.execute(_HEAD, (attempt.lane,)).fetchone()
    if head is None or head["seq"] != attempt.op_seq:
        return None
    return _mark(conn, attempt, _target(conn, head), now, build_body, offset_s)


_CLOSE_FOLDING = {
    "create": "UPDATE inference_results SET create_sent = 1 WHERE seq = ? RETURNING *",
    "session_create": "UPDATE sessions SET create_sent = 1 WHERE seq = ? RETURNING *",
}


def _mark(conn: StoreConnection, attempt: Attempt, target: dict[str, Any], now: float,
          build_body: Callable[[dict[str, Any], Attempt], dict[str, Any]],
          offset_s: float | None = None) -> dict[str, Any] | None:
    """Mark the op ``sending`` with the body it will carry; None if it is no longer open.

    A create's body is built from the row returned by the statement that sets
    ``create_sent``: that statement locks the row, so an ``update()`` either
    committed before (and is in the body) or sees ``create_sent`` and queues a
    PATCH. This holds at READ COMMITTED too, where the engine runs on PostgreSQL.
    """
    if attempt.kind in _CLOSE_FOLDING:
        target = versions.with_remote_version(
            conn, dict(conn.execute(_CLOSE_FOLDING[attempt.kind], (target["seq"],)).fetchall()[0]))
    body = build_body(target, attempt)
    marked = conn.execute(
        "UPDATE outbox SET state = 'sending', attempts = attempts + 1, sending_since = ?, sent_body = ?,"
        f" sending_offset_s = ?, sent_status = NULL, last_error = NULL WHERE seq = ? AND {OPEN}",
        (now, json.dumps(body), offset_s, attempt.op_seq),
    ).rowcount
    # Not open any more: cancelled meanwhile by a delete before the create left. Nothing to
    # send; the create_sent just set is harmless on a cancelled record.
    return body if marked else None


def _needs_care(attempt: Attempt) -> bool:
    """True when the head cannot simply be marked and sent: a maybe-sent create must be
    reconciled first, and a change to a record that never reached upstream is settled locally."""
    if attempt.kind == OpKind.SESSION_CREATE and attempt.record.get("join_existing"):
        return True  # sessions.get_or_create(): the engine looks the custom id up before any POST
    if attempt.kind == OpKind.CREATE and (has_files(attempt.record["input"])
                                          or has_files(attempt.record["actual_output"])):
        return True  # its files are uploaded first (daemon/uploads.py)
    if attempt.kind.creates:
        return attempt.maybe_sent_since is not None
    return attempt.kind in (OpKind.UPDATE, OpKind.DELETE) and not attempt.record["remote_id"]


@lease_protected
def take_next(
    conn: StoreConnection,
    lane: str,
    owner: str,
    now: float,
    lease_s: float,
    build_body: Callable[[dict[str, Any], Attempt], dict[str, Any]],
    offset_s: float | None = None,
    lane_row: Any | None = None,
) -> Attempt | None:
    """The lane's due head, already marked ``sending`` with its body when it can go as is.

    One write transaction instead of two (find, then mark): with many lanes in
    flight, every avoided write transaction is less time queued for the lock.
    """
    attempt = next_attempt(conn, lane, owner, now, lease_s, lane_row)
    if attempt is None or _needs_care(attempt):
        return attempt
    # Same transaction: the lease and the head were just read.
    body = _mark(conn, attempt, attempt.record, now, build_body, offset_s)
    return None if body is None else replace(attempt, body=body)


def _target(conn: StoreConnection, op: Any) -> dict[str, Any]:
    """The op's record or session as it is now, naming its version upstream's way (the body is built from it)."""
    if op["session_seq"] is not None:
        row = conn.execute("SELECT * FROM sessions WHERE seq = ?", (op["session_seq"],)).fetchone()
    else:
        row = conn.execute("SELECT * FROM inference_results WHERE seq = ?", (op["record_seq"],)).fetchone()
    return versions.with_remote_version(conn, dict(row))


def _is_session(attempt: Attempt) -> bool:
    return attempt.kind.on_session


def _state_sql(attempt: Attempt) -> str:
    """The target's sync state, computed in the statement that writes it (:func:`.probes.target_state`).

    Each probe is one index lookup by target: a probe by lane walked the lane's backlog on every
    settle. The engine runs at READ COMMITTED on PostgreSQL, and the UPDATE's row lock keeps an
    operation an app adds concurrently from being overwritten by a stale verdict.
    """
    return probes.target_state("session_seq" if _is_session(attempt) else "record_seq", ":target")


def _set_sync_state(conn: StoreConnection, attempt: Attempt, state: str | None = None) -> None:
    table = "sessions" if _is_session(attempt) else "inference_results"
    value = ":state" if state is not None else _state_sql(attempt)
    conn.execute(f"UPDATE {table} SET sync_state = {value} WHERE seq = :target",
                 {"state": state, "target": attempt.record["seq"], "lane": attempt.lane})


def _adopt_session(conn: StoreConnection, attempt: Attempt, remote: dict[str, Any]) -> None:
    conn.execute(
        "UPDATE sessions SET remote_id = ?, remote_version_id = ? WHERE seq = ?",
        (remote.get("id"), remote.get("versionId"), attempt.record["seq"]),
    )
    # Its turns wait on this: they go up with the remote id from now on.
    conn.execute("UPDATE lanes SET remote_session_id = ? WHERE key = ?", (remote.get("id"), attempt.lane))


def _adopt_record(conn: StoreConnection, attempt: Attempt, remote: dict[str, Any]) -> None:
    if has_files(attempt.record["input"]) or has_files(attempt.record["actual_output"]):
        adopt_uris(conn, attempt.record["seq"], remote)
    conn.execute(
        "UPDATE inference_results SET remote_id = :id, remote_index = :index, remote_session_id = :session,"
        f" remote_created_at = :created, sync_state = {_state_sql(attempt)} WHERE seq = :target",
        {"id": remote.get("id"), "index": remote.get("index"), "session": remote.get("sessionId"),
         "created": remote.get("createdAt"), "target": attempt.record["seq"], "lane": attempt.lane},
    )
    if remote.get("sessionId") and attempt.lane_session_id is None:  # learned once per lane
        conn.execute(
            "UPDATE lanes SET remote_session_id = ? WHERE key = ? AND remote_session_id IS NULL",
            (remote["sessionId"], attempt.lane),
        )


@lease_protected
def settle_done(conn: StoreConnection, attempt: Attempt, now: float, remote: dict[str, Any] | None,
                offset_s: float | None = None) -> None:
    """The operation is applied upstream; for a create, record what the server assigned (and queue
    its createdAt stamp; ``offset_s``: the server's clock minus ours, as measured)."""
    conn.execute(
        "UPDATE outbox SET state = 'done', settled_at = ?, sent_body = NULL, last_error = NULL WHERE seq = ?",
        (now, attempt.op_seq),
    )
    if attempt.kind == OpKind.CREATE_BATCH and remote is not None:
        batch.adopt_all(conn, attempt, remote, now, offset_s)  # type: ignore[arg-type]  (a list of records)
        return
    if attempt.kind == OpKind.CREATE and remote is not None:
        stamps.enqueue_stamp(conn, attempt.record, attempt.lane, remote, now, offset_s=offset_s)  # before: stays queued
        _adopt_record(conn, attempt, remote)
        return
    if attempt.kind == OpKind.SESSION_CREATE and remote is not None:
        _adopt_session(conn, attempt, remote)
    _set_sync_state(conn, attempt)


@lease_protected
def settle_retry(
    conn: StoreConnection, attempt: Attempt, not_before: float, error: str, status: int | None, *, maybe_sent: bool,
    sent_status: int | None = None,
) -> None:
    """Try again later. A maybe-sent operation stays ``sending``: the next attempt reconciles.

    ``sent_status`` is the status that answered the request that may have been applied (None:
    no answer); a failed reconciliation read passes the stored one on. The mark's time is when
    the request left (:func:`leaves_now` moved it if it waited for a slot): the commit grace and
    the reconciliation window start there.
    """
    if maybe_sent:
        conn.execute(
            "UPDATE outbox SET not_before = ?, last_error = ?, last_status = ?, sent_status = ? WHERE seq = ?",
            (not_before, error, status, sent_status, attempt.op_seq),
        )
    else:
        conn.execute(
            "UPDATE outbox SET state = 'pending', not_before = ?, last_error = ?, last_status = ?,"
            " sending_since = NULL, sent_body = NULL WHERE seq = ?",
            (not_before, error, status, attempt.op_seq),
        )


@lease_protected
def settle_dead(conn: StoreConnection, attempt: Attempt, now: float, error: str, status: int | None) -> None:
    """The upstream refused the operation for good: keep it, with the API's message, for the operator.

    The refusal answers the request itself, so it was not applied: the mark is cleared and
    ``dead retry`` sends it afresh. (Only a dead letter that may have been sent keeps its mark.)
    """
    conn.execute(
        "UPDATE outbox SET state = 'dead', settled_at = ?, last_error = ?, last_status = ?,"
        " sending_since = NULL, sent_body = NULL WHERE seq = ?",
        (now, error, status, attempt.op_seq),
    )
    _set_sync_state(conn, attempt, "dead")
    if attempt.kind == batch.KIND:
        batch.set_state(conn, attempt, "dead")


@lease_protected
def cancel_with_record(conn: StoreConnection, attempt: Attempt, now: float, reason: str) -> None:
    """A delete of a record that never reached upstream: nothing to send, and nothing left to hold."""
    conn.execute(
        "UPDATE outbox SET state = 'done', settled_at = ?, last_error = ? WHERE record_seq = ? AND state = 'dead'",
        (now, reason, attempt.record["seq"]),
    )
    settle_done(conn, attempt, now, None)


def owners_of(conn: StoreConnection, remote_ids: list[str]) -> set[str]:
    """Which of these remote ids a local record owns or ever owned (reconciliation must not adopt them).

    ``owned_remote_ids`` outlives the rows (retention) and holds every id set by
    any path (push, adoption, bundle receipt): triggers fill it.
    """
    if not remote_ids:
        return set()
    marks = ", ".join("?" * len(remote_ids))
    rows = conn.execute(f"SELECT remote_id FROM owned_remote_ids WHERE remote_id IN ({marks})", remote_ids)
    return {row[0] for row in rows}
