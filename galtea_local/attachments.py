"""Files attached to a turn: the seam where ``create()``/``update()`` hand ``input_file_paths``/``output_file_paths`` over.

The official SDK uploads each file through its storage API and references it in
the turn's ``input``/``output`` ``content`` list. Offline, that becomes: copy each
file into a blob folder beside the store before ``create()`` returns (checking
the SDK's limits: 20 files, 20 MB, its types), upload it at sync before the
create, exactly once, then reference it as the SDK does (issue 14, "Files").

That is not built yet. Until it is, :func:`check_no_files` refuses a call that
carries files, before anything is written, naming the field: a turn must never
reach upstream without the files the app attached to it. No files (None or an
empty list) is what the SDK also treats as none, so such calls work unchanged.
The blob store replaces :func:`check_no_files` with a function that copies the
files and returns their references for the record's row.
"""

from __future__ import annotations

from typing import Any

from galtea_local.errors import InvalidInputError, InvalidTypeError

FIELDS = ("input_file_paths", "output_file_paths")


def check_no_files(input_file_paths: Any, output_file_paths: Any) -> None:
    """Accept the SDK's file arguments; refuse any actual file with a clear error (nothing written)."""
    for name, paths in zip(FIELDS, (input_file_paths, output_file_paths)):
        if paths is None:
            continue
        if not isinstance(paths, (list, tuple)) or not all(isinstance(path, str) for path in paths):
            raise InvalidTypeError(f"{name}: expected a list of file paths (str), got {type(paths).__name__}")
        if paths:
            raise InvalidInputError(
                f"{name}: galtea-local does not queue file attachments yet, so this turn was not written."
                " Log it without files (put the text your pipeline extracted in input/output), or send"
                " turns with files through the official galtea SDK (see docs/sdk-parity.md)"
            )
