"""Prometheus metrics: on a loopback HTTP port (``metrics.listen``) or a node-exporter textfile.

Counters (pushes, retries, dead letters) count what this daemon process did;
gauges (queue depth by state, oldest queued age, last success time) are read
from the store, so they agree with ``galtea-local status``. Its own registry
keeps the default process collectors of other libraries out of our output.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server, write_to_textfile

from galtea_local.config import MetricsSettings
from galtea_local.outbox.leased import STATES
from galtea_local.status import store_status
from galtea_local.store import Store

log = logging.getLogger("galtea_local.metrics")

REFRESH_EVERY_S = 1.0  # passes can run many times a second when busy; the store is read at most this often
RECORD_STATES = ("queued", "synced", "dead", "dropped", "cancelled")


class DaemonMetrics:
    """The daemon's metrics, exported the way ``[metrics]`` says (or not at all)."""

    def __init__(self, store: Store, settings: MetricsSettings) -> None:
        self.store = store
        self.settings = settings
        self.registry = CollectorRegistry(auto_describe=True)
        self._last_refresh = float("-inf")
        self._server: Any = None
        ns = "galtea_local"
        self.records = Gauge("records", "Records in the store by sync state", ["state"],
                             namespace=ns, registry=self.registry)
        self.spans = Gauge("spans", "Spans in the store by sync state", ["state"], namespace=ns,
                           registry=self.registry)
        self.evaluations = Gauge("evaluation_requests", "Queued evaluation requests by sync state", ["state"],
                                 namespace=ns, registry=self.registry)
        self.in_flight = Gauge("in_flight_records", "Records with a push in flight", namespace=ns,
                               registry=self.registry)
        self.oldest_age = Gauge("oldest_queued_age_seconds", "Age of the oldest queued operation (0: none)",
                                namespace=ns, registry=self.registry)
        self.last_success = Gauge("last_success_timestamp_seconds", "When a push last succeeded (0: never)",
                                  namespace=ns, registry=self.registry)
        self.auth_failing = Gauge("auth_failing", "1 while the API refuses the key and pushing is paused",
                                  namespace=ns, registry=self.registry)
        self.longest_write = Gauge("longest_write_seconds", "The daemon's longest write transaction since it"
                                   " started (apps wait at most this long on it)", namespace=ns, registry=self.registry)
        self.longest_write_recent = Gauge("longest_write_recent_seconds", "The daemon's longest write"
                                          " transaction over about the last minute", namespace=ns,
                                          registry=self.registry)
        self.writes_given_way = Gauge("writes_given_way", "The daemon's write transactions rolled back for an"
                                      " app waiting for the lock since it started (each ran again)", namespace=ns,
                                      registry=self.registry)
        self.pushes = Counter("pushes", "Operations applied upstream", namespace=ns, registry=self.registry)
        self.adopted = Counter("adopted", "Maybe-sent creates found upstream by reconciliation",
                               namespace=ns, registry=self.registry)
        self.retries = Counter("retries", "Failed attempts scheduled for a retry", namespace=ns,
                               registry=self.registry)
        self.dead_letters = Counter("dead_letters", "Operations the API refused for good", namespace=ns,
                                    registry=self.registry)
        self.passes = Counter("sync_passes", "Sync passes run", namespace=ns, registry=self.registry)
        self.clock_offset = Gauge("server_clock_offset_seconds", "Server clock minus ours, from the API's Date header",
                                  namespace=ns, registry=self.registry)
        self.resent_unconfirmed = Gauge(
            "resent_unconfirmed", "Creates re-sent after the commit grace without finding the first attempt "
            "(a duplicate if it still commits: run galtea-local verify)", namespace=ns, registry=self.registry)

    @property
    def enabled(self) -> bool:
        return bool(self.settings.listen or self.settings.textfile)

    def start(self) -> None:
        """Serve on ``metrics.listen`` if set (loopback only: the config check refuses anything else)."""
        address = self.settings.listen_address()
        if address is None:
            return
        host, port = address
        self._server = start_http_server(port, addr=host, registry=self.registry)
        log.info("metrics on http://%s:%d/metrics", host if ":" not in host else f"[{host}]", port)

    def count_pass(self, report: Any) -> None:
        """Add one pass's :class:`PassReport` to the counters."""
        self.passes.inc()
        self.pushes.inc(report.pushed)
        self.adopted.inc(report.adopted)
        self.retries.inc(report.retried)
        self.dead_letters.inc(report.dead)

    def wants_status(self) -> bool:
        """True when a store status read is due for the gauges (at most once per second)."""
        return self.enabled and time.monotonic() - self._last_refresh >= REFRESH_EVERY_S

    def refresh(self, status: dict[str, Any] | None = None) -> None:
        """Set the gauges from a :func:`store_status` dict (read now if not given); rewrite the textfile."""
        if not self.enabled:
            return
        self._last_refresh = time.monotonic()
        status = store_status(self.store) if status is None else status
        for state in RECORD_STATES:
            self.records.labels(state=state).set(status[state])
        for state in STATES:  # queued, synced, dead, cancelled
            self.spans.labels(state=state).set(status[f"spans_{state}"])
            self.evaluations.labels(state=state).set(status[f"evaluations_{state}"])
        self.in_flight.set(status["in_flight"])
        self.oldest_age.set(status["oldest_queued_age_s"] or 0)
        self.last_success.set(status["last_success_at"] or 0)
        self.auth_failing.set(1 if status["auth_failing"] else 0)
        self.clock_offset.set(status.get("server_clock_offset_s") or 0)
        self.resent_unconfirmed.set(status.get("resent_unconfirmed") or 0)
        self.longest_write.set((status.get("longest_write_ms") or 0) / 1000)
        self.longest_write_recent.set((status.get("longest_write_recent_ms") or 0) / 1000)
        self.writes_given_way.set(status.get("writes_given_way") or 0)
        if self.settings.textfile:
            try:
                write_to_textfile(self.settings.textfile, self.registry)  # writes a temp file, then renames
            except OSError as exc:
                log.warning("cannot write the metrics textfile %s: %s", self.settings.textfile, exc)

    def stop(self) -> None:
        if self._server is not None:
            server, _thread = self._server
            server.shutdown()
            self._server = None
