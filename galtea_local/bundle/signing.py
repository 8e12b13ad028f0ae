"""Signing bundles and receipts with a key the two sites share (HMAC-SHA256, stdlib ``hmac``).

The writer feeds every byte before the trailer (the bytes the SHA-256 covers,
header included) to an HMAC and writes it in the trailer with the key's id
(the first 16 hex digits of the key's SHA-256, which identify the key without
revealing it). A reader with the same key recomputes it and compares in
constant time. Without the key nobody can write a file the other site
accepts: a forged receipt or bundle is refused before anything is written.

A key is 32 random bytes kept as 64 hex digits in a file of its own (0600),
made by ``galtea-local keygen`` and copied to the other site over a channel
you trust. Where the daemon finds it is configuration, not this module's
business: this module receives the key's bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from galtea_local.errors import BundleError, ConfigError

KEY_BYTES = 32
_UNSIGNED_FIX = ("pass --allow-unsigned to accept it anyway (only for a file you carried yourself "
                 "from a site without a key)")


@dataclass(frozen=True, repr=False)
class Signing:
    """How files are signed and checked here: ``key`` (None: this site has none) and whether an
    unsigned file is accepted (an explicit opt-out; refused by default)."""

    key: bytes | None
    allow_unsigned: bool = False

    def __repr__(self) -> str:  # never the key itself
        return f"Signing(key_id={self.key_id()!r}, allow_unsigned={self.allow_unsigned})"

    def key_id(self) -> str | None:
        return None if self.key is None else hashlib.sha256(self.key).hexdigest()[:16]

    def new_mac(self) -> Any:
        """A fresh HMAC to feed the signed bytes, or None when this site has no key."""
        return None if self.key is None else hmac.new(self.key, digestmod=hashlib.sha256)

    def trailer_fields(self, mac: Any) -> dict[str, str]:
        return {} if mac is None else {"hmac": mac.hexdigest(), "key_id": self.key_id() or ""}

    def check(self, path: Path, trailer: dict[str, Any], mac: Any) -> None:
        """Refuse a file that is unsigned (unless allowed) or signed with another key, or forged."""
        signature = trailer.get("hmac")
        if signature is None:
            if not self.allow_unsigned:
                raise BundleError(f"{path}: unsigned; sign it with the key the two sites share "
                                  f"(`galtea-local keygen`, setting bundle.key_file), or {_UNSIGNED_FIX}")
            return
        if mac is None:
            if self.allow_unsigned:
                return  # the operator accepts what this site cannot check
            raise BundleError(f"{path}: signed with key {trailer.get('key_id')!r}, but this site has no bundle key; "
                              "set bundle.key_file (or GALTEA_LOCAL_BUNDLE_KEY_FILE) to the key the two sites share")
        if not isinstance(signature, str) or not hmac.compare_digest(signature, mac.hexdigest()):
            raise BundleError(f"{path}: wrong signature (key {trailer.get('key_id')!r} claimed, this site's key is "
                              f"{self.key_id()!r}): forged, altered, or signed with another site's key; refused")


UNSIGNED = Signing(None, allow_unsigned=True)  # for files this process writes and reads itself


def generate_key() -> str:
    """A new key as 64 hex digits."""
    return secrets.token_hex(KEY_BYTES)


def write_key_file(path: Path | str, *, replace: bool = False) -> Path:
    """Write a new key to ``path``, owner-only; never over an existing key unless ``replace``."""
    target = Path(path)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if replace else os.O_EXCL)
    try:
        fd = os.open(target, flags, 0o600)
    except FileExistsError:
        raise ConfigError(f"{target}: a key is already there; both sites must keep the same key, so it is "
                          "not replaced (pass --replace to make a new one, then copy it to the other site)") from None
    except OSError as exc:
        raise ConfigError(f"{target}: cannot write the key ({exc.strerror or exc})") from None
    with os.fdopen(fd, "w") as out:
        os.fchmod(out.fileno(), 0o600)
        out.write(generate_key() + "\n")
    return target


def read_key_file(path: Path | str, where: str) -> bytes:
    """The key's bytes; :class:`ConfigError` naming ``where`` (the setting) when unreadable or malformed."""
    try:
        text = Path(path).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not a key file"
        raise ConfigError(f"{where} = {str(path)!r}: cannot read it ({reason}); make one with "
                          "`galtea-local keygen`") from None
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) < KEY_BYTES:
        raise ConfigError(f"{where} = {str(path)!r}: not a bundle key (expected {2 * KEY_BYTES} hex digits); "
                          "make one with `galtea-local keygen`")
    return key
