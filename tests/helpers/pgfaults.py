"""Database faults injected into a throwaway PostgreSQL database, and the writer that lives through them.

Never the server: each fault is per database or per connection, on a database
(``gl_fault_<hex>``) and a login role of the same name created for the test
module and dropped after. The role is not a superuser, because superusers are
exempt from a database's ``CONNECTION LIMIT``.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from galtea_local import Galtea, GaltealocalError, OutcomeUnknownError


class FaultDb:
    """A throwaway database and role; faults are switched on and off from an admin connection."""

    def __init__(self, admin_conninfo: str) -> None:
        self.name = f"gl_fault_{secrets.token_hex(4)}"
        self._admin = psycopg.connect(admin_conninfo, autocommit=True, connect_timeout=5)
        self._admin.execute(f"CREATE ROLE {self.name} LOGIN NOSUPERUSER")
        self._admin.execute(f"CREATE DATABASE {self.name} OWNER {self.name}")
        host = self._admin.info.host
        self.url = f"postgresql+psycopg://{self.name}@{host}:{self._admin.info.port}/{self.name}"
        self._admin_conninfo = admin_conninfo

    def drop(self) -> None:
        self.alter("ALLOW_CONNECTIONS false")
        self.kill_backends()
        self._admin.execute(f"DROP DATABASE IF EXISTS {self.name}")
        self._admin.execute(f"DROP ROLE IF EXISTS {self.name}")
        self._admin.close()

    def alter(self, clause: str) -> None:
        self._admin.execute(f"ALTER DATABASE {self.name} {clause}")

    def kill_backends(self) -> int:
        rows = self._admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (self.name,)).fetchall()
        return len(rows)

    def backends(self) -> int:
        return self._admin.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s",
                                   (self.name,)).fetchone()[0]

    @contextmanager
    def killing_backends(self, every_s: float = 0.5) -> Iterator[None]:
        stop = threading.Event()

        def kill() -> None:
            while not stop.wait(every_s):
                self.kill_backends()

        thread = threading.Thread(target=kill, daemon=True)
        self.kill_backends()
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    @contextmanager
    def setting(self, name: str, value: str) -> Iterator[None]:
        """A per-database default, met by every session opened meanwhile (the open ones are killed)."""
        self.alter(f"SET {name} = '{value}'")
        self.kill_backends()
        try:
            yield
        finally:
            self.alter(f"RESET {name}")

    @contextmanager
    def clause(self, on: str, off: str) -> Iterator[None]:
        """``CONNECTION LIMIT n`` / ``ALLOW_CONNECTIONS false``, open sessions killed so everyone reconnects."""
        self.alter(on)
        self.kill_backends()
        try:
            yield
        finally:
            self.alter(off)

    @contextmanager
    def table_locked(self, schema: str, table: str) -> Iterator[None]:
        """ACCESS EXCLUSIVE on ``table``, held from another (superuser) connection until the block ends."""
        conninfo = psycopg.conninfo.make_conninfo(self._admin_conninfo, dbname=self.name)
        holder = psycopg.connect(conninfo, autocommit=True)
        holder.execute("BEGIN")
        holder.execute(f"LOCK TABLE {schema}.{table} IN ACCESS EXCLUSIVE MODE")
        try:
            yield
        finally:
            holder.execute("ROLLBACK")
            holder.close()


class Writer(threading.Thread):
    """A single-threaded app: creates a record every ``pause_s``, reads and updates some, and keeps
    what it was told: acknowledged markers, project errors by class, anything else (must stay empty)."""

    def __init__(self, url: str, config: str, sessions: list[str], tag: str, pause_s: float = 0.01) -> None:
        super().__init__(daemon=True)
        self._galtea = Galtea(store=url, config=config)
        self._sessions = sessions
        self.tag = tag
        self._pause_s = pause_s
        self._halt = threading.Event()
        self.acked: list[str] = []
        self.ack_times: list[float] = []  # monotonic, one per acked create
        self.unknown: list[str] = []  # markers whose create raised OutcomeUnknownError
        self.errors: Counter[str] = Counter()
        self.foreign: list[str] = []

    def run(self) -> None:
        n = 0
        while not self._halt.is_set():
            marker = f"{self.tag}-{n}"
            record = self._call(marker, lambda: self._galtea.traces.create(
                session_id=self._sessions[n % len(self._sessions)], input=marker, output="ok"))
            if record is not None:
                self.acked.append(marker)
                self.ack_times.append(time.monotonic())
                if n % 3 == 0:
                    self._call(None, lambda: self._galtea.traces.get(record.id))
                if n % 4 == 0:
                    self._call(None, lambda: self._galtea.traces.update(record.id, latency=float(n)))
            n += 1
            self._halt.wait(self._pause_s)
        self._galtea.close()

    def _call(self, marker: str | None, call: Any) -> Any:
        try:
            return call()
        except OutcomeUnknownError as error:
            self.errors[type(error).__name__] += 1
            if marker is not None:
                self.unknown.append(marker)
        except GaltealocalError as error:
            self.errors[type(error).__name__] += 1
        except Exception as error:  # the promise under test: never anything but a project error
            self.foreign.append(repr(error))
        return None

    def first_ack_after(self, moment: float) -> float | None:
        return next((t for t in self.ack_times if t >= moment), None)

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(30)
