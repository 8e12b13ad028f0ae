"""``galtea-local verify`` as a real command against the emulator: silent when the store and the
API agree, non-zero naming each missing, duplicated or differing record when they do not."""

from __future__ import annotations

import json
from contextlib import closing
from pathlib import Path

from galtea_local import Galtea
from tests.emulator_fixture import EmulatorHandle
from tests.sync_helpers import cli_env, drain, galtea_local, make_engine, new_session, open_store


def test_verify_passes_then_finds_every_kind_of_drift(emulator: EmulatorHandle, tmp_path: Path) -> None:
    session_id = new_session(emulator)
    store_path = tmp_path / "store.db"
    with Galtea(store=store_path) as local, closing(open_store(store_path)) as store:
        ids = [local.traces.create(session_id=session_id, input=f"t{n}", output="a",
                                   retrieval_context="doc").id for n in range(5)]
        local.traces.create(session_id=session_id, input="twin")
        local.traces.create(session_id=session_id, input="twin")
        drain(make_engine(store, emulator))
        remote = [local.traces.get(record_id).remote_id for record_id in ids]
    env = cli_env(store_path, emulator.url, emulator.api_key)

    clean = galtea_local("verify", "--json", env=env)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    report = json.loads(clean.stdout)
    assert (report["ok"], report["checked"], report["unverifiable"]["write_only_fields"]) == (True, 7, 5)

    with emulator.client() as http:  # drift, as a late commit, a lost record and another writer would make
        http.post("/inferenceResults", json={"sessionId": session_id, "input": "t1", "actualOutput": "a"})
        http.delete(f"/inferenceResults/{remote[2]}")
        http.patch(f"/inferenceResults/{remote[3]}", json={"status": "FAILED"})
    found = galtea_local("verify", "--json", env=env)
    assert found.returncode == 1
    report = json.loads(found.stdout)
    assert [m["remote_id"] for m in report["missing"]] == [remote[2]]
    assert [(d["input"], d["local"], d["upstream"]) for d in report["duplicates"]] == [
        ({"user_message": "t1"}, 1, 2)]
    assert [(d["remote_id"], list(d["fields"])) for d in report["differing"]] == [(remote[3], ["status"])]
    text = galtea_local("verify", "--since", "2000-01-01T00:00:00Z", env=env)
    assert text.returncode == 1 and "MISSING" in text.stdout and "DUPLICATE" in text.stdout
