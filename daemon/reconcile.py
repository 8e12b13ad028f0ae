"""Find out whether a create that may have been sent did reach the server.

Sessions are simpler: every session we create carries a custom id, unique per
version, so a lost ``POST /sessions`` is found by looking that id up.


The API has no idempotency key, so a create whose answer was lost cannot be
blindly re-sent. Instead: list the session's records created since the attempt
started (less the allowed clock skew) and adopt the earliest one whose fields
equal what we sent and that no other local record already owns. Only when
there is none is the create sent again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from galtea_local.read_model import iso_utc
from galtea_local_daemon.upstream import UpstreamClient

PAGE = 500
_ANCHORS = frozenset({"sessionId", "sessionCustomId", "versionId", "productId"})


def _as_stored(key: str, value: Any) -> Any:
    # The API stores a string input as {"user_message": ...}.
    if key == "input" and isinstance(value, str):
        return {"user_message": value}
    return value


def matches(sent: dict[str, Any], candidate: dict[str, Any]) -> bool:
    """True when every field we sent (the session anchors aside) reads back equal."""
    for key, value in sent.items():
        if key in _ANCHORS:
            continue
        if _as_stored(key, candidate.get(key)) != _as_stored(key, value):
            return False
    return True


def session_of(client: UpstreamClient, sent: dict[str, Any], known: str | None) -> str | None:
    """The upstream session a create went to; None if a custom id names no session (so none was made)."""
    if sent.get("sessionId"):
        return sent["sessionId"]
    if known:
        return known
    versions = [sent["versionId"]] if sent.get("versionId") else None
    sessions = client.list_sessions(custom_ids=[sent["sessionCustomId"]], version_ids=versions)
    if not versions and sent.get("productId"):
        sessions = [s for s in sessions if s.get("productId") in (None, sent["productId"])]
    return sessions[0]["id"] if sessions else None


def _candidates(client: UpstreamClient, session_id: str, since: float) -> Iterator[dict[str, Any]]:
    offset = 0
    while True:
        page = client.list_inference_results(
            session_ids=[session_id], from_created_at=iso_utc(since), offset=offset, limit=PAGE, sort="asc"
        )
        yield from page
        if len(page) < PAGE:
            return
        offset += PAGE


def find_adoptable(
    client: UpstreamClient,
    sent: dict[str, Any],
    attempt_started: float,
    clock_skew_s: float,
    known_session: str | None,
    owned: Callable[[list[str]], set[str]],
) -> dict[str, Any] | None:
    """The upstream record our lost create made, or None if it made none.

    Raises the client's errors (the caller retries the reconciliation later).
    """
    session_id = session_of(client, sent, known_session)
    if session_id is None:
        return None
    found = [c for c in _candidates(client, session_id, attempt_started - clock_skew_s) if matches(sent, c)]
    if not found:
        return None
    taken = owned([c["id"] for c in found])
    free = [c for c in found if c["id"] not in taken]
    return free[0] if free else None


def find_session(client: UpstreamClient, sent: dict[str, Any]) -> dict[str, Any] | None:
    """The session a lost ``POST /sessions`` made, found by its custom id (unique per version)."""
    versions = [sent["versionId"]] if sent.get("versionId") else None
    sessions = client.list_sessions(custom_ids=[sent["customId"]], version_ids=versions)
    if not versions:
        sessions = [s for s in sessions if s.get("productId") == sent.get("productId")]
    return sessions[0] if sessions else None
