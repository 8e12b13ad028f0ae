"""The emulator plays what the real API and its proxies do: write-only fields, late commits,
gateway errors after the write was applied, capped pages and a server clock of its own."""

from __future__ import annotations

import email.utils
import time
from typing import Any

import httpx
import pytest

from tests.emulator_fixture import EmulatorHandle, emulator, emulator_factory  # noqa: F401


def new_session(client: httpx.Client, **fields: Any) -> str:
    response = client.post("/sessions", json={"versionId": "v1", **fields})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def test_retrieval_context_is_write_only(emulator: EmulatorHandle) -> None:  # noqa: F811
    with emulator.client() as client:
        sid = new_session(client, context="site notes")
        created = client.post("/inferenceResults", json={"sessionId": sid, "input": "q", "retrievalContext": "doc"})
        assert created.status_code == 201 and "retrievalContext" not in created.json()
        record_id = created.json()["id"]
        assert "retrievalContext" not in client.get(f"/inferenceResults/{record_id}").json()
        assert all("retrievalContext" not in r for r in client.get("/inferenceResults").json())
        # The session context comes back as the JSON object the API stores.
        assert client.get(f"/sessions/{sid}").json()["context"] == {"value": "site notes"}
        emulator.set_faults(echo_write_only=True)  # a polite server, for contrast
        assert client.get(f"/inferenceResults/{record_id}").json()["retrievalContext"] == "doc"
    (stored,) = emulator.dump(log=False)["inferenceResults"]
    assert stored["retrievalContext"] == "doc"  # it did arrive


def test_late_commit_lands_after_the_client_gave_up(emulator: EmulatorHandle) -> None:  # noqa: F811
    with emulator.client() as client:
        sid = new_session(client)
        emulator.set_faults(late_rate=1.0, late_commit_s=0.6)
        with pytest.raises(httpx.ReadTimeout):
            client.post("/inferenceResults", json={"sessionId": sid, "input": "late"}, timeout=0.2)
        assert client.get("/inferenceResults").json() == []  # not yet committed: a list sees nothing
        for _ in range(100):
            if emulator.dump(log=False)["inferenceResults"]:
                break
            time.sleep(0.02)
    dump = emulator.dump(log=False)
    assert [r["input"] for r in dump["inferenceResults"]] == [{"user_message": "late"}]
    assert dump["faults"]["late"] == 1


@pytest.mark.parametrize("status", [502, 503, 504])
def test_gateway_error_after_the_write_was_applied(emulator: EmulatorHandle, status: int) -> None:  # noqa: F811
    with emulator.client() as client:
        sid = new_session(client)
        emulator.set_faults(applied_error_rate=1.0, applied_error_status=status)
        answer = client.post("/inferenceResults", json={"sessionId": sid, "input": "applied"})
        assert answer.status_code == status and "retry-after" not in answer.headers
        assert client.get("/inferenceResults").status_code == 200  # reads are never failed this way
    assert len(emulator.dump(log=False)["inferenceResults"]) == 1


def test_page_size_is_capped_silently(emulator: EmulatorHandle) -> None:  # noqa: F811
    with emulator.client() as client:
        sid = new_session(client)
        for n in range(7):
            client.post("/inferenceResults", json={"sessionId": sid, "input": f"t{n}"}).raise_for_status()
        emulator.set_faults(page_cap=3)
        pages = [client.get("/inferenceResults", params={"offset": o, "limit": 5}).json() for o in (0, 3, 6, 9)]
    assert [len(page) for page in pages] == [3, 3, 1, 0]


def test_server_clock_offset_shows_in_date_and_created_at(emulator: EmulatorHandle) -> None:  # noqa: F811
    emulator.set_faults(clock_offset_s=-3600)
    with emulator.client() as client:
        sid = new_session(client)
        answer = client.post("/inferenceResults", json={"sessionId": sid, "input": "q"})
        server_date = email.utils.parsedate_to_datetime(answer.headers["date"]).timestamp()
        created = answer.json()["createdAt"]
        # The window filter is in server time too.
        assert client.get("/inferenceResults", params={"fromCreatedAt": _iso(time.time() - 1800)}).json() == []
    assert -3700 < server_date - time.time() < -3500
    assert created < _iso(time.time() - 3500)


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(seconds))
