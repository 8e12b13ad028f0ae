"""``galtea-local sync``: push everything that is due, once, then exit.

Exit 0 when no record, span or evaluation is left waiting (dead letters may remain;
they are reported), 2 when some still wait (backoff, auth failure, offline).
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from typing import Any

from galtea_local.config import Settings
from galtea_local.status import store_status
from galtea_local_daemon.logs import configure_logging
from galtea_local_daemon.versions_push import CacheRefresher
from galtea_local_daemon.runtime import make_client, make_engine, open_store, pusher_guard, release_stale_leases
from galtea_local_daemon.steps import PassReport

log = logging.getLogger("galtea_local.sync")


def _stop_on_signals(stop: threading.Event) -> None:
    def handler(signum: int, frame: Any) -> None:  # only sets the flag; the loop acts on it
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


# A lane waiting out a Retry-After or backoff this short is waited for: `sync` pushes what a
# sporadic 429 or 503 held back, as it did when such waits were slept inside the pass. Not
# more often than this in a row without settling anything: an unreachable API ends `sync` (2)
# after two passes.
SHORT_WAIT_S = 2.0
SHORT_WAITS_MAX = 1


def _wait_for_next_due(report: PassReport, stop: threading.Event) -> bool:
    """Sleep until the first waiting lane is due, if that is soon; False when nothing is."""
    if report.next_due_at is None:
        return False
    wait = report.next_due_at - time.time()
    if wait > SHORT_WAIT_S:
        return False
    stop.wait(max(0.0, wait))
    return True


def sync_once(settings: Settings) -> int:
    key = settings.upstream.require_api_key()
    configure_logging(settings.log.level, settings.log.format, secrets=[key])
    store = open_store(settings)
    with pusher_guard(store):
        stop = threading.Event()
        _stop_on_signals(stop)
        with make_client(settings) as client:
            engine = make_engine(settings, store, client, stop)
            release_stale_leases(store, engine)
            CacheRefresher(store, engine.unpaced_client, stop=stop,
                           before_request=engine.wait_for_throttle).refresh()  # bounded; an offline API ends it at once
            try:
                waits = 0  # short waits in a row after passes that settled nothing
                while not stop.is_set():
                    report = engine.run_once()
                    if report.more_due:
                        continue
                    waits = 0 if report.settled_any() else waits + 1
                    if waits > SHORT_WAITS_MAX or not _wait_for_next_due(report, stop):
                        break
            finally:
                engine.close()
    status = store_status(store)
    print(
        f"queued {status['queued']}, synced {status['synced']}, dead {status['dead']}"
        + f"; spans queued {status['spans_queued']}, synced {status['spans_synced']}, dead {status['spans_dead']}"
        + f"; evaluations queued {status['evaluations_queued']}, synced {status['evaluations_synced']},"
        f" dead {status['evaluations_dead']}"
        + f"; versions queued {status['versions_queued']}, dead {status['versions_dead']}"
        + ("; AUTH FAILING" if status["auth_failing"] else ""),
        file=sys.stderr,
    )
    waiting = status["queued"] + status["spans_queued"] + status["evaluations_queued"] + status["versions_queued"]
    return 0 if waiting == 0 else 2
