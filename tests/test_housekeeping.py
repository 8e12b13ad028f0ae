"""Retention deletes only synced records; the size cap behaves as documented; the WAL stays bounded."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from galtea_local import Galtea
from galtea_local.config import RetentionSettings, load_settings
from galtea_local.errors import StoreFullError
from galtea_local.store import Store
from galtea_local_daemon.housekeeping import DAY_S, WAL_LIMIT_BYTES, Housekeeper
from galtea_local_daemon.runtime import make_client, make_engine
from tests.helpers import daemon_proc as dp

WAL_BOUND_BYTES = 8 * WAL_LIMIT_BYTES
BIG = "x" * 40_000  # ~40 KB per record: a few dozen fill a 1 MiB cap


def _sync_all(emulator, store: Store) -> None:
    settings = load_settings(env={"GALTEA_API_URL": emulator.url, "GALTEA_API_KEY": emulator.api_key})
    with make_client(settings) as client:
        engine = make_engine(settings, store, client)
        while engine.run_once().more_due:
            pass


def _states(store: Store) -> dict[str, int]:
    rows = store.read(lambda c: c.execute("SELECT sync_state, COUNT(*) FROM inference_results GROUP BY 1").fetchall())
    return {row[0]: row[1] for row in rows}


def _create(galtea: Galtea, session: str, count: int, text: str = "q") -> list[str]:
    return [galtea.inference_results.create(session_id=session, input=f"{text} {n}", output="a").id
            for n in range(count)]


def test_retention_deletes_only_synced_records_after_the_age(emulator, store_path):
    session = dp.create_sessions(emulator, 1)[0]
    galtea = Galtea(store=store_path)
    synced_ids = _create(galtea, session, 10)
    galtea.inference_results.create(session_id="no-such-session", input="dead", output="a")  # a 400: dead letter
    store = Store(str(store_path))
    _sync_all(emulator, store)
    queued_ids = _create(galtea, session, 5, "later")  # never pushed
    keeper = Housekeeper(store, RetentionSettings(synced_days=7))

    assert keeper.expire(time.time()) == 0  # synced just now: kept for 7 days
    assert keeper.expire(time.time() + 8 * DAY_S) == 10
    assert _states(store) == {"dead": 1, "queued": 5}
    for record_id in queued_ids:
        assert galtea.inference_results.get(record_id).sync_state == "queued"
    with pytest.raises(KeyError):
        galtea.inference_results.get(synced_ids[0])
    galtea.close()


def test_retention_keeps_the_newest_record_so_ids_are_never_reused(emulator, store_path):
    session = dp.create_sessions(emulator, 1)[0]
    with Galtea(store=store_path) as galtea:
        ids = _create(galtea, session, 3)
        store = Store(str(store_path))
        _sync_all(emulator, store)
        Housekeeper(store, RetentionSettings(synced_days=0)).expire(time.time() + 1)
        assert _states(store) == {"synced": 1}
        assert galtea.inference_results.get(ids[-1]).sync_state == "synced"
        assert galtea.inference_results.create(session_id=session, input="new", output="a").id not in ids


def test_size_cap_refuse_blocks_new_records_until_space_frees(emulator, store_path):
    session = dp.create_sessions(emulator, 1)[0]
    galtea = Galtea(store=store_path)
    _create(galtea, session, 40, BIG)
    store = Store(str(store_path))
    keeper = Housekeeper(store, RetentionSettings(max_store_mb=1, when_full="refuse"))
    assert keeper.enforce_cap() == (0, True)
    with pytest.raises(StoreFullError, match="max_store_mb = 1"):
        galtea.inference_results.create(session_id=session, input="one more", output="a")
    assert _states(store) == {"queued": 40}  # nothing written, nothing dropped

    _sync_all(emulator, store)  # pushed, then expired by retention: space frees up
    Housekeeper(store, RetentionSettings(synced_days=0)).expire(time.time() + 1)
    assert keeper.enforce_cap() == (0, False)
    galtea.inference_results.create(session_id=session, input="accepted again", output="a")
    galtea.close()


def test_size_cap_drop_synced_drops_oldest_synced_first_never_unsynced(emulator, store_path):
    session = dp.create_sessions(emulator, 1)[0]
    galtea = Galtea(store=store_path)
    _create(galtea, session, 30, BIG)
    store = Store(str(store_path))
    _sync_all(emulator, store)
    _create(galtea, session, 10, BIG + "unsynced")
    keeper = Housekeeper(store, RetentionSettings(max_store_mb=1, when_full="drop_synced"))
    dropped, full = keeper.enforce_cap()
    assert dropped > 0 and not full
    states = _states(store)
    assert states["queued"] == 10 and states["synced"] == 30 - dropped
    oldest_left = store.read(lambda c: c.execute(
        "SELECT MIN(seq) FROM inference_results WHERE sync_state = 'synced'").fetchone()[0])
    assert oldest_left == dropped + 1  # the oldest went first

    _create(galtea, session, 40, BIG + "more")  # unsynced alone now exceed the cap: refuse, drop none of them
    dropped, full = keeper.enforce_cap()
    assert full and _states(store)["queued"] == 50
    with pytest.raises(StoreFullError):
        galtea.inference_results.create(session_id=session, input="refused", output="a")
    galtea.close()


def test_removing_the_cap_clears_a_refusal(emulator, store_path):
    session = dp.create_sessions(emulator, 1)[0]
    with Galtea(store=store_path) as galtea:
        _create(galtea, session, 40, BIG)
        store = Store(str(store_path))
        Housekeeper(store, RetentionSettings(max_store_mb=1)).run()
        with pytest.raises(StoreFullError):
            galtea.inference_results.create(session_id=session, input="refused", output="a")
        Housekeeper(store, RetentionSettings(max_store_mb=0)).run()
        galtea.inference_results.create(session_id=session, input="accepted", output="a")


def test_idle_checkpoint_truncates_the_wal(emulator, store_path):
    session = dp.create_sessions(emulator, 1)[0]
    with Galtea(store=store_path) as galtea:  # open: closing the last connection would checkpoint by itself
        _create(galtea, session, 200)
        store = Store(str(store_path))
        keeper = Housekeeper(store, RetentionSettings(checkpoint_idle_s=0.01))
        assert keeper.wal_bytes() > 0
        assert not keeper.run().checkpointed  # not idle yet: the clock starts at the first run
        time.sleep(0.05)
        assert keeper.run().checkpointed
        assert keeper.wal_bytes() == 0


@pytest.mark.slow
def test_wal_stays_bounded_during_a_10000_record_write_and_drain(emulator, tmp_path):
    sessions = dp.create_sessions(emulator, 20)
    store_path = tmp_path / "store.db"
    Store(str(store_path)).close()
    daemon = dp.start_daemon(dp.daemon_env(emulator, store_path, dp.write_config(tmp_path)),
                             stderr=tmp_path / "daemon.log")
    wal = Path(f"{store_path}-wal")
    largest = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            largest[0] = max(largest[0], wal.stat().st_size if wal.exists() else 0)
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    writers = [subprocess.Popen([sys.executable, "-c", dp.WRITER, str(store_path), "5000", *sessions[i::2]],
                                stdout=subprocess.PIPE, text=True) for i in range(2)]
    try:
        assert [w.communicate(timeout=120)[0].strip() for w in writers] == ["5000", "5000"]
        store = Store(str(store_path))
        dp.wait_for(lambda: dp.status(store)["queued"] == 0, 120, "the drain", daemon)
    finally:
        done.set()
        sampler.join()
        assert dp.stop(daemon)[0] == 0
    assert dp.upstream_check(emulator, store) == {"local": 10_000, "upstream": 10_000, "duplicates": 0,
                                                  "missing": 0}
    # The run writes hundreds of MB of WAL frames; starved auto-checkpoints would keep them all.
    # Forced checkpoints hold it to a few multiples of the limit under this (worst-case) load.
    assert largest[0] < WAL_BOUND_BYTES, f"the WAL reached {largest[0]} bytes"
