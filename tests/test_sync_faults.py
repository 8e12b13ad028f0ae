"""The engine against a misbehaving emulator: lost answers, 503s and 429s lose and duplicate nothing,
and a Retry-After is honoured to the second by every lane."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from galtea_local import Galtea
from tests.emulator_fixture import EmulatorHandle
from tests.sync_helpers import (
    cli_env, drain, galtea_local, make_engine, new_session, open_store, upstream_by_session,
)

SESSIONS, PER_SESSION = 20, 50
TOLERANCE_S = 0.05  # clock reads on both sides of loopback; the spec is the 2 s, not this
# Another lane's request that arrives this soon after a 429 left before that 429 was answered
# (loopback, no latency): it was in flight, not sent in breach of the delay.
IN_FLIGHT_S = 0.05


def marker(session: int, turn: int) -> str:
    return f"s{session}-t{turn}"


def final_fields(session: int, turn: int) -> dict[str, Any]:
    """What the upstream must hold for a turn at the end (a quarter go PENDING -> GENERATED/FAILED)."""
    if turn % 4:
        return {"status": "GENERATED", "actualOutput": f"out {marker(session, turn)}", "error": None}
    if session % 2:
        return {"status": "FAILED", "actualOutput": None, "error": f"failed {marker(session, turn)}"}
    return {"status": "GENERATED", "actualOutput": f"late {marker(session, turn)}", "error": None}


def finish(traces: Any, record_id: str, session: int, turn: int) -> None:
    fields = final_fields(session, turn)
    if fields["status"] == "FAILED":
        traces.update(record_id, status="FAILED", error=fields["error"])
    else:
        traces.update(record_id, status="GENERATED", output=fields["actualOutput"])


def create_all(traces: Any, sessions: list[str]) -> dict[tuple[int, int], str]:
    """Turns interleaved across sessions, as concurrent conversations would write them."""
    ids = {}
    for turn in range(PER_SESSION):
        for session, session_id in enumerate(sessions):
            pending = turn % 4 == 0
            ids[session, turn] = traces.create(
                session_id=session_id, input=marker(session, turn), latency=float(turn),
                output=None if pending else f"out {marker(session, turn)}", status="PENDING" if pending else None,
            ).id
    return ids


def assert_upstream_exact(emulator: EmulatorHandle, sessions: list[str]) -> None:
    dump = emulator.dump(log=False)
    assert len(dump["inferenceResults"]) == SESSIONS * PER_SESSION
    assert dump["deletedInferenceResults"] == []
    markers = [r["input"]["user_message"] for r in dump["inferenceResults"]]
    assert len(set(markers)) == len(markers)  # no duplicates
    grouped = upstream_by_session(emulator)
    for session, session_id in enumerate(sessions):
        records = grouped[session_id]
        assert [r["input"]["user_message"] for r in records] == [marker(session, t) for t in range(PER_SESSION)]
        assert [r["index"] for r in records] == list(range(PER_SESSION))
        for turn, record in enumerate(records):
            got = {key: record[key] for key in ("status", "actualOutput", "error")}
            assert (got, record["latency"]) == (final_fields(session, turn), float(turn))


def test_faults_lose_and_duplicate_nothing(emulator: EmulatorHandle, tmp_path: Path) -> None:
    sessions = [new_session(emulator) for _ in range(SESSIONS)]
    # Retry-After 0: each 429 still goes through the throttle path, but ~70 of them at 1 s each would
    # pause every lane for a minute; honouring a real delay is test_retry_after_is_honoured's job.
    emulator.set_faults(ambiguous_rate=0.1, fail_rate=0.1, throttle_rate=0.05, retry_after_s=0)
    store_path = tmp_path / "store.db"
    with Galtea(store=store_path) as local, closing(open_store(store_path)) as store:
        ids = create_all(local.traces, sessions)
        pending = [key for key in ids if key[1] % 4 == 0]
        early, late = pending[::2], pending[1::2]
        for key in early:  # before any push: folds into the create
            finish(local.traces, ids[key], *key)
        engine = make_engine(store, emulator, concurrency=SESSIONS)
        engine.run_once()
        for key in late:  # mostly after the create went: a PATCH, in order after it
            finish(local.traces, ids[key], *key)
        drain(engine, max_passes=2000)
        states = store.read(lambda c: dict(c.execute("SELECT sync_state, COUNT(*) FROM inference_results"
                                                      " GROUP BY sync_state").fetchall()))
    assert states == {"synced": SESSIONS * PER_SESSION}
    assert_upstream_exact(emulator, sessions)
    dump = emulator.dump(log=False)
    assert dump["faults"]["ambiguous"] > 0 and dump["faults"]["throttle"] > 0 and dump["faults"]["fail"] > 0
    assert 0 < dump["requests"]["PATCH /inferenceResults/{id}"]


def drain_while_throttled(emulator: EmulatorHandle, tmp_path: Path, lanes: int,
                          after_creates: int = 0) -> list[dict[str, Any]]:
    """Drain with the emulator answering 429 (once ``after_creates`` were served) until the first one
    is seen; the API request log."""
    sessions = [new_session(emulator) for _ in range(lanes)]
    store_path = tmp_path / "store.db"
    with Galtea(store=store_path) as local, closing(open_store(store_path)) as store:
        for turn in range(3):
            for session_id in sessions:
                local.traces.create(session_id=session_id, input=f"turn {turn}")
        started = time.time()
        if not after_creates:
            emulator.set_faults(throttle_rate=1.0)
        worker = threading.Thread(target=drain, args=(make_engine(store, emulator, concurrency=lanes),))
        worker.start()
        while after_creates and sum(entry["status"] == 201 for entry in emulator.dump()["log"]) < after_creates:
            time.sleep(0.005)
        if after_creates:
            emulator.set_faults(throttle_next=1)  # exactly one sporadic 429, amid answers
        while not any(entry["status"] == 429 for entry in emulator.dump()["log"]):
            time.sleep(0.005)
        emulator.set_faults(throttle_rate=0.0)
        worker.join(60)
        assert not worker.is_alive()
    return sorted((e for e in emulator.dump()["log"] if e["t"] >= started), key=lambda entry: entry["t"])


def assert_quiet_after_each_429(log: list[dict[str, Any]], retry_after_s: float) -> None:
    throttled = [entry["t"] for entry in log if entry["status"] == 429]
    served = [entry["t"] for entry in log if entry["status"] != 429]
    assert throttled and served
    for t_429 in throttled:
        too_soon = [t for t in served if t_429 + IN_FLIGHT_S < t < t_429 + retry_after_s - TOLERANCE_S]
        assert too_soon == [], f"requests {[round(t - t_429, 3) for t in too_soon]} s after a 429"


@pytest.mark.parametrize("http_date", [False, True], ids=["seconds", "http-date"])
@pytest.mark.parametrize("lanes", [1, 4])
def test_retry_after_is_honoured(
    emulator_factory: Callable[..., EmulatorHandle], tmp_path: Path, http_date: bool, lanes: int
) -> None:
    """The request a 429 answered waits out its Retry-After; other sessions do not (issue 17)."""
    emulator = emulator_factory(retry_after_s=2, retry_after_http_date=http_date)
    # Several lanes: a 429 amid answers (a 429 for everything from the start pauses everything).
    log = drain_while_throttled(emulator, tmp_path, lanes, after_creates=0 if lanes == 1 else lanes)
    creates = [e for e in log if e["route"] == "/inferenceResults" and e["status"] == 201]
    assert len(creates) == 3 * lanes
    if lanes == 1:
        assert_quiet_after_each_429(log, 2.0)
        return
    first_429 = min(entry["t"] for entry in log if entry["status"] == 429)
    # The throttled session's next create came after the Retry-After; the others' did not wait.
    # Arrival times, not createdAt: the daemon sets createdAt to each create() call's time.
    arrived = emulator.dump(log=False)["arrivedAt"]
    nexts = [min((arrived[r["id"]] for r in records if arrived[r["id"]] > first_429), default=math.inf)
             for records in upstream_by_session(emulator).values()]
    later = [t for t in nexts if t < math.inf]  # sessions with creates left after the 429
    waited = [t for t in later if t >= first_429 + 2.0 - TOLERANCE_S]
    assert waited, "the throttled session sent again before its Retry-After"
    assert len(waited) < len(later), "every session waited: a sporadic 429 stopped the world"


def test_a_lane_waits_out_a_retry_after_without_its_thread(
    emulator_factory: Callable[..., EmulatorHandle], tmp_path: Path
) -> None:
    """The lane a 429 answered is given back with its Retry-After as its not-before, not slept in
    place: under the soak's fault mix, push threads asleep on 429s left request slots idle (the
    drain fell to 75% of the fault-free rate; 82% when they serve other lanes meanwhile)."""
    emulator = emulator_factory(retry_after_s=2)
    session_id = new_session(emulator)
    store_path = tmp_path / "store.db"
    with Galtea(store=store_path) as local, closing(open_store(store_path)) as store:
        for turn in range(3):
            local.traces.create(session_id=session_id, input=marker(0, turn))
        engine = make_engine(store, emulator, concurrency=1)
        emulator.set_faults(throttle_next=1)
        began = time.monotonic()
        report = engine.run_once()
        assert time.monotonic() - began < 1.0, "the pass slept out the Retry-After on the lane's thread"
        assert report.next_due_at == pytest.approx(time.time() + 2.0, abs=1.0)  # the daemon comes back then
        log = emulator.dump()["log"]
        assert [entry["status"] for entry in log if entry["route"] == "/inferenceResults"] == [429]
        drain(engine)
    log = emulator.dump()["log"]
    throttled = next(entry["t"] for entry in log if entry["status"] == 429)
    created = [entry["t"] for entry in log if entry["route"] == "/inferenceResults" and entry["status"] == 201]
    assert len(created) == 3 and min(created) >= throttled + 2.0 - TOLERANCE_S
    assert [r["input"]["user_message"] for r in upstream_by_session(emulator)[session_id]] == [marker(0, t) for t in range(3)]


def test_sync_pushes_what_a_sporadic_429_held_back(emulator_factory: Callable[..., EmulatorHandle],
                                                   tmp_path: Path) -> None:
    """`galtea-local sync` waits for a lane whose Retry-After ends soon, and exits 0 with it pushed."""
    emulator = emulator_factory(retry_after_s=1)
    session_id = new_session(emulator)
    store_path = tmp_path / "store.db"
    env = cli_env(store_path, emulator.url, emulator.api_key)
    with Galtea(store=store_path) as local:
        for turn in range(3):
            local.traces.create(session_id=session_id, input=marker(0, turn))
    emulator.set_faults(throttle_next=2)  # sync's first request (its cache refresh's), then the first create
    synced = galtea_local("sync", env=env, timeout=60)
    assert synced.returncode == 0, synced.stderr
    creates = [entry["status"] for entry in emulator.dump()["log"] if entry["route"] == "/inferenceResults"]
    assert creates == [429, 201, 201, 201]
    assert [r["input"]["user_message"] for r in upstream_by_session(emulator)[session_id]] == [
        marker(0, t) for t in range(3)]

