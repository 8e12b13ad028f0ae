"""The PostgreSQL store's own answers to faults: lost COMMIT replies, poisoned sessions, locks, the pool.

Real server, real sockets: a loopback proxy (tests/helpers/pgproxy.py) cuts a
connection around its COMMIT; locks are held from a second real connection.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from galtea_local import (
    Galtea,
    OutcomeUnknownError,
    StoreOpenError,
    StoreReadOnlyError,
    StoreTimeoutError,
    StoreUnavailableError,
)
from galtea_local.outbox import attempts as ob
from galtea_local.service import InferenceResultService
from galtea_local.store.postgres import PostgresStore, conninfo_from
from tests.helpers.pgproxy import PgProxy


@pytest.fixture
def proxy() -> Iterator[PgProxy]:
    relay = PgProxy()
    yield relay
    relay.close()


def rows(url: str, sql: str) -> list[Any]:
    store = PostgresStore(url)
    try:
        return store.read(lambda conn: conn.execute(sql).fetchall())
    finally:
        store.close()


def test_a_lost_commit_reply_returns_the_committed_record_once(pg_url: str, proxy: PgProxy) -> None:
    with Galtea(store=proxy.url(pg_url)) as local:
        proxy.cut_after_commit()  # the COMMIT lands; its answer never comes back
        record = local.traces.create(session_id="s1", input="once")
        assert proxy.cuts == 1
        assert local.traces.get(record.id).input == "once"
    assert [tuple(r) for r in rows(pg_url, "SELECT input FROM inference_results")] == [('"once"',)]


def test_a_commit_that_never_reached_the_server_is_run_again_once(pg_url: str, proxy: PgProxy) -> None:
    with Galtea(store=proxy.url(pg_url)) as local:
        proxy.cut_before_commit()  # the server rolls back when the socket closes
        record = local.traces.create(session_id="s1", input="again")
        assert proxy.cuts == 1
        assert local.traces.get(record.id).input == "again"
    assert len(rows(pg_url, "SELECT seq FROM inference_results")) == 1


def test_an_unknown_outcome_names_the_record_and_the_record_is_there(pg_url: str, proxy: PgProxy) -> None:
    with Galtea(store=proxy.url(pg_url)) as local:
        proxy.cut_after_commit()
        proxy.refuse = True  # and nobody can ask the server what happened
        with pytest.raises(OutcomeUnknownError) as raised:
            local.traces.create(session_id="s1", input="maybe")
        proxy.refuse = False
        assert raised.value.record_id and raised.value.record_id in str(raised.value)
        assert local.traces.get(raised.value.record_id).input == "maybe"  # the caller can look it up


def test_update_and_session_calls_survive_a_lost_commit_reply(pg_url: str, proxy: PgProxy) -> None:
    with Galtea(store=proxy.url(pg_url)) as local:
        record = local.traces.create(session_id="s1", input="q", status="PENDING")
        proxy.cut_after_commit()
        assert local.traces.update(record.id, output="a", status="GENERATED").status.upper() == "GENERATED"
        proxy.cut_after_commit()
        session = local.sessions.create(version_id="v1", custom_id="c1")
        proxy.cut_after_commit()
        assert local.sessions.finish(session.id).status == "COMPLETED"
        assert proxy.cuts == 3
    assert len(rows(pg_url, "SELECT seq FROM sessions")) == 1
    assert rows(pg_url, "SELECT kind FROM outbox ORDER BY seq")[-1][0] in ("session_create", "session_finish")


def test_a_session_left_read_only_is_replaced_once_the_database_is_writable(pg_url: str) -> None:
    with Galtea(store=pg_url) as local:
        store = local._store
        raw = store._pool.get()
        raw.execute("SET default_transaction_read_only = on")  # as a session opened during a failover
        store._pool.put(raw, reusable=True)
        local.traces.create(session_id="s1", input="after the failover")  # no error: a fresh session
        raw = store._pool.get()
        raw.execute("SET default_transaction_read_only = on")
        store._pool.put(raw, reusable=True)
        store._pool._connect = lambda: _read_only(conninfo_from(pg_url))  # the database itself is read-only now
        with pytest.raises(StoreReadOnlyError, match="read-only"):
            local.traces.create(session_id="s1", input="still read-only")
    assert len(rows(pg_url, "SELECT seq FROM inference_results")) == 1


def _read_only(conninfo: str) -> psycopg.Connection[Any]:
    from galtea_local.store.pgadapter import row_factory

    raw = psycopg.connect(conninfo, autocommit=True, row_factory=row_factory)
    raw.execute("SET default_transaction_read_only = on")
    return raw


def test_a_killed_backend_costs_the_app_nothing(pg_url: str) -> None:
    with Galtea(store=pg_url) as local, psycopg.connect(conninfo_from(pg_url), autocommit=True) as admin:
        local.traces.create(session_id="s1", input="first")
        pids = [raw.info.backend_pid for raw, _, _ in local._store._pool._idle]
        for pid in pids:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        time.sleep(0.2)  # the farewell reaches the pooled sockets
        local.traces.create(session_id="s1", input="second")
        assert [r.input for r in local.traces.list(session_id="s1")] == ["first", "second"]


def test_a_lock_held_for_ever_ends_in_a_timeout_error(pg_url: str) -> None:
    store = PostgresStore(pg_url, busy_timeout_s=0.5)
    service = InferenceResultService(store, 1_000_000)
    try:
        with psycopg.connect(conninfo_from(pg_url), autocommit=True) as holder:
            holder.execute("BEGIN")
            holder.execute("LOCK TABLE inference_results IN ACCESS EXCLUSIVE MODE")
            with pytest.raises(StoreTimeoutError, match="busy_timeout_s"):
                service.create(session_id="s1", input="blocked")
            with pytest.raises(StoreTimeoutError):
                service.list(session_id="s1")  # reads too: translated, not psycopg's LockNotAvailable
            holder.execute("ROLLBACK")
        assert service.create(session_id="s1", input="free").input == "free"
        assert len(service.list(session_id="s1")) == 1
    finally:
        store.close()


def test_connections_refused_is_a_project_error(pg_url: str, proxy: PgProxy) -> None:
    with Galtea(store=proxy.url(pg_url)) as local:
        local._store._pool.close()
        proxy.refuse = True
        with pytest.raises(StoreUnavailableError, match="cannot connect"):
            local.traces.create(session_id="s1", input="x")
        with pytest.raises(StoreUnavailableError):
            local.traces.list(session_id="s1")


def test_the_pool_is_bounded_and_idle_connections_close(pg_url: str) -> None:
    store = PostgresStore(pg_url, pool_size=2, pool_idle_s=0.2, busy_timeout_s=0.3)
    try:
        first, second = store._pool.get(), store._pool.get()
        with pytest.raises(StoreTimeoutError, match="pool_size"):
            store._pool.get()  # a third would exceed pool_size
        store._pool.put(first, reusable=True)
        store._pool.put(second, reusable=True)
        assert store._pool.idle_count() == 2
        deadline = time.monotonic() + 10
        while store._pool.idle_count() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert store._pool.idle_count() == 0  # closed by the reaper, not held for ever
    finally:
        store.close()


def test_a_released_lane_is_claimable_at_once_whatever_the_releasing_clock(pg_url: str) -> None:
    with Galtea(store=pg_url) as local:
        store, now = local._store, time.time()
        local.traces.create(session_id="s1", input="q")
        assert store.transaction(ob.claim_lanes, "fast", now, 60.0, 1) == ["s:s1"]
        store.transaction(ob.release_lane, "s:s1", "fast", now + 30)  # a clock 30 s ahead
        assert store.transaction(ob.claim_lanes, "correct", now, 60.0, 1) == ["s:s1"]


def test_leases_are_on_the_database_clock(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with Galtea(store=pg_url) as local:
        store = local._store
        local.traces.create(session_id="s1", input="q")
        real = time.time
        monkeypatch.setattr(time, "time", lambda: real() + 300)  # this host's clock is 5 min fast
        assert store.transaction(ob.claim_lanes, "fast-host", time.time(), 60.0, 1) == ["s:s1"]
        monkeypatch.undo()
        lease_until, db_now = store.read(lambda conn: conn.execute(
            "SELECT lease_until, EXTRACT(EPOCH FROM clock_timestamp())::float8 FROM lanes").fetchone())
        assert 0 < lease_until - db_now <= 60.0  # the database's now + lease_s, not the fast host's


def test_a_pooler_that_drops_the_startup_options_is_refused(pg_url: str) -> None:
    store = PostgresStore(pg_url)
    try:
        store._connect_args.pop("options")  # what PgBouncer's ignore_startup_parameters does
        with pytest.raises(StoreOpenError, match="startup options were dropped"):
            store._open()
    finally:
        store.close()
