"""The daemon's requests on a kept-alive ``http.client`` connection per thread, without ``httpx.Client``.

Under a backlog the daemon sends two requests per record (the create and its ``createdAt``
stamp), and it is bound by its CPU. Each ``httpx.Client`` request cost 1.4 ms of CPU on the
2-core box, most of it in building the client's request and response models (URL parsing
and merging, header normalisation, the auth, redirect and cookie flows). Through httpcore's
pool (httpx's transport) the same request cost a third less, and through the standard
library's ``http.client`` 58-63% less (``benchmarks/bench_http.py``). That CPU is the drain's,
and the apps' on a small box (docs/benchmarks-soak.md §10).

What stays as it was with ``httpx.Client``:
- the bytes sent: the same headers, TLS context and body (:func:`encode` is httpx's
  ``json=`` encoding);
- the answer is an ``httpx.Response``, and every transport error is raised as the
  ``httpx`` exception that names the same failure, in the same phase (connect, write,
  read), so :func:`.upstream.classify` keeps "not sent" and "maybe sent" as they were;
- a kept-alive connection the server closed while idle is dropped before it is used
  again, as httpcore does, and never taken for a lost request;
- one connection per pushing thread: a thread sends one request at a time.

:func:`usable` says when this path is used: not with a proxy in the environment
(``httpx.Client`` reads and honours those) and not with a transport given for tests.
"""

from __future__ import annotations

import http.client
import json
import os
import select
import socket
import ssl
import threading
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx

# httpx reads these (any case) when ``trust_env`` is on; with one set, requests go through it.
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy")


def usable(transport: httpx.BaseTransport | None, environ: Mapping[str, str] = os.environ) -> bool:
    """True when requests may skip ``httpx.Client``: no test transport and no proxy to honour."""
    names = {name.lower() for name, value in environ.items() if value}
    return transport is None and not names.intersection(PROXY_VARIABLES)


def encode(body: Mapping[str, Any] | None) -> bytes:
    """A JSON body as httpx encodes ``json=``: compact, UTF-8, no NaN (TypeError or ValueError
    for a body that cannot be sent, before anything is)."""
    if body is None:
        return b""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")


class ThreadConnections:
    """JSON requests to one API, each thread on its own kept-alive connection; answers as ``httpx.Response``."""

    def __init__(self, base_url: str, headers: Mapping[str, str], timeout: httpx.Timeout,
                 ssl_context: ssl.SSLContext) -> None:
        parts = urlsplit(base_url)
        self._base = base_url.rstrip("/")
        self._prefix = parts.path.rstrip("/")
        self._https = parts.scheme == "https"
        self._address = (parts.hostname or "", parts.port)
        self._headers = dict(headers)
        self._connect_s, self._write_s, self._read_s = timeout.connect, timeout.write, timeout.read
        self._ssl_context = ssl_context
        self._local = threading.local()
        self._open: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def send(self, method: str, target: str, content: bytes) -> httpx.Response:
        """One request (``content``: from :func:`encode`). A transport error is raised as httpx's
        exception for it. Any error leaves the connection closed, whatever it was in the middle of
        (the next request opens a new one)."""
        conn = self._connection()
        try:
            status, headers, body = self._exchange(conn, method, self._prefix + target, content)
        except BaseException:
            conn.close()
            raise
        # Only an error needs the request (``classify`` asks whether a 503 answered a write),
        # and building one parses the URL again.
        request = None if 200 <= status < 300 else httpx.Request(method, self._base + target)
        return httpx.Response(status, headers=headers, content=body, request=request)

    def _exchange(self, conn: http.client.HTTPConnection, method: str, path: str,
                  content: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        if conn.sock is None:
            _connect(conn)
        try:
            conn.sock.settimeout(self._write_s)
            conn.request(method, path, body=content or None, headers=self._headers)
        except (TimeoutError, socket.timeout) as exc:
            raise httpx.WriteTimeout(str(exc)) from exc
        except (OSError, http.client.HTTPException) as exc:
            raise httpx.WriteError(str(exc)) from exc
        try:
            conn.sock.settimeout(self._read_s)  # the read timeout: how long to wait for the answer
            answer = conn.getresponse()
            body = answer.read()
        except (TimeoutError, socket.timeout) as exc:
            raise httpx.ReadTimeout(str(exc)) from exc
        except (http.client.RemoteDisconnected, http.client.HTTPException) as exc:  # closed, or not HTTP
            raise httpx.RemoteProtocolError(str(exc)) from exc
        except OSError as exc:
            raise httpx.ReadError(str(exc)) from exc
        if answer.will_close:
            conn.close()
        return answer.status, answer.getheaders(), body

    def _connection(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            host, port = self._address
            if self._https:
                conn = http.client.HTTPSConnection(host, port, timeout=self._connect_s, context=self._ssl_context)
            else:
                conn = http.client.HTTPConnection(host, port, timeout=self._connect_s)
            with self._lock:
                self._open.append(conn)
            self._local.conn = conn
        elif conn.sock is not None and _readable(conn.sock):
            conn.close()  # idle, yet readable: the server closed it (or sent what we never asked for)
        return conn

    def close(self) -> None:
        with self._lock:
            open_now, self._open = self._open, []
        for conn in open_now:
            conn.close()


def _connect(conn: http.client.HTTPConnection) -> None:
    """Open the connection (TLS handshake included), within the connect timeout: nothing is sent yet."""
    try:
        conn.connect()
    except (TimeoutError, socket.timeout) as exc:
        conn.close()
        raise httpx.ConnectTimeout(str(exc)) from exc
    except OSError as exc:  # refused, unreachable, DNS, TLS verification
        conn.close()
        raise httpx.ConnectError(str(exc)) from exc


def _readable(sock: socket.socket) -> bool:
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))
