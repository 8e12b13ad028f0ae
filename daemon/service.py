"""``galtea-local daemon``: the long-running sync daemon.

APScheduler runs :meth:`SyncEngine.run_once` every ``sync.interval_s``, one
pass at a time (``max_instances=1``) with coalesced misfires; the scheduler
holds no logic. The daemon wakes the job early:

- when the previous pass reported ``more_due`` (its budget ran out, or lanes
  are waiting for a free worker);
- when another process wrote to the store: the main thread polls
  ``PRAGMA data_version`` on a dedicated connection every 200 ms (it changes
  when any *other* connection commits), so a fresh record leaves within about
  a fifth of a second. The daemon's own commits change it too, which costs at
  most a couple of empty passes after each busy one; after a pass halted by an
  auth failure or a throttle, writes do not wake it (the interval does), so a
  refused key is not probed in a tight loop.

Signals only set a flag; the main loop acts on it. The first SIGTERM/SIGINT
starts a warm stop: no new claims, in-flight pushes get ``shutdown_timeout_s``
to finish, then exit 0. What did not finish stays durable: a claimed but
unsent operation is still pending, a sent one is "maybe sent" and is
reconciled by the next pusher before any re-send. A second signal exits at
once, with the same guarantee.
"""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import sys
import threading
import time
from datetime import datetime, timezone
from typing import Any

from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED, EVENT_JOB_MAX_INSTANCES
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from galtea_local.config import Settings
from galtea_local.status import store_status
from galtea_local.store import Store
from galtea_local_daemon.engine import EngineSettings, PassReport, SyncEngine
from galtea_local_daemon.housekeeping import WAL_CHECK_EVERY_S, Housekeeper
from galtea_local_daemon.loadwatch import PUBLISH_EVERY_S, WriteWatch
from galtea_local_daemon.logs import configure_logging
from galtea_local_daemon.metrics import REFRESH_EVERY_S, DaemonMetrics
from galtea_local_daemon.runtime import make_client, make_engine, open_store, pusher_guard, release_stale_leases
from galtea_local_daemon.sdnotify import Notifier
from galtea_local_daemon.storefile import EXIT_STORE_REPLACED, StoreFile

log = logging.getLogger("galtea_local.daemon")

JOB_ID = "sync-pass"
POLL_S = 0.2  # how often the main loop looks at signals, the store's data_version and the watchdog
GIL_SWITCH_INTERVAL_S = 0.001
EXIT_FORCED = 1  # a second signal: no clean stop, but nothing lost (the state is durable)


class _SkippedRunFilter(logging.Filter):
    """Hide APScheduler's warning that a run met a running pass: :meth:`Daemon._on_job_skipped` handles it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "maximum number of running instances reached" not in record.getMessage()


class StoreWatch:
    """Tells when another connection committed to the store (``PRAGMA data_version``)."""

    def __init__(self, store: Store) -> None:
        self._conn = sqlite3.connect(store.path, timeout=store.busy_timeout_s, isolation_level=None)
        self._version = self._read()

    def _read(self) -> int:
        return self._conn.execute("PRAGMA data_version").fetchone()[0]

    def changed(self) -> bool:
        try:
            version = self._read()
        except sqlite3.Error as exc:  # a busy or hiccuping store: the interval still runs passes
            log.debug("data_version poll failed: %s", exc)
            return False
        changed, self._version = version != self._version, version
        return changed

    def close(self) -> None:
        self._conn.close()


class OutboxWatch:
    """PostgreSQL's stand-in for :class:`StoreWatch`: a new operation raises the outbox's top ``seq``.

    One index probe per poll; the daemons' own settling does not count as a change.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._top = self._read()

    def _read(self) -> int:
        return self._store.read(lambda conn: conn.execute("SELECT COALESCE(MAX(seq), 0) FROM outbox").fetchone()[0])

    def changed(self) -> bool:
        try:
            top = self._read()
        except Exception as exc:  # a busy or restarting server: the interval still runs passes
            log.debug("outbox poll failed: %s", exc)
            return False
        changed, self._top = top != self._top, top
        return changed

    def close(self) -> None:
        pass


class Daemon:
    """One store, one engine, one scheduler; :meth:`run` blocks until a signal stops it."""

    def __init__(self, settings: Settings, store: Store, engine: SyncEngine, notifier: Notifier) -> None:
        self.settings = settings
        self.store = store
        self.engine = engine
        self.notifier = notifier
        self.housekeeper = Housekeeper(store, settings.retention)
        self.metrics = DaemonMetrics(store, settings.metrics)
        self.write_watch = WriteWatch(store, engine.limit)
        self.scheduler = BackgroundScheduler(timezone=timezone.utc)
        logging.getLogger("apscheduler.scheduler").addFilter(_SkippedRunFilter())
        self._state = threading.Lock()
        self._running = False
        self._again = False  # run another pass as soon as the current one ends
        self._quiet = False  # the last pass was halted (auth, throttle): store writes do not wake us
        self._idle = threading.Event()
        self._idle.set()
        self._pass_started: float | None = None  # monotonic; None between passes
        self._last_pass_end = time.monotonic()
        self._signal: int | None = None
        self._store_file = StoreFile(store.path) if store.dialect == "sqlite" else None
        self._replaced: str | None = None  # set when the store file was replaced under us
        self._status_text = ""
        self._status_read_at = float("-inf")
        # A pass stops claiming after its budget; in-flight requests end within the lease.
        self._stall_s = EngineSettings.pass_budget_s + settings.sync.lease_s

    # -- signals -----------------------------------------------------------------

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._signal is not None:
            # The operator insists. Every state change is already committed, so
            # skipping the clean stop loses nothing and duplicates nothing.
            os._exit(EXIT_FORCED)
        self._signal = signum  # only a flag: the main loop does the stopping

    def _install_signals(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    # -- the job -------------------------------------------------------------------

    def _pass_job(self) -> None:
        if self.engine.stopping:
            return
        with self._state:
            self._running = True
            self._idle.clear()
        self._pass_started = time.monotonic()
        try:
            report = self.engine.run_once()
        except Exception:  # a store hiccup must not end the daemon; the next pass tries again
            log.exception("sync pass failed")
            report = PassReport()
        self._after_pass(report)
        with self._state:
            self._again = self._again or report.more_due
            self._quiet = report.auth_failing or report.throttled_until is not None
        self._pass_started = None

    def _after_pass(self, report: PassReport) -> None:
        self.metrics.count_pass(report)
        if report.pushed or report.adopted or report.dead or report.retried:
            self.housekeeper.note_activity()
            log.info("pass: pushed %d, adopted %d, retried %d, dead-lettered %d",
                     report.pushed, report.adopted, report.retried, report.dead)
        if self.engine.stopping:
            return  # housekeeping can wait for the next start; the stop deadline cannot
        try:
            self.housekeeper.run()
        except Exception:
            log.exception("housekeeping failed")
        # At most once a second (REFRESH_EVERY_S): a status read counts every record, and under
        # systemd a read after each of many short passes cost the drain more as the store grew.
        if self.metrics.wants_status() or (self.notifier.enabled and self._status_due()):
            self._publish_status()

    def _status_due(self) -> bool:
        now = time.monotonic()
        if now - self._status_read_at < REFRESH_EVERY_S:
            return False
        self._status_read_at = now
        return True

    def _publish_status(self) -> None:
        status = store_status(self.store)
        self.metrics.refresh(status)
        text = f"queued {status['queued']}, synced {status['synced']}, dead {status['dead']}"
        if status["auth_failing"]:
            text += "; AUTH FAILING: pushing paused"
        if text != self._status_text:
            self._status_text = text
            self.notifier.status(text)

    def _on_job_done(self, event: Any) -> None:
        # APScheduler calls this after it counted the job as finished, so a
        # wake-up from here is never refused as "maximum instances reached".
        with self._state:
            self._running = False
            again, self._again = self._again, False
        self._last_pass_end = time.monotonic()
        self._idle.set()
        if again and not self.engine.stopping:
            self._wake_now()

    def _on_job_skipped(self, event: Any) -> None:
        with self._state:
            self._again = True  # a wake-up met a running pass: follow it with another

    def _wake_now(self) -> None:
        try:
            self.scheduler.modify_job(JOB_ID, next_run_time=datetime.now(timezone.utc))
        except Exception as exc:  # the scheduler is shutting down
            log.debug("wake-up ignored: %s", exc)

    def _on_store_written(self) -> None:
        with self._state:
            if self._quiet:
                return
            if self._running:
                self._again = True
                return
        self._wake_now()

    # -- the main loop ---------------------------------------------------------------

    def run(self) -> int:
        self._install_signals()
        self.scheduler.add_listener(self._on_job_done, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR)
        self.scheduler.add_listener(self._on_job_skipped, EVENT_JOB_MAX_INSTANCES)
        self.scheduler.add_job(
            self._pass_job, IntervalTrigger(seconds=self.settings.sync.interval_s), id=JOB_ID,
            max_instances=1, coalesce=True, misfire_grace_time=None, next_run_time=datetime.now(timezone.utc),
        )
        self.scheduler.add_job(self.write_watch.publish, IntervalTrigger(seconds=PUBLISH_EVERY_S), id="write-watch",
                               max_instances=1, coalesce=True)
        self.scheduler.add_job(self.housekeeper.bound_wal, IntervalTrigger(seconds=WAL_CHECK_EVERY_S), id="wal-bound",
                               max_instances=1, coalesce=True)
        self.metrics.start()
        watch = StoreWatch(self.store) if self.store.dialect == "sqlite" else OutboxWatch(self.store)
        # READY before the first pass can publish a STATUS= line (the first pass runs at once).
        self.notifier.ready(f"pushing {self.store.path} to {self.settings.upstream.base_url}")
        self.scheduler.start()
        log.info("daemon started: store %s, upstream %s, every %gs",
                 self.store.path, self.settings.upstream.base_url, self.settings.sync.interval_s)
        try:
            self._watch_loop(watch)
        finally:
            watch.close()
        code = self._warm_stop()
        if self._replaced:
            log.error("%s: exiting (%d) so the service manager starts a daemon on the new file",
                      self._replaced, EXIT_STORE_REPLACED)
            return EXIT_STORE_REPLACED
        return code

    def _watch_loop(self, watch: StoreWatch | OutboxWatch) -> None:
        ping_every = self.notifier.watchdog_interval()
        last_ping = float("-inf")
        while self._signal is None:
            time.sleep(POLL_S)
            if self._store_file is not None and (replaced := self._store_file.replaced()):
                self._replaced = replaced
                return
            if watch.changed():
                self._on_store_written()
            if ping_every is not None and time.monotonic() - last_ping >= ping_every and self._healthy():
                self.notifier.watchdog()
                last_ping = time.monotonic()

    def _healthy(self) -> bool:
        """Passes make progress: none is stuck, and they keep coming (else systemd's watchdog restarts us)."""
        now = time.monotonic()
        started = self._pass_started
        if started is not None:
            return now - started < self._stall_s
        return self.scheduler.running and now - self._last_pass_end < self.settings.sync.interval_s + self._stall_s

    def _warm_stop(self) -> int:
        timeout = self.settings.sync.shutdown_timeout_s
        name = signal.Signals(self._signal).name if self._signal else "stop"
        log.info("%s: stopping; in-flight pushes get up to %gs to finish", name, timeout)
        self.notifier.stopping("stopping: finishing in-flight pushes")
        self.engine.request_stop()  # no new claims; backoff sleeps end now
        self.scheduler.shutdown(wait=False)
        if not self._idle.wait(timeout):
            log.warning("in-flight pushes did not finish within %gs; they stay queued (a sent one is "
                        "reconciled before any re-send) and go up after a restart", timeout)
            _flush_logs()
            os._exit(EXIT_STORE_REPLACED if self._replaced else 0)  # threads may sit in a request: do not wait
        self.metrics.stop()
        log.info("stopped cleanly")
        return 0


def _flush_logs() -> None:
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stderr.flush()


def run_daemon(settings: Settings) -> int:
    """Run until SIGTERM/SIGINT; 0 after a warm stop.

    Raises ``ConfigError`` (no usable key) or ``PusherLockedError`` (another
    pusher holds the store) before anything starts; the CLI prints them.
    """
    key = settings.upstream.require_api_key()
    # A push thread holding the store's write lock gives up the GIL inside every SQLite call and
    # must win it back from dozens of threads: at the default 5 ms per hand-over, one short write
    # transaction held the lock (and the apps' create()) for 100+ ms. 1 ms bounds that wait.
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    configure_logging(settings.log.level, settings.log.format, secrets=[key])
    store = open_store(settings)  # opens and migrates
    notifier = Notifier()
    with pusher_guard(store), make_client(settings) as client:
        engine = make_engine(settings, store, client)
        released = release_stale_leases(store, engine)  # SQLite: we hold the lock, any lease is a dead pusher's
        if released:
            log.info("released %d lease(s) left by a previous pusher", released)
        try:
            return Daemon(settings, store, engine, notifier).run()
        finally:
            engine.close()
            notifier.close()
