"""Files attached to a turn: ``create(input_file_paths=..., output_file_paths=...)``.

The official SDK checks the files (at most 20 per input or output, 20 MB in
total, the document and image types a judge can read), uploads each through its
storage API, and puts it in the turn's ``input``/``output`` as a content part
(``{"uri", "filename", "mimeType", "type": "file"}`` in a ``content`` list, a
string becoming ``{"user_message"|"assistant_message": ..., "content": [...]}``).

Offline, ``create()`` applies the same checks, copies each file into the blob
folder (:mod:`galtea_local.blobs`) and writes the envelope with a placeholder
uri per file (``galtea-local:blob/<id>``), plus one ``attachments`` row per
file, in the record's own transaction. A bad list raises before anything is
copied; a failed transaction removes what it copied. At sync the daemon uploads
each file before the create and puts the uploaded uri where the placeholder was
(``daemon/uploads.py``). A reference to a file already in storage (``s3://``,
``http(s)://``) is attached as is, as the SDK does.
"""

from __future__ import annotations

import json
import mimetypes
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from galtea_local import blobs
from galtea_local.errors import InvalidInputError, InvalidTypeError

FIELDS = ("input_file_paths", "output_file_paths")
PLACEHOLDER = "galtea-local:blob/"  # + the blob id; never leaves the machine
MB = 1024 * 1024
MAX_FILES = 20  # per input or output, as the SDK and the API count them
MAX_TOTAL_BYTES = 20 * MB
ALLOWED_EXTENSIONS = frozenset({
    ".pdf", ".docx", ".xlsx", ".pptx", ".rtf", ".png", ".jpg", ".jpeg", ".tiff", ".tif", ".bmp", ".webp",
    ".heic", ".heif", ".gif", ".txt", ".csv", ".md", ".html", ".xml", ".json", ".eml",
})
_REFERENCE_SCHEMES = ("s3://", "http://", "https://")
_SCALAR_KEY = {"input": "user_message", "output": "assistant_message"}

_INSERT = (
    "INSERT INTO attachments (blob, record_seq, side, position, filename, mime_type, size, sha256, state,"
    " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?)"
)


def _type_error(name: str, paths: Any) -> InvalidTypeError:
    return InvalidTypeError(f"{name}: expected a list of file paths (str), got {type(paths).__name__}")


def _allowed_types() -> str:
    return ", ".join(sorted(ALLOWED_EXTENSIONS))


def _check_reference(name: str, uri: str) -> None:
    """What the SDK checks on a stored file's uri: the API's folder for attachments, and the type."""
    path = uri.split("?", 1)[0].split("#", 1)[0]
    if "/storage/download" in path or "/storage/upload" in path:
        return  # an API-served link: the key is inside its token
    if "/files/" not in path:
        raise InvalidInputError(f'{name}: "{uri}" is not a file uploaded to Galtea; pass a file on this machine'
                                " by its path, or the uri a previous upload returned")
    if os.path.splitext(path)[1].lower() not in ALLOWED_EXTENSIONS:
        raise InvalidInputError(f'{name}: "{uri}" is not a type Galtea accepts ({_allowed_types()})')


def check_paths(name: str, paths: Any) -> list[str]:
    """The SDK's checks on one list, with errors naming the field and the fix; returns the list."""
    if not isinstance(paths, (list, tuple)) or not all(isinstance(path, str) for path in paths):
        raise _type_error(name, paths)
    if len(paths) > MAX_FILES:
        raise InvalidInputError(f"{name}: {len(paths)} files, but one input or output takes at most {MAX_FILES};"
                                " attach fewer (or merge them into one document)")
    total = 0
    for path in paths:
        if path.startswith(_REFERENCE_SCHEMES):
            _check_reference(name, path)
            continue
        if not os.path.isfile(path):
            raise InvalidInputError(f"{name}: file not found: {path}")
        if os.path.splitext(path)[1].lower() not in ALLOWED_EXTENSIONS:
            raise InvalidInputError(f"{name}: {os.path.basename(path)} is not a type Galtea accepts; allowed:"
                                    f" {_allowed_types()}")
        total += os.path.getsize(path)
    if total > MAX_TOTAL_BYTES:
        raise InvalidInputError(f"{name}: the files total {total / MB:.1f} MB, over the {MAX_TOTAL_BYTES // MB} MB"
                                " limit for one input or output; attach fewer or smaller files")
    return list(paths)


@dataclass
class Staged:
    """The files of one call, copied into the blob folder, and the rows to write with the record."""

    folder: Path
    rows: list[tuple[Any, ...]] = field(default_factory=list)  # _INSERT's values, record_seq left as None

    def insert(self, conn: Any, record_seq: int) -> None:
        """Write the rows in the record's transaction."""
        for row in self.rows:
            conn.execute(_INSERT, (row[0], record_seq, *row[2:]))

    def discard(self) -> None:
        """The record was not written: remove the copies (no other call shares them)."""
        blobs.remove(self.folder, [row[0] for row in self.rows])


def _part(staged: Staged, side: str, path: str, durable: bool) -> dict[str, Any]:
    mime_type = mimetypes.guess_type(path.split("?", 1)[0])[0]
    if path.startswith(_REFERENCE_SCHEMES):  # already in storage: the SDK attaches it as is, unnamed
        return {"uri": path, "filename": None, "mimeType": mime_type, "type": "file"}
    copy = blobs.copy_in(staged.folder, path, durable)
    filename = os.path.basename(path)
    staged.rows.append((copy.blob, None, side, len(staged.rows), filename, mime_type, copy.size, copy.sha256,
                        time.time()))
    return {"uri": PLACEHOLDER + copy.blob, "filename": filename, "mimeType": mime_type, "type": "file"}


def _envelope(side: str, value: Any, parts: list[dict[str, Any]]) -> Any:
    """The SDK's merge of file parts into an input or output."""
    if not parts:
        return value
    if value is None:
        return {"content": parts}
    if isinstance(value, str):
        return {_SCALAR_KEY[side]: value, "content": parts}
    if isinstance(value, dict):
        existing = value.get("content")
        if existing is not None and not isinstance(existing, list):
            raise InvalidInputError(f'{side}: already has a "content" key holding a {type(existing).__name__},'
                                    ' not a list of content parts; rename it, or attach the files to the list yourself')
        return {**value, "content": list(existing or []) + parts}
    raise InvalidTypeError(f"{side}: must be a string or a dict to carry files, got {type(value).__name__}")


def stage(folder: Path, durable: bool, input: Any, output: Any, input_paths: Any,
          output_paths: Any) -> tuple[Any, Any, Staged]:
    """Check both lists (nothing copied if either is bad), copy the files, and return the input and
    output with their file parts. On any error nothing is left behind."""
    lists = {side: check_paths(name, paths) if paths is not None else []
             for side, name, paths in (("input", FIELDS[0], input_paths), ("output", FIELDS[1], output_paths))}
    for side, value in (("input", input), ("output", output)):
        if lists[side]:
            _envelope(side, value, [])  # its type is checked before any copy
    staged = Staged(folder)
    try:
        if any(not path.startswith(_REFERENCE_SCHEMES) for paths in lists.values() for path in paths):
            blobs.ensure_folder(folder)
        parts = {side: [_part(staged, side, path, durable) for path in paths] for side, paths in lists.items()}
        return _envelope("input", input, parts["input"]), _envelope("output", output, parts["output"]), staged
    except BaseException:
        staged.discard()
        raise


def check_no_files(input_file_paths: Any, output_file_paths: Any) -> None:
    """For calls that cannot carry files yet (``update()``): refuse any, naming the field (nothing written)."""
    for name, paths in zip(FIELDS, (input_file_paths, output_file_paths)):
        if paths is None:
            continue
        if not isinstance(paths, (list, tuple)) or not all(isinstance(path, str) for path in paths):
            raise _type_error(name, paths)
        if paths:
            raise InvalidInputError(
                f"{name}: update() cannot attach files offline yet, so nothing was changed. Attach them at"
                " create() (input_file_paths/output_file_paths), or send the update through the official"
                " galtea SDK (see docs/sdk-parity.md)"
            )


def has_files(text: str | None) -> bool:
    """True when a record's input/output JSON text names a file waiting in the blob folder."""
    return text is not None and PLACEHOLDER in text


def _adopted_parts(ours: Any, theirs: Any) -> Any:
    """Our input/output with each placeholder replaced by the uri upstream stored at the same place."""
    if not isinstance(ours, dict) or not isinstance(theirs, dict):
        return None
    mine, stored = ours.get("content"), theirs.get("content")
    if not isinstance(mine, list) or not isinstance(stored, list) or len(mine) != len(stored):
        return None
    parts = []
    for part, twin in zip(mine, stored):
        if isinstance(part, dict) and str(part.get("uri", "")).startswith(PLACEHOLDER) \
                and isinstance(twin, dict) and isinstance(twin.get("uri"), str):
            part = {**part, "uri": twin["uri"]}
        parts.append(part)
    return {**ours, "content": parts}


def adopt_uris(conn: Any, record_seq: int, remote: dict[str, Any]) -> None:
    """Once a turn with files is upstream, its local input/output name the files by the references
    upstream stored (as the SDK's create() returns them), instead of the local placeholders."""
    row = conn.execute("SELECT input, actual_output FROM inference_results WHERE seq = ?", (record_seq,)).fetchone()
    if row is None:
        return
    changes = {}
    for column, key in (("input", "input"), ("actual_output", "actualOutput")):
        if has_files(row[column]):
            adopted = _adopted_parts(json.loads(row[column]), remote.get(key))
            if adopted is not None:
                changes[column] = json.dumps(adopted)
    if changes:
        assignments = ", ".join(f"{column} = ?" for column in changes)
        conn.execute(f"UPDATE inference_results SET {assignments} WHERE seq = ?", (*changes.values(), record_seq))
