"""Several daemons on one PostgreSQL store share the work without pushing anything twice.

8 writer processes put 5,000 records into 100 sessions while 3 ``galtea-local daemon``
processes push them to an emulator that fails 10% of requests and performs-then-drops
another 10% of writes. One daemon is SIGKILLed midway: its lanes' leases expire and
the others take them over, reconciling what it may have sent. Result: every record
upstream exactly once, each session in creation order.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from galtea_local import Galtea
from galtea_local.status import store_status
from tests.emulator_fixture import EmulatorHandle
from tests.helpers.daemon_proc import create_sessions, daemon_env, fast_config, start_daemon, stop, wait_for, write_config

pytestmark = pytest.mark.slow

WRITERS, DAEMONS, SESSIONS, PER_SESSION = 8, 3, 100, 50
TOTAL = SESSIONS * PER_SESSION
# A short lease so the killed daemon's lanes are taken over within seconds; a request never
# outlasts it (read timeout 2 s), so a live holder never loses its lane mid-request.
CONFIG = fast_config(read_timeout_s=2.0, interval_s=0.2, concurrency=8)

# A writer owns its sessions, so "creation order" within a session is its own order.
WRITER = """
import sys
from galtea_local import Galtea
store, per_session, sessions = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
with Galtea(store=store) as g:
    for turn in range(per_session):
        for session in sessions:
            g.traces.create(session_id=session, input=f"{session}#{turn}", output="ok")
"""


def upstream_count(emulator: EmulatorHandle) -> int:
    return len(emulator.dump(log=False)["inferenceResults"])


def test_three_daemons_one_killed_push_every_record_once_in_order(
    emulator_factory: Callable[..., EmulatorHandle], pg_url: str, tmp_path: Path
) -> None:
    emulator = emulator_factory(mode="process", seed=11)
    sessions = create_sessions(emulator, SESSIONS)  # before the faults: the sessions exist upstream
    emulator.set_faults(ambiguous_rate=0.1, fail_rate=0.1)
    Galtea(store=pg_url).close()  # migrate once, so the writers race on records, not on the schema

    env = daemon_env(emulator, pg_url, write_config(tmp_path, CONFIG))  # type: ignore[arg-type]
    daemons = [start_daemon(env, stderr=tmp_path / f"daemon{i}.log") for i in range(DAEMONS)]
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, pg_url, str(PER_SESSION), *sessions[w::WRITERS]])
               for w in range(WRITERS)]
    try:
        wait_for(lambda: upstream_count(emulator) >= TOTAL // 4, 90, "a quarter of the records upstream")
        daemons[0].send_signal(signal.SIGKILL)  # mid-push: it has lanes leased and requests in flight
        assert daemons[0].wait(10) == -signal.SIGKILL
        assert [w.wait(120) for w in writers] == [0] * WRITERS
        with Galtea(store=pg_url) as local:
            wait_for(lambda: store_status(local._store)["queued"] == 0, 120, "every record pushed", daemons[1])
            status = store_status(local._store)
    finally:
        for proc in [*writers, daemons[0]]:
            if proc.poll() is None:
                proc.kill()
        codes = [stop(daemon)[0] for daemon in daemons[1:] if daemon.poll() is None]
    assert codes == [0] * (DAEMONS - 1)
    assert (status["synced"], status["dead"]) == (TOTAL, 0)

    dump = emulator.dump(log=False)
    assert dump["faults"]["fail"] > 0 and dump["faults"]["ambiguous"] > 0  # the faults did happen
    records = dump["inferenceResults"]
    markers = [r["input"]["user_message"] for r in records]
    assert len(markers) == TOTAL and len(set(markers)) == TOTAL  # exactly once each
    for session in sessions:
        mine = sorted((r for r in records if r["sessionId"] == session), key=lambda r: r["index"])
        assert [r["input"]["user_message"] for r in mine] == [f"{session}#{t}" for t in range(PER_SESSION)]
