"""Versions: push the ones ``versions.get_or_create`` made offline, and refresh the cache from the API.

:class:`VersionPusher` is a step of each pass, *before* the lanes: a session or a
turn that names a local version id is claimable once its version is answered, so
it goes up in the same pass, with the remote id. ``POST /versions/get-or-create``
answers the product's live version holding the facts and makes one only when
there is none, so a push whose answer was lost is first looked up (by name, or
by facts among the product's versions) and, if not found, simply sent again: a
late commit of the first attempt is then joined by the API, never doubled.

:class:`CacheRefresher` reads every product and each product's versions, one page
per request and one short transaction per page (no write lock across a request),
and stops after ``MAX_ITEMS`` rows: a bounded job the daemon schedules every
``REFRESH_EVERY_S`` and ``galtea-local sync`` runs once. Its requests go one at a
time, outside the engine's pacing law (a few reads every few minutes must not hold
a lane's create back), and wait out a throttle first.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from galtea_local.errors import AuthError, RejectedError, UpstreamError
from galtea_local.outbox import versions as queue
from galtea_local_daemon.backoff import retry_after_of
from galtea_local_daemon.reconcile import pages
from galtea_local_daemon.side_queues import PassHost, push_rounds
from galtea_local_daemon.steps import PassReport

log = logging.getLogger("galtea_local.sync")
PUSHED, DEAD = "pushed", "dead"
REFRESH_EVERY_S = 300.0
MAX_ITEMS = 5000  # products plus versions read per refresh
REFRESH_PAGE = 100


def request_body(row: dict[str, Any]) -> dict[str, Any]:
    """The SDK's strict body: ``productId``, ``facts``, and ``name`` only when one was given."""
    body: dict[str, Any] = {"productId": row["product_id"], "facts": json.loads(row["facts_key"])}
    if row["name"] is not None:
        body["name"] = row["name"]
    return body


class VersionPusher:
    """Pushes due offline versions for one engine pass (a side-queue pusher: side_queues.PassHost)."""

    def __init__(self, host: PassHost) -> None:
        self.host = host
        self.store = host.store
        self.client = host.client

    def push_due(self, report: PassReport, deadline: float) -> None:
        if self.store.read(queue.has_stale_holds):
            self.store.transaction(queue.release_resolved)

        def tally(outcomes: list[list[str | float]]) -> list[float]:
            flat = [outcome for batch in outcomes for outcome in batch]
            report.versions_pushed += flat.count(PUSHED)
            report.dead += flat.count(DEAD)
            return [outcome for outcome in flat if isinstance(outcome, float)]

        # One unit per claim, its versions sent one at a time, oldest first: the API numbers a
        # product's versions in arrival order, so they get the numbers the app's calls would have
        # got online. Versions are few.
        push_rounds(self.host, report, deadline, due=queue.due, claim_due=queue.claim_due,
                    limit=self.host.settings.concurrency, units=lambda rows: [rows],
                    send=lambda rows: [self._push(row) for row in rows], tally=tally)

    def _push(self, row: dict[str, Any]) -> str | float:
        """Send one version and settle it: PUSHED, DEAD, or the seconds until its retry."""
        maybe_sent = row["sending_since"] is not None
        try:
            self.host.wait_for_throttle()
            answer = self.find(row) if maybe_sent else None
            if answer is None:
                answer = self.client.get_or_create_version(request_body(row))
        except AuthError as error:
            self.host.halt()
            return self._retry(row, error, 0.0, maybe_sent=maybe_sent or error.maybe_sent)
        except RejectedError as error:
            self.store.transaction(queue.settle_dead, row["seq"], error.message)
            log.warning("dead-lettered version %s of product %s: %s", row["local_id"], row["product_id"],
                        error.message)
            return DEAD
        except UpstreamError as error:
            retry_after = retry_after_of(error)
            if retry_after is not None:
                self.host.throttle(retry_after)
            return self._retry(row, error, self.host.backoff.delay(row["attempts"] + 1, retry_after),
                               maybe_sent=maybe_sent or error.maybe_sent)
        self.store.transaction(queue.settle_synced, row["seq"], answer, self.host.clock())
        return PUSHED

    def find(self, row: dict[str, Any]) -> dict[str, Any] | None:
        """The version an earlier attempt of ``row`` may have made: the product's live one with its facts."""
        names = [row["name"]] if row["name"] is not None else None
        listed = pages(lambda offset, limit: self.client.list_versions(
            product_ids=[row["product_id"]], names=names, offset=offset, limit=limit))
        return next((v for v in listed if queue.facts_key(v.get("facts")) == row["facts_key"]), None)

    def _retry(self, row: dict[str, Any], error: UpstreamError, delay: float, *, maybe_sent: bool) -> float:
        self.store.transaction(queue.settle_retry, row["seq"], self.host.clock() + delay, error.message,
                               maybe_sent=maybe_sent)
        return float(delay)


class CacheRefresher:
    """Reads products and versions from the API into the store's cache, in bounded, short steps."""

    def __init__(self, store: Any, client: Any, clock: Any = time.time, max_items: int = MAX_ITEMS,
                 stop: Any = None, before_request: Any = None) -> None:
        self.store, self.client, self.clock, self.max_items = store, client, clock, max_items
        self.stop = stop  # a threading.Event: a warm stop ends the round between pages
        self.before_request = before_request or (lambda: None)  # the daemon's throttle gate

    def refresh(self) -> int:
        """One round; the rows read. An API error ends the round (logged): the next one starts over."""
        since, budget = self.clock(), [self.max_items]
        try:
            products, complete = self._read(lambda o, n: self.client.list_products(offset=o, limit=n),
                                            queue.upsert_products, budget)
            if complete:
                self.store.transaction(queue.forget_products_not_seen, since)
            for product_id in products:
                _, complete = self._read(lambda o, n, p=product_id: self.client.list_versions(
                    product_ids=[p], offset=o, limit=n), queue.upsert_versions, budget)
                if complete:
                    self.store.transaction(queue.forget_versions_not_seen, product_id, since)
        except UpstreamError as error:
            log.info("version cache refresh stopped: %s (the next one starts over)", error.message)
        return self.max_items - budget[0]

    def _read(self, fetch: Any, upsert: Any, budget: list[int]) -> tuple[list[str], bool]:
        """Page through one listing, storing each page in its own transaction; (ids, read to the end)."""
        ids, offset = [], 0
        while budget[0] > 0:
            if self.stop is not None and self.stop.is_set():
                return ids, False
            self.before_request()
            page = fetch(offset, min(REFRESH_PAGE, budget[0]))
            if not page:
                return ids, True
            self.store.transaction(upsert, page, self.clock())
            ids.extend(item["id"] for item in page)
            offset += len(page)
            budget[0] -= len(page)
        return ids, False
