"""The blob folder beside the store: the copies of the files attached to turns.

``create()`` copies each attached file here before its transaction commits, so the
turn can be uploaded later even when the app has deleted or changed the original
(the SDK reads the file during the call; we read it during the call too, and keep
what we read). Each copy is one file named by a random id (``blob`` in the
``attachments`` table): no two calls ever share a file, so a call that fails can
remove what it copied without asking anyone, and retention removes a record's
copies with its rows. The folder has the store's access rules (owner only by
default, or the group of a shared store's folder).

Where: ``<store file>.blobs/`` for SQLite. A PostgreSQL store has no file to sit
beside, so its blobs live in the per-user data folder, under the store's id
(the daemon and the apps of that store must share the machine and the user).
"""

from __future__ import annotations

import hashlib
import os
import secrets
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import platformdirs

_CHUNK = 1 << 20
# A copy older than this with no row is left over from a call that died between its copy and
# its commit (or from retention interrupted between its commit and its unlink). Younger ones
# may belong to a create() whose transaction has not committed yet.
ORPHAN_AGE_S = 600.0


def blob_dir(store: Any) -> Path:
    """The blob folder of an open store (not created here)."""
    if getattr(store, "dialect", "sqlite") == "sqlite":
        return Path(f"{store.path}.blobs")
    return Path(platformdirs.user_data_dir("galtea-local", appauthor=False)) / "blobs" / store.store_id


def _folder_mode(store_path: Path) -> int:
    """The store folder's own mode (0700 by default, 0770 for a store shared with a group)."""
    try:
        shared = store_path.parent.stat().st_mode & stat.S_IWGRP
    except OSError:
        shared = 0
    return 0o770 if shared else 0o700


def ensure_folder(folder: Path) -> None:
    if folder.is_dir():
        return
    mode = _folder_mode(folder)
    os.makedirs(folder, mode=mode, exist_ok=True)
    os.chmod(folder, mode)  # the umask may have narrowed it; be exact


@dataclass(frozen=True)
class Copy:
    """One file copied into the blob folder."""

    blob: str  # the file's name in the folder
    size: int
    sha256: str


def copy_in(folder: Path, source: str, durable: bool) -> Copy:
    """Copy ``source`` into ``folder`` under a new random name; fsync it when ``durable``
    (``durability = "power"``: the copy must survive a power loss as the record does)."""
    blob = secrets.token_hex(16)
    target = folder / blob
    partial = folder / f".{blob}.part"  # never read as a blob: a sweep removes it if we die here
    digest, size = hashlib.sha256(), 0
    mode = 0o660 if _folder_mode(folder) & stat.S_IWGRP else 0o600
    fd = os.open(partial, os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode)
    try:
        with open(source, "rb") as reader, os.fdopen(fd, "wb") as writer:
            while chunk := reader.read(_CHUNK):
                digest.update(chunk)
                writer.write(chunk)
                size += len(chunk)
            if durable:
                writer.flush()
                os.fsync(writer.fileno())
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    if durable:
        _fsync_folder(folder)
    return Copy(blob, size, digest.hexdigest())


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove(folder: Path, blobs: list[str]) -> None:
    """Remove these copies (missing ones are fine: an earlier pass may have removed them)."""
    for blob in blobs:
        (folder / blob).unlink(missing_ok=True)


def read_checked(folder: Path, blob: str, sha256: str) -> bytes:
    """A copy's bytes, or OSError/ValueError when it is gone or not what was copied."""
    data = (folder / blob).read_bytes()
    if hashlib.sha256(data).hexdigest() != sha256:
        raise ValueError(f"blob {blob} in {folder} does not hold the bytes copied at create() (changed on disk)")
    return data


def sweep(folder: Path, known: set[str], now: float | None = None) -> int:
    """Remove copies no attachment row names, older than :data:`ORPHAN_AGE_S`; return how many."""
    if not folder.is_dir():
        return 0
    cutoff = (time.time() if now is None else now) - ORPHAN_AGE_S
    removed = 0
    for entry in os.scandir(folder):
        name = entry.name.removeprefix(".").removesuffix(".part")
        if name in known or not entry.is_file(follow_symlinks=False):
            continue
        try:
            if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                os.unlink(entry.path)
                removed += 1
        except FileNotFoundError:
            continue
    return removed
