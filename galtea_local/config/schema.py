"""The settings schema: one frozen dataclass per TOML section, each key with its check.

A key is a dataclass field whose metadata holds a ``check``: a function that
takes the raw value (and whether it came as text, from the environment or a
flag) and returns the typed value, or raises :class:`Invalid` with what is
allowed. :mod:`galtea_local.config` layers the sources and builds these; the
sections never read the environment or a config file (a key file is read by
:meth:`Secret.reveal`, only when the key is needed).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import platformdirs

from galtea_local.config import http
from galtea_local.errors import ConfigError

Check = Callable[[Any, bool], Any]


class Invalid(Exception):
    """A value's problem, phrased to follow ``section.key = value:``."""


class Secret:
    """A string that never shows itself: ``repr``/``str`` give at most the public ``gsk_`` prefix.

    Call :meth:`reveal` at the one place that needs the text (the HTTP auth header).
    A secret from a file (:meth:`from_file`) is read on the first ``reveal()``, not
    when the settings load: app processes load the same settings for the store
    and must neither need nor read a key file only the daemon may read.
    """

    __slots__ = ("_value", "_path", "_where")

    def __init__(self, value: str) -> None:
        self._value: str | None = value
        self._path: str | None = None
        self._where = ""

    @classmethod
    def from_file(cls, path: str, where: str) -> Secret:
        """A key held in ``path``; ``where`` names the setting in errors (``reveal`` raises ConfigError)."""
        secret = cls("")
        secret._value, secret._path, secret._where = None, path, where
        return secret

    def reveal(self) -> str:
        if self._value is None:
            self._value = _read_key_file(self._path or "", self._where)
        return self._value

    def masked(self) -> str:
        # Only the fixed, public key-type prefix is shown: it tells an operator
        # which kind of key is set without giving away a single secret character.
        value = self._value or ""
        return "gsk_****" if value.startswith("gsk_") and len(value) > 8 else "****"

    def __repr__(self) -> str:
        return f"Secret({self.masked()!r})"

    __str__ = masked

    def _identity(self) -> tuple[str | None, str | None]:
        return (self._path, None) if self._path is not None else (None, self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._identity() == self._identity()

    def __hash__(self) -> int:
        return hash(self._identity())


def _read_key_file(path: str, where: str) -> str:
    shown = f"{where} = {json.dumps(path)}"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"{shown}: cannot read it ({reason}); give a readable file that holds the key") from None
    try:
        secret = api_key(text, True)
    except Invalid as exc:
        raise ConfigError(f"{shown}: the key in the file {exc}") from None
    if secret is None:
        raise ConfigError(f"{shown}: the file is empty; it must hold the API key")
    return secret.reveal()


class Headers(Mapping[str, str]):
    """A read-only, hashable ``name -> value`` table (so the settings stay frozen and hashable)."""

    def __init__(self, items: Mapping[str, str] | None = None) -> None:
        self._items = dict(items or {})

    def __getitem__(self, name: str) -> str:
        return self._items[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(tuple(sorted(self._items.items())))

    def __repr__(self) -> str:
        # Header values may carry proxy tokens: show the names only.
        return f"Headers({sorted(self._items)!r})"


# -- checks ------------------------------------------------------------------


def _from_text(value: Any, text: bool, parse: Callable[[str], Any], allowed: str) -> Any:
    """Environment variables and flags arrive as text; a config file must use the real TOML type."""
    if text and isinstance(value, str):
        try:
            return parse(value.strip())
        except ValueError:
            raise Invalid(f"must be {allowed}") from None
    return value


def integer(low: int, high: int | None = None) -> Check:
    allowed = f"an integer ≥ {low}" + (f" and ≤ {high}" if high is not None else "")

    def check(value: Any, text: bool) -> int:
        value = _from_text(value, text, int, allowed)
        # bool is a subclass of int in Python; `true` is never a count.
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid(f"must be {allowed}, not {_type_name(value)}")
        if value < low or (high is not None and value > high):
            raise Invalid(f"must be {allowed}")
        return value

    return check


def number(low: float, *, above: bool) -> Check:
    """A float; ``above`` excludes ``low`` itself (a timeout of 0 means 'fail at once')."""
    allowed = f"a number {'>' if above else '≥'} {low:g}"

    def check(value: Any, text: bool) -> float:
        value = _from_text(value, text, float, allowed)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise Invalid(f"must be {allowed}, not {_type_name(value)}")
        if value != value or value < low or (above and value == low) or value == float("inf"):
            raise Invalid(f"must be {allowed}")
        return float(value)

    return check


def boolean(value: Any, text: bool) -> bool:
    words = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}
    if text and isinstance(value, str) and value.strip().lower() in words:
        return words[value.strip().lower()]
    if not isinstance(value, bool):
        raise Invalid(f"must be true or false, not {_type_name(value)}")
    return value


def choice(*options: str, upper: bool = False) -> Check:
    allowed = "one of " + ", ".join(f'"{o}"' for o in options)

    def check(value: Any, text: bool) -> str:
        if not isinstance(value, str):
            raise Invalid(f"must be {allowed}, not {_type_name(value)}")
        normal = value.strip().upper() if upper else value.strip().lower()
        if normal not in options:
            raise Invalid(f"must be {allowed}")
        return normal

    return check


def optional_text(value: Any, text: bool) -> str | None:
    """A string where "" means 'not set' (TOML has no null)."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise Invalid(f'must be a string ("" for none), not {_type_name(value)}')
    return value.strip() or None


def mode(required: int) -> Check:
    """A permission mode written as an octal string ("0600"); it must keep the owner's ``required`` bits."""
    allowed = f'an octal mode string like "{required:04o}" that includes {required:04o} (owner access)'

    def check(value: Any, text: bool) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            bits = value  # TOML's own 0o600 syntax
        elif isinstance(value, str) and re.fullmatch(r"(0o|0)?[0-7]{3}", value.strip()):
            bits = int(value.strip().removeprefix("0o"), 8)
        else:
            raise Invalid(f"must be {allowed}")
        if not 0 <= bits <= 0o777 or bits & required != required:
            raise Invalid(f"must be {allowed}")
        return bits

    return check


_API_KEY = re.compile(r"[\x21-\x7e]+")


def api_key(value: Any, text: bool) -> Secret | None:
    if not isinstance(value, str):
        raise Invalid(f'must be a string ("" for none), not {_type_name(value)}')
    value = value.strip()
    if value and not _API_KEY.fullmatch(value):
        # Same rule as the upstream client: it becomes an HTTP header value.
        raise Invalid("must be one token of printable ASCII characters, with no blanks")
    return Secret(value) if value else None


def headers(value: Any, text: bool) -> Headers:
    try:
        return Headers(http.checked_headers(value))
    except http.HttpSettingError as exc:
        raise Invalid(str(exc)) from None


def base_url(value: Any, text: bool) -> str:
    try:
        return http.checked_base_url(value)
    except http.HttpSettingError as exc:
        raise Invalid(str(exc)) from None


def listen(value: Any, text: bool) -> str:
    allowed = 'must be "" (off) or a loopback HOST:PORT like "127.0.0.1:9464" or "[::1]:9464"'
    if not isinstance(value, str):
        raise Invalid(f"{allowed}, not {_type_name(value)}")
    if value.strip() and split_listen(value.strip()) is None:
        raise Invalid(allowed)
    return value.strip()


def split_listen(value: str) -> tuple[str, int] | None:
    """``(host, port)`` for a loopback ``HOST:PORT``, else None."""
    host, sep, port = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        return None
    return (host, int(port)) if http.is_loopback(host) else None


def textfile(value: Any, text: bool) -> str | None:
    path = optional_text(value, text)
    if path is not None and not path.endswith(".prom"):
        # node-exporter's textfile collector reads *.prom only.
        raise Invalid('must be "" (off) or a file path ending in ".prom"')
    return path


_TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", dict: "a table", list: "an array"}


def _type_name(value: Any) -> str:
    return _TYPE_NAMES.get(type(value), f"a {type(value).__name__}")


def key(default: Any, check: Check, *, path: bool = False, factory: Callable[[], Any] | None = None) -> Any:
    """A settings key; ``path`` keys given in a file are relative to that file's folder."""
    meta = {"check": check, "path": path}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def keys_of(section: type) -> dict[str, Check]:
    """The keys a section accepts (fields without a check are derived, not settable)."""
    return {f.name: f.metadata["check"] for f in fields(section) if "check" in f.metadata}


def is_path_key(section: type, name: str) -> bool:
    return any(f.name == name and f.metadata.get("path") for f in fields(section))


# -- sections ----------------------------------------------------------------
# Defaults here are the documented ones; config.example.toml must match them
# (tests/test_config.py loads the example and compares).


def default_store_path() -> Path:
    """The per-user default: ``$XDG_DATA_HOME/galtea-local/store.db`` on Linux."""
    return Path(platformdirs.user_data_dir("galtea-local", appauthor=False)) / "store.db"


@dataclass(frozen=True)
class StoreSettings:
    path: str | None = key(None, optional_text, path=True)  # file path or sqlite:/// URL; None: default
    durability: str = key("process", choice("process", "power"))
    busy_timeout_s: float = key(30.0, number(0, above=True))
    pool_size: int = key(4, integer(1, 1000))  # PostgreSQL: connections per process, at most
    pool_idle_s: float = key(10.0, number(0, above=True))  # PostgreSQL: an unused connection closes after this
    max_record_bytes: int = key(1_048_576, integer(1, 1_000_000_000))
    file_mode: int = key(0o600, mode(0o600))
    dir_mode: int = key(0o700, mode(0o700))
    # Derived, not a key: where ``path`` came from ("command line", "environment ...", a file).
    path_source: str | None = field(default=None, compare=False)

    def location(self) -> str:
        """``path``, or the per-user default data path when none is configured."""
        return self.path or str(default_store_path())

    def location_source(self) -> str:
        """Where :meth:`location` came from, for messages: the flag, variable or file that set it."""
        if self.path is None:
            return "the default store path (set store.path, $GALTEA_LOCAL_STORE or --store)"
        source = self.path_source or "settings"
        if source == "command line":
            return "--store on the command line"
        if source.startswith("environment "):
            return "$" + source.removeprefix("environment ")
        return f"store.path in {source}"


@dataclass(frozen=True)
class UpstreamSettings:
    base_url: str = key("https://api.galtea.ai", base_url)
    api_key: Secret | None = key(None, api_key)
    api_key_file: str | None = key(None, optional_text, path=True)
    connect_timeout_s: float = key(5.0, number(0, above=True))
    read_timeout_s: float = key(30.0, number(0, above=True))
    write_timeout_s: float = key(30.0, number(0, above=True))
    pool_timeout_s: float = key(5.0, number(0, above=True))
    ca_bundle: str | None = key(None, optional_text, path=True)
    extra_headers: Headers = key(None, headers, factory=Headers)
    allow_insecure_http: bool = key(False, boolean)
    # Derived, not a key: where api_key came from ("environment GALTEA_API_KEY", ...).
    api_key_source: str | None = None

    def require_api_key(self) -> str:
        """The key's text, for the Authorization header. ConfigError when none is set or its file is unreadable."""
        if self.api_key is None:
            raise ConfigError(
                "upstream.api_key: no API key; set GALTEA_API_KEY, upstream.api_key or upstream.api_key_file, "
                "or give the daemon a systemd credential named galtea-api-key"
            )
        return self.api_key.reveal()


@dataclass(frozen=True)
class SyncSettings:
    interval_s: float = key(5.0, number(0, above=True))
    # 2 cores and a 30 ms API: 16 drained as fast as 32, and the apps' create() waited less on the
    # daemon's writes (docs/benchmarks-soak.md §8). A far API needs more in flight for a fast drain.
    concurrency: int = key(16, integer(1, 1024))
    batch_size: int = key(10, integer(1, 10_000))
    backoff_initial_s: float = key(0.1, number(0, above=True))
    backoff_max_s: float = key(300.0, number(0, above=True))
    backoff_jitter_s: float = key(0.1, number(0, above=False))
    lease_s: float = key(60.0, number(0, above=True))
    shutdown_timeout_s: float = key(10.0, number(0, above=False))
    clock_skew_s: float = key(10.0, number(0, above=False))
    max_retry_after_s: float = key(300.0, number(0, above=True))
    commit_grace_s: float = key(120.0, number(0, above=False))
    answered_grace_s: float = key(0.2, number(0, above=False))


@dataclass(frozen=True)
class RetentionSettings:
    synced_days: float = key(7.0, number(0, above=False))
    max_store_mb: int = key(0, integer(0))  # 0: no cap
    when_full: str = key("refuse", choice("refuse", "drop_synced"))
    checkpoint_idle_s: float = key(30.0, number(0, above=True))


@dataclass(frozen=True)
class LogSettings:
    level: str = key("INFO", choice("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL", upper=True))
    format: str = key("text", choice("text", "json"))


@dataclass(frozen=True)
class MetricsSettings:
    listen: str = key("", listen)  # "": no HTTP endpoint
    textfile: str | None = key(None, textfile, path=True)

    def listen_address(self) -> tuple[str, int] | None:
        """``(host, port)`` to serve metrics on, or None when off."""
        return split_listen(self.listen) if self.listen else None


@dataclass(frozen=True)
class BundleSettings:
    """Bounds on reading an air-gap bundle or receipt: a hostile file is refused early, in constant memory."""

    max_bytes: int = key(8 * 2**30, integer(1))  # decompressed
    max_line_bytes: int = key(16 * 2**20, integer(1024))
    max_lines: int = key(20_000_000, integer(1))
    max_expansion: int = key(200, integer(1))  # decompressed bytes per compressed byte
    # The key this site shares with the other one, to sign and check bundles and receipts.
    key_file: str | None = key(None, optional_text, path=True)


SECTIONS: dict[str, type] = {
    "store": StoreSettings,
    "upstream": UpstreamSettings,
    "sync": SyncSettings,
    "retention": RetentionSettings,
    "log": LogSettings,
    "metrics": MetricsSettings,
    "bundle": BundleSettings,
}
