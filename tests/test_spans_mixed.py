"""Apps that mix the official SDK with galtea_local: spans under a local trace id stay local.

Each scenario runs in a fresh interpreter (OpenTelemetry's global tracer provider is set
once per process).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from tests.emulator_fixture import EmulatorHandle

OFFICIAL_HELPERS = textwrap.dedent(
    """
    import sys
    from galtea import clear_context, set_context, traced   # the official helpers, unchanged code
    from galtea_local import Galtea                          # only the client is swapped

    galtea = Galtea(store=sys.argv[1])
    trace = galtea.traces.create(session_id="s", input="q")
    token = set_context(trace_id=trace.id)

    @traced(type="TOOL")
    def lookup(key):
        return {"key": key}

    lookup("k")
    clear_context(token)
    print([(s.name, s.type, s.output_data) for s in galtea.spans.list(trace_id=trace.id)])
    """
)

BOTH_CLIENTS = textwrap.dedent(
    """
    import sys
    import galtea
    import galtea_local

    online = galtea.Galtea(api_key=sys.argv[3], base_url=sys.argv[2])   # the official client, online
    offline = galtea_local.Galtea(store=sys.argv[1])
    trace = offline.traces.create(session_id="s", input="q")
    token = offline.spans.set_context(trace_id=trace.id)                # a local loc_... id
    with offline.spans.start_span("local step", type="TOOL"):
        pass
    offline.spans.clear_context(token)
    online.shutdown()                                                   # the official processor flushes
    print(len(offline.spans.list(trace_id=trace.id)))
    """
)


def run(script: str, *args: str) -> str:
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_official_helpers_record_into_the_local_store(store_path: Path) -> None:
    assert run(OFFICIAL_HELPERS, str(store_path)) == "[('lookup', 'TOOL', {'key': 'k'})]"


def test_a_local_trace_id_never_reaches_the_api_through_the_official_processor(
        store_path: Path, emulator: EmulatorHandle) -> None:
    assert run(BOTH_CLIENTS, str(store_path), emulator.url, emulator.api_key) == "1"
    assert emulator.dump()["requests"].get("POST /traces/batch", 0) == 0
