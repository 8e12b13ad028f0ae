"""Versions and products, one script run twice (as tests/test_sdk_parity.py does for traces).

Once with the official SDK against the emulator; once with galtea_local, offline,
on a cache the daemon's refresher filled while online, followed by a sync. The
upstream versions, sessions and turns must come out the same, and every call must
return the same type with the same ``model_dump()`` keys (less ``sync_state`` and
``remote_id``), or raise the same error.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import galtea
import pytest

import galtea_local
from tests.emulator_fixture import EmulatorHandle, emulator_factory  # noqa: F401  (fixture)
from tests.sync_helpers import drain, make_engine, open_store
from tests.test_sdk_parity import shape
from tests.test_versions import P, refresh, seed_product, upstream_get_or_create


def _raises(call: Any, expected: type[BaseException]) -> str:
    with pytest.raises(expected) as caught:
        call()
    return expected.__name__ if isinstance(caught.value, expected) else "?"


def script(g: Any, sdk: ModuleType) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []

    def call(label: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        out.append((label, fn(*args, **kwargs)))
        return out[-1][1]

    call("products.get", g.products.get, P)
    call("products.get_by_name", g.products.get_by_name, "edge bot")
    known = call("versions.get_or_create.known", g.versions.get_or_create, P, {"model": "gpt-4o"})
    new = call("versions.get_or_create.new", g.versions.get_or_create, product_id=P, name="edge-v2",
               facts={" model ": "gpt-5", "temperature": "0.2", "unset": " "})
    call("versions.get_or_create.again", g.versions.get_or_create, P, {"temperature": "0.2", "model": "gpt-5"})
    unnamed = call("versions.get_or_create.unnamed", g.versions.get_or_create, P, {"model": "small"})
    call("versions.get", g.versions.get, new.id)
    call("versions.get.known", g.versions.get, known.id)
    call("versions.get_by_name", g.versions.get_by_name, P, "edge-v2")
    call("versions.list", g.versions.list, product_id=P)
    session = call("sessions.create", g.sessions.create, version_id=new.id, custom_id="on-new")
    call("t1", g.traces.create, session_id=session.id, input="hi", output="hello")
    call("sessions.get_or_create", g.sessions.get_or_create, custom_id="on-unnamed", version_id=unnamed.id)
    call("t2", g.traces.create, session_custom_id="on-unnamed", version_id=unnamed.id, input="q", output="a")
    call("t3", g.traces.create, session_custom_id="on-known", version_id=known.id, input="old", output="b")
    out.append(("error.version_missing", _raises(lambda: g.versions.get("cmissing"), sdk.EntityNotFoundException)))
    out.append(("error.product_missing", _raises(lambda: g.products.get("cmissing"), sdk.EntityNotFoundException)))
    out.append(("error.name_taken", _raises(
        lambda: g.versions.get_or_create(P, {"model": "other"}, name="edge-v2"), sdk.VersionNameConflictException)))
    g.shutdown()
    return out


def upstream(handle: EmulatorHandle) -> dict[str, Any]:
    """Versions by name (ids and times differ per run), sessions by custom id, turns by session."""
    dump = handle.dump(log=False)
    names = {v["id"]: v["name"] for v in dump["versions"]}
    sessions = {s["id"]: s["customId"] for s in dump["sessions"]}
    return {
        "versions": sorted(({k: v for k, v in version.items() if k not in ("id", "createdAt")}
                            for version in dump["versions"]), key=lambda v: v["number"]),
        "sessions": sorted((s["customId"], names[s["versionId"]]) for s in dump["sessions"]),
        "traces": sorted((sessions[r["sessionId"]], r["index"], r["input"]) for r in dump["inferenceResults"]),
    }


@pytest.fixture
def two_emulators(emulator_factory: Any) -> tuple[EmulatorHandle, EmulatorHandle]:  # noqa: F811
    handles = emulator_factory(), emulator_factory()
    for handle in handles:  # what both runs find upstream: the product, one version, a session on it
        seed_product(handle)
        known = upstream_get_or_create(handle, {"model": "gpt-4o"}, name="prod")
        with handle.client() as http:
            http.post("/sessions", json={"versionId": known["id"], "customId": "on-known"}).raise_for_status()
    return handles


def test_versions_and_products_leave_the_same_upstream_state(
        two_emulators: tuple[EmulatorHandle, EmulatorHandle], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sdk_side, local_side = two_emulators
    monkeypatch.setenv("GALTEA_API_URL", sdk_side.url)
    sdk_out = script(galtea.Galtea(api_key=sdk_side.api_key or "gsk_parity"), galtea)

    store_path = tmp_path / "store.db"
    galtea_local.Galtea(store=store_path).close()
    refresh(store_path, local_side)  # the daemon, while the box was online
    local_out = script(galtea_local.Galtea(store=store_path), galtea_local)
    store = open_store(store_path)
    try:
        drain(make_engine(store, local_side))
    finally:
        store.close()

    assert [label for label, _ in local_out] == [label for label, _ in sdk_out]
    for (label, ours), (_, theirs) in zip(local_out, sdk_out):
        assert shape(ours) == shape(theirs), label
    assert upstream(local_side) == upstream(sdk_side)
    # The seed, then: the SDK asks the API on each of its five calls; we send one per version made offline.
    assert sdk_side.dump(log=False)["versionGetOrCreateCalls"] == 1 + 5
    assert local_side.dump(log=False)["versionGetOrCreateCalls"] == 1 + 2
