"""A TCP proxy in front of the test PostgreSQL, to break connections at exact moments.

Real sockets, real server: the proxy relays bytes both ways and, when armed,
cuts a connection around its next ``COMMIT``:

- ``cut_after_commit()``: the COMMIT reaches the server, its answer never
  reaches the client (the "lost COMMIT reply" case: the row is committed);
- ``cut_before_commit()``: the COMMIT is swallowed and the connection closed
  (the server rolls the transaction back);
- ``refuse = True``: new connections are accepted and closed at once.
"""

from __future__ import annotations

import socket
import threading
import time


class PgProxy:
    def __init__(self, host: str = "127.0.0.1", port: int = 5432) -> None:
        self._target = (host, port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.refuse = False
        self._arm: str | None = None
        self._lock = threading.Lock()
        self.cuts = 0
        self._closing = False
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, server_url: str) -> str:
        """``server_url`` with its host and port replaced by the proxy's."""
        scheme, rest = server_url.split("://", 1)
        userinfo, _, after = rest.rpartition("@")
        path = after[after.index("/"):]
        return f"{scheme}://{userinfo + '@' if userinfo else ''}127.0.0.1:{self.port}{path}"

    def cut_after_commit(self) -> None:
        with self._lock:
            self._arm = "after"

    def cut_before_commit(self) -> None:
        with self._lock:
            self._arm = "before"

    def close(self) -> None:
        self._closing = True
        self._listener.close()

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.refuse:
                client.close()
                continue
            server = socket.create_connection(self._target)
            muted = threading.Event()  # set: the server's answers are dropped (the lost reply)
            threading.Thread(target=self._pump, args=(client, server, True, muted), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False, muted), daemon=True).start()

    def _take_arm(self, chunk: bytes) -> str | None:
        if b"COMMIT" not in chunk:
            return None
        with self._lock:
            arm, self._arm = self._arm, None
        return arm

    def _pump(self, source: socket.socket, sink: socket.socket, upstream: bool, muted: threading.Event) -> None:
        try:
            while chunk := source.recv(65536):
                if not upstream and muted.is_set():
                    continue
                arm = self._take_arm(chunk) if upstream else None
                if arm == "after":
                    muted.set()
                    sink.sendall(chunk)
                    time.sleep(0.2)  # let the server commit; its answer is then dropped with the socket
                if arm is not None:
                    self.cuts += 1
                    break
                sink.sendall(chunk)
        except OSError:
            pass
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
