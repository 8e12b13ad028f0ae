"""A store replaced under the running daemon (same path, new inode) is noticed: the daemon
exits non-zero so the service manager restarts it on the new file, and nothing is lost."""

from __future__ import annotations

import os
import shutil
from contextlib import closing
from pathlib import Path

from galtea_local import Galtea
from galtea_local.store import Store
from galtea_local_daemon.storefile import EXIT_STORE_REPLACED
from tests.helpers import daemon_proc as dp


def test_replaced_store_makes_the_daemon_exit_then_a_restart_pushes_it(emulator, tmp_path: Path) -> None:
    (session,) = dp.create_sessions(emulator, 1)
    store_path = tmp_path / "store.db"
    env = dp.daemon_env(emulator, store_path, dp.write_config(tmp_path))
    with Galtea(store=store_path) as local:
        local.traces.create(session_id=session, input="before")
    daemon = dp.start_daemon(env, stderr=tmp_path / "daemon.log")
    with closing(Store(str(store_path))) as store:
        dp.wait_for(lambda: dp.status(store)["synced"] == 1, 30, "the first record", daemon)

    # A restored backup: another store file written elsewhere, renamed over the path.
    other = tmp_path / "restored" / "store.db"
    other.parent.mkdir()
    with Galtea(store=other) as restored:
        restored.traces.create(session_id=session, input="restored")
    for suffix in ("-wal", "-shm"):
        Path(f"{store_path}{suffix}").unlink(missing_ok=True)
    os.replace(other, store_path)
    shutil.rmtree(other.parent)
    assert daemon.wait(30) == EXIT_STORE_REPLACED

    daemon = dp.start_daemon(env, stderr=tmp_path / "daemon.log")  # what systemd does
    with closing(Store(str(store_path))) as store:
        dp.wait_for(lambda: dp.status(store)["synced"] == 1, 30, "the restored record", daemon)
    assert dp.stop(daemon)[0] == 0
    inputs = sorted(r["input"]["user_message"] for r in emulator.dump(log=False)["inferenceResults"])
    assert inputs == ["before", "restored"]
    assert "was replaced" in (tmp_path / "daemon.log").read_text()
