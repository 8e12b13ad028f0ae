"""Many app processes and threads writing one store at once: nothing lost, nothing raised."""

from __future__ import annotations

import json
import subprocess
import sys

from galtea_local import Galtea
from galtea_local.store.migrations import MIGRATIONS
from tests.helpers import WRITER, integrity, query

PROCESSES, THREADS, PER_THREAD = 4, 2, 5_000
TOTAL = PROCESSES * THREADS * PER_THREAD


def test_four_processes_two_threads_each(store_path):
    Galtea(store=store_path).close()  # create the store once, so the writers race on writes, not on migrations
    writers = [
        subprocess.Popen([sys.executable, str(WRITER), str(store_path), "count", str(THREADS), str(PER_THREAD), f"p{p}"],
                         stdout=subprocess.PIPE, text=True)  # fmt: skip
        for p in range(PROCESSES)
    ]
    reports = [json.loads(w.communicate(timeout=240)[0]) for w in writers]
    assert [w.returncode for w in writers] == [0] * PROCESSES
    assert [r["errors"] for r in reports] == [[]] * PROCESSES
    assert sum(r["created"] for r in reports) == TOTAL
    assert integrity(store_path) == "ok"
    assert query(store_path, "SELECT count(*), count(DISTINCT seq) FROM inference_results") == [(TOTAL, TOTAL)]
    assert query(store_path, "SELECT kind, state, count(*) FROM outbox GROUP BY kind, state") == [
        ("create", "pending", TOTAL)
    ]
    # Each writer thread is one session: its turns are all there, in the order it wrote them.
    per_session = query(store_path, "SELECT session_id, count(*) FROM inference_results GROUP BY session_id")
    assert sorted(count for _, count in per_session) == [PER_THREAD] * (PROCESSES * THREADS)
    assert query(store_path, "SELECT count(*) FROM lanes") == [(PROCESSES * THREADS,)]


def test_racing_first_open_of_a_new_store(store_path):
    # Several processes may be the first to open a store: exactly one must apply the migrations.
    writers = [
        subprocess.Popen([sys.executable, str(WRITER), str(store_path), "count", "1", "50", f"p{p}"],
                         stdout=subprocess.PIPE, text=True)  # fmt: skip
        for p in range(PROCESSES)
    ]
    reports = [json.loads(w.communicate(timeout=60)[0]) for w in writers]
    assert [r["error_count"] for r in reports] == [0] * PROCESSES
    assert query(store_path, "SELECT count(*), count(DISTINCT name) FROM schema_migrations") == [
        (len(MIGRATIONS), len(MIGRATIONS))
    ]
    assert query(store_path, "SELECT count(*) FROM inference_results") == [(PROCESSES * 50,)]
