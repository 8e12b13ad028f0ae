"""Settings: a validated, frozen value built once at the edge.

:func:`load_settings` layers, highest first: ``overrides`` (command-line flags,
keys like ``"sync.interval_s"``), the environment, the TOML file (the
``config_path`` argument, else ``$GALTEA_LOCAL_CONFIG``), the defaults of
:mod:`galtea_local.config.schema`. Every value is checked as it is read, so a
bad value is an error even when a higher layer would override it: nothing
starts on a bad config. Every problem raises :class:`ConfigError` naming where
the value came from, ``section.key``, the problem and what is allowed.

The API key is a :class:`Secret`: no repr, str, error message or
:func:`effective_settings_text` ever shows it.
"""

from __future__ import annotations

import difflib
import json
import os
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NoReturn

from galtea_local.config import http
from galtea_local.config.schema import (
    SECTIONS,
    BundleSettings,
    Headers,
    Invalid,
    LogSettings,
    MetricsSettings,
    RetentionSettings,
    Secret,
    StoreSettings,
    SyncSettings,
    UpstreamSettings,
    default_store_path,
    is_path_key,
    keys_of,
)
from galtea_local.errors import ConfigError

__all__ = [
    "ENV_API_KEY", "ENV_API_URL", "ENV_CONFIG", "ENV_EXTRA_HEADERS", "ENV_KEYS", "ENV_STORE",
    "CREDENTIAL_NAME", "ConfigError", "LogSettings", "MetricsSettings", "RetentionSettings",
    "Secret", "Settings", "StoreSettings", "SyncSettings", "UpstreamSettings",
    "default_store_path", "effective_settings_text", "load_settings",
]

ENV_STORE = "GALTEA_LOCAL_STORE"
ENV_CONFIG = "GALTEA_LOCAL_CONFIG"
ENV_API_KEY = "GALTEA_API_KEY"  # same name as the official SDK
ENV_API_URL = "GALTEA_API_URL"  # same name as the official SDK
ENV_EXTRA_HEADERS = "GALTEA_EXTRA_HEADERS"  # a JSON object; merged over the file's table
CREDENTIAL_NAME = "galtea-api-key"  # systemd LoadCredential=galtea-api-key:...

# Environment variable -> the key it sets. An empty variable counts as unset.
ENV_KEYS: dict[str, tuple[str, str]] = {
    ENV_STORE: ("store", "path"),
    "GALTEA_LOCAL_DURABILITY": ("store", "durability"),
    ENV_API_URL: ("upstream", "base_url"),
    ENV_API_KEY: ("upstream", "api_key"),
    "GALTEA_LOCAL_API_KEY_FILE": ("upstream", "api_key_file"),
    ENV_EXTRA_HEADERS: ("upstream", "extra_headers"),
    "GALTEA_LOCAL_BUNDLE_KEY_FILE": ("bundle", "key_file"),
    "GALTEA_LOCAL_LOG_LEVEL": ("log", "level"),
    "GALTEA_LOCAL_LOG_FORMAT": ("log", "format"),
}

_SENSITIVE_HEADER_WORDS = ("auth", "token", "key", "secret", "cookie", "session", "pass")


@dataclass(frozen=True)
class Settings:
    """Every section, checked; ``source`` is the config file read, if any."""

    store: StoreSettings = field(default_factory=StoreSettings)
    upstream: UpstreamSettings = field(default_factory=UpstreamSettings)
    sync: SyncSettings = field(default_factory=SyncSettings)
    retention: RetentionSettings = field(default_factory=RetentionSettings)
    log: LogSettings = field(default_factory=LogSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    bundle: BundleSettings = field(default_factory=BundleSettings)
    source: str | None = None

    def to_display_dict(self) -> dict[str, dict[str, Any]]:
        """``{section: {key: value}}`` as TOML would write it, with every secret masked."""
        return {
            name: {k: _display(k, getattr(getattr(self, name), k)) for k in keys_of(cls)}
            for name, cls in SECTIONS.items()
        }


@dataclass
class _Given:
    value: Any
    origin: str  # the file path, "environment NAME" or "command line"


_Layers = dict[tuple[str, str], _Given]


def load_settings(
    config_path: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
) -> Settings:
    """Build the settings; raise :class:`ConfigError` on any bad source or value.

    An explicit ``config_path`` (or ``$GALTEA_LOCAL_CONFIG``) that cannot be read
    is an error; no path at all means defaults. ``overrides`` values of None are
    flags that were not given. ``env`` defaults to ``os.environ``.
    """
    env = os.environ if env is None else env
    path = os.fspath(config_path) if config_path else env.get(ENV_CONFIG) or None
    given: _Layers = {}
    if path:
        _apply_file(given, _read_toml(path), path)
    _apply_env(given, env)
    _apply_overrides(given, overrides or {})
    parts = {
        name: cls(**{k: g.value for (s, k), g in given.items() if s == name}) for name, cls in SECTIONS.items()
    }
    parts["upstream"] = _resolve_api_key(parts["upstream"], given, env)
    if ("store", "path") in given:
        parts["store"] = replace(parts["store"], path_source=given[("store", "path")].origin)
    settings = Settings(**parts, source=path)
    _check_across(settings, given)
    return settings


# -- layers ------------------------------------------------------------------


def _read_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:  # its text names the line and column
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: invalid TOML: the file is not UTF-8 text") from None


def _apply_file(given: _Layers, data: dict[str, Any], path: str) -> None:
    for section, table in data.items():
        if section not in SECTIONS:
            if not isinstance(table, dict):
                raise ConfigError(f"{path}: {section} = ...: a key outside any section; put it under a [section]")
            raise ConfigError(_unknown(path, "section", f"[{section}]", section, SECTIONS))
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: {section} must be a table ([{section}]), not a single value")
        for name, value in table.items():
            _put(given, section, name, value, path, text=False)


def _apply_env(given: _Layers, env: Mapping[str, str]) -> None:
    for var, (section, name) in ENV_KEYS.items():
        value: Any = env.get(var)
        if not value:
            continue
        origin = f"environment {var}"
        if var == ENV_EXTRA_HEADERS:
            try:
                value = json.loads(value)
            except ValueError as exc:
                raise ConfigError(f"{origin}: {section}.{name}: not valid JSON ({exc}); "
                                  'give a JSON object like {"X-Tenant": "acme"}') from None
        _put(given, section, name, value, origin, text=True)


def _apply_overrides(given: _Layers, overrides: Mapping[str, object]) -> None:
    for dotted, value in overrides.items():
        if value is None:
            continue
        section, _, name = dotted.partition(".")
        if section not in SECTIONS:
            raise ConfigError(_unknown("command line", "section", dotted, section, SECTIONS))
        _put(given, section, name, value, "command line", text=True)


def _put(given: _Layers, section: str, name: str, value: Any, origin: str, *, text: bool) -> None:
    """Check one value from one source and lay it over what lower sources gave."""
    checks = keys_of(SECTIONS[section])
    if name not in checks:
        raise ConfigError(_unknown(origin, "key", f"{section}.{name}", name, checks))
    try:
        parsed = checks[name](value, text)
    except Invalid as exc:
        raise ConfigError(f"{origin}: {section}.{name} = {_shown(name, value)}: {exc}") from None
    if isinstance(parsed, str) and is_path_key(SECTIONS[section], name):
        parsed = _file_relative(parsed, origin, text)
    earlier = given.get((section, name))
    if isinstance(parsed, Headers) and earlier is not None:
        # Headers merge per name (case-insensitively, as HTTP compares them); the later source wins.
        kept = {k: v for k, v in earlier.value.items() if k.lower() not in {n.lower() for n in parsed}}
        parsed = Headers({**kept, **parsed})
    given[(section, name)] = _Given(parsed, origin)


def _file_relative(value: str, origin: str, text: bool) -> str:
    """A relative path in a config file means 'next to that file', wherever the daemon runs from."""
    if "://" in value:
        return value  # an sqlite:/// URL is the store module's business
    path = Path(value).expanduser()
    if not text and not path.is_absolute():
        path = Path(origin).parent / path
    return str(path)


def _unknown(origin: str, what: str, shown: str, name: str, allowed: Iterable[str]) -> str:
    allowed = sorted(allowed)
    close = difflib.get_close_matches(name, allowed, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{origin}: unknown {what} {shown}{hint}; allowed: {', '.join(allowed)}"


def _shown(name: str, value: Any) -> str:
    """The offending value as it was written, never a secret's text."""
    if name == "api_key":
        return '"****"'
    if name == "extra_headers" and isinstance(value, Mapping):
        return "{" + ", ".join(json.dumps(str(k)) + " = ..." for k in value) + "}"
    if name == "base_url" and isinstance(value, str):
        return _toml(http.without_credentials(value))
    return _toml(value)


# -- the API key ---------------------------------------------------------------


def _resolve_api_key(upstream: UpstreamSettings, given: _Layers, env: Mapping[str, str]) -> UpstreamSettings:
    """flag > $GALTEA_API_KEY > file's api_key > api_key_file > $CREDENTIALS_DIRECTORY/galtea-api-key.

    Key files are not read here (see :class:`Secret`); ``require_api_key()`` reads them.
    """
    if upstream.api_key is not None:
        return replace(upstream, api_key_source=given[("upstream", "api_key")].origin)
    if upstream.api_key_file:
        where = f"{given[('upstream', 'api_key_file')].origin}: upstream.api_key_file"
        secret = Secret.from_file(upstream.api_key_file, where)
        return replace(upstream, api_key=secret, api_key_source=f"upstream.api_key_file {upstream.api_key_file}")
    credentials = env.get("CREDENTIALS_DIRECTORY")
    if credentials and (Path(credentials) / CREDENTIAL_NAME).is_file():
        path = str(Path(credentials) / CREDENTIAL_NAME)
        secret = Secret.from_file(path, f"systemd credential {CREDENTIAL_NAME}")
        return replace(upstream, api_key=secret, api_key_source=f"systemd credential {path}")
    return upstream


# -- checks that span keys ----------------------------------------------------------


def _check_across(settings: Settings, given: _Layers) -> None:
    up, sync = settings.upstream, settings.sync
    insecure = http.insecure_problem(up.base_url, up.allow_insecure_http)
    if insecure:
        _fail(given, "upstream", "base_url", up.base_url, insecure)
    if up.ca_bundle and not Path(up.ca_bundle).is_file():
        _fail(given, "upstream", "ca_bundle", up.ca_bundle, "no such file; give a PEM file of CA certificates or \"\"")
    _ordered(given, settings, ("sync", "backoff_initial_s"), ("sync", "backoff_max_s"), strict=False)
    # A lease that ends mid-request lets another pass treat a live push as 'maybe sent'.
    _ordered(given, settings, ("upstream", "read_timeout_s"), ("sync", "lease_s"), strict=True)


def _ordered(given: _Layers, settings: Settings, low: tuple[str, str], high: tuple[str, str], *, strict: bool) -> None:
    """Require ``low`` ≤ ``high`` (< when strict); blame the one a source set, not a default."""
    low_value, high_value = (getattr(getattr(settings, s), k) for s, k in (low, high))
    if low_value < high_value or (not strict and low_value == high_value):
        return
    if high in given or low not in given:
        _fail(given, *high, high_value, f"must be {'>' if strict else '≥'} {'.'.join(low)} ({low_value:g})")
    _fail(given, *low, low_value, f"must be {'<' if strict else '≤'} {'.'.join(high)} ({high_value:g})")


def _fail(given: _Layers, section: str, name: str, value: Any, problem: str) -> NoReturn:
    origin = given[(section, name)].origin if (section, name) in given else "defaults"
    raise ConfigError(f"{origin}: {section}.{name} = {_toml(value)}: {problem}")


# -- display -----------------------------------------------------------------------


def effective_settings_text(settings: Settings) -> str:
    """The effective settings as TOML (secrets masked), for ``galtea-local config check``."""
    key_note = f"  # from {settings.upstream.api_key_source}"
    try:
        if settings.upstream.api_key is not None:
            settings.upstream.api_key.reveal()  # a key file is read here, so a check reports it
    except ConfigError as exc:  # never holds the key: only its file's name and the reason
        key_note = f"  # UNUSABLE: {exc}"
    lines = [f"# effective settings; file: {settings.source or '(none)'}"]
    for section, values in settings.to_display_dict().items():
        lines += ["", f"[{section}]"]
        for name, value in values.items():
            line = f"{name} = {_toml(value)}"
            if section == "store" and name == "path" and not value:
                line += f"  # default: {default_store_path()}"
            if section == "upstream" and name == "api_key":
                line += key_note if value else "  # not set"
            lines.append(line)
    return "\n".join(lines) + "\n"


def _display(name: str, value: Any) -> Any:
    if isinstance(value, Secret):
        return value.masked()
    if isinstance(value, Headers):
        return {k: "****" if any(w in k.lower() for w in _SENSITIVE_HEADER_WORDS) else v for k, v in value.items()}
    if name.endswith("_mode"):
        return f"{value:04o}"
    return "" if value is None else value


def _toml(value: Any) -> str:
    """A TOML literal for a display value (tomllib cannot write)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{json.dumps(str(k))} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)
