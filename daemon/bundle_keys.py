"""Where this site's bundle key comes from, and ``galtea-local keygen``.

Managed like the API key: environment ``GALTEA_LOCAL_BUNDLE_KEY_FILE``, then
``bundle.key_file`` in the config file (both reach ``settings.bundle.key_file``),
then a systemd credential named ``galtea-bundle-key``. The key file is read
only by the commands that sign or check files, never by app processes.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path

from galtea_local.bundle.signing import Signing, read_key_file, write_key_file
from galtea_local.config import Settings
from galtea_local.errors import ConfigError

CREDENTIAL_NAME = "galtea-bundle-key"


def key_location(settings: Settings, env: Mapping[str, str] = os.environ) -> tuple[str, str] | None:
    """``(path, the setting it came from)`` of this site's key, or None when there is none."""
    if settings.bundle.key_file:
        return settings.bundle.key_file, "bundle.key_file"
    credentials = env.get("CREDENTIALS_DIRECTORY")
    if credentials and (Path(credentials) / CREDENTIAL_NAME).is_file():
        return str(Path(credentials) / CREDENTIAL_NAME), f"systemd credential {CREDENTIAL_NAME}"
    return None


def signing_for(settings: Settings, *, allow_unsigned: bool = False,
                env: Mapping[str, str] = os.environ) -> Signing:
    """This site's :class:`Signing`: its key if it has one; unsigned files only when ``allow_unsigned``."""
    location = key_location(settings, env)
    key = read_key_file(location[0], location[1]) if location else None
    return Signing(key, allow_unsigned=allow_unsigned)


def cmd_keygen(args: argparse.Namespace, settings: Settings) -> int:
    """Write a new key to ``--out`` (default: the configured bundle.key_file), 0600, never over an old one."""
    target = args.out or settings.bundle.key_file
    if not target:
        raise ConfigError("keygen: where to? pass --out FILE (then set bundle.key_file to it on both sites)")
    path = write_key_file(target, replace=args.replace)
    key_id = Signing(read_key_file(path, "--out")).key_id()
    print(f"wrote a new bundle key to {path} (key id {key_id}); copy this file to the other site over a channel "
          "you trust, and set bundle.key_file (or GALTEA_LOCAL_BUNDLE_KEY_FILE) to it on both")
    return 0
