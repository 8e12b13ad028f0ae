"""The emulator's wire behaviour: validation, listing, faults and counters, over real HTTP."""

from __future__ import annotations

import asyncio
import email.utils
from typing import Any

import httpx
import pytest
import requests

from tests.emulator_fixture import EMULATOR_API_KEY, EmulatorHandle, emulator, emulator_factory  # noqa: F401

AUTH = {"Authorization": f"Bearer {EMULATOR_API_KEY}"}


def new_session(client: httpx.Client, **fields: Any) -> str:
    response = client.post("/sessions", json={"versionId": "v1", **fields})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def create(client: httpx.Client, session_id: str, **fields: Any) -> httpx.Response:
    return client.post("/inferenceResults", json={"sessionId": session_id, "input": "q", **fields})


def test_indexes_follow_arrival_order_per_session(emulator: EmulatorHandle) -> None:  # noqa: F811
    with emulator.client() as client:
        first, second = new_session(client), new_session(client)
        indexes = [create(client, sid).json()["index"] for sid in (first, second, first, first, second)]
    assert indexes == [0, 0, 1, 2, 1]
    assert emulator.dump()["createsPerSession"] == {first: 3, second: 2}


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"input": "q"}, 400),  # neither session id
        ({"sessionId": "SID", "sessionCustomId": "c", "versionId": "v1"}, 400),  # both
        ({"sessionId": "nope"}, 400),  # unknown session
        ({"sessionCustomId": "conv"}, 400),  # custom id without an anchor
        ({"sessionCustomId": "unknown", "versionId": "v1"}, 400),  # unknown custom id
        ({"sessionCustomId": "conv", "versionId": "other"}, 400),  # custom ids are per version
        ({"sessionId": "SID", "status": "pending"}, 400),  # the API wants upper case
        ({"sessionId": "SID", "status": "DONE"}, 400),
        ({"sessionId": "SID", "latency": "fast"}, 400),
        ({"sessionId": "SID", "inputTokens": 1.5}, 400),
        ({"sessionId": "SID", "tokens": True}, 400),
        ({"sessionId": "SID", "input": ["a list"]}, 400),
        ({"sessionId": "SID", "surprise": 1}, 400),
        ({"sessionCustomId": "conv", "versionId": "v1", "productId": "ignored"}, 201),  # versionId wins
        ({"sessionId": "SID", "input": None, "status": "SKIPPED"}, 201),
    ],
)
def test_create_validation(emulator: EmulatorHandle, body: dict[str, Any], status: int) -> None:  # noqa: F811
    with emulator.client() as client:
        sid = new_session(client, customId="conv")
        body = {k: (sid if v == "SID" else v) for k, v in body.items()}
        response = client.post("/inferenceResults", json=body)
        assert response.status_code == status, response.text
        if status == 400:
            assert response.json()["message"]
        assert create(client, sid).status_code == 201  # and the server keeps serving


def test_bad_requests_and_missing_ids(emulator: EmulatorHandle) -> None:  # noqa: F811
    with emulator.client() as client:
        sid = new_session(client)
        assert client.post("/inferenceResults", content=b"{not json").status_code == 400
        assert client.post("/inferenceResults", content=b"[1, 2]").status_code == 400
        assert client.post("/sessions", json={"customId": "x"}).status_code == 400  # no anchor
        missing = client.get("/inferenceResults/cmissing")
        assert (missing.status_code, missing.json()["message"]) == (404, "Inference result with id cmissing not found")
        assert client.patch("/inferenceResults/cmissing", json={}).status_code == 404
        assert client.delete("/inferenceResults/cmissing").status_code == 404
        assert client.get("/sessions/cmissing").status_code == 404
        assert client.get("/inferenceResults", params={"ids[]": "cmissing"}).status_code == 404
        assert client.get("/inferenceResults", params={"limit": "-1"}).status_code == 400
        assert create(client, sid).status_code == 201


def test_patch_applies_only_given_fields(emulator: EmulatorHandle) -> None:  # noqa: F811
    with emulator.client() as client:
        rid = create(client, new_session(client), actualOutput="a", latency=5, status="PENDING").json()["id"]
        patched = client.patch(f"/inferenceResults/{rid}", json={"status": "GENERATED", "actualOutput": None})
        assert patched.status_code == 200
        assert patched.json() | {"createdAt": None} == client.get(f"/inferenceResults/{rid}").json() | {
            "createdAt": None
        }
        record = patched.json()
        assert (record["status"], record["actualOutput"], record["latency"]) == ("GENERATED", None, 5)
        assert client.patch(f"/inferenceResults/{rid}", json={"status": "OK"}).status_code == 400
        assert client.patch(f"/inferenceResults/{rid}", json={"input": "new"}).json()["input"] == {
            "user_message": "new"
        }


def test_list_filters_paging_and_sort(emulator: EmulatorHandle) -> None:  # noqa: F811
    with emulator.client() as client:
        sid, other = new_session(client), new_session(client)
        ids = [create(client, sid).json()["id"] for _ in range(5)]
        create(client, other)

        def listed(**params: Any) -> list[str]:
            response = client.get("/inferenceResults", params=params)
            assert response.status_code == 200, response.text
            return [r["id"] for r in response.json()]

        assert listed(**{"sessionIds[]": sid}) == ids
        assert listed(**{"sessionIds[]": sid, "sort[]": ["createdAt", "desc"]}) == ids[::-1]
        assert listed(**{"sessionIds[]": sid, "offset": 1, "limit": 2}) == ids[1:3]
        assert listed(**{"ids[]": [ids[3], ids[0]]}) == [ids[0], ids[3]]
        third = client.get(f"/inferenceResults/{ids[2]}").json()["createdAt"]
        assert set(listed(**{"sessionIds[]": sid, "fromCreatedAt": third})) >= set(ids[2:])
        assert ids[0] not in listed(**{"sessionIds[]": sid, "fromCreatedAt": "2999-01-01T00:00:00+00:00"})
        assert listed(**{"sessionIds[]": sid, "toCreatedAt": "2000-01-01T00:00:00Z"}) == []
        sessions = client.get("/sessions", params={"ids[]": [sid, other]}).json()
        assert [s["id"] for s in sessions] == [sid, other]
        # A record moved to another session (PATCH sessionId) or deleted is listed where it is now.
        assert client.patch(f"/inferenceResults/{ids[1]}", json={"sessionId": other}).status_code == 200
        assert client.delete(f"/inferenceResults/{ids[4]}").status_code == 204
        assert listed(**{"sessionIds[]": sid}) == [ids[0], ids[2], ids[3]]
        assert ids[1] in listed(**{"sessionIds[]": other})
        assert set(listed(**{"sessionIds[]": [sid, other]})) == {ids[0], ids[1], ids[2], ids[3]} | set(
            listed(**{"sessionIds[]": other}))


def test_ambiguous_fault_stores_then_drops(emulator: EmulatorHandle) -> None:  # noqa: F811
    with emulator.client() as client:
        sid = new_session(client)
        emulator.set_faults(ambiguous_rate=1.0)
        with pytest.raises(httpx.RemoteProtocolError):
            create(client, sid, actualOutput="lost answer")
        # The SDK's requests client sees a dropped connection too, and never gets a status.
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.post(f"{emulator.url}/inferenceResults", json={"sessionId": sid}, headers=AUTH, timeout=5)
        assert client.get(f"/sessions/{sid}").status_code == 200  # reads are never dropped
        emulator.set_faults(ambiguous_rate=0.0)
        assert create(client, sid).status_code == 201
    dump = emulator.dump()
    assert [r["actualOutput"] for r in dump["inferenceResults"]][:1] == ["lost answer"]
    assert len(dump["inferenceResults"]) == 3
    assert dump["faults"] == {"fail": 0, "throttle": 0, "ambiguous": 2, "late": 0, "applied_error": 0}
    assert [e["status"] for e in dump["log"] if e["fault"] == "ambiguous"] == [201, 201]


def test_fail_and_throttle_faults_change_nothing(emulator: EmulatorHandle) -> None:  # noqa: F811
    with emulator.client() as client:
        sid = new_session(client)
        emulator.set_faults(fail_rate=1.0)
        assert create(client, sid).status_code == 503
        emulator.set_faults(fail_rate=0.0, throttle_rate=1.0, retry_after_s=7)
        throttled = create(client, sid)
        assert (throttled.status_code, throttled.headers["Retry-After"]) == (429, "7")
        emulator.set_faults(retry_after_http_date=True)
        as_date = email.utils.parsedate_to_datetime(create(client, sid).headers["Retry-After"])
        assert as_date.tzinfo is not None
    dump = emulator.dump()
    assert dump["inferenceResults"] == []
    assert dump["faults"] == {"fail": 1, "throttle": 2, "ambiguous": 0, "late": 0, "applied_error": 0}
    assert dump["requests"]["POST /inferenceResults"] == 3


def test_authentication(emulator_factory: Any) -> None:  # noqa: F811
    strict = emulator_factory(api_key="gsk_right")
    with strict.client(api_key="gsk_wrong") as client:
        response = client.get("/sessions/x")
        assert (response.status_code, response.json()["message"]) == (401, "Unauthorized: invalid or missing API key")
    assert httpx.get(f"{strict.url}/sessions/x").status_code == 401  # no Authorization header
    with strict.client(api_key="gsk_right") as client:
        assert client.get("/sessions/x").status_code == 404
    lenient = emulator_factory(api_key=None)
    with lenient.client(api_key="gsk_anything") as client:
        assert client.get("/sessions/x").status_code == 404
    assert httpx.get(f"{lenient.url}/sessions/x", headers={"Authorization": "Basic gsk_x"}).status_code == 401


def statuses_for_seed(emulator_factory: Any, seed: int) -> list[int]:  # noqa: F811
    handle = emulator_factory(seed=seed, fail_rate=0.3, throttle_rate=0.3)
    with handle.client() as client:
        return [client.get("/sessions/x").status_code for _ in range(30)]


def test_faults_repeat_with_the_seed(emulator_factory: Any) -> None:  # noqa: F811
    first = statuses_for_seed(emulator_factory, 42)
    assert first == statuses_for_seed(emulator_factory, 42)
    assert {503, 429, 404} <= set(first)


def test_latency_holds_requests_in_flight_together(emulator: EmulatorHandle) -> None:  # noqa: F811
    # Long enough that all 100 connections are open before the first answer, even on a loaded box.
    emulator.set_faults(latency_ms=2000)

    async def burst() -> list[int]:
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(base_url=emulator.url, headers=AUTH, limits=limits, timeout=30) as client:
            answers = await asyncio.gather(*(client.get("/sessions/x") for _ in range(100)))
        return [a.status_code for a in answers]

    assert asyncio.run(burst()) == [404] * 100
    assert emulator.dump(log=False)["maxInFlight"] >= 90  # all delayed at once, not one after another


def test_control_endpoint_rejects_bad_settings(emulator: EmulatorHandle) -> None:  # noqa: F811
    with httpx.Client(base_url=emulator.url) as control:
        assert control.post("/_emulator/faults", json={"fail_rate": 2}).status_code == 400
        assert control.post("/_emulator/faults", json={"fail_rate": 0.6, "throttle_rate": 0.6}).status_code == 400
        assert control.post("/_emulator/faults", json={"typo": 1}).status_code == 400
        assert control.get("/_emulator/faults").json()["fail_rate"] == 0.0
    with emulator.client() as client:
        new_session(client)
    emulator.reset()
    assert emulator.dump()["sessions"] == [] and emulator.dump()["requests"] == {}
