"""The storage API, as the official SDK 5.12's code tells us the real one behaves.

- ``GET /storage/generate-put-presigned-url?key=<name>&fileType=file`` (authenticated)
  answers ``{"uploadPresignedUrl", "downloadPresignedUrl"}``. The object's key is
  ``files/<organization>/<random id><ext of name>``: the name the file was given
  is not kept (only its extension), which is why the SDK sends ``filename`` and
  ``mimeType`` itself. Links are presigned storage URLs, as on most deployments:
  they carry their own signature, no API key, and are valid for 24 hours.
- ``PUT`` to the upload link stores the bytes (200; a second PUT overwrites, as
  S3 does). Over 20 MB it answers 413. Only the whole body counts: a client that
  dies mid-body leaves nothing.
- ``GET`` of the download link answers the bytes (404 until uploaded).
- A trace's input/output file parts (``content: [{"type": "file", "uri", ...}]``)
  that name this storage must name an uploaded object under ``files/`` of an
  accepted type, at most 20 files and 20 MB per input or output; the record
  stores the signature-free reference ``s3://<bucket>/<key>`` instead of the
  signed link. A uri outside Galtea storage is kept as sent.

Control: ``POST /_emulator/storage {"hold_put_s": N}`` holds each upload's answer
N seconds after the bytes are stored (a test kills the uploader in that window).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import time
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from galtea_local_daemon.emulator.rules import ApiError, bad_request

BUCKET = "galtea-emulator"
ORGANIZATION = "org_emulator"
MAX_BYTES = 20 * 1024 * 1024
MAX_FILES = 20
LINK_LIFETIME_S = 24 * 3600
ALLOWED_EXTENSIONS = frozenset({
    ".pdf", ".docx", ".xlsx", ".pptx", ".rtf", ".png", ".jpg", ".jpeg", ".tiff", ".tif", ".bmp", ".webp",
    ".heic", ".heif", ".gif", ".txt", ".csv", ".md", ".html", ".xml", ".json", ".eml",
})
OBJECT_PATH = "/_storage/"  # where the presigned links point (not an API path: no key, no faults)


class StorageStore:
    """Objects by key, the links handed out, and counters a test reads from the dump."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}  # key -> {data, sha256, size, puts}
        self.signatures: dict[str, tuple[str, str, float]] = {}  # signature -> (op, key, expires)
        self.presigned = 0
        self.hold_put_s = 0.0

    # --- the API route ------------------------------------------------------------

    def presign_put(self, request: Request) -> dict[str, Any]:
        name, file_type = request.query_params.get("key"), request.query_params.get("fileType")
        if not name:
            raise bad_request("key is required")
        if file_type != "file":
            raise bad_request(f"fileType {file_type!r} is not served by this emulator (only 'file')")
        key = f"files/{ORGANIZATION}/{secrets.token_hex(12)}{os.path.splitext(name)[1].lower()}"
        self.presigned += 1
        base = str(request.base_url).rstrip("/")
        return {"uploadPresignedUrl": self._link(base, "put", key), "downloadPresignedUrl": self._link(base, "get", key)}

    def _link(self, base: str, op: str, key: str) -> str:
        signature = secrets.token_hex(16)
        self.signatures[signature] = (op, key, time.time() + LINK_LIFETIME_S)
        return f"{base}{OBJECT_PATH}{BUCKET}/{key}?X-Amz-Expires={LINK_LIFETIME_S}&X-Amz-Signature={signature}"

    # --- the presigned links ---------------------------------------------------------

    def _signed(self, request: Request, op: str) -> str | None:
        signature = request.query_params.get("X-Amz-Signature", "")
        found = self.signatures.get(signature)
        key = request.url.path[len(OBJECT_PATH) + len(BUCKET) + 1:]
        if found is None or found[0] != op or found[1] != key or found[2] < time.time():
            return None
        return key

    async def put_object(self, request: Request) -> Response:
        key = self._signed(request, "put")
        if key is None:
            return Response("SignatureDoesNotMatch", status_code=403)
        if int(request.headers.get("content-length") or 0) > MAX_BYTES:
            return Response("EntityTooLarge", status_code=413)
        data = await request.body()  # raises if the client goes away mid-body: nothing stored
        if len(data) > MAX_BYTES:
            return Response("EntityTooLarge", status_code=413)
        puts = self.objects.get(key, {}).get("puts", 0) + 1
        self.objects[key] = {"data": data, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
                             "puts": puts}
        if self.hold_put_s:
            await asyncio.sleep(self.hold_put_s)
        return Response(status_code=200)

    async def get_object(self, request: Request) -> Response:
        key = self._signed(request, "get")
        if key is None:
            return Response("SignatureDoesNotMatch", status_code=403)
        stored = self.objects.get(key)
        if stored is None:
            return Response("NoSuchKey", status_code=404)
        return Response(stored["data"], media_type="application/octet-stream")

    async def control(self, request: Request, changes: dict[str, Any]) -> Response:
        if "hold_put_s" in changes:
            self.hold_put_s = float(changes["hold_put_s"])
        return JSONResponse({"hold_put_s": self.hold_put_s})

    def snapshot(self) -> dict[str, Any]:
        objects = [{"key": key, "size": o["size"], "sha256": o["sha256"], "puts": o["puts"]}
                   for key, o in self.objects.items()]
        return {"storageObjects": objects, "storagePresigned": self.presigned}

    # --- file parts on a trace ---------------------------------------------------------

    def _key_of(self, uri: str) -> str | None:
        """The object key a uri names in this storage, or None for a uri outside it."""
        if uri.startswith(f"s3://{BUCKET}/"):
            return uri[len(f"s3://{BUCKET}/"):]
        path = urlsplit(uri).path
        head = f"{OBJECT_PATH}{BUCKET}/"
        return path[len(head):] if path.startswith(head) else None

    def canonical_files(self, field: str, value: Any) -> Any:
        """Check an input/output's file parts as the API does, and store references without signatures."""
        parts = value.get("content") if isinstance(value, dict) else None
        if not isinstance(parts, list):
            return value
        files = [p for p in parts if isinstance(p, dict) and str(p.get("type", "")).lower() == "file"]
        if len(files) > MAX_FILES:
            raise bad_request(f"{field}: at most {MAX_FILES} files, got {len(files)}")
        total, shown = 0, []
        for part in parts:
            if part in files:
                part, size = self._checked_part(field, part)
                total += size
            shown.append(part)
        if total > MAX_BYTES:
            raise bad_request(f"{field}: the files total {total} bytes, over the {MAX_BYTES} limit")
        return {**value, "content": shown}

    def _checked_part(self, field: str, part: dict[str, Any]) -> tuple[dict[str, Any], int]:
        uri = part.get("uri")
        if not isinstance(uri, str) or not uri:
            raise bad_request(f"{field}: a file part needs a uri")
        key = self._key_of(uri)
        if key is None:
            return part, 0  # outside Galtea storage: kept as sent
        if not key.startswith(f"files/{ORGANIZATION}/"):
            raise ApiError(403, f"{field}: {key} does not belong to this organization")
        if os.path.splitext(key)[1].lower() not in ALLOWED_EXTENSIONS:
            raise bad_request(f"{field}: file type of {key} is not allowed")
        stored = self.objects.get(key)
        if stored is None:
            raise bad_request(f"{field}: file {key} was not uploaded")
        return {**part, "uri": f"s3://{BUCKET}/{key}"}, stored["size"]

