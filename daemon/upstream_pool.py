"""The daemon's requests through httpcore, httpx's own connection layer, without ``httpx.Client``.

Under a backlog the daemon sends two requests per record (the create and its ``createdAt``
stamp), and it is bound by its CPU. Each ``httpx.Client`` request cost 1.4 ms of CPU on the
2-core box, most of it in building the client's request and response models (URL parsing
and merging, header normalisation, the auth, redirect and cookie flows). The same request
through httpcore's pool, with the same TLS context, timeouts and headers, cost 35% less
(``benchmarks/bench_http.py``), and the daemon drained 22% more records in the same CPU
(docs/benchmarks-soak.md §10).

What stays as it was:
- the answer is an ``httpx.Response`` (status, headers, body, and the request's method),
  so :func:`.upstream.classify` judges both paths the same way;
- a transport error is raised as the ``httpx`` exception of the same name (httpx maps
  httpcore's errors one to one), so "not sent" and "maybe sent" mean what they did;
- a pooled connection the server closed is dropped before reuse (httpcore checks), as
  with ``httpx.Client``;
- one pool per thread, as with the clients: one shared pool serialised every thread on
  its lock.

:func:`usable` says when this path is used: not with a proxy in the environment
(``httpx.Client`` reads those) and not with a transport given for tests.
"""

from __future__ import annotations

import json
import os
import ssl
import threading
from collections.abc import Mapping
from typing import Any

import httpcore
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


class PooledHTTP:
    """JSON requests to one API, each thread on its own httpcore pool; answers as ``httpx.Response``."""

    def __init__(self, base_url: str, headers: Mapping[str, str], timeout: httpx.Timeout,
                 ssl_context: ssl.SSLContext, max_connections: int) -> None:
        self._base = base_url.rstrip("/")
        self._headers = [(name.encode("ascii"), value.encode("latin-1")) for name, value in headers.items()]
        self._extensions = {"timeout": timeout.as_dict()}
        self._ssl_context, self._max_connections = ssl_context, max_connections
        self._local = threading.local()
        self._pools: list[httpcore.ConnectionPool] = []
        self._lock = threading.Lock()

    def send(self, method: str, path: str, content: bytes) -> httpx.Response:
        """One request (``content``: from :func:`encode`); raises the httpx exception httpx would
        have raised for a transport error."""
        try:
            answer = self._pool().request(method, self._base + path, headers=self._headers, content=content,
                                          extensions=self._extensions)
        except httpcore.TimeoutException as exc:  # the subclasses first: they are also NetworkErrors
            raise _as_httpx(exc) from exc
        except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.ProxyError,
                httpcore.UnsupportedProtocol) as exc:
            raise _as_httpx(exc) from exc
        # Only an error needs the request (``classify`` asks whether a 503 answered a write), and
        # building one parses the URL again.
        request = None if 200 <= answer.status < 300 else httpx.Request(method, self._base + path)
        return httpx.Response(answer.status, headers=answer.headers, content=answer.content, request=request)

    def _pool(self) -> httpcore.ConnectionPool:
        pool = getattr(self._local, "pool", None)
        if pool is None:
            pool = httpcore.ConnectionPool(ssl_context=self._ssl_context, max_connections=self._max_connections,
                                           max_keepalive_connections=self._max_connections)
            with self._lock:
                self._pools.append(pool)
            self._local.pool = pool
        return pool

    def close(self) -> None:
        with self._lock:
            pools, self._pools = self._pools, []
        for pool in pools:
            pool.close()


def _as_httpx(exc: Exception) -> httpx.TransportError:
    """httpcore's error as httpx's class of the same name (httpx maps them one to one)."""
    for cls in type(exc).__mro__:
        found = getattr(httpx, cls.__name__, None)
        if isinstance(found, type) and issubclass(found, httpx.TransportError):
            return found(str(exc))
    return httpx.TransportError(str(exc))
