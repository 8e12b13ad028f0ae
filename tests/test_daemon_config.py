"""Config errors stop the daemon before anything starts; ``config check`` masks the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import daemon_proc as dp


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "galtea_local_daemon.cli", *args], env=env,
                          capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[sync]\nintervl = 1.0\n", ["unknown key sync.intervl", "did you mean 'interval_s'"]),
        ('[sync]\ninterval_s = "fast"\n', ["sync.interval_s", "must be a number > 0"]),
        ("[sync]\nconcurrency = 0\n", ["sync.concurrency = 0", "must be an integer ≥ 1"]),
        ("[retention]\nwhen_full = \"panic\"\n", ["retention.when_full", '"refuse", "drop_synced"']),
        ("[metrics]\nlisten = \"0.0.0.0:9464\"\n", ["metrics.listen", "loopback"]),
        ("[nope]\nx = 1\n", ["unknown section [nope]"]),
        ("[sync\n", ["invalid TOML"]),
    ],
    ids=["unknown-key", "wrong-type", "out-of-range", "bad-choice", "not-loopback", "unknown-section", "syntax"],
)
def test_bad_config_exits_non_zero_naming_file_and_key(emulator, tmp_path, text, expected):
    config = dp.write_config(tmp_path, text)
    store_path = tmp_path / "store.db"
    result = _run(["daemon"], dp.daemon_env(emulator, store_path, config))
    assert result.returncode != 0
    assert str(config) in result.stderr
    for fragment in expected:
        assert fragment in result.stderr
    assert not store_path.exists() and not Path(f"{store_path}.lock").exists()  # nothing started


def test_no_api_key_is_a_config_error(emulator, tmp_path):
    env = dp.daemon_env(emulator, tmp_path / "store.db", None)
    env["GALTEA_API_KEY"] = ""
    result = _run(["daemon"], env)
    assert result.returncode != 0
    assert "upstream.api_key: no API key" in result.stderr
    assert not (tmp_path / "store.db").exists()


def test_unreadable_key_file_is_named(emulator, tmp_path):
    config = dp.write_config(tmp_path, f'[upstream]\napi_key_file = "{tmp_path / "missing-key"}"\n')
    env = dp.daemon_env(emulator, tmp_path / "store.db", config)
    env["GALTEA_API_KEY"] = ""
    result = _run(["daemon"], env)
    assert result.returncode != 0
    assert "upstream.api_key_file" in result.stderr and "missing-key" in result.stderr


def test_bad_flag_value_is_named(emulator, tmp_path):
    result = _run(["daemon", "--interval", "-1"], dp.daemon_env(emulator, tmp_path / "store.db", None))
    assert result.returncode != 0
    assert "command line: sync.interval_s" in result.stderr


def test_systemd_credential_supplies_the_key(emulator, tmp_path):
    credentials = tmp_path / "creds"
    credentials.mkdir()
    (credentials / "galtea-api-key").write_text(emulator.api_key + "\n")
    config = dp.write_config(tmp_path, "")
    env = dp.daemon_env(emulator, tmp_path / "store.db", config, CREDENTIALS_DIRECTORY=str(credentials))
    env["GALTEA_API_KEY"] = ""
    result = _run(["config", "check", str(config)], env)
    assert result.returncode == 0
    assert "from systemd credential" in result.stdout
    assert emulator.api_key not in result.stdout


def test_config_check_masks_the_key(tmp_path):
    secret = "gsk_ThisMustNeverBePrinted_123456"
    config = dp.write_config(tmp_path, f'[upstream]\napi_key = "{secret}"\n[sync]\ninterval_s = 2.5\n')
    result = _run(["config", "check", str(config)], dp.clean_env())
    assert result.returncode == 0, result.stderr
    assert secret not in result.stdout + result.stderr
    assert 'api_key = "gsk_****"' in result.stdout
    assert "interval_s = 2.5" in result.stdout
