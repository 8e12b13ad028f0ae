"""Single decisions of the delivery rules (issue 11), each against a scripted transport:
a refused reconciliation read, "already exists" after a maybe-sent session create, a lease
lost before the request leaves, a retried dead letter that may have been sent, the clock."""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx

from galtea_local import Galtea
from galtea_local.config import RetentionSettings
from galtea_local.outbox import attempts as ob
from galtea_local.outbox import dead
from galtea_local.store import Store
from galtea_local_daemon.backoff import Backoff
from galtea_local_daemon.bodies import build_body
from galtea_local_daemon.engine import EngineSettings, PassReport, SyncEngine, _Taken
from galtea_local_daemon.housekeeping import Housekeeper
from galtea_local_daemon.servertime import ServerClock
from galtea_local_daemon.steps import Step
from galtea_local_daemon.upstream import UpstreamClient

Handler = Callable[[httpx.Request], httpx.Response]


def engine_with(store: Store, handler: Handler, **settings: Any) -> SyncEngine:
    client = UpstreamClient("http://api.test", "gsk_test", transport=httpx.MockTransport(handler),
                            allow_insecure_http=True)
    return SyncEngine(store, client, EngineSettings(concurrency=1, commit_grace_s=0.0, **settings),
                      backoff=Backoff(initial_s=0.01, max_s=0.02, jitter_s=0.0))


def ops(store: Store) -> list[tuple[str, str]]:
    return store.read(lambda c: [tuple(r) for r in c.execute("SELECT kind, state FROM outbox ORDER BY seq")])


def test_a_refused_reconciliation_read_is_not_a_refusal(tmp_path: Path) -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.method)
        if request.method == "POST":
            raise httpx.ReadTimeout("answer lost", request=request)
        return httpx.Response(404, json={"message": "Session not found"})

    with Galtea(store=tmp_path / "s.db") as local, closing(Store(str(tmp_path / "s.db"))) as store:
        local.traces.create(session_id="remote-session", input="q")
        report = engine_with(store, handler).run_once()
        assert report.dead == 0
        assert ops(store) == [("create", "sending")]  # still maybe sent: reconciled again later
    assert seen.count("POST") == 1  # never re-sent blindly


def test_already_exists_after_a_maybe_sent_session_create_adopts_it(tmp_path: Path) -> None:
    """The first POST /sessions committed late: the re-send is told "already exists"; find and adopt it."""
    calls: list[str] = []
    session = {"id": "srv-1", "versionId": "v1", "customId": "conv-1", "context": {"value": "ctx"},
               "metadata": None, "testCaseId": None, "isProduction": True}

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(f"{request.method} {request.url.path}")
        posts = calls.count("POST /sessions")
        if request.url.path == "/sessions" and request.method == "POST":
            if posts == 1:
                raise httpx.ReadTimeout("held in a proxy", request=request)
            return httpx.Response(400, json={"message": "a session with customId conv-1 already exists"})
        if request.url.path == "/sessions":
            return httpx.Response(200, json=[session] if posts >= 2 else [])
        return httpx.Response(201, json={"id": "r1", "sessionId": "srv-1", "index": 0, "createdAt": "x"})

    with Galtea(store=tmp_path / "s.db") as local, closing(Store(str(tmp_path / "s.db"))) as store:
        made = local.sessions.create(version_id="v1", custom_id="conv-1", context="ctx")
        local.traces.create(session_id=made.id, input="q")
        report = engine_with(store, handler).run_once()
        assert (report.dead, report.adopted, report.pushed) == (0, 1, 1)
        assert local.sessions.get(made.id).sync_state == "synced"
    assert calls.count("POST /sessions") == 2


def test_a_request_whose_lease_is_gone_is_not_sent(tmp_path: Path) -> None:
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(201, json={"id": "r1", "sessionId": "s", "index": 0})

    with Galtea(store=tmp_path / "s.db") as local, closing(Store(str(tmp_path / "s.db"))) as store:
        local.traces.create(session_id="s", input="q")
        engine = engine_with(store, handler, lease_s=1.0)
        now = time.time()
        (lane,) = store.transaction(ob.claim_lanes, engine.owner, now, 1.0, 1)
        attempt = store.transaction(ob.take_next, lane, engine.owner, now, 1.0, build_body)
        assert attempt is not None and attempt.body is not None
        # Our lease ran out (a long Retry-After, a stall) and another daemon claimed the lane.
        store.transaction(lambda c: c.execute("UPDATE lanes SET lease_owner = 'other', lease_until = ?",
                                              (now + 60,)))
        outcome = engine._push(_Taken(attempt, time.monotonic() - 10), PassReport(), take_more=False)
        assert outcome.step is Step.IDLE
        assert ops(store) == [("create", "sending")]  # the new holder reconciles it
    assert sent == []


def test_dead_retry_of_a_maybe_sent_create_reconciles_first(tmp_path: Path) -> None:
    with Galtea(store=tmp_path / "s.db") as local, closing(Store(str(tmp_path / "s.db"))) as store:
        local.traces.create(session_id="s", input="q")
        # A dead letter left by an older release after a refused reconciliation read: still marked.
        store.transaction(lambda c: c.execute(
            "UPDATE outbox SET state = 'dead', sending_since = 1.0, sent_body = ?", (json.dumps({"input": "q"}),)))
        assert store.transaction(dead.retry_dead) == 1
        assert ops(store) == [("create", "sending")]
        (lane,) = store.transaction(ob.claim_lanes, "me", time.time(), 60.0, 1)
        attempt = store.transaction(ob.next_attempt, lane, "me", time.time(), 60.0)
        assert attempt is not None and attempt.maybe_sent_since == 1.0


def test_server_clock_offset_is_the_median_of_date_samples() -> None:
    clock = ServerClock()
    assert clock.offset_s is None and clock.to_server(100.0) == 100.0
    now = time.time()
    for skew in (300, 300, 5000, 300):  # one proxy with a wild clock does not move it
        clock.observe(email.utils.formatdate(int(now) + skew, usegmt=True), now, now)
    assert abs(clock.offset_s - 300) < 1.5
    clock.observe("not a date", now, now)
    assert abs(clock.offset_s - 300) < 1.5


def test_ownership_is_forgotten_only_beyond_any_possible_reconciliation(tmp_path: Path) -> None:
    from galtea_local.outbox import ownership

    with Galtea(store=tmp_path / "s.db") as local, closing(Store(str(tmp_path / "s.db"))) as store:
        local.traces.create(session_id="s", input="q")
        store.transaction(lambda c: c.execute("UPDATE inference_results SET remote_id = 'r-old'"))
        store.transaction(lambda c: c.execute("DELETE FROM outbox") and c.execute("DELETE FROM inference_results"))
        owned = store.read(lambda c: c.execute("SELECT remote_id, owned_at FROM owned_remote_ids").fetchall())
        assert [row[0] for row in owned] == ["r-old"] and abs(owned[0][1] - time.time()) < 60  # survives the row
        later = time.time() + ownership.MARGIN_S + 10
        local.traces.create(session_id="s", input="q")  # maybe sent long ago: it could still reach back
        store.transaction(lambda c: c.execute("UPDATE outbox SET state = 'sending', sending_since = ?",
                                              (time.time() - 1,)))
        assert store.transaction(ownership.prune, store.read(ownership.forget_before, later)) == 0
        store.transaction(lambda c: c.execute("UPDATE outbox SET state = 'done'"))
        keeper = Housekeeper(store, RetentionSettings(synced_days=1000.0), clock=lambda: later - 3600)
        keeper.expire(later)  # retention's hourly turn forgets it
        assert store.read(lambda c: c.execute("SELECT COUNT(*) FROM owned_remote_ids").fetchone()[0]) == 0
