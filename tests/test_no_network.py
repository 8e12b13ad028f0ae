"""The library imports no HTTP client and opens no socket: 'zero network latency' by construction.

The check runs in a fresh interpreter, so modules other tests imported (the
emulator, httpx) cannot hide or fake a result. Sockets are booby-trapped
before galtea_local is imported.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.helpers import NETWORK_TRAP

PROBE = NETWORK_TRAP + textwrap.dedent(
    """
    from galtea_local import Galtea

    with Galtea(api_key="gsk_not_used", store=sys.argv[1]) as galtea:
        service = galtea.inference_results
        record = service.create(session_id="s", input="What is the capital of France?", output="Paris", latency=150.5)
        service.update(record.id, status="FAILED", error="x")
        service.create_batch(session_id="s", conversation_turns=[{"role": "user", "content": "hi"}])
        service.list(session_id="s")
        service.delete(service.get(record.id).id)
        version = galtea.versions.get_or_create("p", {"model": "m"}, auto_detect_commit_hash=True)
        galtea.sessions.create(version_id=galtea.versions.get(version.id).id)
        galtea.products.list()

    clients = sorted({"httpx", "requests", "urllib3", "http.client", "aiohttp"} & set(sys.modules))
    print("clients:", clients, "calls:", calls)
    """
)


def test_creating_records_needs_no_network(store_path):
    probe = subprocess.run([sys.executable, "-c", PROBE, str(store_path)], capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == "clients: [] calls: []"
