"""Find out whether a create that may have been sent did reach the server.

The API has no idempotency key, so a create whose answer was lost cannot be
blindly re-sent. Instead: list the session's records created since the attempt
started (in server time, less the allowed clock skew) and adopt the earliest
one whose echoed fields equal what we sent and that no local record owns or
ever owned. Only when there is none (and the first attempt can no longer land:
the engine's commit grace) is the create sent again.

Only fields the API reads back are compared: ``retrievalContext`` is write-only
(the API turns it into a RETRIEVER span), so two turns that differ only there
cannot be told apart upstream; the earliest unowned one is taken, which keeps
counts and order right.

Sessions: every session we create carries a custom id, unique per version, so
a lost ``POST /sessions`` is found by looking that id up, and adopted only if
it holds what we sent (a custom id an operator chose may name someone else's).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from galtea_local.errors import RejectedError
from galtea_local.read_model import iso_utc
from galtea_local_daemon import wire
from galtea_local_daemon.upstream import UpstreamClient

PAGE = 500
_ANCHORS = frozenset({"sessionId", "sessionCustomId", "versionId", "productId"})
# Accepted on create, never returned on reads (the SDK's Trace read model has no such field).
WRITE_ONLY = frozenset({"retrievalContext"})
# The session fields we send that the API echoes and that tell our session from another.
_SESSION_ECHOED = ("testCaseId", "context", "metadata")


def as_stored(key: str, value: Any) -> Any:
    # The API stores a string input as {"user_message": ...}.
    if key == "input" and isinstance(value, str):
        return {"user_message": value}
    if isinstance(value, dict) and isinstance(value.get("content"), list):
        # A file part comes back with the signature-free reference, not the link we sent:
        # compare it by what it says about the file.
        return {**value, "content": [_without_uri(part) for part in value["content"]]}
    return value


def _without_uri(part: Any) -> Any:
    if isinstance(part, dict) and str(part.get("type", "")).lower() == "file":
        return {name: value for name, value in part.items() if name != "uri"}
    return part


# Echoed fields compared one by one (session anchors and write-only fields aside).
COMPARED = tuple(camel for camel in wire.UPDATE_FIELDS.values() if camel not in WRITE_ONLY and camel != "sessionId")


def differing_fields(body: dict[str, Any], record: dict[str, Any]) -> dict[str, list[Any]]:
    """The echoed fields whose value in ``record`` (as the API answers) differs from ``body`` (a create body)."""
    differing = {}
    for name in COMPARED:
        ours, theirs = as_stored(name, body.get(name)), as_stored(name, record.get(name))
        if ours != theirs:
            differing[name] = [ours, theirs]
    return differing


def matches(sent: dict[str, Any], candidate: dict[str, Any]) -> bool:
    """True when every field we sent (the session anchors aside) reads back equal."""
    for key, value in sent.items():
        if key in _ANCHORS or key in WRITE_ONLY:
            continue
        if as_stored(key, candidate.get(key)) != as_stored(key, value):
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


def pages(fetch: Callable[[int, int], list[dict[str, Any]]]) -> Iterator[dict[str, Any]]:
    """Every item of a paged list, until the server answers an empty page.

    A short page is not the end: a proxy or the API may cap ``limit`` silently.
    """
    offset = 0
    while True:
        page = fetch(offset, PAGE)
        if not page:
            return
        yield from page
        offset += len(page)


def _candidates(client: UpstreamClient, session_id: str, since: float) -> Iterator[dict[str, Any]]:
    return pages(lambda offset, limit: client.list_inference_results(
        session_ids=[session_id], from_created_at=iso_utc(since), offset=offset, limit=limit, sort="asc"))


def find_adoptable(
    client: UpstreamClient,
    sent: dict[str, Any],
    window_from: float,
    known_session: str | None,
    owned: Callable[[list[str]], set[str]],
) -> dict[str, Any] | None:
    """The upstream record our lost create made, or None if it made none.

    ``window_from`` is in server time (the attempt's start less the allowed skew).
    Raises the client's errors (the caller retries the reconciliation later).
    """
    session_id = session_of(client, sent, known_session)
    if session_id is None:
        return None
    # Read lazily: the lost create is usually on the first page, and a page more (the empty
    # one that ends the list) is one request more per reconciliation, a slot's time under faults.
    for candidate in _candidates(client, session_id, window_from):
        if matches(sent, candidate) and not owned([candidate["id"]]):
            return candidate
    return None


class ForeignSessionError(RejectedError):
    """Our session's custom id names an upstream session that does not hold what we sent."""

    def __init__(self, custom_id: str, differing: list[str]) -> None:
        super().__init__(
            f"customId {custom_id} is taken upstream by a session that differs from ours"
            f" ({', '.join(differing)}); not adopted. Give the session another custom id, or drop it",
            status=400,
        )
        self.custom_id = custom_id
        self.differing = differing


def _as_stored_context(value: Any) -> Any:
    # The API stores a string context as {"value": ...}.
    return {"value": value} if isinstance(value, str) else value


def session_differences(sent: dict[str, Any], candidate: dict[str, Any]) -> list[str]:
    """The echoed fields of a session that differ from what we sent ([] when it is ours to adopt)."""
    differing = [key for key in _SESSION_ECHOED
                 if _as_stored_context(candidate.get(key)) != _as_stored_context(sent.get(key))]
    if sent.get("isProduction") is not None and candidate.get("isProduction") != sent["isProduction"]:
        differing.append("isProduction")
    return differing


def find_session(client: UpstreamClient, sent: dict[str, Any], joining: bool = False) -> dict[str, Any] | None:
    """The session a lost ``POST /sessions`` made, found by its custom id (unique per version).

    None when no session has the custom id; :class:`ForeignSessionError` when one
    has it but holds something else.
    """
    versions = [sent["versionId"]] if sent.get("versionId") else None
    sessions = client.list_sessions(custom_ids=[sent["customId"]], version_ids=versions)
    if not versions:
        sessions = [s for s in sessions if s.get("productId") == sent.get("productId")]
    if not sessions:
        return None
    if joining:  # sessions.get_or_create(): an existing session is joined as it is
        return sessions[0]
    differing = session_differences(sent, sessions[0])
    if differing:
        raise ForeignSessionError(sent["customId"], differing)
    return sessions[0]



def _batch_pairs(turns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records a batch makes, as the API pairs turns: a user turn opens one, the next assistant turn fills it."""
    pairs: list[dict[str, Any]] = []
    for turn in turns:
        if turn.get("role") == "user":
            pairs.append({"input": turn.get("content")})
        elif pairs and "actualOutput" not in pairs[-1]:
            pairs[-1]["actualOutput"] = turn.get("content")
        else:
            pairs.append({"actualOutput": turn.get("content")})
    return pairs


def find_batch(
    client: UpstreamClient,
    sent: dict[str, Any],
    window_from: float,
    known_session: str | None,
    owned: Callable[[list[str]], set[str]],
) -> list[dict[str, Any]] | None:
    """The records a lost batch made (all of them, consecutive, in order), or None if it made none.

    The API writes a batch in one go, so it is found whole or not at all. ``window_from``
    is in server time, as for :func:`find_adoptable`.
    """
    session_id = session_of(client, sent, known_session)
    if session_id is None:
        return None
    pairs = _batch_pairs(sent.get("conversationTurns") or [])
    candidates = list(_candidates(client, session_id, window_from))
    taken = owned([c["id"] for c in candidates])
    free = [c for c in candidates if c["id"] not in taken]
    for start in range(len(free) - len(pairs) + 1):
        window = free[start : start + len(pairs)]
        if all(matches(pair, candidate) for pair, candidate in zip(pairs, window)):
            return window
    return None
