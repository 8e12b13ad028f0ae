"""`galtea-local sync` SIGKILLed while it sends spans and evaluations: after a clean run, each
span and each evaluation is upstream exactly once."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

import galtea_local
from galtea_local import Galtea
from tests.emulator_fixture import EmulatorHandle
from tests.sync_helpers import cli_env, galtea_local as cli, kill_sync_once_sending, new_session, write_config

TRACES, SPANS, KILLS = 16, 5, 3


def posts(emulator: EmulatorHandle) -> int:
    requests = emulator.dump(log=False)["requests"]
    return requests.get("POST /traces/batch", 0) + requests.get("POST /evaluations/fromInferenceResult", 0)


@pytest.mark.slow
def test_sigkill_while_sending_spans_duplicates_nothing(emulator: EmulatorHandle, tmp_path: Path) -> None:
    session_id = new_session(emulator)
    store_path = tmp_path / "store.db"
    with Galtea(store=store_path) as local:
        for turn in range(TRACES):
            trace = local.traces.create(session_id=session_id, input=f"t{turn}")
            token = galtea_local.set_context(trace_id=trace.id)
            for step in range(SPANS):
                with galtea_local.start_span(f"t{turn}-s{step}", type="TOOL"):
                    pass
            galtea_local.clear_context(token)
            local.evaluations.create(trace_id=trace.id, metrics=["m"])
    # Upstream answers slowly, and the daemon sends one request at a time: kills land mid-request.
    emulator.set_faults(latency_ms=40)
    env = cli_env(store_path, emulator.url, emulator.api_key, write_config(tmp_path, concurrency=1))
    rng = random.Random(15)
    kills = sum(kill_sync_once_sending(env, lambda: posts(emulator), rng.uniform(0.0, 0.05)) for _ in range(KILLS))
    assert kills >= 2
    emulator.set_faults(latency_ms=0)
    result = cli("sync", env=env)
    assert result.returncode == 0, result.stderr
    dump = emulator.dump(log=False)
    names = [span["name"] for span in dump["spans"]]
    assert len(names) == TRACES * SPANS == len(set(names))
    per_trace = [e["inferenceResultId"] for e in dump["evaluations"]]
    assert len(per_trace) == TRACES == len(set(per_trace))
