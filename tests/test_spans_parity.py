"""Parity: the same tracing code sends the same spans upstream, online with the official SDK
or offline with galtea_local and a later sync (count, names, types, parents, data, times)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.emulator_fixture import EmulatorHandle
from tests.helpers import HELPERS
from tests.sync_helpers import cli_env, galtea_local

AGENT = HELPERS / "parity_agent.py"


def run_agent(*args: str) -> None:
    done = subprocess.run([sys.executable, str(AGENT), *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def spans_of(emulator: EmulatorHandle) -> dict[str, dict[str, Any]]:
    """Upstream spans by id, without what differs by nature between two servers."""
    dump = emulator.dump(log=False)
    (trace,) = dump["inferenceResults"]
    spans = {}
    for span in dump["spans"]:
        assert span["inferenceResultId"] == trace["id"]  # the remote trace id, on every span
        spans[span["id"]] = {k: v for k, v in span.items() if k not in ("createdAt", "inferenceResultId")}
    return spans


def test_offline_spans_reach_upstream_as_the_sdk_sends_them(store_path: Path, emulator_factory) -> None:
    online: EmulatorHandle = emulator_factory()
    run_agent("sdk", online.url, online.api_key)
    offline: EmulatorHandle = emulator_factory()
    run_agent("local", str(store_path))
    assert offline.dump(log=False)["spans"] == []  # nothing left the app
    done = galtea_local("sync", env=cli_env(store_path, offline.url, offline.api_key))
    assert done.returncode == 0, done.stderr
    expected, got = spans_of(online), spans_of(offline)
    assert len(expected) == 7
    assert got == expected
    names = {span["name"]: span for span in got.values()}
    assert names["retrieve"]["parentTraceId"] == names["agent"]["id"]
    assert names["flaky"]["error"] == "tool timed out"
    assert (names["observed"]["type"], names["observed"]["outputData"]) == ("EMBEDDING", {"value": "not json"})
