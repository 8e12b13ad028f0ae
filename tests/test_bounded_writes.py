"""The daemon's write transactions cost the same whatever the backlog (issue 17).

No timings: the work a statement does is counted in SQLite virtual-machine steps
(a progress handler called every :data:`STEP` instructions), and query plans are
checked to probe indexes rather than scan. A store with a small backlog and one
with a large backlog must cost about the same per settled record.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from galtea_local import Galtea, retention
from galtea_local.batching import batched
from galtea_local.bundle import export
from galtea_local.outbox import attempts as ob
from galtea_local.outbox import stamps
from galtea_local.store import Store
from galtea_local_daemon.housekeeping import Housekeeper
from galtea_local.config import RetentionSettings
from tests.emulator_fixture import EmulatorHandle
from tests.sync_helpers import make_engine, new_session, upstream_by_session

STEP = 100
LANES = 5
SYNCED = 600
COLUMNS = ("seq", "lane", "session_id", "status", "input", "created_at", "updated_at", "sync_state", "create_sent",
           "deleted", "remote_id")


def backlog_store(path: Path, per_lane: int) -> Store:
    """SYNCED old synced records, then ``per_lane`` queued creates in each of LANES lanes."""
    Store(str(path)).close()
    now = time.time()
    rows, ops = [], []
    for seq in range(1, SYNCED + LANES * per_lane + 1):
        lane = f"s:session{seq % LANES}"
        synced = seq <= SYNCED
        rows.append((seq, lane, lane[2:], "GENERATED", '"hi"', now, now, "synced" if synced else "queued",
                     int(synced), 0, f"remote{seq}" if synced else None))
        ops.append((seq, lane, "done" if synced else "pending", 1.0 if synced else None, now))
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("BEGIN")
        conn.executemany(f"INSERT INTO inference_results ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
                         rows)
        conn.executemany("INSERT INTO outbox (record_seq, lane, kind, state, attempts, not_before, settled_at,"
                         " created_at) VALUES (?, ?, 'create', ?, 1, 0, ?, ?)", ops)
        conn.execute("INSERT INTO lanes (key, active) SELECT DISTINCT lane, 1 FROM inference_results")
        conn.execute("COMMIT")
    return Store(str(path))


def steps(store: Store, work: Callable[[], Any]) -> int:
    """SQLite VM instructions (in units of STEP) that ``work`` runs on this thread's connection."""
    count = [0]

    def tick() -> int:
        count[0] += 1
        return 0  # go on

    conn = store.connection()
    conn.set_progress_handler(tick, STEP)
    try:
        work()
    finally:
        conn.set_progress_handler(None, STEP)
    return count[0]


def retention_batch_steps(store: Store) -> tuple[int, int]:
    page = store.read(retention.deletable_page, {}, 10.0)
    batch = page.seqs[:retention.DELETE_BATCH]
    deleted = []
    work = steps(store, lambda: deleted.append(store.transaction(retention.delete_verified, batch, 10.0)))
    return work, deleted[0]


def test_a_retention_write_costs_the_same_with_a_large_backlog(tmp_path: Path) -> None:
    small = backlog_store(tmp_path / "small.db", per_lane=20)
    large = backlog_store(tmp_path / "large.db", per_lane=3000)  # 15,000 queued
    small_steps, small_deleted = retention_batch_steps(small)
    large_steps, large_deleted = retention_batch_steps(large)
    assert small_deleted == large_deleted == retention.DELETE_BATCH
    # Before: each deleted record scanned the whole outbox (the foreign-key check) and its
    # lane's backlog (the open-operation probe): several hundred times the work here.
    assert large_steps < 2 * small_steps + 50, (small_steps, large_steps)


def test_housekeeping_deletes_in_short_batches_and_keeps_the_queue(tmp_path: Path) -> None:
    store = backlog_store(tmp_path / "store.db", per_lane=200)
    keeper = Housekeeper(store, RetentionSettings(synced_days=0))
    before = store.write_stats.count
    assert keeper.expire(time.time()) == SYNCED
    assert store.write_stats.count - before == -(-SYNCED // retention.DELETE_BATCH)  # one transaction per batch
    queued = store.read(lambda c: c.execute("SELECT COUNT(*) FROM inference_results WHERE sync_state = 'queued'")
                        .fetchone()[0])
    assert queued == LANES * 200  # nothing unsynced deleted


def test_a_settle_costs_the_same_with_a_large_backlog(tmp_path: Path) -> None:
    def settle_steps(store: Store) -> int:
        lane = "s:session1"
        attempt = store.transaction(ob.take_next, lane, "me", time.time(), 60.0, lambda row, a: {"x": 1})
        assert attempt is None  # not leased: take the lease first, as a pass does
        store.transaction(ob.claim_lanes, "me", time.time(), 60.0, LANES)
        attempt = store.transaction(ob.take_next, lane, "me", time.time(), 60.0, lambda row, a: {"x": 1})
        return steps(store, lambda: store.transaction(ob.settle_done, attempt, time.time(), {"id": "r-new"}))

    small = settle_steps(backlog_store(tmp_path / "small.db", per_lane=20))
    large = settle_steps(backlog_store(tmp_path / "large.db", per_lane=3000))
    assert large < 2 * small + 20, (small, large)


def plan(store: Store, sql: str, params: Any) -> str:
    return "\n".join(row[3] for row in store.read(lambda c: c.execute("EXPLAIN QUERY PLAN " + sql, params).fetchall()))


def test_the_record_probes_use_the_index_by_record(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "store.db"))
    records_sql, params = export._records_sql(export._Selection(None, None, None), "r.seq")
    for sql, args in ((records_sql, params),
                      (retention._PAGE, {"state": "synced", "after": 0, "cutoff": 1.0, "span": 10})):
        text = plan(store, sql, args)
        # The export's query reads no operation per record at all (maybe-sent creates are read once).
        assert "ix_outbox_by_record" in text or "outbox" not in sql, text
        assert "SCAN o" not in text and "SCAN outbox" not in text, text
    assert "SCAN" not in plan(store, "DELETE FROM outbox WHERE record_seq = 1 AND state = 'done'", {})


def test_the_daemons_longest_write_is_in_status(tmp_path: Path) -> None:
    from galtea_local.status import format_status, store_status
    from galtea_local_daemon.loadwatch import WriteWatch

    store = backlog_store(tmp_path / "store.db", per_lane=5)
    watch = WriteWatch(store)
    Housekeeper(store, RetentionSettings(synced_days=0)).expire(time.time())
    watch.publish()
    status = store_status(store)
    assert status["longest_write_ms"] > 0 and status["longest_write_name"] in ("delete_verified", "upgrade")
    assert status["longest_write_cpu_ms"] > 0 and status["longest_write_recent_ms"] > 0
    assert status["writes_given_way"] == 0  # no app waited
    assert "longest write transaction" in format_status(status)


def test_a_settle_renews_the_lease_once(emulator: EmulatorHandle, tmp_path: Path) -> None:
    """Settling a create and taking the lane's next one is the drain's most frequent write: the lease
    is renewed once in it, not again by the take (only while the lane does not know its remote
    session yet, which the first settled create may teach it)."""
    session_id = new_session(emulator)
    path = tmp_path / "store.db"
    with Galtea(store=path) as app:
        ids = [app.traces.create(session_id=session_id, input=f"turn {n}").id for n in range(6)]
    ran: list[str] = []
    with closing(Store(str(path))) as store:
        opened = store._open

        def traced() -> sqlite3.Connection:
            conn = opened()
            conn.set_trace_callback(ran.append)
            return conn

        store._open = traced  # type: ignore[method-assign]  (every thread's connection, traced)
        report = make_engine(store, emulator, concurrency=1).run_once()
    assert report.pushed == 6
    upstream = upstream_by_session(emulator)[session_id]
    assert [record["input"]["user_message"] for record in upstream] == [f"turn {n}" for n in range(6)]
    transactions = "\n".join(ran).split("BEGIN IMMEDIATE")
    settles = [tx for tx in transactions if "UPDATE outbox SET state = 'done'" in tx]
    renewals = [tx.count("UPDATE lanes SET lease_until") for tx in settles]
    # Once each; twice in the settle that told the lane its remote session (twice in each before).
    assert len(settles) == len(ids) and sorted(renewals) == [1] * (len(ids) - 1) + [2], renewals


def test_answered_stamps_settle_in_two_statements_whatever_the_batch(tmp_path: Path) -> None:
    """The side path settles its answered createdAt stamps in batches: one pair of statements per
    stamp made that the daemon's longest write. Now two statements settle a whole batch, and each
    record's sync state is still its own: synced, or queued while another operation is open."""
    store = backlog_store(tmp_path / "store.db", per_lane=1)
    now = time.time()

    def open_stamps(conn: sqlite3.Connection) -> None:
        conn.executemany("INSERT INTO outbox (record_seq, lane, kind, state, attempts, not_before, created_at)"
                         " VALUES (?, ?, 'stamp', 'sending', 1, 0, ?)",
                         [(seq, f"st:s:session{seq % LANES}", now) for seq in range(1, 18)])
        conn.execute("INSERT INTO outbox (record_seq, lane, kind, state, attempts, not_before, created_at)"
                     " VALUES (17, 's:session2', 'update', 'pending', 0, 0, ?)", (now,))
        conn.execute("UPDATE inference_results SET sync_state = 'queued' WHERE seq <= 17")

    store.transaction(open_stamps)
    ran: list[str] = []
    conn = store.connection()
    conn.set_trace_callback(ran.append)
    try:
        store.transaction(stamps.settle_stamps, [(f"s:session{seq % LANES}", seq) for seq in range(1, 18)], now)
    finally:
        conn.set_trace_callback(None)
    body = [sql for sql in ran[ran.index("BEGIN IMMEDIATE") + 1:ran.index("COMMIT")] if not sql.startswith("PRAGMA")]
    assert len(body) == 2, body  # (an app's BEGIN resets its busy timeout after it)
    states = dict(store.read(lambda c: c.execute("SELECT seq, sync_state FROM inference_results WHERE seq <= 17")
                             .fetchall()))
    assert states == {**{seq: "synced" for seq in range(1, 17)}, 17: "queued"}
    open_left = store.read(lambda c: c.execute("SELECT COUNT(*) FROM outbox WHERE kind = 'stamp'"
                                               " AND state IN ('pending', 'sending')").fetchone()[0])
    assert open_left == 0


def test_batched_keeps_the_order_and_ends_with_the_rest() -> None:
    assert list(batched(range(7), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(batched(iter([]), 3)) == []
    with pytest.raises(ValueError, match="at least 1"):
        list(batched([1], 0))
