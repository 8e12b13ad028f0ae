"""Settings: :mod:`.schema` declares every key, its default and its check;
:mod:`.settings` layers flags, environment, the TOML file and defaults into one
frozen :class:`Settings`.
"""

from galtea_local.config.settings import (
    CREDENTIAL_NAME,
    ENV_API_KEY,
    ENV_API_URL,
    ENV_CONFIG,
    ENV_EXTRA_HEADERS,
    ENV_KEYS,
    ENV_STORE,
    ConfigError,
    LogSettings,
    MetricsSettings,
    RetentionSettings,
    Secret,
    Settings,
    StoreSettings,
    SyncSettings,
    UpstreamSettings,
    default_store_path,
    effective_settings_text,
    load_settings,
)

__all__ = [
    "CREDENTIAL_NAME", "ENV_API_KEY", "ENV_API_URL", "ENV_CONFIG", "ENV_EXTRA_HEADERS", "ENV_KEYS",
    "ENV_STORE", "ConfigError", "LogSettings", "MetricsSettings", "RetentionSettings", "Secret",
    "Settings", "StoreSettings", "SyncSettings", "UpstreamSettings", "default_store_path",
    "effective_settings_text", "load_settings",
]
