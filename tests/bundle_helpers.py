"""Shared pieces of the air-gap bundle tests: an origin full of turns, upstream and store views."""

from __future__ import annotations

import gzip
import json
import sqlite3
from collections import Counter
from contextlib import closing
from pathlib import Path
from typing import Any

from galtea_local import Galtea
from galtea_local.bundle.signing import Signing
from tests.emulator_fixture import EmulatorHandle
from tests.sync_helpers import VERSION_ID, new_session


# The key both test sites share: library calls pass SIGNING, CLI runs get key_env().
TEST_KEY = bytes(range(32))
SIGNING = Signing(TEST_KEY)


def key_env(env: dict[str, str], folder: Path, key: bytes = TEST_KEY) -> dict[str, str]:
    """``env`` plus GALTEA_LOCAL_BUNDLE_KEY_FILE naming a key file (0600) under ``folder``."""
    path = folder / f"bundle-{key[:2].hex()}.key"
    path.write_text(key.hex() + "\n")
    path.chmod(0o600)
    return {**env, "GALTEA_LOCAL_BUNDLE_KEY_FILE": str(path)}


def populate(galtea: Galtea, handle: EmulatorHandle | None, tag: str, *, remote_sessions: int,
             offline_sessions: int, per_session: int) -> dict[str, str]:
    """Turns in remote sessions and in sessions created offline; every third one goes PENDING then GENERATED.

    Half the turns of an offline session name it by local id, half by custom id; half the
    offline sessions are finished. Returns marker -> local record id (markers are unique inputs).
    """
    targets: list[dict[str, Any]] = [{"session_id": new_session(handle)} for _ in range(remote_sessions)]
    offline = [galtea.sessions.create(version_id=VERSION_ID, custom_id=f"{tag}-off-{n}") for n in range(offline_sessions)]
    ids: dict[str, str] = {}
    for turn in range(per_session):
        for n, target in enumerate(targets + [{"offline": session} for session in offline]):
            if "offline" in target:
                session = target["offline"]
                target = {"session_id": session.id} if turn % 2 else \
                    {"session_custom_id": session.custom_id, "version_id": VERSION_ID}
            ids[f"{tag}-{n}-{turn}"] = add_turn(galtea, target, f"{tag}-{n}-{turn}", pending=turn % 3 == 0)
    for session in offline[: offline_sessions // 2]:
        galtea.sessions.finish(session.id, stopping_reason="GOAL_ACHIEVED")
    return ids


def add_turn(galtea: Galtea, target: dict[str, Any], marker: str, *, pending: bool = False) -> str:
    traces = galtea.inference_results
    record = traces.create(**target, input=marker, output=None if pending else f"out {marker}",
                           status="PENDING" if pending else None)
    if pending:
        traces.update(record.id, status="GENERATED", output=f"late {marker}")
    return record.id


def upstream_records(handle: EmulatorHandle) -> list[dict[str, Any]]:
    return handle.dump(log=False)["inferenceResults"]


def upstream_markers(handle: EmulatorHandle) -> Counter[str]:
    """How many live upstream records carry each marker (exactly once means 1 each)."""
    return Counter(record["input"]["user_message"] for record in upstream_records(handle))


def rows(path: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute(sql, params).fetchall()


def table_counts(path: Path) -> tuple[int, int, int]:
    """(records, sessions, outbox operations) in a store file."""
    return tuple(rows(path, f"SELECT COUNT(*) FROM {table}")[0][0]  # type: ignore[return-value]
                 for table in ("inference_results", "sessions", "outbox"))


def read_lines(bundle: Path) -> list[dict[str, Any]]:
    with gzip.open(bundle, "rb") as stream:
        return [json.loads(line) for line in stream]


def write_lines(bundle: Path, lines: list[dict[str, Any]]) -> None:
    """Re-compress (valid gzip): the bundle's own checks must catch what was changed."""
    with gzip.open(bundle, "wb") as stream:
        for line in lines:
            stream.write((json.dumps(line, sort_keys=True, separators=(",", ":")) + "\n").encode())
