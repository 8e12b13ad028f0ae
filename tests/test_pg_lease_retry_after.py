"""PostgreSQL, two pushers, a Retry-After longer than the lease (issue 11 #3): the throttle is waited
out before the write-ahead mark and the lease is re-checked before sending, so a lane that passed
to the other pusher during the wait is never pushed by both. 0 lost, 0 duplicated, order kept."""

from __future__ import annotations

import threading
from collections.abc import Callable

from galtea_local import Galtea
from galtea_local.status import store_status
from galtea_local.store import open_store as open_any_store
from tests.emulator_fixture import EmulatorHandle
from tests.sync_helpers import make_engine, new_session, upstream_by_session

SESSIONS, PER_SESSION = 8, 4


def test_two_pushers_with_retry_after_longer_than_the_lease(
    emulator_factory: Callable[..., EmulatorHandle], pg_url: str
) -> None:
    emulator = emulator_factory(retry_after_s=1)
    sessions = [new_session(emulator) for _ in range(SESSIONS)]
    with Galtea(store=pg_url) as local:
        for turn in range(PER_SESSION):
            for session_id in sessions:
                local.traces.create(session_id=session_id, input=f"{session_id}#{turn}")
    emulator.set_faults(throttle_rate=0.15, latency_ms=20)  # busy pushers: each claims the other's expired lanes
    stores = [open_any_store(pg_url) for _ in range(2)]
    # No commit grace: only the lease rules keep the two pushers apart here.
    engines = [make_engine(store, emulator, concurrency=4, lease_s=0.3, commit_grace_s=0.0) for store in stores]
    stop = threading.Event()

    def push(engine) -> None:  # noqa: ANN001
        for _ in range(400):
            if stop.is_set() or store_status(engine.store)["queued"] == 0:
                return
            engine.run_once()
            stop.wait(0.05)

    threads = [threading.Thread(target=push, args=(engine,)) for engine in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    stop.set()
    status = store_status(stores[0])
    for engine in engines:
        engine.close()
    assert (status["queued"], status["synced"], status["dead"]) == (0, SESSIONS * PER_SESSION, 0)
    assert emulator.dump(log=False)["faults"]["throttle"] > 0
    grouped = upstream_by_session(emulator)
    for session_id in sessions:
        assert [r["input"]["user_message"] for r in grouped[session_id]] == [
            f"{session_id}#{t}" for t in range(PER_SESSION)]
