"""The HTTP client for the Galtea API, and the classification of every outcome.

Everything that crosses the network goes through ``UpstreamClient``. It raises
only ``galtea_local.errors.UpstreamError`` subclasses (never httpx's), chosen by
one function, ``classify()``, that encodes the delivery rules (docs/delivery.md):

    outcome                                             error            may re-send?
    connect error/timeout, DNS, proxy CONNECT refused,  NotSentError     yes, freely
      pool timeout, unsupported scheme
    read/write timeout, read/write error, server        MaybeSentError   create: reconcile first
      disconnected, any other transport error,                           update/delete: yes
      500/502/504/other 5xx, 408, 1xx/3xx
    429, 503 (``retry_after`` from Retry-After)         RetryLaterError  after the delay; a 503 to a
                                                                         write is also maybe sent
    401, 403                                            AuthError        no: pause all pushing
    other 4xx (message from the JSON ``message``)       RejectedError    no: dead letter
    2xx whose body is not the JSON we expect            MaybeSentError   reconcile (applied, id unknown)

The API key never appears in a log line, a repr or an exception message.
"""

from __future__ import annotations

import datetime
import email.utils
import functools
import json
import logging
import re
import ssl
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx

from galtea_local.config.schema import Secret
from galtea_local.errors import (
    AuthError,
    ConfigError,
    InvalidInputError,
    MaybeSentError,
    NotSentError,
    RejectedError,
    RetryLaterError,
    UpstreamError,
)
from galtea_local_daemon import upstream_pool
from galtea_local_daemon.servertime import ServerClock
from galtea_local_daemon.upstream_spans import SpanAndEvaluationCalls
from galtea_local_daemon.upstream_storage import TRANSFER_TIMEOUT_S, StorageCalls
from galtea_local_daemon.wire import (
    DEFAULT_BASE_URL,
    EXTRA_HEADERS_ENV,
    as_list,
    checked_base_url,
    checked_headers,
    extra_headers_from_env,
    path_segment,
    query_string,
    user_agent,
)

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_TIMEOUTS",
    "EXTRA_HEADERS_ENV",
    "UpstreamClient",
    "api_message",
    "checked_base_url",
    "classify",
    "extra_headers_from_env",
    "parse_retry_after",
    "user_agent",
]

log = logging.getLogger(__name__)

DEFAULT_TIMEOUTS = (5.0, 30.0, 30.0, 5.0)  # connect, read, write, pool (seconds)
MESSAGE_LIMIT = 500

_API_KEY = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no blank

# The request surely never left: no connection was made, or a proxy refused the tunnel.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.ProxyError, httpx.UnsupportedProtocol)
_DELTA_SECONDS = re.compile(r"\d+(\.\d+)?")


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header value.

    Delta-seconds or an HTTP-date (relative to ``now``, a Unix time, default the
    clock; a date in the past gives 0). Absent or unreadable: None.
    """
    if value is None:
        return None
    text = value.strip()
    if _DELTA_SECONDS.fullmatch(text):
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000" parses naive; HTTP dates are always GMT
        when = when.replace(tzinfo=datetime.timezone.utc)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def classify(
    outcome: httpx.Response | BaseException,
    *,
    expect: type | None = None,
    what: str = "request",
    now: float | None = None,
) -> UpstreamError | None:
    """The error an outcome means, or None when it succeeded.

    ``outcome`` is the response, or the exception raised while sending. With
    ``expect`` (``dict`` or ``list``), a 2xx must carry a JSON body of that type;
    otherwise it is MaybeSentError, since the server applied it but we cannot
    read the result. ``what`` (e.g. ``"POST /inferenceResults"``) starts the
    message. The module docstring holds the table.
    """
    if isinstance(outcome, BaseException):
        return _classify_exception(outcome, what)
    status = outcome.status_code
    if 200 <= status < 300:
        return _check_body(outcome, expect, what)
    head = f"{what}: {status} {outcome.reason_phrase}".rstrip()
    if status in (401, 403):
        return AuthError(f"{head}: the API key was refused: {api_message(outcome)}", status=status)
    if status in (429, 503):
        retry_after = parse_retry_after(outcome.headers.get("retry-after"), now=now)
        hint = f"retry after {retry_after:g} s" if retry_after is not None else "retry later (no usable Retry-After)"
        # A 503 may come from a proxy after the API applied the write; a 429 is refused before any work.
        maybe_sent = status == 503 and _is_write(outcome)
        return RetryLaterError(f"{head}: {hint}", status=status, retry_after=retry_after, maybe_sent=maybe_sent)
    # 408: the server gave up waiting for the request; a gateway may still have
    # forwarded it, and dead-lettering a record for a timeout would be wrong.
    if 400 <= status < 500 and status != 408:
        return RejectedError(f"{head}: {api_message(outcome)}", status=status)
    # 5xx, 408, and 1xx/3xx (redirects are not followed: a moved API is a config
    # problem to retry after fixing, never a reason to drop a record).
    return MaybeSentError(f"{head}: the server may have applied it", status=status)


def _is_write(response: httpx.Response) -> bool:
    """True unless the response is known to answer a read (an unknown request is taken as a write: safer)."""
    try:
        method = response.request.method
    except RuntimeError:  # a response built without its request
        return True
    return method not in ("GET", "HEAD", "OPTIONS")


def _classify_exception(exc: BaseException, what: str) -> UpstreamError:
    kind = type(exc).__name__
    if isinstance(exc, UpstreamError):
        return exc
    if isinstance(exc, _NOT_SENT):
        return NotSentError(f"{what}: not sent ({kind}: {exc})")
    # Read/write timeouts and errors, a dropped connection, or anything we do not
    # know: the bytes may have reached the server, so "maybe sent" is the safe class.
    return MaybeSentError(f"{what}: may have been sent ({kind}: {exc})")


def _check_body(response: httpx.Response, expect: type | None, what: str) -> MaybeSentError | None:
    if expect is None:
        return None
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, expect):
        return None
    return MaybeSentError(
        f"{what}: {response.status_code} with a body that is not a JSON {getattr(expect, '__name__', 'value')}; "
        "the server applied it but the result cannot be read",
        status=response.status_code,
    )


def api_message(response: httpx.Response) -> str:
    """The API's own explanation: the JSON ``message`` field, else the body text.

    A list of messages (validation errors) is joined with "; ". At most
    ``MESSAGE_LIMIT`` characters.
    """
    try:
        body = response.json()
    except ValueError:
        body = None
    message = body.get("message") if isinstance(body, dict) else None
    if isinstance(message, list):
        message = "; ".join(str(item) for item in message)
    elif message is not None and not isinstance(message, str):
        message = json.dumps(message)
    text = message if message else response.text.strip()
    if len(text) > MESSAGE_LIMIT:
        text = text[:MESSAGE_LIMIT] + "…"
    return text or "(no message)"


class UpstreamClient(SpanAndEvaluationCalls, StorageCalls):
    """A thread-safe, synchronous client for the Galtea API inference-result calls.

    One instance may be shared by many threads: each thread gets its own kept-alive
    connection (:mod:`.upstream_pool`: ``httpx.Client``'s models cost the CPU-bound drain
    more than the wire does), or, with a proxy in the environment or a ``transport``
    given, its own ``httpx.Client`` whose pool keeps up to ``max_connections``
    connections (a pushing thread sends one request at a time). TLS is always verified
    (against ``ca_bundle`` when given); proxies come from the environment;
    redirects are not followed. Each method returns the parsed JSON as the
    server sends it (camelCase) or raises an ``UpstreamError`` subclass chosen by
    ``classify()``; nothing else escapes it but a bug in the caller's arguments
    (e.g. a body that is not JSON-serialisable raises TypeError before sending).
    Constructor problems raise ConfigError.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        api_key: str | Secret = "",
        *,
        timeouts: Sequence[float] = DEFAULT_TIMEOUTS,
        ca_bundle: str | None = None,
        extra_headers: Mapping[str, str] | None = None,
        allow_insecure_http: bool = False,
        transport: httpx.BaseTransport | None = None,
        max_connections: int = 64,
    ) -> None:
        self._api_key = api_key if isinstance(api_key, Secret) else Secret(api_key)
        if not isinstance(self._api_key.reveal(), str) or not _API_KEY.fullmatch(self._api_key.reveal()):
            # h11 would quote a malformed key in its error: refuse it here, unquoted.
            raise ConfigError("the Galtea API key is empty or holds blanks or non-ASCII characters")
        self.base_url = checked_base_url(base_url, allow_insecure_http=allow_insecure_http)
        headers = {
            **checked_headers(extra_headers or {}, "extra_headers"),
            "Authorization": f"Bearer {self._api_key.reveal()}",
            "User-Agent": user_agent(),
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
        options = dict(
            base_url=self.base_url,
            headers=headers,
            timeout=_timeout(timeouts),
            verify=_tls(ca_bundle),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            transport=transport,
            follow_redirects=False,
            trust_env=True,
        )

        def new_client() -> httpx.Client:  # a closure: the auth header never shows in a repr
            return httpx.Client(**options)

        self._new_client = new_client
        transfer_timeout = httpx.Timeout(connect=timeouts[0], read=TRANSFER_TIMEOUT_S, write=TRANSFER_TIMEOUT_S,
                                         pool=timeouts[3])
        self._new_transfer_client = lambda: httpx.Client(  # presigned links: no API key, no base URL
            timeout=transfer_timeout, verify=options["verify"], transport=transport, trust_env=True)
        # One httpx.Client per pushing thread: a single shared pool serialises every request
        # of every thread on its lock (measured: half the push threads' time at 32 lanes).
        self._local = threading.local()
        self._clients: list[httpx.Client] = []
        self._clients_lock = threading.Lock()
        self._direct = (upstream_pool.ThreadConnections(self.base_url, headers, options["timeout"], options["verify"])
                        if upstream_pool.usable(transport) else None)
        self.server_clock = ServerClock()  # measured from every answer's Date header

    @property
    def _http(self) -> httpx.Client:
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._new_client()
            with self._clients_lock:
                self._clients.append(client)
            self._local.client = client
        return client

    def __repr__(self) -> str:
        return f"UpstreamClient(base_url={self.base_url!r}, api_key={self._api_key!r})"

    def close(self) -> None:
        """Close every thread's connection pool. The client must not be used afterwards."""
        with self._clients_lock:
            clients, self._clients = self._clients, []
            if self._transfer_client is not None:
                clients.append(self._transfer_client)
                self._transfer_client = None
        for client in clients:
            client.close()
        if self._direct is not None:
            self._direct.close()

    def __enter__(self) -> UpstreamClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- inference results -------------------------------------------------

    def create_inference_result(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST /inferenceResults with a wire body (see ``wire.create_body``); the created record."""
        return self._call("POST", "/inferenceResults", body=body, expect=dict)

    def create_inference_results_batch(self, body: Mapping[str, Any]) -> list[dict[str, Any]]:
        """POST /inferenceResults/batch with the SDK's body; the created records, in the API's pairing order."""
        return self._call("POST", "/inferenceResults/batch", body=body, expect=list)

    def update_inference_result(self, remote_id: str, changes: Mapping[str, Any]) -> dict[str, Any]:
        """PATCH /inferenceResults/{id} with a wire body (see ``wire.update_body``); the record."""
        return self._call("PATCH", f"/inferenceResults/{path_segment(remote_id)}", body=changes, expect=dict)

    def delete_inference_result(self, remote_id: str) -> None:
        """DELETE /inferenceResults/{id}.

        A 404 counts as success: the record is already gone, which is what a
        delete asks for (it also makes a re-sent delete after "maybe sent"
        idempotent). Other errors raise as usual.
        """
        self._call("DELETE", f"/inferenceResults/{path_segment(remote_id)}", expect=None, missing_ok=True)

    def get_inference_result(self, remote_id: str) -> dict[str, Any]:
        """GET /inferenceResults/{id}. A missing record raises RejectedError with status 404."""
        return self._call("GET", f"/inferenceResults/{path_segment(remote_id)}", expect=dict)

    def list_inference_results(
        self,
        *,
        session_ids: Sequence[str] | None = None,
        ids: Sequence[str] | None = None,
        from_created_at: str | None = None,
        to_created_at: str | None = None,
        offset: int | None = None,
        limit: int | None = None,
        sort: str | None = "asc",
    ) -> list[dict[str, Any]]:
        """GET /inferenceResults: one page, sorted by ``createdAt`` (``sort`` "asc"/"desc"/None).

        Timestamps are ISO 8601 strings, passed as given. Paging is the caller's.
        """
        if sort not in ("asc", "desc", None):
            raise InvalidInputError("sort must be 'asc', 'desc' or None")
        query = query_string(
            [
                ("ids", as_list(ids)),
                ("sessionIds", as_list(session_ids)),
                ("fromCreatedAt", from_created_at),
                ("toCreatedAt", to_created_at),
                ("offset", offset),
                ("limit", limit),
                ("sort", ["createdAt", sort] if sort else None),
            ]
        )
        return self._call("GET", "/inferenceResults", query=query, expect=list)

    # -- sessions -------------------------------------------------------------

    def list_sessions(
        self,
        *,
        custom_ids: Sequence[str] | None = None,
        version_ids: Sequence[str] | None = None,
        ids: Sequence[str] | None = None,
    ) -> list[dict[str, Any]]:
        """GET /sessions filtered by ids, custom ids and version ids: one page."""
        query = query_string(
            [("ids", as_list(ids)), ("versionIds", as_list(version_ids)), ("customIds", as_list(custom_ids))]
        )
        return self._call("GET", "/sessions", query=query, expect=list)

    def create_session(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST /sessions with a wire body (see ``wire.session_body``); the created session."""
        return self._call("POST", "/sessions", body=body, expect=dict)

    def update_session(self, session_id: str, changes: Mapping[str, Any]) -> dict[str, Any]:
        """PATCH /sessions/{id} with only the fields being changed (null clears one)."""
        return self._call("PATCH", f"/sessions/{path_segment(session_id)}", body=changes, expect=dict)

    def delete_session(self, session_id: str) -> None:
        """DELETE /sessions/{id}; a session already gone (404) counts as deleted."""
        self._call("DELETE", f"/sessions/{path_segment(session_id)}", expect=None, missing_ok=True)

    def finish_session(self, session_id: str, stopping_reason: str) -> dict[str, Any]:
        """PATCH /sessions/{id}/finish: the session is COMPLETED (finishing twice is harmless)."""
        return self._call(
            "PATCH", f"/sessions/{path_segment(session_id)}/finish", body={"stoppingReason": stopping_reason},
            expect=dict,
        )

    def get_session(self, session_id: str) -> dict[str, Any]:
        """GET /sessions/{id}. A missing session raises RejectedError with status 404."""
        return self._call("GET", f"/sessions/{path_segment(session_id)}", expect=dict)

    # -- the one place a request is sent ------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        query: str = "",
        expect: type | None,
        missing_ok: bool = False,
    ) -> Any:
        what = f"{method} {path}"
        send = self._prepare(method, f"{path}?{query}" if query else path, body)
        started, sent_at = time.monotonic(), time.time()
        try:
            response = send()
        except Exception as exc:  # translated at the boundary: callers never see httpx errors
            log.debug("%s failed after %.0f ms: %s", what, _ms(started), type(exc).__name__)
            raise self._redacted(classify(exc, what=what)) from exc
        self.server_clock.observe(response.headers.get("date"), sent_at, time.time())
        log.debug("%s -> %d in %.0f ms", what, response.status_code, _ms(started))
        if missing_ok and response.status_code == 404:
            return None
        error = classify(response, expect=expect, what=what)
        if error is not None:
            raise self._redacted(error)
        return response.json() if expect is not None else None

    def _prepare(self, method: str, target: str, body: Mapping[str, Any] | None) -> Callable[[], httpx.Response]:
        """The request, ready to send. Its body is encoded here, outside the classification: a
        body that is not JSON raises TypeError or ValueError before anything is sent."""
        if self._direct is not None:
            return functools.partial(self._direct.send, method, target, upstream_pool.encode(body))
        return functools.partial(self._http.send, self._http.build_request(method, target, json=body))

    def _redacted(self, error: UpstreamError) -> UpstreamError:
        # A proxy or server may echo our request back in its answer.
        key = self._api_key.reveal()
        if key in error.message:
            error.message = error.message.replace(key, "<redacted>")
            error.args = (error.message,)
        return error


def _timeout(timeouts: Sequence[float]) -> httpx.Timeout:
    values = tuple(timeouts)
    if len(values) != 4 or not all(isinstance(v, (int, float)) and v > 0 for v in values):
        raise ConfigError("timeouts must be four positive numbers of seconds: (connect, read, write, pool)")
    connect, read, write, pool = values
    return httpx.Timeout(connect=connect, read=read, write=write, pool=pool)


def _tls(ca_bundle: str | None) -> ssl.SSLContext:
    """One verifying TLS context, shared by every thread's client: each context holds its
    own copy of the CA bundle (about 2 MB), so one per thread would cost ~70 MB at 32."""
    if ca_bundle is None:
        return httpx.create_ssl_context()  # httpx's default: certifi's bundle, verification on
    try:
        return ssl.create_default_context(cafile=ca_bundle)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the CA bundle {ca_bundle}: {exc.strerror or exc}") from None


def _ms(started: float) -> float:
    return (time.monotonic() - started) * 1000
