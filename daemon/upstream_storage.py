"""The storage calls of :class:`~galtea_local_daemon.upstream.UpstreamClient`, as the official SDK makes them.

``GET /storage/generate-put-presigned-url?key=<file name>&fileType=file`` goes to the
API like every other call (the one ``_call``: classification, redaction). The bytes
then travel to the presigned link it returns, on a separate connection pool that
sends no API key: the link carries its own signature, and its host may be a storage
service rather than the API. A link grants access to the object for a day, so no
message, log line or exception here ever contains one: files are named by their name.
"""

from __future__ import annotations

from typing import Any

import httpx

from galtea_local.errors import MaybeSentError, NotSentError, UpstreamError
from galtea_local_daemon.wire import query_string

# The SDK's own transfer timeout: room for 20 MB on a slow link.
TRANSFER_TIMEOUT_S = 300.0
# Azure Blob refuses a presigned PUT without the blob type; S3 ignores it (the SDK sends both).
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.ProxyError, httpx.UnsupportedProtocol)
_PUT_HEADERS = {"Content-Type": "application/octet-stream", "x-ms-blob-type": "BlockBlob"}


class StorageCalls:
    """Mixed into ``UpstreamClient``, which provides ``_call``, ``_new_transfer_client`` and the classifier."""

    _call: Any
    _new_transfer_client: Any
    _transfer_client: httpx.Client | None = None

    def presign_upload(self, name: str) -> tuple[str, str]:
        """A fresh (upload link, download link) pair for a file called ``name``."""
        answer = self._call("GET", "/storage/generate-put-presigned-url",
                            query=query_string([("key", name), ("fileType", "file")]), expect=dict)
        upload, download = answer.get("uploadPresignedUrl"), answer.get("downloadPresignedUrl")
        if not isinstance(upload, str) or not upload or not isinstance(download, str) or not download:
            raise MaybeSentError("GET /storage/generate-put-presigned-url: the answer holds no upload and"
                                 " download links")
        return upload, download

    def _transfer(self) -> httpx.Client:
        if self._transfer_client is None:
            self._transfer_client = self._new_transfer_client()
        return self._transfer_client

    def put_object(self, link: str, data: bytes, name: str) -> int:
        """PUT the bytes to an upload link; the status for 2xx, 403 (link refused: expired or bad
        signature) and 409 (link already used), else an ``UpstreamError`` naming ``name`` only."""
        return self._transfer_status("PUT", link, f"upload of {name}", content=data, headers=_PUT_HEADERS)

    def get_object(self, link: str, name: str) -> bytes | None:
        """The bytes behind a download link, or None when there is no such object (403/404)."""
        response = self._transfer_request("GET", link, f"download of {name}")
        if response.status_code in (403, 404):
            return None
        if response.status_code >= 300:
            raise _classified(response, f"download of {name}")
        return response.content

    def _transfer_status(self, method: str, link: str, what: str, **kwargs: Any) -> int:
        response = self._transfer_request(method, link, what, **kwargs)
        if response.status_code in (200, 201, 204, 403, 409):
            return response.status_code
        raise _classified(response, what)

    def _transfer_request(self, method: str, link: str, what: str, **kwargs: Any) -> httpx.Response:
        failure: UpstreamError | None = None
        try:
            return self._transfer().request(method, link, **kwargs)
        except httpx.HTTPError as exc:  # never httpx's own message: it may quote the link
            kind = type(exc).__name__
            failure = NotSentError(f"{what}: not sent ({kind})") if isinstance(exc, _NOT_SENT) \
                else MaybeSentError(f"{what}: may have been sent ({kind})")
        raise failure  # outside the except block, so no chained exception carries the link

def _classified(response: httpx.Response, what: str) -> UpstreamError:
    from galtea_local.errors import RejectedError
    from galtea_local_daemon.upstream import classify

    if response.status_code == 413:
        return RejectedError(f"{what}: the file is larger than the platform accepts (HTTP 413)", status=413)
    # Storage error bodies are XML about the link, never a reason worth quoting: the status says it.
    error = classify(httpx.Response(response.status_code, headers=response.headers,
                                    request=response.request), what=what)
    return error or MaybeSentError(f"{what}: HTTP {response.status_code}", status=response.status_code)
