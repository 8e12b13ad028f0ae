"""Settings: a validated, frozen value built once at the edge.

MINIMAL VERSION: only [store]. The config helper extends this module with the
other sections ([upstream], [sync], [retention], [log], [metrics]) keeping these names.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import platformdirs

from galtea_local.errors import ConfigError

ENV_STORE = "GALTEA_LOCAL_STORE"
ENV_CONFIG = "GALTEA_LOCAL_CONFIG"


def default_store_path() -> Path:
    """The per-user default: ``$XDG_DATA_HOME/galtea-local/store.db`` on Linux."""
    return Path(platformdirs.user_data_dir("galtea-local", appauthor=False)) / "store.db"


@dataclass(frozen=True)
class StoreSettings:
    path: str | None = None  # a file path or an sqlite:/// URL; None: default_store_path()
    durability: str = "process"  # "process" (WAL+NORMAL) | "power" (FULL)
    busy_timeout_s: float = 30.0
    max_record_bytes: int = 1_048_576
    file_mode: int = 0o600
    dir_mode: int = 0o700

    def location(self) -> str:
        return self.path or str(default_store_path())


@dataclass(frozen=True)
class Settings:
    store: StoreSettings = field(default_factory=StoreSettings)
    source: str | None = None  # the config file read, if any


def load_settings(
    config_path: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
) -> Settings:
    env = os.environ if env is None else env
    path = config_path or env.get(ENV_CONFIG)
    store: dict[str, object] = {}
    if path:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the config file ({exc.strerror})") from None
        store.update(data.get("store", {}))
    if env.get(ENV_STORE):
        store["path"] = env[ENV_STORE]
    for key, value in (overrides or {}).items():
        section, _, name = key.partition(".")
        if section == "store" and value is not None:
            store[name] = value
    return Settings(store=StoreSettings(**store), source=str(path) if path else None)
