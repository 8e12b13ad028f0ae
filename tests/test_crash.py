"""kill -9 of a writer at random moments: every id whose ``create()`` returned is still there.

One store takes every trial in turn, so each trial also recovers the WAL left
by the previous kill. The writer prints an id only after ``create()`` returned.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys

import pytest

from galtea_local import Galtea
from tests.helpers import WRITER, integrity, query

TRIALS = 20


def kill_writer_at_random(store_path, rng: random.Random) -> list[str]:
    """Start a writer, SIGKILL it a random moment after its first id; return the ids it printed."""
    writer = subprocess.Popen([sys.executable, str(WRITER), str(store_path), "forever"], stdout=subprocess.PIPE)
    first = writer.stdout.readline()  # type: ignore[union-attr]
    assert first.endswith(b"\n"), "the writer died before its first create() returned"
    try:
        writer.wait(timeout=rng.uniform(0.0, 0.15))
    except subprocess.TimeoutExpired:
        os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    rest = writer.stdout.read()  # type: ignore[union-attr]
    writer.stdout.close()  # type: ignore[union-attr]
    assert writer.returncode == -signal.SIGKILL
    lines = (first + rest).split(b"\n")
    return [line.decode() for line in lines[:-1]]  # the last piece is empty or a line cut by the kill


@pytest.mark.slow
def test_every_returned_id_survives_kill_9(store_path):
    rng = random.Random(os.environ.get("CRASH_SEED", "20"))
    promised: list[str] = []
    for _ in range(TRIALS):
        promised += kill_writer_at_random(store_path, rng)
        assert integrity(store_path) == "ok"
        with Galtea(store=store_path) as galtea:
            missing = [i for i in promised if _missing(galtea, i)]
        assert missing == [], f"{len(missing)} of {len(promised)} returned ids lost"
    # Every record (even one whose id was never printed) has its create queued, nothing else.
    assert query(store_path, "SELECT count(*) FROM inference_results") == query(store_path, "SELECT count(*) FROM outbox")
    assert len(promised) >= TRIALS


def _missing(galtea: Galtea, record_id: str) -> bool:
    try:
        galtea.inference_results.get(record_id)
    except KeyError:
        return True
    return False
