"""kill -9 of an app that is recording spans: every span that had ended is in the store."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

from tests.helpers import HELPERS, integrity, query

TRIALS = 5


def test_every_ended_span_survives_kill_9(store_path: Path) -> None:
    rng = random.Random(os.environ.get("CRASH_SEED", "15"))
    ended: list[str] = []
    for _ in range(TRIALS):
        writer = subprocess.Popen([sys.executable, str(HELPERS / "span_writer.py"), str(store_path)],
                                  stdout=subprocess.PIPE)
        first = writer.stdout.readline()  # type: ignore[union-attr]
        assert first.endswith(b"\n"), "the writer died before its first span ended"
        try:
            writer.wait(timeout=rng.uniform(0.0, 0.2))
        except subprocess.TimeoutExpired:
            os.kill(writer.pid, signal.SIGKILL)  # no shutdown(), no flush, no atexit
        writer.wait()
        rest = writer.stdout.read()  # type: ignore[union-attr]
        writer.stdout.close()  # type: ignore[union-attr]
        assert writer.returncode == -signal.SIGKILL
        ended += [line.decode() for line in (first + rest).split(b"\n")[:-1]]
        assert integrity(store_path) == "ok"
        stored = {row[0] for row in query(store_path, "SELECT span_id FROM spans")}
        missing = [span_id for span_id in ended if span_id not in stored]
        assert missing == [], f"{len(missing)} of {len(ended)} ended spans lost"
    assert len(ended) >= TRIALS
    # Nothing stored twice.
    assert query(store_path, "SELECT COUNT(*) - COUNT(DISTINCT span_id) FROM spans") == [(0,)]
