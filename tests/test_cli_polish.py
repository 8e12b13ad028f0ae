"""The command line as an operator meets it: read-only commands, option order, `config check`,
extras. Real subprocesses of `galtea-local`; the wheel itself is tested by .ci/wheel_smoke.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from galtea_local import Galtea
from galtea_local_daemon import cli
from tests.sync_helpers import galtea_local


def plain_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GALTEA_")}
    env.update(extra)
    return env


@pytest.mark.parametrize("command", [["status"], ["status", "--json"], ["dead", "list"], ["export", "--out", "b.glb"]])
def test_read_only_commands_never_create_a_store(tmp_path: Path, command: list[str]) -> None:
    missing = tmp_path / "nonexistent" / "dir" / "x.db"
    result = galtea_local(*command, "--store", str(missing), env=plain_env())
    assert result.returncode == 1
    assert f"store {missing} does not exist (from --store on the command line)" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "nonexistent").exists()


def test_the_missing_store_message_names_the_setting_it_came_from(tmp_path: Path) -> None:
    missing = tmp_path / "gone.db"
    by_env = galtea_local("status", env=plain_env(GALTEA_LOCAL_STORE=str(missing)))
    assert "(from $GALTEA_LOCAL_STORE)" in by_env.stderr
    config = tmp_path / "c.toml"
    config.write_text(f'[store]\npath = "{missing}"\n')
    by_file = galtea_local("dead", "list", env=plain_env(GALTEA_LOCAL_CONFIG=str(config)))
    assert f"(from store.path in {config})" in by_file.stderr
    assert not missing.exists()


def test_options_may_come_after_ids(tmp_path: Path) -> None:
    store = tmp_path / "s.db"
    Galtea(store=store).close()
    for argv in (["dead", "drop", "--store", str(store), "loc_x_1"], ["dead", "drop", "loc_x_1", "--store", str(store)],
                 ["dead", "--store", str(store), "retry", "--all"]):
        args = cli.build_parser().parse_args(argv)
        assert args.store == str(store) and args.action in ("drop", "retry"), argv
    result = galtea_local("dead", "drop", "--store", str(store), "--all", env=plain_env())
    assert result.returncode == 0, result.stderr
    assert "0 operation(s) dropped" in result.stdout


def test_config_check_fails_when_the_key_file_cannot_be_read(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f'[upstream]\napi_key_file = "{tmp_path / "no-such-key"}"\n')
    result = galtea_local("config", "check", str(config), env=plain_env())
    assert result.returncode == 1
    assert "api_key_file" in result.stderr and "Traceback" not in result.stderr


def test_config_check_refuses_credentials_in_the_url_as_the_daemon_does(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[upstream]\nbase_url = "https://user:hunter2@api.example"\n')
    result = galtea_local("config", "check", str(config), env=plain_env())
    assert result.returncode == 1
    assert "must not carry credentials" in result.stderr
    assert "hunter2" not in result.stderr + result.stdout


def test_top_level_help_says_what_the_tool_does() -> None:
    result = galtea_local("--help", env=plain_env())
    assert result.returncode == 0
    assert "the command line." not in result.stdout
    assert "sync daemon" in result.stdout


def test_a_missing_extra_is_one_line_naming_pip(monkeypatch) -> None:
    error = ModuleNotFoundError("No module named 'httpx'", name="httpx")
    monkeypatch.setitem(cli.COMMANDS, "sync", lambda args: (_ for _ in ()).throw(error))
    assert cli.main(["sync"]) == 1
    monkeypatch.setitem(cli.COMMANDS, "sync", lambda args: (_ for _ in ()).throw(ModuleNotFoundError(name="mine")))
    with pytest.raises(ModuleNotFoundError):
        cli.main(["sync"])  # a module no extra brings is a bug: it is not dressed up as one
