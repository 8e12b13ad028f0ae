"""Settings: sources and their precedence, every kind of bad value, the masked API key."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from galtea_local.config import (
    ConfigError,
    Secret,
    Settings,
    effective_settings_text,
    load_settings,
)
from galtea_local.config.schema import SECTIONS, keys_of

EXAMPLE = Path(__file__).resolve().parents[1] / "config.example.toml"
KEY = "gsk_0123456789abcdefSECRET"


@pytest.fixture
def config(tmp_path):
    """Write a config.toml (a factory: call it with the TOML text) and return its path."""

    def write(text: str, name: str = "config.toml") -> Path:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return write


def error_of(path=None, *, env=None, overrides=None) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(path, env=env or {}, overrides=overrides)
    return str(info.value)


# -- defaults and the example file --------------------------------------------------


def test_no_path_means_defaults():
    assert load_settings(env={}) == Settings()


def test_example_file_loads_and_equals_the_defaults():
    settings = load_settings(EXAMPLE, env={})
    assert settings.source == str(EXAMPLE)
    assert dataclasses.replace(settings, source=None) == Settings()


def test_example_file_documents_every_key_and_nothing_else():
    data = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    assert {name: set(table) for name, table in data.items()} == {
        name: set(keys_of(cls)) for name, cls in SECTIONS.items()
    }


def test_settings_are_frozen_and_hashable():
    settings = load_settings(env={"GALTEA_EXTRA_HEADERS": '{"X-Tenant": "acme"}'})
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.sync.concurrency = 2  # type: ignore[misc]
    assert hash(settings) == hash(load_settings(env={"GALTEA_EXTRA_HEADERS": '{"X-Tenant": "acme"}'}))


def test_file_values_are_typed(config):
    path = config(
        '[store]\nfile_mode = "0640"\ndir_mode = "0750"\ndurability = "POWER"\n'
        '[log]\nlevel = "debug"\n[metrics]\nlisten = "[::1]:9464"\n[sync]\ninterval_s = 2\n'
    )
    settings = load_settings(path, env={})
    assert (settings.store.file_mode, settings.store.dir_mode) == (0o640, 0o750)
    assert settings.store.durability == "power"
    assert settings.log.level == "DEBUG"
    assert settings.metrics.listen_address() == ("::1", 9464)
    assert settings.sync.interval_s == 2.0 and isinstance(settings.sync.interval_s, float)


def test_relative_paths_in_a_file_are_relative_to_the_file(config, tmp_path):
    path = config('[store]\npath = "data/store.db"\n[metrics]\ntextfile = "galtea.prom"\n')
    settings = load_settings(path, env={})
    assert settings.store.path == str(tmp_path / "data" / "store.db")
    assert settings.metrics.textfile == str(tmp_path / "galtea.prom")
    assert load_settings(env={"GALTEA_LOCAL_STORE": "rel.db"}).store.path == "rel.db"
    assert load_settings(env={}, overrides={"store.path": tmp_path / "p.db"}).store.path == str(tmp_path / "p.db")


# -- precedence --------------------------------------------------------------------


def test_precedence_flag_over_env_over_file_over_default(config):
    path = config('[store]\npath = "/file/store.db"\n[upstream]\nbase_url = "https://file.example"\n')
    env = {"GALTEA_LOCAL_STORE": "/env/store.db", "GALTEA_API_URL": "https://env.example/"}
    flags = {"store.path": "/flag/store.db", "upstream.base_url": None}  # None: flag not given

    assert Settings().store.path is None
    assert load_settings(path, env={}).store.path == "/file/store.db"
    assert load_settings(path, env=env).store.path == "/env/store.db"
    settings = load_settings(path, env=env, overrides=flags)
    assert settings.store.path == "/flag/store.db"
    assert settings.upstream.base_url == "https://env.example"  # trailing slash dropped


def test_flags_and_env_arrive_as_text_and_are_converted(config):
    path = config("[sync]\ninterval_s = 9\nconcurrency = 4\n")
    env = {"GALTEA_LOCAL_LOG_LEVEL": "warning"}
    settings = load_settings(path, env=env, overrides={"sync.interval_s": "0.5", "upstream.allow_insecure_http": "yes"})
    assert settings.sync.interval_s == 0.5
    assert settings.sync.concurrency == 4
    assert settings.upstream.allow_insecure_http is True
    assert settings.log.level == "WARNING"


def test_config_path_from_env(config):
    path = config("[sync]\nconcurrency = 3\n")
    settings = load_settings(env={"GALTEA_LOCAL_CONFIG": str(path)})
    assert settings.sync.concurrency == 3 and settings.source == str(path)


def test_galtea_local_store_sets_store_path():
    settings = load_settings(env={"GALTEA_LOCAL_STORE": "sqlite:////var/lib/galtea/q.db"})
    assert settings.store.path == settings.store.location() == "sqlite:////var/lib/galtea/q.db"
    assert load_settings(env={"GALTEA_LOCAL_STORE": ""}).store.path is None  # empty counts as unset


def test_extra_headers_merge_env_wins_per_name(config):
    path = config('[upstream]\nextra_headers = { X-Tenant = "file", X-Team = "ops" }\n')
    settings = load_settings(path, env={"GALTEA_EXTRA_HEADERS": '{"x-tenant": "env", "X-Env": "1"}'})
    assert dict(settings.upstream.extra_headers) == {"X-Team": "ops", "x-tenant": "env", "X-Env": "1"}


# -- errors ----------------------------------------------------------------------------


def test_missing_explicit_file_is_an_error(tmp_path):
    message = error_of(tmp_path / "nope.toml")
    assert "nope.toml" in message and "cannot read" in message
    assert "nope.toml" in error_of(env={"GALTEA_LOCAL_CONFIG": str(tmp_path / "nope.toml")})


def test_invalid_toml_names_file_and_line(config):
    message = error_of(config('[sync]\ninterval_s = 5\nconcurrency = = 3\n'))
    assert "config.toml" in message and "invalid TOML" in message and "line 3" in message


def test_unknown_section(config):
    message = error_of(config("[synk]\ninterval_s = 5\n"))
    assert "config.toml" in message and "unknown section [synk]" in message
    assert "did you mean 'sync'" in message and "allowed:" in message


def test_unknown_key(config):
    message = error_of(config("[sync]\nintervall_s = 5\n"))
    assert "config.toml: unknown key sync.intervall_s" in message
    assert "did you mean 'interval_s'" in message and "concurrency" in message


def test_key_outside_any_section(config):
    assert "outside any section" in error_of(config("interval_s = 5\n"))


def test_unknown_flag_key():
    message = error_of(overrides={"sync.speed": "3"})
    assert message.startswith("command line: unknown key sync.speed")


def test_derived_field_is_not_a_key(config):
    assert "unknown key upstream.api_key_source" in error_of(config('[upstream]\napi_key_source = "x"\n'))


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ("[sync]\nconcurrency = 0", "sync.concurrency = 0: must be an integer ≥ 1 and ≤ 1024"),
        ('[sync]\nconcurrency = "8"', 'sync.concurrency = "8": must be an integer ≥ 1 and ≤ 1024, not a string'),
        ("[sync]\nbatch_size = true", "sync.batch_size = true: must be an integer ≥ 1 and ≤ 10000, not a boolean"),
        ("[sync]\nbatch_size = 2.5", "sync.batch_size = 2.5: must be an integer ≥ 1 and ≤ 10000, not a number"),
        ("[upstream]\nread_timeout_s = -1", "upstream.read_timeout_s = -1: must be a number > 0"),
        ("[store]\nbusy_timeout_s = 0", "store.busy_timeout_s = 0: must be a number > 0"),
        ('[store]\ndurability = "disk"', 'store.durability = "disk": must be one of "process", "power"'),
        ('[store]\nfile_mode = "0800"', 'store.file_mode = "0800": must be an octal mode string like "0600"'),
        ('[store]\nfile_mode = "0400"', "that includes 0600 (owner access)"),
        ("[store]\nfile_mode = 600", 'store.file_mode = 600: must be an octal mode string like "0600"'),
        ('[metrics]\nlisten = "0.0.0.0:9464"', 'metrics.listen = "0.0.0.0:9464": must be "" (off) or a loopback'),
        ('[metrics]\nlisten = "127.0.0.1"', "must be \"\" (off) or a loopback HOST:PORT"),
        ('[metrics]\ntextfile = "/tmp/m.txt"', 'must be "" (off) or a file path ending in ".prom"'),
        ('[retention]\nwhen_full = "drop"', 'retention.when_full = "drop": must be one of "refuse", "drop_synced"'),
        ("[retention]\nmax_store_mb = -5", "retention.max_store_mb = -5: must be an integer ≥ 0"),
        ('[log]\nformat = "xml"', 'log.format = "xml": must be one of "text", "json"'),
        ('[upstream]\nallow_insecure_http = "yes"', "must be true or false, not a string"),
        ('[upstream]\nbase_url = "api.galtea.ai"', "must be an http:// or https:// URL with a host"),
        ('[upstream]\nextra_headers = { Authorization = "Bearer x" }', "header 'Authorization' may not be set"),
        ("[upstream]\nextra_headers = { X-A = 1 }", "header 'X-A' must have a one-line Latin-1 string value"),
        ('[upstream]\nextra_headers = "X-A: 1"', "must be a table of header name = string value"),
        ("[store]\npath = 3", 'store.path = 3: must be a string ("" for none), not an integer'),
        ("[sync]\nbackoff_initial_s = 600", "sync.backoff_initial_s = 600.0: must be ≤ sync.backoff_max_s (300)"),
        ("[sync]\nbackoff_max_s = 0.05", "sync.backoff_max_s = 0.05: must be ≥ sync.backoff_initial_s (0.1)"),
        ("[sync]\nlease_s = 10", "sync.lease_s = 10.0: must be > upstream.read_timeout_s (30)"),
        ('[upstream]\nbase_url = "http://api.galtea.ai"', "plain http:// would send the API key unencrypted"),
        ('[upstream]\nca_bundle = "/no/such/ca.pem"', 'upstream.ca_bundle = "/no/such/ca.pem": no such file'),
    ],
)
def test_bad_value_names_file_key_problem_and_allowed(config, toml, expected):
    message = error_of(config(toml + "\n"))
    assert "config.toml" in message, message
    assert expected in message, message


def test_error_message_shape(config):
    path = config("[sync]\nconcurrency = 0\n")
    assert error_of(path) == f"{path}: sync.concurrency = 0: must be an integer ≥ 1 and ≤ 1024"


def test_cross_key_error_names_the_key_that_was_set(config):
    path = config("[upstream]\nread_timeout_s = 90\n")
    assert error_of(path) == f"{path}: upstream.read_timeout_s = 90.0: must be < sync.lease_s (60)"
    message = error_of(path, overrides={"sync.lease_s": "45"})
    assert message == "command line: sync.lease_s = 45.0: must be > upstream.read_timeout_s (90)"


def test_bad_file_value_is_an_error_even_when_a_flag_overrides_it(config):
    path = config("[sync]\nconcurrency = 0\n")
    assert "sync.concurrency" in error_of(path, overrides={"sync.concurrency": 4})


def test_env_and_flag_errors_name_their_source():
    assert error_of(env={"GALTEA_API_URL": "ftp://x"}).startswith("environment GALTEA_API_URL: upstream.base_url")
    assert error_of(overrides={"sync.concurrency": "many"}).startswith(
        'command line: sync.concurrency = "many": must be an integer ≥ 1 and ≤ 1024'
    )
    assert error_of(overrides={"sync.concurrency": "many"}).endswith("≤ 1024")
    message = error_of(env={"GALTEA_EXTRA_HEADERS": "X-A: 1"})
    assert message.startswith("environment GALTEA_EXTRA_HEADERS: upstream.extra_headers: not valid JSON")


def test_http_allowed_on_loopback_or_when_insecure_is_allowed(config):
    assert load_settings(env={"GALTEA_API_URL": "http://127.0.0.1:8080"}).upstream.base_url == "http://127.0.0.1:8080"
    assert load_settings(env={"GALTEA_API_URL": "http://localhost:8080/"}).upstream.base_url == "http://localhost:8080"
    path = config('[upstream]\nbase_url = "http://proxy.lan"\nallow_insecure_http = true\n')
    assert load_settings(path, env={}).upstream.base_url == "http://proxy.lan"


# -- the API key -------------------------------------------------------------------------


def test_api_key_resolution_order(config, tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("gsk_from_key_file\n")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "galtea-api-key").write_text("gsk_from_credential")
    path = config(f'[upstream]\napi_key = "gsk_from_file"\napi_key_file = "{key_file}"\n')
    no_key = config(f'[upstream]\napi_key_file = "{key_file}"\n', name="no_key.toml")
    env = {"GALTEA_API_KEY": "gsk_from_env", "CREDENTIALS_DIRECTORY": str(creds)}

    def key(p, env, overrides=None):
        upstream = load_settings(p, env=env, overrides=overrides).upstream
        return upstream.api_key.reveal() if upstream.api_key else None, upstream.api_key_source

    assert key(path, env, {"upstream.api_key": "gsk_from_flag"}) == ("gsk_from_flag", "command line")
    assert key(path, env) == ("gsk_from_env", "environment GALTEA_API_KEY")
    assert key(path, {"CREDENTIALS_DIRECTORY": str(creds)}) == ("gsk_from_file", str(path))
    assert key(no_key, {"CREDENTIALS_DIRECTORY": str(creds)})[0] == "gsk_from_key_file"
    assert key(None, {"CREDENTIALS_DIRECTORY": str(creds)}) == (
        "gsk_from_credential",
        f"systemd credential {creds / 'galtea-api-key'}",
    )
    assert key(None, {"CREDENTIALS_DIRECTORY": str(tmp_path)}) == (None, None)  # no credential there
    assert key(None, {}) == (None, None)


def test_key_files_are_read_only_when_the_key_is_needed(tmp_path):
    """An app process loads the same settings for its store; it must not need the daemon's key file."""
    missing = str(tmp_path / "missing")
    settings = load_settings(overrides={"upstream.api_key_file": missing}, env={})
    assert str(settings.upstream.api_key) == "****"
    with pytest.raises(ConfigError) as info:
        settings.upstream.require_api_key()
    message = str(info.value)
    assert message.startswith(f'command line: upstream.api_key_file = "{missing}": cannot read it')
    assert "UNUSABLE: command line: upstream.api_key_file" in effective_settings_text(settings)


def test_api_key_file_problems(tmp_path):
    def problem(env):
        with pytest.raises(ConfigError) as info:
            load_settings(env=env).upstream.require_api_key()
        return str(info.value)

    empty = tmp_path / "empty"
    empty.write_text("\n")
    assert "the file is empty" in problem({"GALTEA_LOCAL_API_KEY_FILE": str(empty)})
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "galtea-api-key").write_text("gsk bad key")
    message = problem({"CREDENTIALS_DIRECTORY": str(creds)})
    assert "systemd credential galtea-api-key" in message and "no blanks" in message
    assert "gsk bad key" not in message
    assert "no API key" in problem({})


def test_bad_api_key_is_never_quoted():
    message = error_of(env={"GALTEA_API_KEY": "gsk_abc def"})
    assert "upstream.api_key" in message and "gsk_abc" not in message


def test_api_key_never_appears_in_repr_str_or_effective_text(config):
    path = config('[upstream]\nextra_headers = { X-Api-Token = "tok_SECRET", X-Tenant = "acme" }\n')
    settings = load_settings(path, env={"GALTEA_API_KEY": KEY})
    assert settings.upstream.api_key == Secret(KEY)
    shown = [repr(settings), str(settings), repr(settings.upstream), str(settings.upstream.api_key),
             f"{settings.upstream.api_key}", effective_settings_text(settings), repr(settings.to_display_dict())]
    for text in shown:
        assert KEY not in text and "0123456789" not in text and "tok_SECRET" not in text
    assert str(settings.upstream.api_key) == "gsk_****"
    assert str(Secret("sk-other-kind-of-key")) == "****"


def test_key_from_a_file_is_masked_in_effective_text(tmp_path):
    (tmp_path / "key").write_text(KEY + "\n")
    settings = load_settings(env={"GALTEA_LOCAL_API_KEY_FILE": str(tmp_path / "key")})
    text = effective_settings_text(settings)
    assert 'api_key = "gsk_****"  # from upstream.api_key_file' in text and KEY not in text
    assert settings.upstream.require_api_key() == KEY and KEY not in repr(settings)


def test_effective_settings_text_is_toml_of_the_effective_values(config):
    path = config('[sync]\nconcurrency = 7\n[store]\nfile_mode = "0640"\n')
    settings = load_settings(path, env={"GALTEA_API_KEY": KEY, "GALTEA_EXTRA_HEADERS": '{"X-Tenant": "acme"}'})
    text = effective_settings_text(settings)
    assert str(path) in text and "# from environment GALTEA_API_KEY" in text
    data = tomllib.loads(text)
    assert data["sync"]["concurrency"] == 7
    assert data["store"]["file_mode"] == "0640"
    assert data["upstream"]["api_key"] == "gsk_****"
    assert data["upstream"]["extra_headers"] == {"X-Tenant": "acme"}
    assert set(data) == set(SECTIONS)
