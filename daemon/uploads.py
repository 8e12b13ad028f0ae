"""Upload a turn's files before its create, exactly once, resumable after a crash.

The API has no idempotency key for uploads either: each presign names a new object.
So the links are the write-ahead mark. Before the bytes leave, the attachment row
durably holds its (upload, download) links (``presigned``); after a crash the
same links are used again, so the object is the same one. A presigned storage
link takes a second PUT of the same bytes as an overwrite (S3, Azure). A link
that refuses reuse (409, API-served links) is checked by downloading the object
and comparing its SHA-256 with our copy: equal means the first PUT landed.
A link that expired or is refused (403) is replaced by a fresh presign; whatever
half-object the old one left is never referenced. Once uploaded, the row holds
the uri the create references (``uploaded``), and the create is built from it.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from typing import Any

from galtea_local import attachments, blobs
from galtea_local.errors import AuthError, NotSentError, RejectedError, RetryLaterError, UpstreamError
from galtea_local.outbox.kinds import OpKind

log = logging.getLogger("galtea_local.sync")

# Links live 24 hours; reuse one only well inside that, so a resumed PUT never races expiry.
LINK_REUSE_S = 20 * 3600.0
# A file part's uri as create() wrote it (compact JSON): text that merely mentions a placeholder
# (escaped quotes) is not a file part and is left alone.
_PLACEHOLDER = re.compile(r'"uri":"' + re.escape(attachments.PLACEHOLDER) + r'([0-9a-f]{32})"')


def wanted(record: dict[str, Any]) -> list[str]:
    """The blobs a record's input/output name, in order."""
    return [m.group(1) for name in ("input", "actual_output") for m in _PLACEHOLDER.finditer(record.get(name) or "")]


def needs_upload(record: dict[str, Any]) -> bool:
    return attachments.has_files(record.get("input")) or attachments.has_files(record.get("actual_output"))


def with_files(build_body: Callable[[dict[str, Any], Any], dict[str, Any]],
               uris: dict[str, str]) -> Callable[[dict[str, Any], Any], dict[str, Any]]:
    """``build_body`` over a row whose placeholders are replaced by the uploaded uris."""
    def substitute(text: str | None) -> str | None:
        if text is None:
            return None
        return _PLACEHOLDER.sub(lambda m: '"uri":' + json.dumps(uris[m.group(1)]), text)

    def build(row: dict[str, Any], attempt: Any) -> dict[str, Any]:
        row = {**row, "input": substitute(row["input"]), "actual_output": substitute(row["actual_output"])}
        return build_body(row, attempt)

    return build


def build_for(uploader: Uploader, attempt: Any, build_body: Callable[[dict[str, Any], Any], dict[str, Any]]
              ) -> Callable[[dict[str, Any], Any], dict[str, Any]]:
    """``build_body``; for a create whose turn has files, once they are uploaded, a builder that names them.

    The SDK uploads a turn's files before it creates the turn. A failed upload leaves the
    create unsent: its error says "not sent" (or "retry later"), never "maybe sent", so the
    create is not reconciled for a request that never carried it. A refusal for good or a
    refused key keeps its class (dead letter, pause)."""
    if attempt.kind != OpKind.CREATE or not needs_upload(attempt.record):
        return build_body
    failure: UpstreamError | None = None
    try:
        return with_files(build_body, uploader.ensure(attempt.record))
    except (RejectedError, AuthError):
        raise
    except RetryLaterError as error:
        failure = RetryLaterError(error.message, status=error.status, retry_after=error.retry_after)
    except UpstreamError as error:
        failure = NotSentError(f"{error.message} (the create waits for it)", status=error.status)
    raise failure


class Uploader:
    """Uploads the files of one record at a time (the lane's head, under the lane's lease)."""

    def __init__(self, store: Any, api: Any, transfer: Any, clock: Callable[[], float]) -> None:
        """``api`` makes the presign call (paced with every other API request); ``transfer`` moves the
        bytes. A transfer goes to storage, not to the API, so its duration must not teach the API's
        adaptive limit that the API is slow."""
        self.store, self.api, self.transfer, self.clock = store, api, transfer, clock
        self.folder = blobs.blob_dir(store)

    def ensure(self, record: dict[str, Any]) -> dict[str, str]:
        """Upload what is not uploaded yet; blob -> uri for every file the record names.

        Raises ``RejectedError`` (dead-letters the create) when a copy is missing or changed,
        or the platform refuses the file for good; other ``UpstreamError``s mean "retry"."""
        rows = {row["blob"]: dict(row) for row in self.store.read(
            lambda conn: conn.execute("SELECT * FROM attachments WHERE record_seq = ?", (record["seq"],)).fetchall())}
        uris = {}
        for blob in wanted(record):
            row = rows.get(blob)
            if row is None:
                raise RejectedError(f"attachment {blob} of this turn has no row in the store (removed by hand?)")
            uris[blob] = row["uri"] if row["state"] == "uploaded" else self._upload(row)
        return uris

    def _upload(self, row: dict[str, Any]) -> str:
        try:
            data = blobs.read_checked(self.folder, row["blob"], row["sha256"])
        except (OSError, ValueError) as exc:
            raise RejectedError(f"{row['filename']}: its copy in the blob folder is unusable ({exc})") from None
        fresh = row["state"] != "presigned" or self.clock() - (row["presigned_at"] or 0) > LINK_REUSE_S
        if fresh:
            row = self._presign(row)
        status = self.transfer.put_object(row["upload_url"], data, row["filename"])
        if status == 403 and not fresh:  # the kept link expired or was revoked: one fresh try
            row = self._presign(row)
            status = self.transfer.put_object(row["upload_url"], data, row["filename"])
        if status == 409 and self.transfer.get_object(row["download_url"], row["filename"]) != data:
            self._set(row["blob"], state="pending", upload_url=None, download_url=None, presigned_at=None)
            raise RetryLaterError(f"upload of {row['filename']}: the link was used but the object is not ours;"
                                  " a fresh link next time", retry_after=0.0)
        if status == 403:
            raise RetryLaterError(f"upload of {row['filename']}: storage refused a fresh link (HTTP 403)",
                                  status=403)
        self._set(row["blob"], state="uploaded", uri=row["download_url"], upload_url=None,
                  uploaded_at=self.clock())
        log.info("uploaded %s (%d bytes) for record %s", row["filename"], row["size"], row["record_seq"])
        return row["download_url"]

    def _presign(self, row: dict[str, Any]) -> dict[str, Any]:
        upload, download = self.api.presign_upload(row["filename"])
        changes = dict(state="presigned", upload_url=upload, download_url=download, presigned_at=self.clock())
        self._set(row["blob"], **changes)  # durable before the bytes leave: a crash resumes with these links
        return {**row, **changes}

    def _set(self, blob: str, **changes: Any) -> None:
        assignments = ", ".join(f"{name} = ?" for name in changes)
        self.store.transaction(lambda conn: conn.execute(
            f"UPDATE attachments SET {assignments} WHERE blob = ?", (*changes.values(), blob)))
