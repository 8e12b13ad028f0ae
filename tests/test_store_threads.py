"""Apps that churn threads: each thread's connection closes with it, so open files stay bounded."""

from __future__ import annotations

import gc
import os
import threading

from galtea_local import Galtea


def _open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_short_lived_threads_do_not_pile_up_connections(galtea: Galtea) -> None:
    galtea.inference_results.create(session_id="warm-up", input="x")  # this thread's own connection
    before = _open_files()
    for n in range(300):
        worker = threading.Thread(target=galtea.inference_results.create, kwargs={"session_id": "s", "input": f"turn {n}"})
        worker.start()
        worker.join()
    gc.collect()
    assert len(galtea.inference_results.list(session_id="s")) == 300
    # One connection is three files (database, WAL, shared memory); SQLite may keep a few
    # closed descriptors for reuse. 300 leaked connections would be ~900 files.
    assert _open_files() - before < 60
    assert len(galtea._store._connections) <= 2
