"""Retention deletes only synced records; the size cap behaves as documented; the WAL stays bounded."""

from __future__ import annotations

import sqlite3
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
from galtea_local_daemon.housekeeping import DAY_S, WAL_FORCE_BYTES, WAL_LIMIT_BYTES, Housekeeper
from galtea_local_daemon.runtime import make_client, make_engine
from tests.helpers import daemon_proc as dp

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
        idle_clock = [100.0]  # the keeper's own: a first run that is slow on a starved CPU is not idleness
        keeper = Housekeeper(store, RetentionSettings(checkpoint_idle_s=30), idle_clock=lambda: idle_clock[0])
        assert keeper.wal_bytes() > 0
        assert not keeper.run().checkpointed  # not idle yet: the clock starts with the keeper
        idle_clock[0] += 30
        assert keeper.run().checkpointed
        assert keeper.wal_bytes() == 0
        assert not keeper.run().checkpointed  # once per idle spell


class OverlappingReaders(threading.Thread):
    """Two connections taking turns so that one always holds a read snapshot, as a busy daemon and
    its apps do: SQLite's automatic (passive) checkpoints then never restart the WAL."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.done = threading.Event()

    def run(self) -> None:
        conns = [sqlite3.connect(self.path, isolation_level=None, check_same_thread=False) for _ in range(2)]
        try:
            _begin_read(conns[0])
            turn = 0
            while not self.done.is_set():
                time.sleep(0.002)
                _begin_read(conns[1 - turn])  # the next snapshot begins before the last one ends
                conns[turn].execute("COMMIT")
                turn = 1 - turn
        finally:
            for conn in conns:
                conn.close()

    def __enter__(self) -> OverlappingReaders:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.join(10)


def _begin_read(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN")
    conn.execute("SELECT COUNT(*) FROM inference_results").fetchone()


class ReadersTakingTurns:
    """Two read transactions in one thread, the next begun before the last ends: one reader always
    holds a snapshot older than the writes in between, so SQLite's automatic (passive) checkpoints
    never copy every frame and the WAL never restarts. Deterministic: no thread, no clock."""

    def __init__(self, path: Path) -> None:
        self.conns = [sqlite3.connect(path, isolation_level=None) for _ in range(2)]
        self.turn = 0
        _begin_read(self.conns[0])

    def take_turns(self) -> None:
        _begin_read(self.conns[1 - self.turn])
        self.conns[self.turn].execute("COMMIT")
        self.turn = 1 - self.turn

    def close(self) -> None:
        for conn in self.conns:
            conn.close()


def test_forced_checkpoints_bound_the_wal_that_overlapping_readers_starve(store_path):
    """Counted in records, not seconds: with readers always overlapping, 1,300 records grow the WAL
    past four times the limit. With :meth:`Housekeeper.bound_wal` between batches of 50 (when only
    the newest reader is left, as the daemon's checks find it between a busy app's reads), three
    times as many records never take it past the force limit."""
    batch, most = 50, 20_000
    with Galtea(store=store_path) as galtea:
        _create(galtea, "s", 1)
        keeper = Housekeeper(Store(str(store_path)), RetentionSettings())
        readers = ReadersTakingTurns(store_path)
        written = 0
        while keeper.wal_bytes() <= 4 * WAL_LIMIT_BYTES:  # the starvation is real: nothing restarts it
            assert written < most, f"the WAL did not grow past 4x the limit in {most} records"
            written += len(_create(galtea, "s", batch))
            readers.take_turns()
        largest, restarts = 0, 0
        for _ in range(3 * written // batch):
            restarts += keeper.bound_wal()
            readers.take_turns()  # the reader from before the checkpoint ends: the next write restarts the WAL
            _create(galtea, "s", batch)
            largest = max(largest, keeper.wal_bytes())
            readers.take_turns()
        readers.close()
    assert largest <= WAL_FORCE_BYTES, f"the WAL reached {largest} bytes"
    assert restarts >= 3


@pytest.mark.slow
def test_the_daemon_bounds_the_wal_during_a_write_and_drain(emulator, tmp_path):
    """The daemon runs those checkpoints by itself: with readers always overlapping, only it can
    restart the WAL, which shrinks while 4,000 records (over 100 MB of WAL frames) are written
    and pushed, and ends under the limit. Waited for, never timed: the peak depends on the CPU."""
    sessions = dp.create_sessions(emulator, 20)
    store_path = tmp_path / "store.db"
    Store(str(store_path)).close()
    daemon = dp.start_daemon(dp.daemon_env(emulator, store_path, dp.write_config(tmp_path)),
                             stderr=tmp_path / "daemon.log")
    dp.wait_started(daemon, tmp_path / "daemon.log")
    wal = Path(f"{store_path}-wal")
    sizes: list[int] = []
    with OverlappingReaders(store_path):
        writers = [subprocess.Popen([sys.executable, "-c", dp.WRITER, str(store_path), "2000", *sessions[i::2]],
                                    stdout=subprocess.PIPE, text=True) for i in range(2)]
        try:
            dp.wait_for(lambda: sizes.append(_size(wal)) or all(w.poll() is not None for w in writers), 120,
                        "the writers")
            assert [w.communicate()[0].strip() for w in writers] == ["2000", "2000"]
            store = Store(str(store_path))
            dp.wait_for(lambda: dp.status(store)["queued"] == 0, 120, "the drain", daemon)
            dp.wait_for(lambda: _size(wal) <= WAL_LIMIT_BYTES, 60, "the WAL back under its limit", daemon)
        finally:
            assert dp.stop(daemon)[0] == 0
    assert dp.upstream_check(emulator, store) == {"local": 4_000, "upstream": 4_000, "duplicates": 0,
                                                  "missing": 0}
    assert any(later < earlier for earlier, later in zip(sizes, sizes[1:])), "the WAL never restarted"


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0
