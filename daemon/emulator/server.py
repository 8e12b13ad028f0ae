"""Serving the emulator: in the foreground (the CLI) or on a background thread (tests).

We bind the listening socket ourselves before uvicorn starts, so ``port=0``
yields the real port up front and the address can be announced the moment the
server accepts connections.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable
from typing import Any

import uvicorn

from galtea_local_daemon.emulator.app import build_app
from galtea_local_daemon.emulator.faults import FaultConfig

# The kernel caps the accept queue at net.core.somaxconn; asking for more costs nothing
# and lets a burst of a thousand new connections wait instead of being refused.
BACKLOG = 4096


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (``port=0``: any free port)."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    sock.listen(BACKLOG)
    sock.setblocking(False)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class EmulatorServer(uvicorn.Server):
    """uvicorn's server, minus re-raising the stop signal after a graceful shutdown.

    uvicorn re-delivers a captured SIGTERM/SIGINT once it has stopped, which
    would turn our clean stop into a death by signal; the CLI must exit 0.
    """

    def handle_exit(self, sig: int, frame: Any) -> None:
        super().handle_exit(sig, frame)
        captured = getattr(self, "_captured_signals", None)
        if captured:
            captured.clear()


def make_server(app: Any) -> EmulatorServer:
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="off",
        backlog=BACKLOG,
        # No cap on concurrent connections: the point is to hold a thousand slow requests at once.
        limit_concurrency=None,
        timeout_keep_alive=30,
        timeout_graceful_shutdown=3,
        date_header=False,  # the fault layer sends Date from the server's own (maybe skewed) clock
    )
    return EmulatorServer(config)


def run_emulator(
    host: str = "127.0.0.1",
    port: int = 0,
    config: FaultConfig | None = None,
    seed: int | None = None,
    on_ready: Callable[[str], None] | None = None,
) -> int:
    """Serve in the foreground until SIGTERM/SIGINT (or Ctrl-C), then return 0.

    ``on_ready(url)`` is called once the socket is bound, before the first request is accepted.
    """
    app, _, _ = build_app(config, seed)
    sock = bind_socket(host, port)
    server = make_server(app)
    if on_ready is not None:
        on_ready(url_of(sock))
    try:
        asyncio.run(server.serve(sockets=[sock]))
    finally:
        sock.close()
    return 0


class EmulatorThread:
    """The emulator on a background thread of this process, for tests and benchmarks.

    ``start()`` returns once the server accepts connections; ``stop()`` shuts it
    down and joins the thread. ``store`` and ``injector`` are the live objects
    (read them only while no request is running, or use the dump endpoint).
    """

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, config: FaultConfig | None = None, seed: int | None = None
    ) -> None:
        self.app, self.store, self.injector = build_app(config, seed)
        self._sock = bind_socket(host, port)
        self.url = url_of(self._sock)
        self._server = make_server(self.app)
        self._thread = threading.Thread(target=self._run, name="galtea-emulator", daemon=True)
        self._failure: BaseException | None = None

    def _run(self) -> None:
        try:
            asyncio.run(self._server.serve(sockets=[self._sock]))
        except BaseException as exc:  # surfaced by start()/stop(), the thread has no other way out
            self._failure = exc

    def start(self, timeout: float = 10.0) -> EmulatorThread:
        self._thread.start()
        ready = threading.Event()
        for _ in range(int(timeout / 0.01)):
            if self._server.started or not self._thread.is_alive():
                break
            ready.wait(0.01)
        if not self._server.started:
            self.stop()
            raise RuntimeError(f"emulator did not start: {self._failure!r}")
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._sock.close()

    def __enter__(self) -> EmulatorThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
