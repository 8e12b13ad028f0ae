"""The API key appears in no log line, at any level, in either format (the daemon's own stderr is grepped)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from galtea_local import Galtea
from galtea_local.store import Store
from tests.helpers import daemon_proc as dp

KEY = "gsk_Zq9DistinctiveSecretKey_7f3a1c"


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_key_never_logged_at_debug(emulator_factory, tmp_path, fmt):
    emulator = emulator_factory(api_key=KEY)
    sessions = dp.create_sessions(emulator, 2)
    emulator.set_faults(fail_rate=0.1, throttle_rate=0.05, ambiguous_rate=0.1, retry_after_s=1)
    store_path = tmp_path / "store.db"
    with Galtea(store=store_path) as galtea:
        for n in range(30):
            galtea.inference_results.create(session_id=sessions[n % 2], input=f"q {n}", output="a")
        galtea.inference_results.create(session_id="no-such-session", input="dead letter", output="a")
    log = tmp_path / "daemon.log"
    daemon = dp.start_daemon(dp.daemon_env(emulator, store_path, dp.write_config(tmp_path)),
                             "--log-level", "DEBUG", "--log-format", fmt, stderr=log)
    store = Store(str(store_path))
    dp.wait_for(lambda: dp.status(store)["queued"] == 0, 60, "the drain", daemon)
    emulator.set_faults(fail_rate=0, throttle_rate=0, ambiguous_rate=0, api_key="gsk_rotated_elsewhere")
    with Galtea(store=store_path) as galtea:  # an auth failure logs too
        galtea.inference_results.create(session_id=sessions[0], input="after rotation", output="a")
    dp.wait_for(lambda: dp.status(store)["auth_failing"], 20, "the auth failure", daemon)
    assert dp.stop(daemon)[0] == 0

    text = log.read_text()
    lines = text.splitlines()
    assert len(lines) > 10 and any("DEBUG" in line for line in lines)  # debug really was on
    assert KEY not in text and KEY[4:] not in text and KEY[-12:] not in text
    if fmt == "json":
        assert all(json.loads(line)["message"] is not None for line in lines)


def test_config_error_never_echoes_the_key(tmp_path):
    config = dp.write_config(tmp_path, f'[upstream]\napi_key = "{KEY} with blanks"\n')
    result = subprocess.run([sys.executable, "-m", "galtea_local_daemon.cli", "daemon", "--config", str(config)],
                            env=dp.clean_env(), capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert "upstream.api_key" in result.stderr
    assert KEY not in result.stdout + result.stderr
