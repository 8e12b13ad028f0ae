"""Versions and products offline (issue 14): the cache the daemon refreshes, versions made offline,
pushed exactly once, and the sessions and turns that name them going up after them with the remote id.

Real parts: a real store (SQLite, and PostgreSQL where marked), the emulator as a real HTTP
server (it plays ``/versions/get-or-create`` as the SDK's code says the API does), the engine
in-process for the fault cases, and ``galtea-local daemon`` as a real subprocess.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from galtea_local import Galtea, NotFoundError, Version, VersionNameConflictException
from galtea_local.errors import InvalidInputError, InvalidTypeError
from galtea_local.status import store_status
from galtea_local.store import open_store as open_any
from galtea_local_daemon.versions_push import CacheRefresher
from galtea_local_daemon.upstream import UpstreamClient
from tests.emulator_fixture import EmulatorHandle
from tests.helpers.daemon_proc import daemon_env, start_daemon, stop, wait_for, write_config
from tests.sync_helpers import cli_env, drain, galtea_local, make_engine, open_store

P = "prod_edge"


def seed_product(handle: EmulatorHandle, product_id: str = P) -> dict[str, Any]:
    response = httpx.post(f"{handle.url}/_emulator/products", json={"id": product_id, "name": "edge bot",
                                                                    "description": "runs on the box"})
    response.raise_for_status()
    return response.json()


def upstream_get_or_create(handle: EmulatorHandle, facts: dict[str, str], name: str | None = None) -> dict:
    with handle.client() as http:
        body = {"productId": P, "facts": facts, **({"name": name} if name else {})}
        return http.post("/versions/get-or-create", json=body).raise_for_status().json()


def refresh(store_location: Path | str, handle: EmulatorHandle, **kwargs: Any) -> int:
    store = open_store(store_location)  # type: ignore[arg-type]
    try:
        with UpstreamClient(handle.url, handle.api_key or "gsk_test") as client:
            return CacheRefresher(store, client, **kwargs).refresh()
    finally:
        store.close()


@pytest.fixture
def handle(emulator_factory: Any) -> EmulatorHandle:
    handle = emulator_factory()
    seed_product(handle)
    handle.set_versions([])  # strict: a session may name only a version the catalog made
    return handle


def test_facts_are_checked_before_anything_is_written(galtea: Galtea) -> None:
    with pytest.raises(InvalidTypeError, match="facts"):
        galtea.versions.get_or_create(P, facts=["model"])  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="facts: no entry"):
        galtea.versions.get_or_create(P, facts={" ": "x", "model": "  "})
    with pytest.raises(InvalidInputError, match="two keys trim"):
        galtea.versions.get_or_create(P, facts={"model": "a", " model": "b"})
    with pytest.raises(InvalidInputError, match="product_id"):
        galtea.versions.get_or_create("", facts={"model": "a"})
    assert galtea._store.read(lambda c: c.execute("SELECT COUNT(*) FROM versions").fetchone()[0]) == 0


def test_get_or_create_matches_facts_as_the_api_does(galtea: Galtea) -> None:
    made = galtea.versions.get_or_create(P, {" model ": "gpt-4o", "temperature": "0.7", "empty": " "}, name="edge")
    assert isinstance(made, Version) and made.id.startswith("ver_") and made.remote_id is None
    assert made.facts == {"model": "gpt-4o", "temperature": "0.7"} and made.sync_state == "queued"
    assert galtea.versions.get_or_create(P, {"temperature": "0.7", "model": "gpt-4o"}).id == made.id
    assert galtea.versions.get_or_create(P, {"temperature": "0.70", "model": "gpt-4o"}).id != made.id
    assert galtea.versions.get(made.id) == made
    assert galtea.versions.get_by_name(P, "edge").id == made.id
    with pytest.raises(VersionNameConflictException):
        galtea.versions.get_or_create(P, {"model": "other"}, name="edge")
    with pytest.raises(NotFoundError):
        galtea.versions.get("cnosuchversion")


def test_the_cache_serves_what_the_daemon_read_and_forgets_what_upstream_deleted(
        handle: EmulatorHandle, store_path: Path) -> None:
    kept = upstream_get_or_create(handle, {"model": "gpt-4o"}, name="prod")
    doomed = upstream_get_or_create(handle, {"model": "old"})
    Galtea(store=store_path).close()
    assert refresh(store_path, handle) == 3  # one product, two versions
    with Galtea(store=store_path) as g:
        assert g.products.get(P).name == "edge bot"
        assert g.versions.get(doomed["id"]).name == "v2"
        assert g.versions.get_or_create(P, {"model": "gpt-4o"}).id == kept["id"]  # found: nothing queued
        assert store_status(g._store)["versions_queued"] == 0
    with handle.client() as http:
        http.delete(f"/versions/{doomed['id']}").raise_for_status()
    refresh(store_path, handle)
    with Galtea(store=store_path) as g:
        with pytest.raises(NotFoundError):
            g.versions.get(doomed["id"])
        assert [v.id for v in g.versions.list(product_id=P)] == [kept["id"]]


def test_a_refresh_is_bounded(handle: EmulatorHandle, store_path: Path) -> None:
    for n in range(7):
        upstream_get_or_create(handle, {"n": str(n)})
    Galtea(store=store_path).close()
    assert refresh(store_path, handle, max_items=4) == 4
    with Galtea(store=store_path) as g:
        assert len(g.versions.list(product_id=P)) == 3  # the product, then three versions: the budget
    assert refresh(store_path, handle) == 8


def _offline_app(store_path: Path) -> dict[str, str]:
    """What an app does offline: a new version, a session on it with turns, a session by custom id."""
    with Galtea(store=store_path) as g:
        version = g.versions.get_or_create(P, {"model": "gpt-5", "temperature": "0.2"}, name="edge-v2")
        session = g.sessions.create(version_id=version.id, custom_id="on-new")
        g.traces.create(session_id=session.id, input="hi", output="hello")
        g.traces.create(session_id=session.id, input="again", output="yes")
        g.sessions.get_or_create(custom_id="joined", version_id=version.id)
        g.traces.create(session_custom_id="joined", version_id=version.id, input="by custom id", output="ok")
        return {"version": version.id, "session": session.id}


def _assert_went_up_once(handle: EmulatorHandle) -> dict[str, Any]:
    dump = handle.dump(log=False)
    made = [v for v in dump["versions"] if v["facts"] == {"model": "gpt-5", "temperature": "0.2"}]
    assert len(made) == 1 and made[0]["name"] == "edge-v2"
    remote = made[0]["id"]
    assert sorted(s["customId"] for s in dump["sessions"]) == ["joined", "on-new"]
    assert {s["versionId"] for s in dump["sessions"]} == {remote}
    sessions = {s["id"]: s["customId"] for s in dump["sessions"]}
    turns = sorted((sessions[r["sessionId"]], r["index"], r["input"]["user_message"])
                   for r in dump["inferenceResults"])
    assert turns == [("joined", 0, "by custom id"), ("on-new", 0, "hi"), ("on-new", 1, "again")]
    return made[0]


def test_the_daemon_pushes_an_offline_version_once_and_its_sessions_follow(
        handle: EmulatorHandle, store_path: Path, tmp_path: Path) -> None:
    """The daemon as a real subprocess; the emulator refuses sessions on any version it did not make."""
    ids = _offline_app(store_path)
    proc = start_daemon(daemon_env(handle, store_path, write_config(tmp_path)), stderr=tmp_path / "daemon.log")
    try:
        store = open_store(store_path)
        wait_for(lambda: store_status(store)["queued"] == 0 and store_status(store)["sessions_queued"] == 0,
                 30, "the records to go up", proc)
        store.close()
    finally:
        assert stop(proc)[0] == 0
    made = _assert_went_up_once(handle)
    assert handle.dump(log=False)["versionGetOrCreateCalls"] == 1
    with Galtea(store=store_path) as g:
        local = g.versions.get(ids["version"])  # the local id stays valid, and now knows upstream's
        assert (local.id, local.remote_id, local.number, local.sync_state) == (ids["version"], made["id"], 1, "synced")
        assert g.versions.get(made["id"]).id == ids["version"]
        assert g.products.get(P).id == P  # the daemon refreshed the cache at start


def test_a_lost_answer_is_looked_up_not_sent_twice(handle: EmulatorHandle, store_path: Path) -> None:
    _offline_app(store_path)
    store = open_store(store_path)
    try:
        engine = make_engine(store, handle)
        handle.set_faults(ambiguous_rate=1.0)  # every write is applied, then its answer is lost
        engine.run_once()
        handle.set_faults(ambiguous_rate=0.0)
        drain(engine)
    finally:
        store.close()
    _assert_went_up_once(handle)
    dump = handle.dump()
    assert dump["versionGetOrCreateCalls"] == 1  # found by name and facts: not sent again
    assert dump["requests"]["GET /versions"] >= 1


def test_a_version_refused_upstream_is_dead_and_holds_what_names_it(
        handle: EmulatorHandle, store_path: Path) -> None:
    with Galtea(store=store_path) as g:
        version = g.versions.get_or_create("prod_unknown", {"model": "x"})
        g.traces.create(session_id=g.sessions.create(version_id=version.id).id, input="held")
    store = open_store(store_path)
    try:
        engine = make_engine(store, handle)
        for _ in range(3):
            engine.run_once()
        status = store_status(store)
        assert (status["versions_dead"], status["sessions_queued"], status["queued"]) == (1, 1, 1)
        row = store.read(lambda c: dict(c.execute("SELECT last_error FROM versions").fetchone()))
        assert "prod_unknown" in row["last_error"]
        assert handle.dump(log=False)["sessions"] == []
        seed_product(handle, "prod_unknown")  # the operator fixes the product, then retries
        env = cli_env(store_path, handle.url, handle.api_key or "gsk_test")
        assert "1 version(s) queued again" in galtea_local("dead", "retry", "--all", env=env).stdout
        drain(engine)
    finally:
        store.close()
    dump = handle.dump(log=False)
    assert [r["input"] for r in dump["inferenceResults"]] == [{"user_message": "held"}]
    assert dump["sessions"][0]["versionId"] == dump["versions"][0]["id"]


def test_a_version_already_upstream_is_joined(handle: EmulatorHandle, store_path: Path) -> None:
    """Made upstream after the last refresh: the push answers the existing version, the app's session joins it."""
    existing = upstream_get_or_create(handle, {"temperature": "0.2", "model": "gpt-5"}, name="edge-v2")
    _offline_app(store_path)
    store = open_store(store_path)
    try:
        drain(make_engine(store, handle))
    finally:
        store.close()
    assert _assert_went_up_once(handle)["id"] == existing["id"]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_offline_versions_on_both_backends(backend: str, handle: EmulatorHandle, tmp_path: Path,
                                          request: pytest.FixtureRequest) -> None:
    location = str(tmp_path / "store.db") if backend == "sqlite" else request.getfixturevalue("pg_url")
    _offline_app(location)  # type: ignore[arg-type]
    store = open_any(location)
    try:
        drain(make_engine(store, handle))
        waits = store.read(lambda c: c.execute("SELECT COUNT(*) FROM outbox WHERE waits_version IS NOT NULL")
                           .fetchone()[0])
        assert waits == 0
    finally:
        store.close()
    _assert_went_up_once(handle)
    assert json.dumps(handle.dump(log=False)["versionGetOrCreateCalls"]) == "1"
