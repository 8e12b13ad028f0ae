"""The outermost ASGI layer: latency, faults, authentication and counting for API paths.

It sits outside Starlette on purpose. Dropping a connection without an answer
needs the server's raw ``send`` (Starlette wraps it), and a pure ASGI layer costs
far less per request than ``BaseHTTPMiddleware``, which keeps the emulator off
the benchmark's critical path.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import math
import time
from typing import Any

from galtea_local_daemon.emulator.faults import (
    AMBIGUOUS,
    APPLIED_ERROR,
    FAIL,
    LATE,
    RATE_LIMIT,
    THROTTLE,
    FaultInjector,
)

Scope = dict[str, Any]
API_PREFIXES = ("/inferenceResults", "/sessions", "/traces", "/evaluations", "/storage/", "/products", "/versions")


def route_of(path: str) -> str:
    """``/inferenceResults/abc`` -> ``/inferenceResults/{id}``: a stable name to count requests by."""
    parts = path.rstrip("/").split("/")
    if len(parts) >= 3 and parts[2] not in ("batch", "fromInferenceResult", "fromSession", "singleTurn",
                                            "generate-put-presigned-url", "get-or-create"):
        parts[2] = "{id}"
    return "/".join(parts)


def is_api_path(path: str) -> bool:
    return path.startswith(API_PREFIXES)


async def send_json(send: Any, status: int, body: Any, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    payload = json.dumps(body, separators=(",", ":")).encode()
    raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers + (headers or [])})
    await send({"type": "http.response.body", "body": payload})


def _bearer_key(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, key = value.decode("latin-1").partition(" ")
            return key.strip() if scheme.lower() == "bearer" and key.strip() else None
    return None


class FaultLayer:
    """Wraps the API app; control, inspection and version endpoints pass straight through."""

    def __init__(self, app: Any, injector: FaultInjector) -> None:
        self.app = app
        self.injector = injector

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            send = self._dated(send)
        if scope["type"] != "http" or not is_api_path(scope["path"]):
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        entry = self.injector.begin(method, path, route_of(path))
        try:
            await self._serve(scope, receive, send, entry)
        finally:
            self.injector.end(entry)

    async def _serve(self, scope: Scope, receive: Any, send: Any, entry: dict[str, Any]) -> None:
        config = self.injector.config
        wait = self.injector.rate_limited(_bearer_key(scope))  # counted on arrival, as a real limiter does
        if config.latency_ms:
            await asyncio.sleep(config.latency_ms / 1000)
        if wait is not None:
            entry["fault"], entry["status"] = RATE_LIMIT, 429
            retry_after = (b"retry-after", str(max(1, math.ceil(wait))).encode())
            await send_json(send, 429, {"message": "Too Many Requests (rate limit)"}, [retry_after])
            return
        fault = entry["fault"] = self.injector.draw(scope["method"])
        if fault == FAIL:
            entry["status"] = 503
            await send_json(send, 503, {"message": "Service Unavailable (emulated fault)"})
        elif fault == THROTTLE:
            entry["status"] = 429
            await send_json(send, 429, {"message": "Too Many Requests (emulated fault)"}, [self._retry_after()])
        elif not self._authorized(scope):
            entry["fault"], entry["status"] = None, 401
            await send_json(send, 401, {"message": "Unauthorized: invalid or missing API key"})
        elif fault == AMBIGUOUS:
            await self._write_then_drop(scope, receive, send, entry)
        elif fault == LATE:
            await self._commit_late(scope, receive, send, entry)
        elif fault == APPLIED_ERROR:
            await self._apply_then_fail(scope, receive, send, entry)
        else:
            await self.app(scope, receive, self._recording(send, entry))

    def _authorized(self, scope: Scope) -> bool:
        key = _bearer_key(scope)
        expected = self.injector.config.api_key
        return key is not None and (expected is None or key == expected)

    def _retry_after(self) -> tuple[bytes, bytes]:
        config = self.injector.config
        if config.retry_after_http_date:
            # An HTTP date has one-second resolution: round up so the wait is never shorter than asked.
            value = email.utils.formatdate(int(time.time()) + 1 + config.retry_after_s, usegmt=True)
        else:
            value = str(config.retry_after_s)
        return (b"retry-after", value.encode())

    def _dated(self, send: Any) -> Any:
        """Every answer carries ``Date`` from the server's own clock (``clock_offset_s`` away from ours)."""

        async def dated_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                now = time.time() + self.injector.config.clock_offset_s
                date = (b"date", email.utils.formatdate(now, usegmt=True).encode())
                message = {**message, "headers": [*message.get("headers", []), date]}
            await send(message)

        dated_send.raw = send  # type: ignore[attr-defined]  # drop_connection needs the server's own
        return dated_send

    async def _commit_late(self, scope: Scope, receive: Any, send: Any, entry: dict[str, Any]) -> None:
        """Hold a write inside the server (a slow database, a proxy queue) and apply it after
        ``late_commit_s``, whether or not the client is still waiting for the answer.

        The body is read first, as a server does before it queues the work: a client
        that gives up afterwards does not stop the write.
        """
        replay = await read_whole_request(receive)
        await asyncio.sleep(self.injector.config.late_commit_s)
        await self.app(scope, replay, self._recording(send, entry))

    async def _apply_then_fail(self, scope: Scope, receive: Any, send: Any, entry: dict[str, Any]) -> None:
        """Apply a write, then answer as a proxy that lost the API's answer: 502/503/504, no Retry-After."""

        async def swallow(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                entry["applied"] = message["status"]

        await self.app(scope, receive, swallow)
        status = entry["status"] = self.injector.config.applied_error_status
        await send_json(send, status, {"message": f"Bad Gateway or timeout from a proxy (emulated, {status})"})

    @staticmethod
    def _recording(send: Any, entry: dict[str, Any]) -> Any:
        async def recording_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                entry["status"] = message["status"]
            await send(message)

        return recording_send

    async def _write_then_drop(self, scope: Scope, receive: Any, send: Any, entry: dict[str, Any]) -> None:
        """Run the request to completion, swallow the answer, then cut the connection."""

        async def swallow(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                entry["status"] = message["status"]

        await self.app(scope, receive, swallow)
        await drop_connection(send)


async def read_whole_request(receive: Any) -> Any:
    """Read the request body now; a ``receive`` that replays it (then reports the disconnect)."""
    messages: list[dict[str, Any]] = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request" or not message.get("more_body", False):
            break

    async def replay() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        return {"type": "http.disconnect"}

    return replay


async def drop_connection(send: Any) -> None:
    """Abort the client's TCP connection so it sees no response at all.

    ASGI has no "abort" message. uvicorn's ``send`` is a bound method of its
    per-request cycle, which holds the transport; aborting that closes the socket
    without a byte of answer. Once uvicorn sees the connection lost it also skips
    its "returned without a response" 500, which is why we yield until it has.
    """
    cycle = getattr(getattr(send, "raw", send), "__self__", None)
    transport = getattr(cycle, "transport", None)
    if transport is None:
        # Another server: a truncated answer is the closest lost response we can give.
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"100")]})
        raise ConnectionAbortedError("emulated lost response")
    transport.abort()
    for _ in range(100):
        if getattr(cycle, "disconnected", True):
            return
        await asyncio.sleep(0)
