"""The store contract, run once per backend by the same test class: SQLite and PostgreSQL.

What every backend must do the same way: the record API (create, get, list,
update folding or queued, delete, create_batch), offline sessions, the outbox
state machine called through ``store.transaction`` (claim with a lease, the
write-ahead mark, settle done / retry / dead, retry and drop dead letters),
status counts, retention, migrations, and concurrent writers losing nothing.
The PostgreSQL parameter is skipped, with the reason, only when no server is
reachable (see tests/pg_fixture.py).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from galtea_local import Galtea, NotFoundError
from galtea_local.read_model import iso_utc
from galtea_local.store.migrations import MIGRATIONS
from galtea_local.models import TABLES
from galtea_local.outbox import attempts as ob
from galtea_local.outbox import dead
from galtea_local.status import store_status

LEASE_S = 30.0


def body_of(row: dict[str, Any], attempt: ob.Attempt) -> dict[str, Any]:
    return {"kind": attempt.kind, "seq": row["seq"]}


def begin(store: Any, owner: str, now: float) -> tuple[ob.Attempt, dict[str, Any]] | None:
    """What the engine does before a request leaves: claim a lane, take its head, mark it sending."""
    lanes = store.transaction(ob.claim_lanes, owner, now, LEASE_S, 1)
    if not lanes:
        return None
    attempt = store.transaction(ob.next_attempt, lanes[0], owner, now, LEASE_S)
    body = store.transaction(ob.begin_attempt, attempt, owner, now, LEASE_S, body_of)
    return attempt, body


def push_all(store: Any, owner: str = "pusher") -> int:
    """Settle every due operation as accepted upstream (remote id ``r<seq>``); return how many."""
    pushed = 0
    while (started := begin(store, owner, time.time())) is not None:
        attempt, _ = started
        # As the API answers: with createdAt, here the moment of the call (so no createdAt stamp follows).
        remote = {"id": f"r{attempt.record['seq']}", "index": pushed, "sessionId": "remote-session",
                  "createdAt": iso_utc(attempt.record["created_at"])}
        store.transaction(ob.settle_done, attempt, time.time(), remote if attempt.kind == "create" else None)
        store.transaction(ob.release_lane, attempt.lane, owner)
        pushed += 1
    return pushed


def ops(store: Any) -> list[tuple[str, str]]:
    return store.read(lambda conn: [(row["kind"], row["state"]) for row in
                                    conn.execute("SELECT kind, state FROM outbox ORDER BY seq")])


class TestStoreContract:
    # -- records --------------------------------------------------------------------------

    def test_create_get_list(self, local: Galtea) -> None:
        made = [local.traces.create(session_id="s1", input=f"q{i}", output={"a": i}, latency=1.5) for i in range(5)]
        assert local.traces.get(made[2].id) == made[2]
        assert [r.id for r in local.traces.list(session_id="s1")] == [r.id for r in made]
        assert [r.id for r in local.traces.list(session_id="s1", sort_by_created_at="desc", limit=2, offset=1)] == [
            made[3].id, made[2].id]
        assert [r.id for r in local.traces.list(id=[made[0].id, made[4].id])] == [made[0].id, made[4].id]
        with pytest.raises(NotFoundError):
            local.traces.get("loc_nope_1")

    def test_update_folds_into_an_unsent_create_and_queues_after(self, local: Galtea) -> None:
        store = local._store
        record = local.traces.create(session_id="s1", input="q", status="PENDING")
        local.traces.update(record.id, status="GENERATED", output="a")
        assert ops(store) == [("create", "pending")]  # folded
        attempt, body = begin(store, "p", time.time())
        assert attempt.record["status"] == "GENERATED" and body == {"kind": "create", "seq": attempt.record["seq"]}
        local.traces.update(record.id, status="FAILED", error="boom")
        assert ops(store) == [("create", "sending"), ("update", "pending")]
        assert local.traces.get(record.id).status.upper() == "FAILED"

    def test_delete_cancels_an_unsent_create_and_queues_a_sent_one(self, local: Galtea) -> None:
        first, second = (local.traces.create(session_id=s, input="q") for s in ("s1", "s2"))
        local.traces.delete(first.id)
        assert local.traces.list(session_id="s1") == []
        push_all(local._store)
        local.traces.delete(second.id)
        assert ops(local._store)[-1] == ("delete", "pending")
        with pytest.raises(NotFoundError):
            local.traces.get(second.id)

    def test_create_batch_commits_every_turn_in_order(self, local: Galtea) -> None:
        turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                 {"role": "user", "content": "bye"}]
        made = local.traces.create_batch(session_id="s1", conversation_turns=turns)
        assert [r.id for r in local.traces.list(session_id="s1")] == [r.id for r in made] and len(made) == 2

    def test_offline_session_goes_before_its_turns(self, local: Galtea) -> None:
        session = local.sessions.create(version_id="v1", custom_id="conv-1", metadata={"k": 1})
        local.traces.create(session_id=session.id, input="q")
        assert local.sessions.get(session.id) == session and local.sessions.list(custom_id="conv-1") == [session]
        store = local._store
        attempt, _ = begin(store, "p", time.time())
        assert attempt.kind == "session_create" and attempt.lane.startswith("ls:")
        assert store.read(lambda c: c.execute("SELECT lane FROM inference_results").fetchone()[0]) == attempt.lane
        store.transaction(ob.settle_done, attempt, time.time(), {"id": "remote-s", "versionId": "v1"})
        store.transaction(ob.release_lane, attempt.lane, "p")
        attempt, _ = begin(store, "p", time.time())
        assert (attempt.kind, attempt.lane_session_id) == ("create", "remote-s")
        local.sessions.finish(session.id, "done")
        assert local.sessions.get(session.id).remote_id == "remote-s"

    # -- the outbox -------------------------------------------------------------------------

    def test_a_leased_lane_is_claimed_by_nobody_else_until_the_lease_expires(self, local: Galtea) -> None:
        store, now = local._store, time.time()
        local.traces.create(session_id="s1", input="q")
        assert store.transaction(ob.claim_lanes, "a", now, LEASE_S, 10) == ["s:s1"]
        assert store.transaction(ob.claim_lanes, "b", now + 1, LEASE_S, 10) == []
        assert store.transaction(ob.claim_lanes, "b", now + LEASE_S + 1, LEASE_S, 10) == ["s:s1"]
        assert store.transaction(ob.next_attempt, "s:s1", "a", now + LEASE_S + 2, LEASE_S) is None  # lease lost

    def test_maybe_sent_stays_sending_and_is_reported_to_the_next_attempt(self, local: Galtea) -> None:
        store = local._store
        local.traces.create(session_id="s1", input="q")
        attempt, body = begin(store, "a", time.time())
        store.transaction(ob.settle_retry, attempt, 0.0, "read timeout", None, maybe_sent=True)
        store.transaction(ob.release_lane, attempt.lane, "a")
        again = store.transaction(ob.next_attempt, store.transaction(ob.claim_lanes, "b", time.time(), LEASE_S, 1)[0],
                                  "b", time.time(), LEASE_S)
        assert again.maybe_sent_since is not None and again.sent_body == body and again.attempts == 1
        store.transaction(ob.settle_retry, again, 0.0, "refused", None, maybe_sent=False)
        assert ops(store) == [("create", "pending")]

    def test_a_maybe_sent_request_counts_from_when_it_left_not_from_its_mark(self, local: Galtea) -> None:
        # A marked request can wait for an adaptive-limit slot: it cannot commit before it left,
        # so the commit grace and the reconciliation window start at its departure.
        store, marked = local._store, time.time() - 5.0
        local.traces.create(session_id="s1", input="q")
        attempt, _ = begin(store, "a", marked)
        assert store.transaction(ob.leaves_now, attempt, "a", marked + 2.0, LEASE_S, None)  # it left 2 s later
        store.transaction(ob.settle_retry, attempt, 0.0, "read timeout", None, maybe_sent=True)
        store.transaction(ob.release_lane, attempt.lane, "a")
        again = store.transaction(ob.next_attempt, store.transaction(ob.claim_lanes, "b", time.time(), LEASE_S, 1)[0],
                                  "b", time.time(), LEASE_S)
        assert again.maybe_sent_since == pytest.approx(marked + 2.0)

    def test_a_lane_goes_in_order_one_operation_at_a_time(self, local: Galtea) -> None:
        store = local._store
        made = [local.traces.create(session_id="s1", input=f"q{i}") for i in range(3)]
        assert push_all(store) == 3
        remote = [local.traces.get(r.id).remote_id for r in made]
        assert remote == [f"r{local.traces.get(r.id).id.rsplit('_', 1)[1]}" for r in made]
        status = store_status(store)
        assert (status["queued"], status["synced"], status["in_flight"]) == (0, 3, 0)

    def test_dead_letters_retry_and_drop(self, local: Galtea) -> None:
        store = local._store
        record = local.traces.create(session_id="s1", input="q")
        attempt, _ = begin(store, "a", time.time())
        store.transaction(ob.settle_dead, attempt, time.time(), "bad input", 400)
        assert (store_status(store)["dead"], store_status(store)["dead_operations"]) == (1, 1)
        listed = store.read(dead.list_dead, local.store_id[:8])
        assert [(d["id"], d["last_status"], d["last_error"]) for d in listed] == [(record.id, 400, "bad input")]
        assert store.transaction(dead.retry_dead) == 1 and ops(store) == [("create", "pending")]
        store.transaction(ob.release_lane, attempt.lane, "a")
        attempt, _ = begin(store, "a", time.time())
        store.transaction(ob.settle_dead, attempt, time.time(), "bad input", 400)
        assert store.transaction(dead.drop_dead, time.time()) == 1
        assert store_status(store)["dropped"] == 1 and ops(store) == [("create", "done")]

    def test_status_counts(self, local: Galtea) -> None:
        for i in range(4):
            local.traces.create(session_id=f"s{i % 2}", input="q")
        status = store_status(local._store)
        assert (status["queued"], status["synced"], status["dead"], status["store_id"]) == (4, 0, 0, local.store_id)
        assert status["oldest_queued_age_s"] >= 0

    # -- the store itself -------------------------------------------------------------------

    def test_reopening_keeps_the_id_and_applies_no_migration(self, location: str) -> None:
        with Galtea(store=location) as first:
            first.traces.create(session_id="s1", input="q")
        with Galtea(store=location) as again:
            assert again.store_id == first.store_id and len(again.traces.list(session_id="s1")) == 1
            names = again._store.read(lambda c: [r[0] for r in c.execute("SELECT name FROM schema_migrations")])
        assert sorted(names) == [name for name, _ in MIGRATIONS]

    def test_schema_has_the_model_columns(self, local: Galtea) -> None:
        def columns(conn: Any, table: str) -> set[tuple[str, bool]]:
            if local._store.dialect == "sqlite":
                return {(r["name"], not r["notnull"] and not r["pk"]) for r in conn.execute(f"PRAGMA table_info({table})")}
            return {(r[0], r[1] == "YES") for r in conn.execute(
                "SELECT column_name, is_nullable FROM information_schema.columns"
                " WHERE table_schema = current_schema() AND table_name = ?", (table,))}

        for table in TABLES:
            expected = {(c.name, bool(c.nullable) and not c.primary_key) for c in table.columns}
            assert local._store.read(columns, table.name) == expected, table.name

    def test_concurrent_writer_threads_lose_nothing(self, local: Galtea) -> None:
        threads, per_thread = 8, 60
        errors: list[BaseException] = []

        def write(t: int) -> None:
            try:
                for i in range(per_thread):
                    local.traces.create(session_id=f"s{t}", input=f"t{t}-{i}")
            except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
                errors.append(exc)

        workers = [threading.Thread(target=write, args=(t,)) for t in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        assert errors == []
        for t in range(threads):
            inputs = [r.input for r in local.traces.list(session_id=f"s{t}")]
            assert [i if isinstance(i, str) else i["user_message"] for i in inputs] == [
                f"t{t}-{i}" for i in range(per_thread)]
        assert store_status(local._store)["queued"] == threads * per_thread

    def test_concurrent_claimers_never_share_a_lane(self, local: Galtea) -> None:
        for s in range(40):
            local.traces.create(session_id=f"s{s}", input="q")
        claimed: list[list[str]] = []
        barrier = threading.Barrier(4)

        def claim(owner: str) -> None:
            barrier.wait()
            mine = []
            while lanes := local._store.transaction(ob.claim_lanes, owner, time.time(), LEASE_S, 3):
                mine += lanes
            claimed.append(mine)

        workers = [threading.Thread(target=claim, args=(f"o{i}",)) for i in range(4)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        every = [lane for mine in claimed for lane in mine]
        assert sorted(every) == sorted(f"s:s{s}" for s in range(40))  # each lane once, none left
